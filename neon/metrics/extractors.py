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

    def want_outputs(self, names: set[str]) -> None:
        """Switch on optional outputs by name (Inception's 'spatial'); extractors without any ignore it."""

    def extra_outputs(self) -> tuple[str, ...]:
        """The named outputs besides 'pool' (and IS's 'logits') that `extract` gives now."""
        return ()

    def check_ready(self) -> None:
        """Raise a NeonError now where the first `extract` would (a missing weights file), without building anything."""


class StackedFeatures(FeatureExtractor):
    """A primary extractor plus named extra networks on the same images: `extract` gives the primary's
    outputs and each extra's features under its name (FID's Inception beside DINOv2 as 'dinov2')."""

    def __init__(self, primary: FeatureExtractor, extras: dict[str, FeatureExtractor]):
        self.primary, self.extras = primary, extras
        self.name, self.feature_dim = primary.name, primary.feature_dim

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.primary(x)

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The primary's outputs, then every extra's features under its name."""
        return {**self.primary.extract(x), **{name: extra(x) for name, extra in self.extras.items()}}

    def want_outputs(self, names: set[str]) -> None:
        """Passed on to the primary (the extras have one output each)."""
        self.primary.want_outputs(names)

    def extra_outputs(self) -> tuple[str, ...]:
        """The primary's extra outputs and the extras' names."""
        return (*self.primary.extra_outputs(), *self.extras)

    def check_ready(self) -> None:
        """The primary's check, then every extra's."""
        for extractor in (self.primary, *self.extras.values()):
            extractor.check_ready()


class IdentityFeatures(FeatureExtractor):
    """The samples themselves, flattened (2D toys: the Fréchet distance of the points)."""

    name = "identity"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)
