"""Inception-v3 pool features (2048-d) for FID, and on request ADM's spatial features for sFID, through
torch-fidelity's TF-compatible network, with its weights read from a local file: nothing is downloaded."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from neon.core.errors import NeonError
from neon.metrics.extractors import FeatureExtractor

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
SPATIAL_LAYER = "Mixed_6d.branch1x1"  # the TF graph's mixed_6/conv (torch-fidelity's weight converter's map)
CPU_BATCH = 8  # with channels-last memory: see InceptionFeatures.__init__
TORCH_FIDELITY_BATCH = 64  # torch-fidelity's default batch (kept on GPUs)
SPATIAL_CHANNELS = 7  # ADM keeps the first 7 of its 192 channels: 17 × 17 × 7 = 2023 values at 299 × 299


def adm_spatial_features(activation: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] activations → ADM's sFID rows: the first 7 channels, flattened in TF's NHWC order."""
    kept = activation[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)
    return kept.reshape(len(activation), -1).double().cpu()


class InceptionFeatures(FeatureExtractor):
    """FID's standard features of images in [-1, 1] (converted to uint8 as the official generators save them)."""

    name = "inception-v3-compat"
    feature_dim = 2048
    takes_uint8 = True  # the network reads uint8 pixels: a sample file's own need no round trip through floats

    def __init__(self, weights: str | None = None, batch_size: int | None = None, device: str | None = None,
                 spatial: bool = False):
        self.weights = weights or os.environ.get("NEON_INCEPTION_WEIGHTS")
        self.spatial = spatial  # sFID's features too (off unless asked: 50K × 2023 floats is 400 MB)
        # on a GPU whenever there is one, as torch-fidelity runs it, wherever the samples were made
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # on a CPU the 299 × 299 activations of a batch of 64 (350 MB a layer) stream through memory; batches of
        # 8 in channels-last run about twice as fast (bench/eval_speed.py), features equal to ~2e-6
        self.on_cpu = self.device.type == "cpu"
        self.batch_size = batch_size or (CPU_BATCH if self.on_cpu else TORCH_FIDELITY_BATCH)
        self._net = None
        self._warned_gray = False

    def check_ready(self) -> None:
        """A missing weights file, named, before any image is read."""
        if not self.weights or not Path(self.weights).is_file():
            raise NeonError(
                f"Inception weights not found (metrics.inception_weights={self.weights!r}): FID needs torch-fidelity's "
                f"'{WEIGHTS_FILE}' (the TF-FID Inception ported to PyTorch, from the torch-fidelity releases); "
                "download it once and pass its path, or set NEON_INCEPTION_WEIGHTS"
            )

    def network(self):
        """torch-fidelity's FID Inception, built from the local weights file on first use."""
        if self._net is None:
            self.check_ready()
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            self._net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                    feature_extractor_weights_path=str(self.weights)).eval().to(self.device)
            if self.on_cpu:  # the convolutions' outputs follow their weights' layout
                self._net = self._net.to(memory_format=torch.channels_last)
        return self._net

    def want_outputs(self, names: set[str]) -> None:
        """'spatial' switches on sFID's features."""
        self.spatial = self.spatial or "spatial" in names

    def extra_outputs(self) -> tuple[str, ...]:
        """('spatial',) when sFID's features are switched on."""
        return ("spatial",) if self.spatial else ()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract(x)["pool"]

    @torch.inference_mode()
    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """2048-d pool features and the 1008 unbiased logits (for IS) of images in [-1, 1] or uint8 images, plus
        the 2023-d spatial features (sFID) when switched on, all from one forward pass."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise NeonError(f"Inception features need images [N, 1 or 3, H, W]; found shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            images = x
        else:
            if x.is_floating_point() and (x.min() < -1.01 or x.max() > 1.01):
                raise NeonError(f"images must be in [-1, 1]; found range [{x.min().item():.3g}, {x.max().item():.3g}]")
            images = (x * 127.5 + 128).clip(0, 255).to(torch.uint8)
        net = self.network()
        if images.shape[1] == 1:
            if not self._warned_gray:
                warnings.warn("grayscale images: repeating the channel three times for Inception (as torch-fidelity)",
                              stacklevel=2)
                self._warned_gray = True
            images = images.repeat(1, 3, 1, 1)
        pools, logits, spatial = [], [], []
        # the spatial layer's output is taken by a hook during the same pass that gives the pool features
        hook = net.get_submodule(SPATIAL_LAYER).register_forward_hook(
            lambda module, inputs, output: spatial.append(adm_spatial_features(output))) if self.spatial else None
        try:
            for i in range(0, len(images), self.batch_size):
                # contiguous: a sample file's NHWC pixels arrive as an NCHW view; the network sees what
                # torch-fidelity's does
                pool, logit = net(images[i:i + self.batch_size].contiguous().to(self.device))
                pools.append(pool.double().cpu())
                logits.append(logit.double().cpu())
        finally:
            if hook is not None:
                hook.remove()
        out = {"pool": torch.cat(pools), "logits": torch.cat(logits)}
        if self.spatial:
            out["spatial"] = torch.cat(spatial)
        return out
