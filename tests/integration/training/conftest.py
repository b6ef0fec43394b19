"""Real inputs for the training integration tests: a tiny text corpus on disk, one thread for torch."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tiny models run fastest on one thread, and the machine is shared."""
    torch.set_num_threads(1)


def _tiny_text(lines: int, seed: int) -> str:
    """Sentences with structure to learn: article, maybe an adjective, noun, verb, full stop."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words: list[str] = []
        for _ in range(rng.randint(1, 3)):
            words.append("the" if rng.random() < 0.6 else "a")
            if rng.random() < 0.3:
                words.append(rng.choice(["big", "red"]))
            words += [rng.choice(["cat", "dog", "mat", "log"]), rng.choice(["sat", "ran", "saw"])]
        out.append(" ".join([*words, "."]))
    return "\n".join(out) + "\n"


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.txt / valid.txt / test.txt of a tiny structured corpus (300 / 40 / 40 lines)."""
    root = tmp_path_factory.mktemp("corpus")
    for seed, (name, lines) in enumerate((("train.txt", 300), ("valid.txt", 40), ("test.txt", 40))):
        (root / name).write_text(_tiny_text(lines, seed), encoding="utf-8")
    return root
