"""Pieces the transformer families share, with the key names their releases use."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from neon.core.seeding import PerSampleRNG


def dropout(x: torch.Tensor, p: float, rng: PerSampleRNG | None) -> torch.Tensor:
    """Inverted dropout whose masks come from one generator per sample (no generator: no dropout)."""
    if rng is None or p <= 0:
        return x
    keep = rng.rand(*x.shape[1:]).to(x.device) >= p
    return x * keep.to(x.dtype) / (1 - p)


class GeluMLP(nn.Module):
    """fc1 → GELU (tanh approximation) → fc2: the MLP of the DiT (IMM) and VAR blocks."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TimeEmbedder(nn.Module):
    """Sinusoidal features of a time input ([cos | sin], `frequency_size` wide, frequencies 1 … 1/10⁴ computed
    in `freq_dtype`), then Linear–SiLU–Linear (`mlp.0`, `mlp.2`). With `integer_steps` = K the input is first
    mapped to the truncated step ⌊t·K⌋ (xAR); IMM feeds its scaled times as they are, in float64."""

    def __init__(self, dim: int, frequency_size: int = 256, freq_dtype: torch.dtype = torch.float64,
                 integer_steps: int | None = None):
        super().__init__()
        self.frequency_size, self.freq_dtype, self.integer_steps = frequency_size, freq_dtype, integer_steps
        self.mlp = nn.Sequential(nn.Linear(frequency_size, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.integer_steps:
            t = (t.float() * self.integer_steps).long().float()
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=self.freq_dtype, device=t.device) / half)
        angles = t[:, None].to(self.freq_dtype) * freqs[None]
        return self.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(t.dtype))
