"""Feature extractors behind one interface: a callable from a batch of samples to feature vectors."""

from __future__ import annotations

import torch


class FeatureExtractor:
    """Maps samples [N, ...] to features [N, D]; `name` identifies it in caches and summaries."""

    name = "base"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class IdentityFeatures(FeatureExtractor):
    """The samples themselves, flattened (2D toys: the Fréchet distance of the points)."""

    name = "identity"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)
