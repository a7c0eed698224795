"""The paper's autoregressive toy: p(x1)·p(x2 | x1) with Gaussian conditionals on a 2D Gaussian target, sampled
at a temperature τ that scales both standard deviations (τ < 1 mode-seeking, τ > 1 diversity-seeking)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neon.core.contract import Batch, HasOutputTwin, HasReleaseCheckpoints, NeonModule, Sampler, setting_above
from neon.core.io import StateDict, rename_keys
from neon.core.seeding import PerSampleRNG, StepNoise
from neon.weights.readers import read_weights


class ARGaussian2D(nn.Module):
    """x1 ~ N(μ1, σ1²) with free (μ1, log σ1); x2 | x1 ~ N(μ2(x1), σ2(x1)²) from a ReLU MLP; log σ clamped."""

    def __init__(self, hidden: int = 64, layers: int = 2, min_log_std: float = -6.0, max_log_std: float = 3.0):
        super().__init__()
        self.mu1 = nn.Parameter(torch.zeros(1))
        self.log_std1 = nn.Parameter(torch.zeros(1))  # σ1 starts at 1
        widths = [1] + [hidden] * layers
        body = [m for a, b in zip(widths, widths[1:], strict=False) for m in (nn.Linear(a, b), nn.ReLU())]
        self.head2 = nn.Sequential(*body, nn.Linear(hidden, 2))
        self.min_log_std, self.max_log_std = min_log_std, max_log_std

    def first(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ1, log σ1) repeated for n samples."""
        return self.mu1.expand(n), self.log_std1.clamp(self.min_log_std, self.max_log_std).expand(n)

    def second(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ2, log σ2) given x1."""
        mu2, log_std2 = self.head2(x1.unsqueeze(1)).unbind(-1)
        return mu2, log_std2.clamp(self.min_log_std, self.max_log_std)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample negative log-likelihood, −log p(x1) − log p(x2 | x1)."""
        x1, x2 = x[:, 0], x[:, 1]
        return gaussian_nll(x1, *self.first(len(x))) + gaussian_nll(x2, *self.second(x1))


def gaussian_nll(x: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """−log N(x; μ, σ²), with the toy's 1e-9 guard on σ."""
    return 0.5 * (((x - mu) / (log_std.exp() + 1e-9)) ** 2 + 2.0 * log_std + math.log(2 * math.pi))


@torch.no_grad()
def temperature_sampler(net: ARGaussian2D, noise: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """x1 then x2 | x1, each standard deviation multiplied by τ = temperature; `noise` holds (ε1, ε2) per sample."""
    mu1, log_std1 = net.first(len(noise))
    x1 = mu1 + log_std1.exp() * temperature * noise[:, 0]
    mu2, log_std2 = net.second(x1)
    return torch.stack([x1, mu2 + log_std2.exp() * temperature * noise[:, 1]], dim=1)


class ARToy(NeonModule, HasOutputTwin, HasReleaseCheckpoints):
    """The AR toy family: maximum likelihood, no EMA, unconditional."""

    family = "autoregressive toy"
    samplers = {"ar_temperature": temperature_sampler}
    twin_outputs = ("first", "second")  # the Gaussian parameters (μ, log σ) of each coordinate

    def __init__(self, hidden: int = 64, layers: int = 2, min_log_std: float = -6.0, max_log_std: float = 3.0,
                 optimizer=None):
        super().__init__(ARGaussian2D(hidden, layers, min_log_std, max_log_std), optimizer=optimizer)

    @property
    def image_shape(self) -> tuple[int]:
        """A sample is one 2D point."""
        return (2,)

    @classmethod
    def diversity_seeking(cls, settings: Mapping[str, Any]) -> list[str]:
        """Sampling at a temperature τ > 1 widens both conditionals."""
        return setting_above(settings, "temperature", 1, "temperature > 1")

    def read_checkpoint(self, path: str | Path) -> StateDict:
        """Our weights, or the paper notebook's `ARGaussian2D.state_dict()` (its head2 wraps the MLP in `net`)."""
        return rename_keys(read_weights(path), ((r"^head2\.net\.", "head2."),))

    def loss(self, batch: Batch, noise: StepNoise) -> torch.Tensor:
        return self.net.nll(batch["x"]).mean()

    def generate(self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return sampler(self.sampling_net, PerSampleRNG(seeds, self.device).randn(2)), None
