"""Reference statistics: read EDM-style (`mu`, `sigma`) and ADM-style (`arr_0` images and/or `mu`,
`sigma`, `mu_s`, `sigma_s`, or pool activations) .npz files, or compute them from images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from neon.core.errors import NeonError
from neon.metrics.evaluate import features_of_images
from neon.metrics.extractors import FeatureExtractor
from neon.metrics.frechet import FRECHET_METRICS, feature_statistics, statistic_keys

ACTIVATION_KEYS = ("pool", "activations", "features")


@dataclass
class Reference:
    """What a metric compares against: Gaussian statistics, and real features where available (P/R)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None
    source: str = ""
    extra: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # 'spatial', 'dinov2': (μ, Σ)

    def statistics(self, feature: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(μ, Σ) of a named feature ('pool' or an extra one); a missing one is an error naming `metric`."""
        if feature == "pool":
            return self.mu, self.sigma
        if feature not in self.extra:
            mu_key, sigma_key = statistic_keys(feature)
            raise NeonError(f"metrics.compute asks for {metric}, but reference '{self.source}' has no '{feature}' "
                            f"statistics ({mu_key}/{sigma_key}): give a reference with them or with uint8 images "
                            "in arr_0 (an ADM batch), or make one with task=reference and this metrics.compute")
        return self.extra[feature]


def extra_statistics(outputs: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(μ, Σ) of every output that a Fréchet metric other than FID compares (spatial, dinov2)."""
    return {name: feature_statistics(values) for name, values in outputs.items()
            if name != "pool" and name in FRECHET_METRICS.values()}


def uint8_images_nchw(images: np.ndarray, what: str) -> torch.Tensor:
    """uint8 NHWC images (the ADM layout) → a uint8 NCHW view of them (no copy), checking dtype and shape."""
    if images.dtype != np.uint8:
        lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        raise NeonError(f"{what}: images must be uint8 in [0, 255] (NHWC); found {images.dtype} with range "
                        f"[{lo:.3g}, {hi:.3g}]: convert with (x * 127.5 + 128).clip(0, 255).astype(uint8)")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise NeonError(f"{what}: images must be NHWC with 1 or 3 channels; found shape {images.shape}")
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def uint8_images_to_unit(images: np.ndarray, what: str) -> torch.Tensor:
    """uint8 NHWC images (the ADM layout) → float NCHW in [-1, 1], checking dtype and shape."""
    return uint8_images_nchw(images, what).float() / 127.5 - 1


def images_for(extractor: FeatureExtractor, images: np.ndarray, what: str) -> torch.Tensor:
    """uint8 NHWC images as `extractor` reads them: the uint8 pixels themselves where it takes them (Inception,
    which would round floats back to these very values), else floats in [-1, 1]."""
    return uint8_images_nchw(images, what) if extractor.takes_uint8 else uint8_images_to_unit(images, what)


def load_reference(path: str | Path, extractor: FeatureExtractor | None = None) -> Reference:
    """Read a reference .npz: `mu`+`sigma` (EDM), pool activations, or `arr_0` uint8 images (ADM batch),
    whose features are then computed with `extractor`."""
    path = Path(path)
    if not path.is_file():
        raise NeonError(f"reference statistics '{path}' do not exist: give an .npz with mu and sigma "
                        "(EDM fid-refs), or an ADM reference batch, or make one with task=reference")
    with np.load(path) as f:
        keys = set(f.files)
        features = next((f[k].astype(np.float64) for k in ACTIVATION_KEYS if k in keys), None)
        images = f["arr_0"] if "arr_0" in keys and f["arr_0"].ndim == 4 else None
        if features is None and "arr_0" in keys and f["arr_0"].ndim == 2:
            features = f["arr_0"].astype(np.float64)
        mu, sigma = (f["mu"], f["sigma"]) if {"mu", "sigma"} <= keys else (None, None)
        extra = {name: (f[mu_key].astype(np.float64), f[sigma_key].astype(np.float64))
                 for name in set(FRECHET_METRICS.values()) - {"pool"}
                 for mu_key, sigma_key in [statistic_keys(name)] if {mu_key, sigma_key} <= keys}
    if images is not None and extractor is not None and (features is None or _wants_more(extractor, extra)):
        outputs = features_of_images(images_for(extractor, images, f"reference '{path}'"), extractor)
        features = outputs["pool"] if features is None else features
        extra = {**extra_statistics(outputs), **extra}  # statistics stored in the file win, as in ADM's evaluator
    if mu is None and features is not None:
        mu, sigma = feature_statistics(features)
    if mu is None:
        raise NeonError(f"reference '{path}' holds {sorted(keys)}: expected mu and sigma, pool activations "
                        f"({', '.join(ACTIVATION_KEYS)}), or uint8 images in arr_0")
    return Reference(np.asarray(mu, np.float64), np.asarray(sigma, np.float64), features, str(path), extra)


def _wants_more(extractor: FeatureExtractor, have: dict) -> bool:
    # the images are passed through the extractor again only for extra features the file lacks
    return any(name not in have for name in extractor.extra_outputs())


def reference_from_features(features: np.ndarray, source: str) -> Reference:
    """A Reference from real features."""
    mu, sigma = feature_statistics(features)
    return Reference(mu, sigma, features, source)


def reference_from_outputs(outputs: dict[str, np.ndarray], source: str) -> Reference:
    """A Reference from every named output of real images: pool features and statistics, plus the
    statistics of the extra Fréchet features (spatial, dinov2)."""
    ref = reference_from_features(outputs["pool"], source)
    ref.extra = extra_statistics(outputs)
    return ref


def reference_arrays(ref: Reference) -> dict[str, np.ndarray]:
    """A Reference as .npz arrays: mu, sigma, pool, and each extra feature's pair (ADM's mu_s/sigma_s, ...)."""
    arrays = {"mu": ref.mu, "sigma": ref.sigma}
    if ref.features is not None:
        arrays["pool"] = ref.features.astype(np.float32)
    for name, (mu, sigma) in ref.extra.items():
        mu_key, sigma_key = statistic_keys(name)
        arrays[mu_key], arrays[sigma_key] = mu, sigma
    return arrays
