"""Benchmarks of the served detectors on public data sets: NAB (runner and our own scorer)."""
