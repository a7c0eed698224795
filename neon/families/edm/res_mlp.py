"""A small residual MLP denoiser for tiny images (8×8 digits) on a CPU. Not a released EDM backbone: it takes
the U-Nets' inputs, so any preconditioning wraps it."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from neon.families.edm.blocks import Dense, InitRule, SinusoidalEmbedding, drop_class_labels


def _mlp_block(width: int, dropout: float) -> nn.Sequential:
    # pre-norm, 2× expansion; the output is added to the residual stream
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width * 2), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(width * 2, width))


class ResMLP(nn.Module):
    """Flattened pixels → `hidden` width, `num_blocks` residual MLP blocks, → pixels; the noise level and
    the label enter once, added to the input projection."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 hidden: int = 256, num_blocks: int = 3, noise_channels: int = 64, label_dropout: float = 0.0,
                 dropout: float = 0.0):
        super().__init__()
        self.label_dropout = label_dropout
        pixels = img_resolution * img_resolution
        self.out_shape = (out_channels, img_resolution, img_resolution)
        # creation order fixes the initial draws, hence every θ_r pretrained from a seed: keep it
        self.map_noise = SinusoidalEmbedding(noise_channels, endpoint=True)
        self.map_label = Dense(label_dim, hidden) if label_dim else None
        self.map_layer0 = Dense(noise_channels, hidden)
        self.inp = Dense(in_channels * pixels, hidden)
        self.blocks = nn.ModuleList(_mlp_block(hidden, dropout) for _ in range(num_blocks))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = Dense(hidden, out_channels * pixels, init=InitRule(weight_gain=0.0))

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_layer0(self.map_noise(noise_labels))
        if self.map_label is not None:
            emb = emb + self.map_label(drop_class_labels(class_labels, self.label_dropout, self.training))
        h = self.inp(x.flatten(1)) + F.silu(emb)
        for block in self.blocks:
            h = h + block(h)
        return self.out(F.silu(self.out_norm(h))).reshape(len(x), *self.out_shape)
