"""VAR's next-scale transformer, written here with the state-dict keys and shapes of the released
`var_d{16,20,24,30,36}.pth`: AdaLN blocks conditioned on the class, block-causal attention over scales."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from neon.core.seeding import StepNoise
from neon.families.transformer_parts import GeluMLP

LOG_100 = 4.605170249938965  # float32 log(100): the cap on the learned attention temperature


def scale_boundaries(patch_nums: Sequence[int]) -> list[tuple[int, int]]:
    """[begin, end) of each scale's tokens in the flattened sequence."""
    out, start = [], 0
    for pn in patch_nums:
        out.append((start, start + pn * pn))
        start += pn * pn
    return out


class SelfAttention(nn.Module):
    """Multi-head attention with L2-normalised q and k and a learned per-head temperature; keeps a
    key/value cache while sampling."""

    def __init__(self, dim: int, heads: int, l2_norm: bool = True):
        super().__init__()
        self.heads, self.head_dim, self.l2_norm = heads, dim // heads, l2_norm
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.scale = 1.0 if l2_norm else 0.25 / math.sqrt(self.head_dim)
        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.caching = False

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        q, k, v = F.linear(x, self.mat_qkv.weight, bias).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(LOG_100).exp())
            k = F.normalize(k, dim=-1)
        if self.caching:
            if self.cache is not None:
                k, v = torch.cat((self.cache[0], k), dim=2), torch.cat((self.cache[1], v), dim=2)
            self.cache = (k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SharedAdaLin(nn.Linear):
    """The class embedding → six modulation vectors, shared by all blocks (the d36 model)."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(-1, 1, 6, self.in_features)


def drop_path(x: torch.Tensor, p: float, noise: StepNoise | None) -> torch.Tensor:
    """Drop a residual branch per sample with probability p (training only), scaling the kept ones."""
    if p <= 0 or noise is None:
        return x
    keep = (noise.rand(1, 1) >= p).to(x.dtype).to(x.device)
    return x * keep / (1 - p)


class AdaLNBlock(nn.Module):
    """x + γ1·attn(LN(x)(1 + s1) + b1), then x + γ2·ffn(LN(x)(1 + s2) + b2), with (γ, s, b) from the class."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, shared_aln: bool, l2_norm: bool, norm_eps: float,
                 drop_path: float):
        super().__init__()
        self.attn = SelfAttention(dim, heads, l2_norm)
        self.ffn = GeluMLP(dim, round(dim * mlp_ratio))
        self.ln = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.shared_aln, self.drop_path = shared_aln, drop_path
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim) / dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, attn_bias: torch.Tensor | None,
                noise: StepNoise | None = None) -> torch.Tensor:
        mod = (self.ada_gss + cond) if self.shared_aln else self.ada_lin(cond).view(-1, 1, 6, x.shape[-1])
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.unbind(2)
        h = self.attn(self.ln(x).mul(scale1.add(1)).add_(shift1), attn_bias).mul_(gamma1)
        x = x + drop_path(h, self.drop_path, noise)
        h = self.ffn(self.ln(x).mul(scale2.add(1)).add_(shift2)).mul(gamma2)
        return x + drop_path(h, self.drop_path, noise)


class AdaLNBeforeHead(nn.Module):
    """The class-modulated LayerNorm before the output head: LN(x)(1 + scale) + shift."""

    def __init__(self, dim: int, norm_eps: float):
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, x.shape[-1]).unbind(2)
        return self.ln(x).mul(scale.add(1)).add_(shift)


class VARTransformer(nn.Module):
    """Predicts each scale's token map from the coarser ones. Class `num_classes` is the null class of
    classifier-free guidance. Keys: pos_start, pos_1LC, lvl_1L, attn_bias_for_masking, word_embed,
    class_emb, lvl_embed, shared_ada_lin, blocks.{i}.*, head_nm, head."""

    def __init__(self, depth: int = 16, embed_dim: int | None = None, num_heads: int | None = None,
                 num_classes: int = 1000, vocab_size: int = 4096, vae_channels: int = 32,
                 patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), mlp_ratio: float = 4.0,
                 shared_aln: bool = False, attn_l2_norm: bool = True, norm_eps: float = 1e-6,
                 drop_path_rate: float | None = None):
        super().__init__()
        dim = embed_dim or 64 * depth  # the release: width 64·depth, one head per 64 channels
        heads = num_heads or depth
        self.depth, self.dim, self.num_classes, self.vocab_size = depth, dim, num_classes, vocab_size
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.bounds = scale_boundaries(self.patch_nums)
        length, first = self.bounds[-1][1], self.patch_nums[0] ** 2
        std = math.sqrt(1 / dim / 3)

        self.class_emb = nn.Embedding(num_classes + 1, dim)
        self.pos_start = nn.Parameter(torch.empty(1, first, dim))
        self.pos_1LC = nn.Parameter(torch.empty(1, length, dim))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), dim)
        self.word_embed = nn.Linear(vae_channels, dim)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(dim, 6 * dim)) if shared_aln else nn.Identity()
        dpr = 0.1 * depth / 24 if drop_path_rate is None else drop_path_rate
        self.blocks = nn.ModuleList(
            AdaLNBlock(dim, heads, mlp_ratio, shared_aln, attn_l2_norm, norm_eps, float(p))
            for p in torch.linspace(0, dpr, depth, device="cpu").tolist())
        self.head_nm = AdaLNBeforeHead(dim, norm_eps)
        self.head = nn.Linear(dim, vocab_size)

        levels = torch.cat([torch.full((pn * pn,), si) for si, pn in enumerate(self.patch_nums)]).view(1, length)
        self.register_buffer("lvl_1L", levels)
        # block-causal: a token sees every token of its own and of coarser scales
        mask = torch.where(levels.view(length, 1) >= levels.view(1, length), 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", mask.view(1, 1, length, length).contiguous())
        self._init_weights(std, depth)

    def _init_weights(self, std: float, depth: int) -> None:
        # only for training from scratch (the tiny model); released weights replace all of it
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        nn.init.trunc_normal_(self.pos_start, std=std)
        nn.init.trunc_normal_(self.pos_1LC, std=std)
        with torch.no_grad():
            self.head.weight.mul_(0.02)
            self.head_nm.ada_lin[-1].weight.mul_(0.5)
            for block in self.blocks:
                block.attn.proj.weight.div_(math.sqrt(2 * depth))
                block.ffn.fc2.weight.div_(math.sqrt(2 * depth))
                if not block.shared_aln:
                    block.ada_lin[-1].weight[2 * self.dim:].mul_(0.5)
                    block.ada_lin[-1].weight[:2 * self.dim].mul_(1e-5)

    def logits(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Token logits [B, n, V] (float32) from the last hidden states."""
        return self.head(self.head_nm(x.float(), cond).float()).float()

    def forward(self, labels: torch.Tensor, inputs: torch.Tensor, noise: StepNoise | None = None) -> torch.Tensor:
        """Teacher forcing: class ids [B] (the null class for dropped labels) and the VAE's inputs for
        scales 1..K−1 [B, L − pn_0², Cvae] → logits for every token [B, L, V]."""
        b = labels.shape[0]
        cond = self.class_emb(labels)
        first = self.pos_start.shape[1]
        sos = cond.unsqueeze(1).expand(b, first, -1) + self.pos_start.expand(b, first, -1)
        x = torch.cat((sos, self.word_embed(inputs.float())), dim=1)
        x = x + (self.lvl_embed(self.lvl_1L.expand(b, -1)) + self.pos_1LC)
        ada = self.shared_ada_lin(cond)
        for block in self.blocks:
            x = block(x, ada, self.attn_bias_for_masking, noise)
        return self.logits(x, cond)

    def set_caching(self, enabled: bool) -> None:
        """Turn the attention key/value caches on (cleared) or off."""
        for block in self.blocks:
            block.attn.caching, block.attn.cache = enabled, None

    def step(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One scale while sampling: its input tokens [B, pn², C] attend to the cached coarser scales."""
        ada = self.shared_ada_lin(cond)
        for block in self.blocks:
            tokens = block(tokens, ada, None)
        return self.logits(tokens, cond)

    def scale_logits(self, labels: torch.Tensor, scale: int, inputs: torch.Tensor | None) -> torch.Tensor:
        """One scale while sampling (caches on): logits [2B, pn², V] for class ids `labels` [B], conditional rows
        then null-class rows, from the VAE's input to this scale [B, pn², Cvae] (None at the first scale). The
        network embeds the class and the input itself, so the logits depend on its weights and on inputs no
        weight of it made (the output-space twin combines them)."""
        b = labels.shape[0]
        cond = self.class_emb(torch.cat((labels, torch.full_like(labels, self.num_classes))))
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC
        begin, end = self.bounds[scale]
        if scale == 0:
            tokens = cond.unsqueeze(1).expand(2 * b, end, -1) + self.pos_start.expand(2 * b, end, -1) + lvl_pos[:, :end]
        else:
            tokens = (self.word_embed(inputs) + lvl_pos[:, begin:end]).repeat(2, 1, 1)
        return self.step(tokens, cond)
