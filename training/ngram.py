"""A same-vocabulary baseline: an interpolated Kneser-Ney n-gram model (Chen & Goodman 1998, section 3).

`python -m training.ngram [--data DIR] [--order 5] [--max-vocab 10000]` reads the corpus, tokenizes it and
builds the vocabulary exactly as `python -m training lm` does (so `<unk>` is an ordinary word and every
line ends with one `<eos>`), fits the model on the training split and prints validation and test
perplexity over the same targets the RNNs are scored on: every token but the first of each split.

The model, for an order-k context h (the k-1 words before w) and one absolute discount D_k per order:

    P_k(w | h) = max(c_k(h w) - D_k, 0) / c_k(h .) + D_k * N1+(h .) / c_k(h .) * P_{k-1}(w | h')
    P_0(w)     = 1 / V        (h' is h without its first word; P_k = P_{k-1} when c_k(h .) = 0)

where c_n is the raw count at the highest order n and, below it, the continuation count
c_k(g) = N1+(. g), the number of distinct words seen before g; D_k = n1 / (n1 + 2 n2) from the number
of k-grams whose count (as used at order k) is exactly 1 and 2. NLTK's `lm.KneserNeyInterpolated` is
the same model but takes hours at this size; KenLM's `lmplz` (modified KN, three discounts) does not
build here.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

Gram = tuple[int, ...]


class KneserNey:
    """Interpolated Kneser-Ney over word ids 0..vocab_size-1, fitted on one token stream."""

    def __init__(self, ids: Sequence[int], order: int, vocab_size: int) -> None:
        if order < 1 or vocab_size < 1:
            raise ValueError("order and vocab_size must be >= 1")
        self.order, self.vocab_size = order, vocab_size
        # counts[k]: the count used at order k (raw at the top, continuation below), k = 1..order
        self.counts: dict[int, Counter[Gram]] = {}
        top: Counter[Gram] = Counter(zip(*(ids[i:] for i in range(order)), strict=False))
        self.counts[order] = top
        for k in range(order - 1, 0, -1):  # N1+(. g): one per distinct (k+1)-gram ending in g
            self.counts[k] = Counter(gram[1:] for gram in self.counts[k + 1])
        # contexts[k][h] = (c_k(h .), N1+(h .)); discounts[k] = D_k
        self.contexts: dict[int, dict[Gram, tuple[int, int]]] = {}
        self.discounts: dict[int, float] = {}
        for k, counts in self.counts.items():
            totals: Counter[Gram] = Counter()
            types: Counter[Gram] = Counter()
            for gram, count in counts.items():
                totals[gram[:-1]] += count
                types[gram[:-1]] += 1
            self.contexts[k] = {h: (totals[h], types[h]) for h in totals}
            of_count = Counter(counts.values())
            n1, n2 = of_count[1], of_count[2]
            self.discounts[k] = n1 / (n1 + 2 * n2) if n1 else 0.5  # no singletons: any D in (0, 1) works

    def prob(self, context: Sequence[int], word: int) -> float:
        """P(word | the last order-1 words of context)."""
        context = tuple(context[max(0, len(context) - (self.order - 1)) :]) if self.order > 1 else ()
        p = 1.0 / self.vocab_size
        for k in range(1, self.order + 1):
            if len(context) < k - 1:
                break  # too little history for this order: the lower order's estimate stands
            h = context[len(context) - (k - 1) :] if k > 1 else ()
            seen = self.contexts[k].get(h)
            if seen is None:
                continue  # an unseen context passes the lower order's estimate through unchanged
            total, types = seen
            d = self.discounts[k]
            p = max(self.counts[k].get((*h, word), 0) - d, 0.0) / total + d * types / total * p
        return p

    def cross_entropy(self, ids: Sequence[int]) -> tuple[float, int]:
        """(summed -log P over ids[1:], each given the words before it in the stream; how many)."""
        total = 0.0
        for i in range(1, len(ids)):
            total -= math.log(self.prob(ids[max(0, i - self.order + 1) : i], ids[i]))
        return total, len(ids) - 1


def main(argv: Sequence[str] | None = None) -> int:
    from training.data.errors import DataError
    from training.data.text import TOKENIZERS, Vocab, compile_pattern, load_splits, tokenize
    from training.tasks.lm import DEFAULT_DATA

    parser = argparse.ArgumentParser(prog="python -m training.ngram", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="corpus directory (../shared/data/wikitext-2)"
    )
    parser.add_argument("--order", type=int, default=5, help="n-gram order (%(default)s)")
    parser.add_argument("--max-vocab", type=int, default=10000, help="vocabulary cap, as the lm task's")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        splits = load_splits(args.data or DEFAULT_DATA.resolve())
        pattern = compile_pattern(TOKENIZERS["wikitext"])
        train = tokenize(splits.train, pattern)
        vocab = Vocab.build(Counter(train), args.max_vocab or None)
        model = KneserNey(vocab.encode(train).tolist(), args.order, len(vocab))
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fitted = time.monotonic()
    print(
        f"{args.order}-gram interpolated Kneser-Ney, vocabulary {len(vocab):,}, {len(train):,} training "
        f"tokens; discounts {', '.join(f'{model.discounts[k]:.3f}' for k in sorted(model.discounts))}; "
        f"fitted in {fitted - started:.0f}s",
        flush=True,
    )
    for name, text in (("valid", splits.valid), ("test", splits.test)):
        nll, count = model.cross_entropy(vocab.encode(tokenize(text, pattern)).tolist())
        print(f"{name}: perplexity {math.exp(nll / count):.2f} over {count:,} tokens", flush=True)
    print(f"total {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
