"""scikit-learn's 8×8 handwritten digits (1,797 images, shipped inside the package: no download)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from neon.data.batches import TensorItems, global_batch_loader
from neon.metrics.extractors import FeatureExtractor
from neon.metrics.reference import Reference, reference_from_features


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as images [N, 1, 8, 8] in [-1, 1] (pixel values 0..16) and labels [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    return images, torch.from_numpy(digits.target.astype(np.int64))


class DigitsDataModule(L.LightningDataModule):
    """The real digits for pretraining (and for the real-data control fine-tune)."""

    def __init__(self, batch_size: int = 256, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.images, self.labels = load_digits_tensors()
        self.num_classes = 10

    def train_dataloader(self) -> DataLoader:
        data = TensorItems({"x": self.images, "label": self.labels})
        return global_batch_loader(data, self.batch_size, self.seed, self.num_workers)

    def reference(self, extractor: FeatureExtractor) -> Reference:
        """Statistics and features of all real digits."""
        return reference_from_features(extractor(self.images).double().numpy(), "sklearn digits")
