"""The toy's real data: points from a 2D Gaussian, with its exact statistics as the reference."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from neon.data.batches import TensorItems, global_batch_loader
from neon.metrics.extractors import FeatureExtractor, IdentityFeatures
from neon.metrics.reference import Reference, reference_from_features


class Gaussian2DDataModule(L.LightningDataModule):
    """`n_train` points from N(mean, cov), drawn once from `seed` (which also orders the batches)."""

    def __init__(
        self,
        mean: Sequence[float] = (0.0, 0.0),
        cov: Sequence[Sequence[float]] = ((2.0, 1.0), (1.0, 2.0)),
        n_train: int = 1000,
        batch_size: int = 2048,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.mean = np.asarray(mean, dtype=np.float64)
        self.cov = np.asarray(cov, dtype=np.float64)
        self.batch_size = batch_size
        self.num_workers, self.seed = num_workers, seed
        rng = np.random.default_rng(seed)
        self.points = torch.from_numpy(rng.multivariate_normal(self.mean, self.cov, n_train).astype(np.float32))
        self.num_classes = 0

    def train_dataloader(self) -> DataLoader:
        # batch_size ≥ n_train: full-batch training, the whole set every step
        return global_batch_loader(TensorItems({"x": self.points}), self.batch_size, self.seed, self.num_workers)

    def reference(self, extractor: FeatureExtractor) -> Reference:
        """The exact Gaussian in the identity feature space; the training points' features otherwise."""
        if isinstance(extractor, IdentityFeatures):
            return Reference(self.mean.copy(), self.cov.copy(), None, "exact Gaussian")
        return reference_from_features(extractor(self.points).double().numpy(), "gaussian2d training points")
