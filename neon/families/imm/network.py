"""IMM's network, written here with the parameter names and shapes of the released ImageNet-256 snapshot
(`imagenet256_ts_a2.pkl`, its `ema` module): `IMMPrecond` holding a DiT (`model.*`) that takes the current
time t and the target time s (through an extra s-embedder) and predicts the one-step jump x_t → x_s."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from neon.core.errors import NeonError
from neon.families.transformer_parts import GeluMLP, TimeEmbedder

# The DiT sizes of the released models (and of DiT's own table), by name.
DIT_SIZES = {
    "DiT_XL_2": dict(depth=28, hidden_size=1152, patch_size=2, num_heads=16),
    "DiT_L_2": dict(depth=24, hidden_size=1024, patch_size=2, num_heads=16),
    "DiT_B_2": dict(depth=12, hidden_size=768, patch_size=2, num_heads=12),
    "DiT_S_2": dict(depth=12, hidden_size=384, patch_size=2, num_heads=6),
}


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2-D table [grid², dim]: sin and cos of the column, then of the row, computed in float64."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    col, row = np.outer(cols.reshape(-1), omega), np.outer(rows.reshape(-1), omega)
    return torch.from_numpy(np.concatenate([np.sin(col), np.cos(col), np.sin(row), np.cos(row)], axis=1)).float()


class PatchEmbed(nn.Module):
    """Non-overlapping patch×patch patches → tokens (a strided conv), row-major."""

    def __init__(self, patch: int, channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class LabelEmbedder(nn.Module):
    """A table of num_classes + 1 rows; the last is the null class of classifier-free guidance."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention (fused qkv with bias, scaled dot product, output projection)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, dim))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x·(1 + scale) + shift, per sample over all tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """adaLN-Zero block: affine-free LayerNorms modulated and gated by the condition."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = GeluMLP(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """Modulated LayerNorm, then a linear map to patch² × channels per token."""

    def __init__(self, dim: int, patch: int, channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """A class-conditional DiT whose condition is emb(t) + emb(s) + emb(class)."""

    def __init__(self, input_size: int, in_channels: int, hidden_size: int, depth: int, num_heads: int,
                 patch_size: int, mlp_ratio: float = 4.0, num_classes: int = 1000):
        super().__init__()
        self.in_channels, self.patch_size, self.num_classes = in_channels, patch_size, num_classes
        self.grid = input_size // patch_size
        # the parameter order of the release (s_embedder first)
        self.s_embedder = TimeEmbedder(hidden_size)
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimeEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        # fixed in the release, but stored, and trained by the reference fine-tune (so Neon merges it)
        self.pos_embed = nn.Parameter(sincos_pos_embed(hidden_size, self.grid).unsqueeze(0))
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT's initialisation (for training from scratch): Xavier-uniform linear and patch weights, zero
        biases, N(0, 0.02) label table and time MLPs, zero adaLN outputs and final linear (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.x_embedder.proj.weight.view(self.x_embedder.proj.weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for embedder in (self.t_embedder, self.s_embedder):
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        for layer in [*(b.adaLN_modulation[-1] for b in self.blocks), self.final_layer.adaLN_modulation[-1],
                      self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, n_t: torch.Tensor, n_s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Velocity-like output [N, C, H, W] for inputs x, time inputs n_t, n_s [N or 1] and class ids [N]."""
        b = x.shape[0]
        h = self.x_embedder(x) + self.pos_embed
        c = (self.t_embedder(n_t.expand(b)) + self.s_embedder(n_s.expand(b))) + self.y_embedder(labels)
        for block in self.blocks:
            h = block(h, c)
        out = self.final_layer(h, c)  # [N, tokens, p·p·C], channel fastest
        p, g = self.patch_size, self.grid
        return out.reshape(b, g, g, p, p, self.in_channels).permute(0, 5, 1, 3, 2, 4).reshape(b, self.in_channels,
                                                                                            g * p, g * p)


class IMMPrecond(nn.Module):
    """The flow-matching interpolant x_t = (1 − t)·x + t·ε (ε ~ N(0, σ_d²)), input scaled by
    1/(σ_d·√((1 − t)² + t²)), and the Euler jump x_s = x_t − (t − s)·σ_d·F. `temb_type` 'stride' gives the
    network (t, t − s)·1000 (the release `imagenet256_ts_a2.pkl`), 'identity' (t, s)·1000 (`_s_a1`)."""

    def __init__(self, img_resolution: int = 32, img_channels: int = 4, num_classes: int = 1000,
                 model_type: str | None = "DiT_XL_2", hidden_size: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, patch_size: int | None = None, mlp_ratio: float = 4.0,
                 temb_type: str = "stride", time_scale: float = 1000.0, sigma_data: float = 0.5, T: float = 0.994,
                 eps: float = 0.0):
        super().__init__()
        if model_type and model_type not in DIT_SIZES:
            raise NeonError(f"model.network.model_type must be one of {sorted(DIT_SIZES)} or null, got {model_type!r}")
        size = dict(DIT_SIZES[model_type]) if model_type else {}
        for key, value in dict(hidden_size=hidden_size, depth=depth, num_heads=num_heads, patch_size=patch_size).items():
            if value is not None:
                size[key] = value
        missing = {"hidden_size", "depth", "num_heads", "patch_size"} - set(size)
        if missing:
            raise NeonError(f"IMMPrecond needs model.network.model_type (one of {sorted(DIT_SIZES)}) or "
                            f"{sorted(missing)}")
        if temb_type not in ("stride", "identity"):
            raise NeonError(f"model.network.temb_type must be 'stride' or 'identity', got {temb_type!r}")
        self.img_resolution, self.img_channels, self.num_classes = img_resolution, img_channels, num_classes
        self.temb_type, self.time_scale, self.sigma_data, self.T, self.eps = temb_type, time_scale, sigma_data, T, eps
        self.model = DiT(img_resolution, img_channels, mlp_ratio=mlp_ratio, num_classes=num_classes, **size)

    def network(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The raw network output F (float32) for x at time t jumping to s ([N] or scalar times)."""
        t, s = t.float().reshape(-1, 1, 1, 1), s.float().reshape(-1, 1, 1, 1)
        c_in = ((1 - t) ** 2 + t ** 2).rsqrt() / self.sigma_data
        n_s = (t - s) * self.time_scale if self.temb_type == "stride" else s * self.time_scale
        return self.model(c_in * x.float(), (t * self.time_scale).flatten(), n_s.flatten(), labels)

    def jump(self, x: torch.Tensor, f: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x_s = x − (t − s)·σ_d·F in the dtype of t (float64 in the sampler)."""
        if t.dim():
            t, s = t.reshape(-1, 1, 1, 1), s.reshape(-1, 1, 1, 1)
        return x - (t - s) * self.sigma_data * f.to(t.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x_s from x_t for class ids `labels` (num_classes: unconditional)."""
        return self.jump(x, self.network(x, t, s, labels), t, s)

    def cfg_forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, labels: torch.Tensor,
                    cfg: float) -> torch.Tensor:
        """x_s with guidance on the network output: F_u + cfg·(F_c − F_u) in t's dtype; the batch is doubled
        with the unconditional half first (also at cfg = 1, as the release does)."""
        f = self.network(torch.cat([x, x]), t, s, torch.cat([torch.full_like(labels, self.num_classes), labels]))
        uncond, cond = f.to(t.dtype).chunk(2)
        return self.jump(x, uncond + cfg * (cond - uncond), t, s)
