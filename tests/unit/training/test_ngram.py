"""The Kneser-Ney baseline against counts and probabilities worked out by hand (see the module's formula)."""

from __future__ import annotations

import math
import random

import pytest

from training.ngram import KneserNey

pytestmark = pytest.mark.unit
A, B, C, D = 0, 1, 2, 3
TOY = [A, B, A, B, C, A]  # bigrams: ab x2, ba, bc, ca


def test_counts_and_discounts_of_a_toy_corpus() -> None:
    model = KneserNey(TOY, order=2, vocab_size=4)
    assert model.counts[2] == {(A, B): 2, (B, A): 1, (B, C): 1, (C, A): 1}  # raw at the top order
    assert model.counts[1] == {(A,): 2, (B,): 1, (C,): 1}  # N1+(. w): a follows b and c
    assert model.contexts[2] == {(A,): (2, 1), (B,): (2, 2), (C,): (1, 1)}
    assert model.contexts[1] == {(): (4, 3)}
    assert model.discounts[2] == pytest.approx(3 / 5)  # n1 = 3, n2 = 1
    assert model.discounts[1] == pytest.approx(2 / 4)  # n1 = 2 (b, c), n2 = 1 (a)


@pytest.mark.parametrize(
    ("context", "word", "want"),
    [
        # P1(w) = max(N1+(. w) - 1/2, 0) / 4 + (1/2) (3/4) (1/4)
        ([], A, 1.5 / 4 + 3 / 32),
        ([], D, 3 / 32),
        # P2(b | a) = (2 - 0.6) / 2 + 0.6 * 1/2 * P1(b), P1(b) = 0.5 / 4 + 3/32
        ([A], B, 1.4 / 2 + 0.3 * (0.5 / 4 + 3 / 32)),
        ([B], C, 0.4 / 2 + 0.6 * (0.5 / 4 + 3 / 32)),
        ([C], D, 0.6 * 3 / 32),  # unseen bigram: all from the lower order
        ([D], A, 1.5 / 4 + 3 / 32),  # unseen context: the lower order unchanged
        ([D, C, A], B, 1.4 / 2 + 0.3 * (0.5 / 4 + 3 / 32)),  # only the last word counts at order 2
    ],
)
def test_probabilities_of_a_toy_corpus(context: list[int], word: int, want: float) -> None:
    assert KneserNey(TOY, order=2, vocab_size=4).prob(context, word) == pytest.approx(want)


def test_every_context_gives_a_distribution_over_the_vocabulary() -> None:
    rng = random.Random(0)
    ids = [rng.choice(range(12)) if rng.random() < 0.5 else i % 7 for i in range(3000)]
    model = KneserNey(ids, order=5, vocab_size=15)  # 12..14 never occur: they still get mass
    for start in (0, 100, 2000):
        for length in (0, 1, 2, 4, 9):
            context = ids[start : start + length]
            total = sum(model.prob(context, w) for w in range(15))
            assert total == pytest.approx(1.0, abs=1e-9)
    assert model.prob(ids[10:14], 14) > 0


def test_cross_entropy_scores_every_token_but_the_first() -> None:
    model = KneserNey(TOY, order=2, vocab_size=4)
    nll, count = model.cross_entropy([A, B, C])
    assert count == 2
    assert nll == pytest.approx(-math.log(model.prob([A], B)) - math.log(model.prob([A, B], C)))
