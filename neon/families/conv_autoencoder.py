"""The convolutional encoder and decoder of the LDM/taming autoencoders that VAR's VQVAE and xAR's KL-16
VAE are built on, with their state-dict names: ResNet levels, attention at the lowest resolution, a middle
block. The two releases differ in the attention's q/k/v convs (one fused conv or three), the way the
activation is computed, and the encoder's output width (a KL VAE's mean and log-variance)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def swish(x: torch.Tensor) -> torch.Tensor:
    """x·sigmoid(x) written out, as the KL VAEs compute it (F.silu can differ in the last bit)."""
    return x * torch.sigmoid(x)


@dataclass(frozen=True)
class Style:
    """Where two releases of the same architecture differ: q/k/v as three convs or one, the activation."""

    split_qkv: bool = False
    act: Callable[[torch.Tensor], torch.Tensor] = F.silu


# VAR's VQVAE; MAR's KL-16 (LDM code); Stable Diffusion's VAE as diffusers computes it
VAR_STYLE, KL_STYLE, SD_STYLE = Style(), Style(split_qkv=True, act=swish), Style(split_qkv=True)


def group_norm(channels: int) -> nn.GroupNorm:
    """The VAE's normalisation: 32 groups, eps 1e-6."""
    return nn.GroupNorm(32 if channels % 32 == 0 else 1, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GN-SiLU-conv twice, with a 1×1 shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0, style: Style = VAR_STYLE):
        super().__init__()
        self.act = style.act
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.dropout = group_norm(cout), nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map: 1×1 convs for q, k, v (one fused `qkv`
    conv in VAR's release, three in the KL VAEs) and the output."""

    def __init__(self, channels: int, style: Style = VAR_STYLE):
        super().__init__()
        self.norm = group_norm(channels)
        self.split_qkv = style.split_qkv
        if self.split_qkv:
            self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        else:
            self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        if self.split_qkv:
            q, k, v = (conv(hn).reshape(b, c, h * w) for conv in (self.q, self.k, self.v))
        else:
            q, k, v = self.qkv(hn).reshape(b, 3, c, h * w).unbind(1)
        weights = torch.bmm(q.transpose(1, 2), k).mul_(c ** -0.5).softmax(dim=2)  # [b, hw (query), hw (key)]
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding one pixel on the right and bottom."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: blocks, attention at the lowest resolution, a resampler."""

    def __init__(self, cin: int, cout: int, blocks: int, attention: bool, resample: type | None, dropout: float,
                 style: Style = VAR_STYLE):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout, dropout, style) for j in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(cout, style) for _ in range(blocks)) if attention else nn.ModuleList()
        if resample is Downsample:
            self.downsample = Downsample(cout)
        elif resample is Upsample:
            self.upsample = Upsample(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class Middle(nn.Module):
    """Resnet block, attention (optional), resnet block at the lowest resolution."""

    def __init__(self, channels: int, attention: bool, dropout: float, style: Style = VAR_STYLE):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, style)
        self.attn_1 = AttnBlock(channels, style) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout, style)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image → latent map, downsampling by 2^(len(ch_mult) − 1); `double_z` doubles the output channels (the
    mean and log-variance of a KL VAE)."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, in_channels: int, z_channels: int,
                 using_sa: bool, using_mid_sa: bool, dropout: float, style: Style = VAR_STYLE, double_z: bool = False):
        super().__init__()
        widths = [ch * m for m in (1, *ch_mult)]
        last = len(ch_mult) - 1
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList(
            Level(widths[i], widths[i + 1], num_res_blocks, using_sa and i == last, Downsample if i < last else None,
                  dropout, style) for i in range(len(ch_mult)))
        self.mid = Middle(widths[-1], using_mid_sa, dropout, style)
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * z_channels if double_z else z_channels, 3, padding=1)
        self.act = style.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(self.act(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Latent map → image in [-1, 1] (before clamping), upsampling by 2^(len(ch_mult) − 1)."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, in_channels: int, z_channels: int,
                 using_sa: bool, using_mid_sa: bool, dropout: float, style: Style = VAR_STYLE):
        super().__init__()
        last = len(ch_mult) - 1
        top = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, top, 3, padding=1)
        self.mid = Middle(top, using_mid_sa, dropout, style)
        # up[i] works at level i (up[0] is the full resolution); they run from the last level down
        self.up = nn.ModuleList(
            Level(ch * ch_mult[min(i + 1, last)], ch * ch_mult[i], num_res_blocks + 1, using_sa and i == last,
                  Upsample if i > 0 else None, dropout, style) for i in range(len(ch_mult)))
        self.norm_out = group_norm(ch * ch_mult[0])
        self.conv_out = nn.Conv2d(ch * ch_mult[0], in_channels, 3, padding=1)
        self.act = style.act

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(self.act(self.norm_out(h)))
