"""The WikiText pattern reproduces WikiText's own tokenization (on the shared data, when present)."""

from __future__ import annotations

from collections import Counter

import pytest

from training.data.text import WIKITEXT_PATTERN, compile_pattern, tokenize
from training.tasks.lm import DEFAULT_DATA

pytestmark = pytest.mark.integration


def test_pattern_on_raw_wikitext_gives_its_whitespace_tokens() -> None:
    path = DEFAULT_DATA.resolve() / "wiki.valid.tokens"
    if not path.is_file():
        pytest.skip(f"WikiText-2 is not at {path} (the shared data directory)")
    text = path.read_text(encoding="utf-8")
    ours = Counter(tokenize(text, compile_pattern(WIKITEXT_PATTERN)))
    theirs = Counter(t for line in text.splitlines() for t in [*line.split(), "<eos>"])
    agree = sum((ours & theirs).values()) / sum(theirs.values())
    assert agree > 0.999, (theirs - ours).most_common(10)
