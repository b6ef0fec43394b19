"""Training data: text corpora, sensor CSVs, the synthetic sensor generator, and stream layout."""
