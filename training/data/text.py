"""Word-level text corpora: tokenizing, the vocabulary, and the three splits as token ids.

Every line of a corpus is tokenized with one regular expression (`re.findall`, the same call the service
makes on user text, so that training and serving see words the same way) and ends with `<eos>`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from training.data.errors import DataError

UNK, EOS = "<unk>", "<eos>"

# WikiText's own tokenization, reproduced on raw text: the specials stay whole, "@-@"-style joiners stay
# whole, clitics split off ("don't" -> "don", "'t"; "game's" -> "game", "'s"), initials and common
# abbreviations keep their dot ("U.S.", "J.", "No.", "St."), words may contain inner dots ("Media.Vision"),
# every other symbol is its own token.
WIKITEXT_PATTERN = (
    r"<unk>|<eos>|@[-.,]@|'(?:s|t|re|ve|m|ll|d)\b|(?:[A-Z]\.)+(?![a-z])"
    r"|(?:No|St|Dr|Mr|Mrs|Ms|Jr|Sr|Lt|Gen|Col|Capt|Sgt|Mt|Ft|Co|Inc|Ltd|vs|Vol|pp)\.(?=\s|$)"
    r"|\w+(?:\.\w+)*|\.\.\.|[^\w\s]"
)
WHITESPACE_PATTERN = r"\S+"
TOKENIZERS = {"wikitext": WIKITEXT_PATTERN, "whitespace": WHITESPACE_PATTERN}


def compile_pattern(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise DataError(f"tokenizer pattern {pattern!r} is not a valid regular expression: {exc}") from exc


def tokenize(text: str, pattern: re.Pattern[str], lowercase: bool = False) -> list[str]:
    """Tokens of every line, each line followed by `<eos>` (WikiText counts one per line)."""
    if lowercase:
        text = text.lower()
    tokens: list[str] = []
    for line in text.splitlines():
        tokens.extend(pattern.findall(line))
        tokens.append(EOS)
    return tokens


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]  # id order; `<unk>` is 0, `<eos>` is 1

    @classmethod
    def build(cls, counts: Counter[str], max_size: int | None = None, min_count: int = 1) -> Vocab:
        """Most frequent words first (ties alphabetical), at most `max_size` ids including the specials."""
        if max_size is not None and max_size < 3:
            raise DataError(f"vocabulary size {max_size} is too small: it must hold <unk>, <eos> and a word")
        words = sorted(
            (w for w, c in counts.items() if c >= min_count and w not in (UNK, EOS)),
            key=lambda w: (-counts[w], w),
        )
        if max_size is not None:
            words = words[: max_size - 2]
        if not words:
            raise DataError(f"no word occurs at least {min_count} time(s) in the training split")
        return cls((UNK, EOS, *words))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.tokens)}

    def encode(self, tokens: Iterable[str]) -> Tensor:
        """Token ids [N] int64; words outside the vocabulary become `<unk>` (id 0)."""
        index = self.index
        return torch.tensor([index.get(t, 0) for t in tokens], dtype=torch.int64)


def read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror})") from exc
    if not text.strip():
        raise DataError(f"{path}: the corpus is empty")
    return text


@dataclass(frozen=True)
class TextSplits:
    train: str
    valid: str
    test: str
    fingerprint: str  # sha256 of the training text's UTF-8 bytes


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_by_fractions(text: str, valid: float, test: float, source: Path) -> TextSplits:
    """One corpus cut at line boundaries: the first lines train, then valid, then test."""
    if not (0 < valid < 1 and 0 < test < 1 and valid + test < 1):
        raise DataError(f"valid ({valid}) and test ({test}) fractions must be in (0, 1) and sum below 1")
    lines = text.splitlines(keepends=True)
    n_train = round(len(lines) * (1 - valid - test))
    n_valid = round(len(lines) * valid)
    parts = [
        "".join(lines[:n_train]),
        "".join(lines[n_train : n_train + n_valid]),
        "".join(lines[n_train + n_valid :]),
    ]
    for label, part in zip(("train", "valid", "test"), parts, strict=True):
        if not part.strip():
            raise DataError(
                f"{source}: {len(lines)} lines leave the {label} split empty; use a larger corpus"
            )
    return TextSplits(parts[0], parts[1], parts[2], _fingerprint(parts[0]))


# File names recognised in a corpus directory: WikiText's, then plain ones.
_DIR_LAYOUTS = (
    ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
    ("train.txt", "valid.txt", "test.txt"),
)


def load_splits(
    data_dir: Path | None = None,
    files: tuple[Path, Path, Path] | None = None,
    corpus: Path | None = None,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
) -> TextSplits:
    """Exactly one of: a directory with train/valid/test files, three files, or one file to split."""
    if corpus is not None:
        return split_by_fractions(read_text(corpus), valid_fraction, test_fraction, corpus)
    if files is None:
        if data_dir is None:
            raise DataError("give a corpus: --data DIR, --train/--valid/--test FILES or --corpus FILE")
        if not data_dir.is_dir():
            raise DataError(f"{data_dir}: no such directory")
        found = [layout for layout in _DIR_LAYOUTS if all((data_dir / f).is_file() for f in layout)]
        if not found:
            names = " or ".join("/".join(layout) for layout in _DIR_LAYOUTS)
            raise DataError(f"{data_dir}: expected the files {names}")
        train, valid, test = (data_dir / f for f in found[0])
    else:
        train, valid, test = files
    texts = [read_text(p) for p in (train, valid, test)]
    return TextSplits(texts[0], texts[1], texts[2], _fingerprint(texts[0]))
