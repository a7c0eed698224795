"""Metrics: feature extractors, Gaussian statistics and the Fréchet distance."""
