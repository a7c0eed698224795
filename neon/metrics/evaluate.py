"""Scoring a generator: sample with fixed seeds, extract features block by block (images are never all
in memory), gather them across processes in seed order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from neon.core.collectives import gather_strided, rank_world
from neon.core.contract import NeonModule, Sampler, release_sampling
from neon.core.errors import NeonError
from neon.core.release_sampling import ReleaseSampling, check_label_count, resolve_labels
from neon.data.sample_blocks import generate_block
from neon.metrics.extractors import FeatureExtractor


@torch.no_grad()
def sample_features(
    module: NeonModule,
    sampler: Sampler,
    seeds: Sequence[int],
    extractor: FeatureExtractor,
    block_size: int,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Features of one sample per seed (labels by the balanced rule i mod C). Under a process group each
    rank draws its strided share of the seeds; the features are gathered once, in seed order, so the
    result equals one process's."""
    rank, world = rank_world()
    mine = list(range(rank, len(seeds), world))
    starts = tqdm(range(0, len(mine), block_size), desc="evaluate", unit="block", disable=not progress or rank != 0)
    local = concat_features(
        extractor.extract(generate_block(module, sampler, seeds, mine[s:s + block_size], class_balanced=True)["x"])
        for s in starts
    )
    return gather_strided(local)


@torch.no_grad()
def release_features(module: NeonModule, sampler: Sampler, seeds: Sequence[int], release: ReleaseSampling,
                     extractor: FeatureExtractor, progress: bool = False) -> dict[str, np.ndarray]:
    """Features of len(seeds) samples drawn as the family's official script draws them (`sample.rng=release`:
    one generator for the run, `release.batch_size` at a time), in one process."""
    if rank_world()[1] > 1:
        raise NeonError("sample.rng=release draws every batch from one generator, as the release does: evaluate "
                        "in one process (trainer=cpu or trainer.devices=1)")
    labels = resolve_labels(release.labels, len(seeds), module.num_classes)
    check_label_count(labels, len(seeds))
    draws = release_sampling(module).generate_release(release.release_seed, list(seeds), release.batch_size, sampler, labels)
    total = -(-len(seeds) // release.batch_size)
    return concat_features(extractor.extract(draw.samples)
                           for draw in tqdm(draws, desc="evaluate (release)", unit="batch", total=total,
                                            disable=not progress))


def features_of_images(images: torch.Tensor, extractor: FeatureExtractor, batch: int = 500) -> dict[str, np.ndarray]:
    """Every named feature of float images in [-1, 1], in batches."""
    return concat_features(extractor.extract(images[i:i + batch]) for i in range(0, len(images), batch))


def concat_features(batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Per-batch named features joined into float32 arrays (50K × 2048 is 400 MB, not 800)."""
    parts: dict[str, list[np.ndarray]] = {}
    for feats in batches:
        for key, value in feats.items():
            parts.setdefault(key, []).append(value.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}
