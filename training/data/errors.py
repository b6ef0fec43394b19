"""The one error type for bad training input; the CLI prints its message on one line and exits 2."""

from __future__ import annotations


class DataError(ValueError):
    """Training input that cannot be used: missing file, empty corpus, non-numeric CSV value, ..."""
