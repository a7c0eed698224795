"""Digits-FID features: the 64-d penultimate layer of a small CNN trained on the real digits.
Trained once (seeded, deterministic) and cached, so every run scores with the same network."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from neon.core.cache import ArtifactCache
from neon.core.io import save_state_dict, write_json
from neon.data.digits import load_digits_tensors
from neon.metrics.extractors import FeatureExtractor


class DigitsClassifier(nn.Module):
    """conv(32) → conv(64) → pool → fc(64) [features] → fc(10)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-d pre-activation of the penultimate layer."""
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc1(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.features(x)))


def train_classifier(epochs: int = 40, seed: int = 0, holdout: float = 0.2) -> tuple[DigitsClassifier, float]:
    """Train on a seeded 80% split; return the network and its held-out accuracy."""
    images, labels = load_digits_tensors()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=gen)
    n_test = int(len(images) * holdout)
    test, train = order[:n_test], order[n_test:]
    torch.manual_seed(seed)
    net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(train), generator=gen).split(64):
            batch = train[idx]
            # small random shifts make the features care about shape, not exact pixel positions
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(images[batch], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(net(x), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(images[test]).argmax(1) == labels[test]).float().mean().item()
    return net, accuracy


class DigitsFeatures(FeatureExtractor):
    """Feature extractor for digits-FID, with its classifier cached under `cache_dir`."""

    name = "digits_classifier"
    feature_dim = 64

    def __init__(self, cache_dir: str, epochs: int = 40, seed: int = 0):
        self.cache_dir, self.epochs, self.seed = cache_dir, epochs, seed
        self._net: DigitsClassifier | None = None
        self.accuracy: float | None = None

    def network(self) -> DigitsClassifier:
        """The trained classifier (trained on first use, then read from the cache)."""
        if self._net is None:
            def build(work: Path) -> None:
                with torch.enable_grad():  # first use may come from inside a no-grad evaluation
                    net, acc = train_classifier(self.epochs, self.seed)
                save_state_dict(net.state_dict(), work / "classifier.safetensors")
                write_json(work / "accuracy.json", {"heldout_accuracy": acc})

            key = {"extractor": "digits_classifier", "epochs": self.epochs, "seed": self.seed, "version": 1}
            folder, _ = ArtifactCache(self.cache_dir).get_or_build("extractor", key, build)
            net = DigitsClassifier()
            net.load_state_dict(load_file(folder / "classifier.safetensors"))
            self._net = net.eval()
            self.accuracy = json.loads((folder / "accuracy.json").read_text())["heldout_accuracy"]
        return self._net

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.network().features(x.float().cpu().reshape(-1, 1, 8, 8))
