"""Tokenizing, the vocabulary (cap, min count, <unk>, <eos>) and corpus splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from training.data.errors import DataError
from training.data.text import (
    EOS,
    UNK,
    WIKITEXT_PATTERN,
    Vocab,
    compile_pattern,
    load_splits,
    split_by_fractions,
    tokenize,
)

pytestmark = pytest.mark.unit


def test_every_line_ends_with_eos_and_the_pattern_is_the_services_findall() -> None:
    text = "a b\n\nc\n"
    pattern = compile_pattern(r"\S+")
    assert tokenize(text, pattern) == ["a", "b", EOS, EOS, "c", EOS]
    assert tokenize("A b", pattern, lowercase=True) == ["a", "b", EOS]


def test_wikitext_pattern_splits_like_wikitext() -> None:
    import re

    text = "The U.S. game's opening, don't stop: <unk> role @-@ playing 1 @,@ 000 in St. Louis ..."
    got = re.findall(WIKITEXT_PATTERN, text)
    # WikiText's own rendering of the same sentence, split on whitespace
    want = [
        "The",
        "U.S.",
        "game",
        "'s",
        "opening",
        ",",
        "don",
        "'t",
        "stop",
        ":",
        "<unk>",
        "role",
        "@-@",
        "playing",
        "1",
        "@,@",
        "000",
        "in",
        "St.",
        "Louis",
        "...",
    ]
    assert got == want


def test_vocab_is_ordered_by_frequency_and_capped_with_specials_first() -> None:
    counts = Counter(["a", "a", "a", "a", "b", "b", "b", "c", "c", "d"])
    vocab = Vocab.build(counts, max_size=4)
    assert vocab.tokens == (UNK, EOS, "a", "b")
    assert len(vocab) == 4
    ids = vocab.encode(["a", "c", "zzz", EOS])
    assert ids.tolist() == [2, 0, 0, 1]  # capped and unseen words are <unk>


def test_min_count_drops_rare_words_and_corpus_specials_are_not_duplicated() -> None:
    counts = Counter(["x"] * 3 + ["y"] * 2 + ["z"] + [UNK] * 9 + [EOS] * 9)
    vocab = Vocab.build(counts, min_count=2)
    assert vocab.tokens == (UNK, EOS, "x", "y")
    assert set(vocab.tokens) == {t for t, c in counts.items() if c >= 2} | {UNK, EOS}


def test_ties_are_broken_alphabetically_so_the_vocab_is_reproducible() -> None:
    assert Vocab.build(Counter(["b", "a", "c"])).tokens == (UNK, EOS, "a", "b", "c")


@pytest.mark.parametrize(("max_size", "min_count"), [(2, 1), (None, 5)])
def test_degenerate_vocab_is_refused(max_size: int | None, min_count: int) -> None:
    with pytest.raises(DataError):
        Vocab.build(Counter(["a", "b"]), max_size=max_size, min_count=min_count)


def test_split_by_fractions_keeps_line_order_and_all_lines() -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    splits = split_by_fractions(text, 0.1, 0.2, Path("x"))
    assert splits.train + splits.valid + splits.test == text
    assert splits.valid.startswith("line 70\n") and splits.test.startswith("line 80\n")


def test_corpus_directory_and_bad_inputs(tmp_path: Path) -> None:
    for name in ("train.txt", "valid.txt", "test.txt"):
        (tmp_path / name).write_text(f"{name}\n", encoding="utf-8")
    assert load_splits(data_dir=tmp_path).valid == "valid.txt\n"
    (tmp_path / "empty.txt").write_text("  \n\n", encoding="utf-8")
    (tmp_path / "other").mkdir()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    cases = {
        "no such directory": dict(data_dir=tmp_path / "nope"),
        "expected the files": dict(data_dir=tmp_path / "other"),
        "is empty": dict(corpus=tmp_path / "empty.txt"),
        "not UTF-8": dict(corpus=tmp_path / "latin1.txt"),
        "no such file": dict(corpus=tmp_path / "missing.txt"),
    }
    for message, kwargs in cases.items():
        with pytest.raises(DataError, match=message):
            load_splits(**kwargs)  # type: ignore[arg-type]
