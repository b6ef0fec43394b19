"""The benchmark suite: `python -m benchmarks [--quick]` (see benchmarks/README.md).

Every figure it reports is measured side by side in one run, on one machine, with one model, so that
ratios (server vs in-process limit, batcher on vs off, server vs a naive baseline) mean something even
on a noisy, shared machine.
"""
