"""Neon: negative extrapolation from self-training, for image generators."""

__version__ = "0.1.0"
