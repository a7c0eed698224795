"""The example family of docs/adding-a-family.md: a small flow-matching network for 8×8 images, with the
family contract's required members and one sampler, nothing else. Its two configs are
conf/model/example_flow.yaml and conf/sampler/euler_flow.yaml; tests/test_family_contract.py runs it like
every other family."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from neon.core.contract import EMA, Batch, NeonModule, Sampler, setting_above
from neon.core.seeding import PerSampleRNG, StepNoise


class VelocityMLP(nn.Module):
    """v(x_t, t, label): the velocity that carries noise (t = 1) to an image (t = 0)."""

    def __init__(self, channels: int = 1, resolution: int = 8, num_classes: int = 0, hidden: int = 256):
        super().__init__()
        self.shape = (channels, resolution, resolution)
        pixels = channels * resolution * resolution
        self.pixels = nn.Linear(pixels, hidden)
        self.time = nn.Linear(1, hidden)
        self.label = nn.Embedding(num_classes, hidden) if num_classes else None
        self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, pixels))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.pixels(x.flatten(1)) + self.time(t.view(-1, 1).to(x.dtype))
        if self.label is not None and labels is not None:
            h = h + self.label(labels)
        return self.body(h).view(-1, *self.shape)


def euler_flow(net: nn.Module, noise: torch.Tensor, labels: torch.Tensor | None = None, num_steps: int = 16,
               noise_scale: float = 1.0) -> torch.Tensor:
    """From noise (t = 1) to data (t = 0) in `num_steps` Euler steps; `noise_scale` < 1 starts nearer the
    mean, a mode-seeking sampler (> 1: diversity-seeking)."""
    x = noise * noise_scale
    times = torch.linspace(1.0, 0.0, num_steps + 1, device=x.device)
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        x = x + (t_next - t) * net(x, t.expand(len(x)), labels)
    return x


class ExampleFlow(NeonModule):
    """Rectified flow: x_t = (1 − t)·x + t·ε, trained to predict v = ε − x; an EMA copy samples."""

    family = "example flow"
    samplers = {"euler_flow": euler_flow}

    def __init__(self, network: Mapping[str, Any], optimizer=None, ema_decay: float | None = 0.999):
        net = VelocityMLP(**network)
        super().__init__(net, optimizer=optimizer, ema=EMA(decay=ema_decay) if ema_decay else None,
                         num_classes=int(network.get("num_classes", 0)))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of a sample."""
        return self.net.shape

    @classmethod
    def diversity_seeking(cls, settings: Mapping[str, Any]) -> list[str]:
        """Starting from wider noise than the model learned spreads samples out."""
        return setting_above(settings, "noise_scale", 1, "noise scale > 1")

    def loss(self, batch: Batch, noise: StepNoise) -> torch.Tensor:
        x, labels = batch["x"], batch.get("label")
        t = noise.rand(dtype=x.dtype)  # one time per sample, from the step's global noise
        eps = noise.randn(*x.shape[1:], dtype=x.dtype)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x + t.view(-1, 1, 1, 1) * eps
        return F.mse_loss(self.net(x_t, t, labels), eps - x)

    def generate(self, seeds: Sequence[int], sampler: Sampler,
                 labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        rng = PerSampleRNG(seeds, self.device)
        noise = rng.randn(*self.image_shape)  # each sample's noise from its own seed, then its label
        if self.num_classes and labels is None:
            labels = rng.randint(self.num_classes).view(-1)
        with torch.no_grad():
            return sampler(self.sampling_net, noise, labels), labels
