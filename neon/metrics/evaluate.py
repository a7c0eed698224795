"""Scoring a generator: sample with fixed seeds, extract features, Fréchet distance to a reference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from neon.data.synthetic import generate_block
from neon.errors import NeonError
from neon.metrics.extractors import FeatureExtractor
from neon.metrics.frechet import feature_statistics, frechet_distance
from neon.module import NeonModule, Sampler


@torch.no_grad()
def sample_features(
    module: NeonModule,
    sampler: Sampler,
    seeds: Sequence[int],
    extractor: FeatureExtractor,
    block_size: int,
    progress: bool = False,
) -> np.ndarray:
    """Features [N, D] of one sample per seed; class labels follow the balanced rule i mod C."""


    feats = []
    starts = range(0, len(seeds), block_size)
    for start in tqdm(starts, desc="evaluate", unit="block", disable=not progress):
        block = range(start, min(len(seeds), start + block_size))
        out = generate_block(module, sampler, seeds, block, class_balanced=True)
        feats.append(extractor(out["x"]).double().cpu().numpy())
    return np.concatenate(feats)


def load_reference(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reference statistics from an .npz holding `mu` and `sigma`."""
    path = Path(path)
    if not path.is_file():
        raise NeonError(f"reference statistics '{path}' do not exist: give an .npz with 'mu' and 'sigma'")
    with np.load(path) as f:
        missing = {"mu", "sigma"} - set(f.files)
        if missing:
            raise NeonError(f"reference '{path}' lacks {sorted(missing)}: it must hold 'mu' and 'sigma'")
        return f["mu"], f["sigma"]


def fid_from_features(features: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance between the features' Gaussian fit and the reference statistics."""
    mu, sigma = feature_statistics(features)
    return frechet_distance(mu, sigma, *reference)
