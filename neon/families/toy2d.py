"""The paper's appendix toy: an ε-prediction MLP on a 2D Gaussian, sampled by DDIM with a score scale ζ."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from neon.core.contract import Batch, HasOutputTwin, HasReleaseCheckpoints, NeonModule, Sampler, setting_below
from neon.core.io import StateDict, rename_keys
from neon.core.seeding import PerSampleRNG, StepNoise
from neon.weights.readers import read_weights


def cosine_alpha_bar(steps: int, s: float = 0.008) -> torch.Tensor:
    """ᾱ_t of the cosine schedule over `steps` steps, normalised so ᾱ_0 = 1 (the toy's convention)."""
    t = torch.arange(steps, dtype=torch.float32)
    f = torch.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


class EpsMLP(nn.Module):
    """ε(x, t): the time (scaled to [0, 1]) is concatenated to x, then ReLU blocks."""

    def __init__(self, features: int = 2, hidden: int = 32, blocks: int = 4):
        super().__init__()
        self.inp = nn.Linear(features + 1, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(blocks))
        self.out = nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], dim=1))
        for block in self.blocks:
            h = F.relu(block(h))
        return self.out(h)


EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def ddim(eps_fn: EpsFn, x: torch.Tensor, steps: int = 20, score_scale: float = 1.0) -> torch.Tensor:
    """Deterministic DDIM over a `steps`-step cosine schedule, with the score scaled by ζ = score_scale.

    ζ > 1 is mode-seeking, ζ < 1 diversity-seeking. As in the paper's toy, ζ enters the x̂_0
    estimate only; the direction term keeps the raw ε prediction.
    """
    alpha_bar = cosine_alpha_bar(steps).to(x.device)
    for i in range(steps - 1, -1, -1):
        t = torch.full((len(x),), i / max(1, steps - 1), device=x.device)
        eps = eps_fn(x, t)
        a = alpha_bar[i]
        score = -eps / (torch.sqrt(1 - a) + 1e-9) * score_scale
        x0 = (x + (1 - a) * score) / (torch.sqrt(a) + 1e-9)
        if i == 0:
            return x0
        a_prev = alpha_bar[i - 1]
        x = torch.sqrt(a_prev) * x0 + torch.sqrt(torch.clamp(1 - a_prev, min=0.0)) * eps
    return x


class ToyDiffusion(NeonModule, HasOutputTwin, HasReleaseCheckpoints):
    """The toy family: ε-prediction MSE loss on a 1000-step cosine schedule, no EMA, unconditional."""

    family = "diffusion toy"
    samplers = {"ddim_toy": ddim}
    twin_outputs = ("forward",)  # ε(x, t)

    def __init__(
        self,
        features: int = 2,
        hidden: int = 32,
        blocks: int = 4,
        train_steps: int = 1000,
        optimizer=None,
    ):
        super().__init__(EpsMLP(features, hidden, blocks), optimizer=optimizer)
        self.features = features
        self.train_steps = train_steps
        self.register_buffer("alpha_bar", cosine_alpha_bar(train_steps), persistent=False)

    @property
    def image_shape(self) -> tuple[int]:
        """A sample is one point of `features` coordinates."""
        return (self.features,)

    @classmethod
    def diversity_seeking(cls, settings: Mapping[str, Any]) -> list[str]:
        """DDIM with a score scaled by ζ < 1 spreads samples out."""
        return setting_below(settings, "score_scale", 1, "score scale ζ < 1")

    def read_checkpoint(self, path: str | Path) -> StateDict:
        """Our weights, or the paper notebook's `DiffusionModel.state_dict()` (inb, mbs.N.l, out) as saved."""
        return rename_keys(read_weights(path), ((r"^inb\.", "inp."), (r"^mbs\.(\d+)\.l\.", r"blocks.\1.")))

    def loss(self, batch: Batch, noise: StepNoise) -> torch.Tensor:
        x = batch["x"]
        idx = noise.randint(self.train_steps)
        a = self.alpha_bar[idx].unsqueeze(1)
        eps = noise.randn(*x.shape[1:], dtype=x.dtype)
        noised = a.sqrt() * x + (1 - a).sqrt() * eps
        pred = self.net(noised, idx.float() / max(1, self.train_steps - 1))
        return F.mse_loss(pred, eps)

    def generate(
        self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        noise = PerSampleRNG(seeds, self.device).randn(self.features)
        return sampler(self.sampling_net, noise), None
