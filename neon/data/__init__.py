"""Data: real datasets (for pretraining and reference statistics) and the synthetic set S."""
