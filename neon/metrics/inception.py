"""Inception-v3 pool features (2048-d) for FID, through torch-fidelity's TF-compatible network,
with its weights read from a local file: nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from neon.errors import NeonError
from neon.metrics.extractors import FeatureExtractor

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


class InceptionFeatures(FeatureExtractor):
    """FID's standard features of images in [-1, 1] (converted to uint8 as the official generators save them)."""

    name = "inception-v3-compat"

    def __init__(self, weights: str | None = None, batch_size: int = 64):
        self.weights = weights or os.environ.get("NEON_INCEPTION_WEIGHTS")
        self.batch_size = batch_size
        self._net = None

    def network(self):
        """torch-fidelity's FID Inception, built from the local weights file on first use."""
        if self._net is None:
            if not self.weights or not Path(self.weights).is_file():
                raise NeonError(
                    f"Inception weights not found (metrics.extractor.weights={self.weights!r}): FID needs torch-fidelity's "
                    f"'{WEIGHTS_FILE}' (the TF-FID Inception ported to PyTorch, from the torch-fidelity releases); "
                    "download it once and pass its path, or set NEON_INCEPTION_WEIGHTS"
                )
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            self._net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                    feature_extractor_weights_path=str(self.weights)).eval()
        return self._net

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        net = self.network()
        images = (x * 127.5 + 128).clip(0, 255).to(torch.uint8)
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        return torch.cat([net(images[i:i + self.batch_size])[0].double().cpu()
                          for i in range(0, len(images), self.batch_size)])
