"""An array handed to the snapshot writer in pieces, so that it is never joined in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Pieces:
    """An array given as pieces whose bytes, in order, are its bytes in C order: the state tensors,
    written chunk by chunk without first joining hundreds of MB into one array; the tombstones' keys."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    parts: list[np.ndarray]

    def joined(self) -> np.ndarray:
        """The whole array (what reading the file back gives)."""
        flat = np.concatenate([p.reshape(-1) for p in self.parts]) if self.parts else np.empty(0, self.dtype)
        return flat.astype(self.dtype, copy=False).reshape(self.shape)
