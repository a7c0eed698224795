"""Feature extractors behind one interface: samples in → named feature arrays out."""

from __future__ import annotations

import torch


class FeatureExtractor:
    """Maps samples [N, ...] to features. `__call__` gives the features FID and precision/recall use
    ('pool'); `extract` gives every named output in one pass (Inception adds 'logits' for IS)."""

    name = "base"
    feature_dim: int | None = None  # the size of 'pool' when fixed by the network (None: the data's size)
    takes_uint8 = False  # True: `extract` also reads uint8 images [N, C, H, W] (sample files skip a float copy)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All outputs of one pass, by name."""
        return {"pool": self(x)}


class IdentityFeatures(FeatureExtractor):
    """The samples themselves, flattened (2D toys: the Fréchet distance of the points)."""

    name = "identity"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)
