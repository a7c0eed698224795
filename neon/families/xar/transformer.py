"""xAR's next-cluster flow-matching transformer, written here with the state-dict keys and shapes of the
released xAR-B/L/H files: an encoder and a decoder stack of adaLN blocks over the latent tokens in
cluster-major order, a block-causal mask over clusters, 2-D rotary position codes, a velocity output."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from neon.core.errors import NeonError
from neon.core.seeding import PerSampleRNG
from neon.families.transformer_parts import TimeEmbedder, dropout

# How attention uses the KV cache: not at all (training: every cluster in one pass), refreshing it (a cluster's
# first sampling step, which also feeds the clean previous cluster), reading it (the cluster's later steps).
TRAIN, UPDATE_CACHE, READ_CACHE = "train", "update", "read"


class RMSNorm(nn.Module):
    """x / rms(x), computed in float32 and cast back, then an optional learned gain; eps 1e-6."""

    def __init__(self, dim: int, weight: bool = False, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return out if self.weight is None else out * self.weight


def cluster_order(grid: int, cluster_grid: int) -> torch.Tensor:
    """For each sequence position (cluster-major, row-major inside a cluster) the row-major latent index."""
    side = grid // cluster_grid
    index = torch.arange(grid * grid).reshape(cluster_grid, side, cluster_grid, side)
    return index.permute(0, 2, 1, 3).reshape(-1)


class Rope2d(nn.Module):
    """Axial rotary codes over the latent grid: the first half of each head's channels rotate with the
    row, the second with the column, in interleaved pairs; tables stored in sequence (cluster-major) order."""

    def __init__(self, head_dim: int, grid: int, cluster_grid: int, theta: int = 10000):
        super().__init__()
        half = head_dim // 2
        self.register_buffer("freqs", 1.0 / theta ** (torch.arange(0, half, 2)[: half // 2].float() / half))
        pos = torch.arange(grid).float()
        axis = (pos[:, None] * self.freqs[None, :]).repeat_interleave(2, dim=-1)  # [grid, half]
        table = torch.cat([axis[:, None, :].expand(grid, grid, half), axis[None, :, :].expand(grid, grid, half)],
                          dim=-1).reshape(grid * grid, head_dim)[cluster_order(grid, cluster_grid)]
        self.register_buffer("freqs_cos", table.cos())
        self.register_buffer("freqs_sin", table.sin())

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        n = x.shape[-2]
        cos, sin = self.freqs_cos[start:start + n], self.freqs_sin[start:start + n]
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * cos + rotated * sin


class GatedMLP(nn.Module):
    """fc2(act(fc1_g(x)) · fc1_x(x)) with exact GELU (the release's timm SwiGLU built with GELU)."""

    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1_g, self.fc1_x, self.fc2 = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop = drop

    def forward(self, x: torch.Tensor, rng: PerSampleRNG | None) -> torch.Tensor:
        h = dropout(F.gelu(self.fc1_g(x)) * self.fc1_x(x), self.drop, rng)
        return dropout(self.fc2(h), self.drop, rng)


class Attention(nn.Module):
    """Multi-head attention with rotary q/k and a KV cache of the clean earlier clusters (sampling)."""

    def __init__(self, dim: int, num_heads: int, grid: int, cluster_grid: int, attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.rope = Rope2d(self.head_dim, grid, cluster_grid)
        self.attn_drop, self.proj_drop = attn_drop, proj_drop
        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, start: int, mode: str, keep: int,
                rng: PerSampleRNG | None) -> torch.Tensor:
        b, n, dim = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.rope(q, start), self.rope(k, start)
        if mode != TRAIN and self.cache is not None:
            k, v = torch.cat([self.cache[0][:b], k], dim=2), torch.cat([self.cache[1][:b], v], dim=2)
        if mode == UPDATE_CACHE:  # everything but the noisy cluster being sampled (the last `keep` tokens)
            self.cache = (k[:, :, :-keep], v[:, :, :-keep])
        if mode == READ_CACHE:
            mask = None
        if rng is not None and self.attn_drop > 0:  # explicit weights: the dropout masks are seeded per sample
            weights = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
            weights = dropout((weights + mask if mask is not None else weights).softmax(-1), self.attn_drop, rng)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return dropout(self.proj(out.transpose(1, 2).reshape(b, n, dim)), self.proj_drop, rng)


class Block(nn.Module):
    """Pre-norm attention and gated MLP, modulated per cluster by (gamma, scale, shift) from the condition."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, grid: int, cluster_grid: int, attn_drop: float,
                 proj_drop: float):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = Attention(dim, num_heads, grid, cluster_grid, attn_drop, proj_drop)
        self.mlp = GatedMLP(dim, mlp_hidden, proj_drop)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None, start: int, mode: str,
                cluster_size: int, rng: PerSampleRNG | None) -> torch.Tensor:
        b, n, dim = x.shape
        # cond rows are cluster-major ([cluster k of every sample] for k in order); each cluster's modulation
        # is broadcast over its tokens (the same products as the release's repeated copy, without the copy)
        mod = self.ada_lin(cond).view(-1, b, 6, dim).transpose(0, 1).unsqueeze(3)  # [b, clusters, 6, 1, dim]
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.unbind(2)

        def modulate(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
            return h.view(b, -1, cluster_size, dim).mul(scale.add(1)).add_(shift).view(b, n, dim)

        def gate(h: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
            return h.view(b, -1, cluster_size, dim).mul_(gamma).view(b, n, dim)

        x = x + gate(self.attn(modulate(self.norm1(x), scale1, shift1), mask, start, mode, cluster_size, rng), gamma1)
        return x + gate(self.mlp(modulate(self.norm2(x), scale2, shift2), rng), gamma2)


class XARTransformer(nn.Module):
    """The velocity network v(x_t, t | class, earlier clusters). The latent grid (side `grid`, `channels`
    per token) is split into cluster_grid² square clusters predicted one after another; a token sees its own
    cluster and every earlier one. Class id `num_classes` is the null class of classifier-free guidance."""

    def __init__(self, embed_dim: int = 768, depth: int = 8, num_heads: int = 12, mlp_ratio: float = 4.0,
                 num_classes: int = 1000, channels: int = 16, grid: int = 16, cluster_grid: int = 2,
                 attn_dropout: float = 0.1, proj_dropout: float = 0.1):
        super().__init__()
        if grid % cluster_grid:
            raise NeonError(f"model.network.grid={grid} does not split into {cluster_grid}×{cluster_grid} clusters: "
                            "make grid a multiple of model.network.cluster_grid")
        self.dim, self.depth, self.num_heads, self.num_classes = embed_dim, depth, num_heads, num_classes
        self.dropout = attn_dropout > 0 or proj_dropout > 0
        self.channels, self.grid, self.cluster_grid = channels, grid, cluster_grid
        self.seq_len, self.num_clusters = grid * grid, cluster_grid * cluster_grid
        self.cluster_size = self.seq_len // self.num_clusters
        hidden = int(embed_dim * mlp_ratio * 2 / 3.0)  # truncated, as the release sizes its gated MLP
        blocks = (embed_dim, num_heads, hidden, grid, cluster_grid, attn_dropout, proj_dropout)

        self.class_emb = nn.Embedding(num_classes + 1, embed_dim)
        self.time_embed = TimeEmbedder(embed_dim, freq_dtype=torch.float32, integer_steps=1000)  # ⌊t·1000⌋, as the release
        self.z_proj = nn.Linear(channels, embed_dim)
        self.z_proj_ln = RMSNorm(embed_dim, weight=True)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, embed_dim))
        self.encoder_blocks = nn.ModuleList(Block(*blocks) for _ in range(depth))
        self.encoder_norm = RMSNorm(embed_dim, weight=True)
        self.decoder_embed = nn.Linear(embed_dim, embed_dim)
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, embed_dim))
        self.decoder_blocks = nn.ModuleList(Block(*blocks) for _ in range(depth))
        self.decoder_norm = RMSNorm(embed_dim, weight=True)
        self.pred = nn.Linear(embed_dim, channels)
        # additive block-causal mask: 0 where query i may see key j (j's cluster ≤ i's), −inf elsewhere
        cluster = torch.arange(self.seq_len) // self.cluster_size
        allowed = cluster[None, :] <= cluster[:, None]
        self.register_buffer("mask", torch.zeros(self.seq_len, self.seq_len).masked_fill(~allowed, -torch.inf)
                             .view(1, 1, self.seq_len, self.seq_len))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's initialisation: N(0, 0.02) embeddings, Xavier-uniform linear weights, zero biases."""
        for p in (self.class_emb.weight, self.encoder_pos_embed_learned, self.decoder_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    # --- layout
    def to_sequence(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, grid, grid] → tokens [B, seq_len, C] in cluster-major order."""
        return z.flatten(2).transpose(1, 2)[:, cluster_order(self.grid, self.cluster_grid).to(z.device)]

    def from_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, seq_len, C] in cluster-major order → latents [B, C, grid, grid]."""
        out = torch.empty_like(tokens)
        out[:, cluster_order(self.grid, self.cluster_grid).to(tokens.device)] = tokens
        return out.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], self.grid, self.grid)

    # --- the network
    def condition(self, labels: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per (cluster, sample) condition rows, cluster-major: class embedding + time embedding; `t` holds
        len(t) / len(labels) clusters' times."""
        repeats = t.shape[0] // labels.shape[0]
        return self.class_emb(labels.long()).repeat(repeats, 1) + self.time_embed(t)

    def run(self, tokens: torch.Tensor, cond: torch.Tensor, start: int, mode: str, mask: torch.Tensor | None,
            rng: PerSampleRNG | None = None) -> torch.Tensor:
        """Velocity for `tokens` [B, N, C] occupying sequence positions [start, start + N)."""
        n = tokens.shape[1]
        x = self.z_proj_ln(self.z_proj(tokens) + self.encoder_pos_embed_learned[:, start:start + n])
        for block in self.encoder_blocks:
            x = block(x, cond, mask, start, mode, self.cluster_size, rng)
        x = self.decoder_embed(self.encoder_norm(x)) + self.decoder_pos_embed_learned[:, start:start + n]
        for block in self.decoder_blocks:
            x = block(x, cond, mask, start, mode, self.cluster_size, rng)
        return self.pred(self.decoder_norm(x))

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, t: torch.Tensor,
                rng: PerSampleRNG | None = None) -> torch.Tensor:
        """Training: all clusters at once [B, seq_len, C], each at its own time (`t` [clusters·B],
        cluster-major), under the block-causal mask; `rng` draws the dropout masks."""
        return self.run(tokens, self.condition(labels, t), 0, TRAIN, self.mask, rng)

    def clear_cache(self) -> None:
        """Forget the cached keys and values of earlier clusters."""
        for block in (*self.encoder_blocks, *self.decoder_blocks):
            block.attn.cache = None

    def sample_step(self, tokens: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, cluster: int,
                    update_cache: bool) -> torch.Tensor:
        """Sampling: the velocity of cluster `cluster`'s tokens (the last cluster_size of `tokens`).
        With `update_cache`, `tokens` may start with the clean previous cluster, whose keys and values are
        cached for the clusters after it."""
        end = (cluster + 1) * self.cluster_size
        start = end - tokens.shape[1]
        mask = self.mask[:, :, start:end, :end] if update_cache else None
        out = self.run(tokens, self.condition(labels, t), start, UPDATE_CACHE if update_cache else READ_CACHE, mask)
        return out[:, -self.cluster_size:]
