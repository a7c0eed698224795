"""Layers the EDM backbones are made of, written from docs/upstream/edm.md.

Parameter and buffer names (`weight`, `bias`, `resample_filter`, `freqs`, `norm0`, `conv0`, `affine`, ...)
are those of the released networks, so their state dicts load unchanged. Every layer casts its weights to
the input's dtype, which is how the fp16 path runs on float32 parameters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from neon.core.errors import NeonError


@dataclass(frozen=True)
class InitRule:
    """How a layer draws its initial weights: a variance-scaling scheme and a gain for weight and bias."""

    scheme: str = "kaiming_normal"
    weight_gain: float = 1.0
    bias_gain: float = 0.0

    def draw(self, shape: Sequence[int], fan_in: int, fan_out: int) -> torch.Tensor:
        """Unit-gain initial values from the global generator (uniform schemes: one `rand`, normal: one `randn`)."""
        if self.scheme == "xavier_uniform":
            return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
        if self.scheme == "xavier_normal":
            return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
        if self.scheme == "kaiming_uniform":
            return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
        if self.scheme == "kaiming_normal":
            return math.sqrt(1 / fan_in) * torch.randn(*shape)
        raise NeonError(f"unknown EDM init scheme '{self.scheme}': use xavier_uniform, xavier_normal, "
                        "kaiming_uniform or kaiming_normal")

    def weight_and_bias(self, weight_shape: Sequence[int], bias: bool, fan_in: int, fan_out: int):
        """Parameters in the release's draw order: the weight first, then the bias (drawn even at gain 0)."""
        weight = nn.Parameter(self.draw(weight_shape, fan_in, fan_out) * self.weight_gain)
        if not bias:
            return weight, None
        return weight, nn.Parameter(self.draw(weight_shape[:1], fan_in, fan_out) * self.bias_gain)


class Dense(nn.Module):
    """y = x·Wᵀ + b, with `weight` [out, in] and an optional `bias` [out]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: InitRule = InitRule()):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight, self.bias = init.weight_and_bias([out_features, in_features], bias, in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a plain product then the bias, not F.linear: the fused addmm rounds differently
        y = torch.matmul(x, self.weight.to(x.dtype).T)
        if self.bias is not None:
            y += self.bias.to(y.dtype)
        return y


def fir_kernel(taps: Sequence[float]) -> torch.Tensor:
    """The separable 2-D resampling filter [1, 1, k, k] of 1-D taps, normalised to unit sum."""
    t = torch.as_tensor(list(taps), dtype=torch.float32)
    return torch.outer(t, t)[None, None] / t.sum().square()


def fir_upsample(x: torch.Tensor, kernel: torch.Tensor, padding: int) -> torch.Tensor:
    """2× upsampling, channel by channel: a strided transposed convolution with the filter (gain 4)."""
    channels = x.shape[1]
    return F.conv_transpose2d(x, kernel.mul(4).tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=padding)


def fir_downsample(x: torch.Tensor, kernel: torch.Tensor, padding: int = 0) -> torch.Tensor:
    """2× downsampling, channel by channel: a strided convolution with the filter."""
    channels = x.shape[1]
    return F.conv2d(x, kernel.tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=padding)


class ResamplingConv(nn.Module):
    """A k×k convolution (k = 0: none, resampling only) with optional 2× up- or down-sampling by a fixed
    FIR filter, applied before the convolution or, `fused`, merged with it as the release does."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False,
                 init: InitRule = InitRule()):
        if up and down:
            raise NeonError("an EDM convolution resamples up or down, not both")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.weight = self.bias = None
        if kernel:
            fan_in, fan_out = in_channels * kernel * kernel, out_channels * kernel * kernel
            self.weight, self.bias = init.weight_and_bias([out_channels, in_channels, kernel, kernel], bias,
                                                          fan_in, fan_out)
        self.register_buffer("resample_filter", fir_kernel(resample_filter) if (up or down) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        kernel = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        half_w = 0 if weight is None else weight.shape[-1] // 2
        half_f = 0 if kernel is None else (kernel.shape[-1] - 1) // 2
        if weight is not None and self.fused_resample and self.up:
            x = fir_upsample(x, kernel, padding=max(half_f - half_w, 0))
            x = F.conv2d(x, weight, padding=max(half_w - half_f, 0))
        elif weight is not None and self.fused_resample and self.down:
            x = F.conv2d(x, weight, padding=half_w + half_f)
            x = fir_downsample(x, kernel)
        else:
            if self.up:
                x = fir_upsample(x, kernel, padding=half_f)
            elif self.down:
                x = fir_downsample(x, kernel, padding=half_f)
            if weight is not None:
                x = F.conv2d(x, weight, padding=half_w)
        if self.bias is not None:
            x += self.bias.to(x.dtype)[None, :, None, None]
        return x


class GroupNormFloor(nn.Module):
    """Group normalisation with at most `num_groups` groups and at least `min_channels_per_group` channels
    in each (small layers get fewer groups)."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.full((num_channels,), 1.0))  # per-channel gain and offset
        self.bias = nn.Parameter(torch.full((num_channels,), 0.0))
        self.num_groups, self.eps = min(num_groups, num_channels // min_channels_per_group), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def sdpa_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Attention weights softmax_k(q·k/√c) for q, k of shape [heads·N, c, tokens]: float32 inside."""
    logits = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(k.shape[1])).float())
    return logits.softmax(dim=2).to(q.dtype)


class ResBlock(nn.Module):
    """The residual block of every EDM U-Net: GroupNorm → SiLU → conv, conditioned on the embedding
    (additively, or as scale and shift), dropout → conv, a skip path, then optional self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False, adaptive_scale: bool = True,
                 init: InitRule = InitRule(), init_zero: InitRule = InitRule(weight_gain=0.0),
                 init_attn: InitRule | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        per_head = out_channels // channels_per_head
        self.num_heads = (per_head if num_heads is None else num_heads) if attention else 0
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        # created in the release's order: the initial values come from the global generator in turn
        self.norm0 = GroupNormFloor(in_channels, eps=eps)
        self.conv0 = ResamplingConv(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter,
                                    init=init)
        self.affine = Dense(emb_channels, out_channels * 2 if adaptive_scale else out_channels, init=init)
        self.norm1 = GroupNormFloor(out_channels, eps=eps)
        self.conv1 = ResamplingConv(out_channels, out_channels, 3, init=init_zero)
        self.skip = None
        if in_channels != out_channels or up or down:
            projects = resample_proj or in_channels != out_channels
            self.skip = ResamplingConv(in_channels, out_channels, 1 if projects else 0, up=up, down=down,
                                       resample_filter=resample_filter, init=init)
        if self.num_heads:
            self.norm2 = GroupNormFloor(out_channels, eps=eps)
            self.qkv = ResamplingConv(out_channels, out_channels * 3, 1, init=init_attn or init)
            self.proj = ResamplingConv(out_channels, out_channels, 1, init=init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        cond = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = cond.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h.add_(cond)))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        # the shortcut is taken after the main path, as in the release: the order in which autograd sums
        # the two gradients reaching x, hence the last bit of every gradient, follows it
        h = h.add_(x if self.skip is None else self.skip(x)) * self.skip_scale
        if not self.num_heads:
            return h
        return self.attend(h)

    def attend(self, h: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over the pixels, added back and rescaled."""
        batch, channels = h.shape[:2]
        qkv = self.qkv(self.norm2(h)).reshape(batch * self.num_heads, channels // self.num_heads, 3, -1)
        q, k, v = qkv.unbind(2)
        mixed = torch.einsum("nqk,nck->ncq", sdpa_weights(q, k), v)
        return self.proj(mixed.reshape(*h.shape)).add_(h) * self.skip_scale


def _halves(angles: torch.Tensor, sin_first: bool) -> torch.Tensor:
    parts = (angles.sin(), angles.cos()) if sin_first else (angles.cos(), angles.sin())
    return torch.cat(parts, dim=1)


class SinusoidalEmbedding(nn.Module):
    """Noise level → [cos | sin] (or [sin | cos]) of geometrically spaced frequencies 1 … 1/max_positions;
    with `endpoint` the last frequency is exactly 1/max_positions."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False, sin_first: bool = False):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions
        self.endpoint, self.sin_first = endpoint, sin_first

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=noise.device) / (half - int(self.endpoint))
        freqs = (1 / self.max_positions) ** exponents
        return _halves(torch.outer(noise, freqs.to(noise.dtype)), self.sin_first)


class RandomFourierEmbedding(nn.Module):
    """Noise level → [cos | sin] (or [sin | cos]) of 2π·f·σ for fixed random frequencies f (`freqs`)."""

    def __init__(self, num_channels: int, scale: float = 16, sin_first: bool = False):
        super().__init__()
        self.sin_first = sin_first
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return _halves(torch.outer(noise, (2 * math.pi * self.freqs).to(noise.dtype)), self.sin_first)


def drop_class_labels(labels: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero the one-hot label of a random fraction p of the batch while training (unconditional rows for
    guidance), with one uniform draw per row from the global generator."""
    if not (training and p):
        return labels
    kept = torch.rand([labels.shape[0], 1], device=labels.device) >= p
    return labels * kept.to(labels.dtype)
