"""A tiny byte-level language model: `TinyGPT`, a small causal transformer over UTF-8 bytes, trained by next-token
cross-entropy; `sample_tokens` draws token by token through a KV cache at a temperature, with optional top-k and
top-p (nucleus) filtering, each token by inverse CDF at its sequence's own uniform, so that a sequence depends only
on its seed. A temperature below 1 is mode-seeking (what Neon's S wants), above 1 diversity-seeking."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from neon.core.contract import (
    EMA,
    Batch,
    HasLikelihood,
    HasTextSamples,
    NeonModule,
    Sampler,
    plain_kwargs,
    setting_above,
)
from neon.core.errors import NeonError
from neon.core.seeding import PerSampleRNG, StepNoise
from neon.families.transformer_parts import dropout

NLL_BATCH = 256  # sequences per forward pass of `token_nll`: memory stays bounded on a held-out set of any size

Cache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values [batch, heads, length, head dim]


class Block(nn.Module):
    """Pre-LayerNorm causal multi-head self-attention, then a GELU MLP of 4× the width, each added to the stream."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None, rng: PerSampleRNG | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The new positions' stream [B, t, width] after the block, and the keys and values of all positions."""
        b, t, width = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        start = k.shape[2] - t
        if start == 0:  # the full pass: the library's own causal mask (its fast kernels on a GPU)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        else:  # new position i (absolute start + i) sees every cached one and the new ones up to itself
            mask = None if t == 1 else torch.ones(t, start + t, dtype=torch.bool, device=h.device).tril(start)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        h = h + dropout(self.proj(out.transpose(1, 2).reshape(b, t, width)), self.dropout, rng)
        h = h + dropout(self.mlp(self.norm2(h)), self.dropout, rng)
        return h, (k, v)


class TinyGPT(nn.Module):
    """A small GPT: token and learned position embeddings (a BOS token plus `context` tokens), `depth` blocks, a
    final LayerNorm and a head tied to the token embedding. The last id, vocab_size − 1, is BOS."""

    def __init__(self, vocab_size: int = 257, context: int = 64, width: int = 128, depth: int = 4, heads: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise NeonError(f"model.network.width ({width}) must be a multiple of model.network.heads ({heads})")
        self.vocab_size, self.context, self.width, self.depth, self.heads = vocab_size, context, width, depth, heads
        self.dropout = float(dropout)
        self.bos = vocab_size - 1
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Parameter(torch.empty(context + 1, width))
        self.blocks = nn.ModuleList(Block(width, heads, self.dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02²) weights, zero biases, the residual projections scaled down by
        √(2·depth) so the stream's variance does not grow with depth."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.depth))
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions, std=0.02)

    def _stream(self, idx: torch.Tensor, cache: Cache | None, rng: PerSampleRNG | None
                ) -> tuple[torch.Tensor, Cache]:
        start = 0 if cache is None else cache[0][0].shape[2]
        if start + idx.shape[1] > len(self.positions):
            raise NeonError(f"{start + idx.shape[1]} positions asked of a network with {len(self.positions)} "
                            f"(model.network.context = {self.context}, plus BOS): use shorter sequences")
        h = self.tokens(idx) + self.positions[start:start + idx.shape[1]]
        layers = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, None if cache is None else cache[i], rng)
            layers.append(kv)
        return self.norm(h), layers

    def forward(self, idx: torch.Tensor, rng: PerSampleRNG | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] of the full causal pass over `idx` [B, T] (`rng`: dropout masks, training only)."""
        h, _ = self._stream(idx, None, rng if self.training else None)
        return F.linear(h, self.tokens.weight)

    def forward_step(self, idx: torch.Tensor, cache: Cache | None = None) -> tuple[torch.Tensor, Cache]:
        """Logits [B, t, vocab] of `t` new positions after those in `cache` (None: none yet), and the cache
        grown by them: sampling costs one call per token, not a pass over the whole prefix."""
        h, layers = self._stream(idx, cache, None)
        return F.linear(h, self.tokens.weight), layers


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_lm_sampler(settings: Mapping[str, Any], key: str = "sampler") -> None:
    """Refuse, in one line naming `key`.<setting>, a temperature, top_k or top_p outside its range (before any
    work)."""
    temperature, top_k, top_p = (settings.get("temperature", 1.0), settings.get("top_k", 0),
                                 settings.get("top_p", 1.0))
    if not _is_number(temperature) or temperature < 0:
        raise NeonError(f"{key}.temperature={temperature!r} is not a temperature: use a number ≥ 0 (0: greedy; "
                        f"below 1 mode-seeking, e.g. {key}.temperature=0.8)")
    if not isinstance(top_k, Integral) or isinstance(top_k, bool) or top_k < 0:
        raise NeonError(f"{key}.top_k={top_k!r} is not a top-k: use an integer ≥ 0 (0: no top-k filter)")
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise NeonError(f"{key}.top_p={top_p!r} is not a top-p: use a number in (0, 1] (1: no nucleus filter)")
    prompts = settings.get("prompts")
    if isinstance(prompts, Mapping):  # sampler=lm_prompted's config: a prompt is a prefix of a held-out window
        length, context = prompts.get("length"), prompts.get("context", 64)
        if not isinstance(length, Integral) or isinstance(length, bool) or not 0 < length < context:
            raise NeonError(f"{key}.prompts.length={length!r} is not a prompt length: use an integer from 1 to "
                            f"{context - 1} (the prompt is the start of a held-out window of {context} tokens)")


def descending(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`logits.sort(dim=-1, descending=True, stable=True)` for rows [B, V] (ties: the lower id first), on the CPU as
    one sort of unique int64 keys: the float's order-preserving bits above, the id below (numpy sorts these several
    times faster than torch's stable float sort, whose cost dominates a step of a large vocabulary)."""
    if logits.device.type != "cpu":
        return logits.sort(dim=-1, descending=True, stable=True)
    # + 0.0: −0.0 becomes 0.0, a tie with it as in torch; then a negative float's bits count down: flipped, the ints
    # order as the floats do
    bits = (logits.detach().float() + 0.0).numpy().view(np.int32).astype(np.int64)
    ordinal = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    keys = ~ordinal << 32 | np.arange(logits.shape[-1], dtype=np.int64)  # ~: the largest first; then the lower id
    order = torch.from_numpy(np.sort(keys, axis=-1) & 0xFFFFFFFF)
    return logits.gather(-1, order), order


def next_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0) -> torch.Tensor:
    """One token per row of `logits` [B, V]: the argmax at temperature 0; else softmax(logits / temperature), the k
    most probable, then the nucleus of those (renormalised: the fewest most probable whose probability reaches
    top_p), renormalised and inverted at the row's uniform in [0, 1). Ties go to the lower id."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # the first of tied maxima
    ordered, order = descending(logits)  # ties: lower id first
    # float64: the nucleus boundary and the CDF do not move with the rounding of a long float32 sum
    probs = (ordered.double() / temperature).softmax(dim=-1)
    top_k, last = int(top_k), probs.shape[-1] - 1
    if 0 < top_k < probs.shape[-1] or top_p < 1:  # filtered: the kept tokens' mass only (unfiltered: the whole CDF)
        keep = torch.ones_like(probs, dtype=torch.bool)
        if 0 < top_k < probs.shape[-1]:
            keep[:, top_k:] = False  # exactly k tokens: ties at the k-th are resolved by the stable order
        if top_p < 1:
            kept = probs * keep
            kept = kept / kept.sum(dim=-1, keepdim=True)
            above = torch.cat([torch.zeros_like(kept[:, :1]), kept.cumsum(dim=-1)[:, :-1]], dim=-1)
            keep &= above < top_p  # the more probable tokens' mass has not reached top_p: the first is always kept
        probs, last = probs * keep, keep.sum(dim=-1, keepdim=True) - 1
    mass = probs.cumsum(dim=-1)
    at = uniforms.to(mass).unsqueeze(-1) * mass[:, -1:]
    return order.gather(-1, torch.searchsorted(mass, at, right=True).clamp_(max=last)).squeeze(-1)


@torch.no_grad()
def sample_tokens(net: nn.Module, uniforms: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, prompts: Any = None, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """`uniforms.shape[1]` tokens per row [B, n] from BOS, one cached network call per token, the i-th token drawn
    at the row's i-th uniform (`next_tokens`) among the ids below `net.drawable` (TinyGPT: below its BOS, the last
    id, which the data never holds; a network without `drawable`: below `net.bos`). `prefix` [B, p]: each row's
    first p tokens are given (a prompt, read in one call), the rest drawn after them; `prompts`, where the config
    names a prompt source, is read by the family's `generate`, which passes its rows' `prefix`."""
    check_lm_sampler({"temperature": temperature, "top_k": top_k, "top_p": top_p})
    width = getattr(net, "drawable", net.bos)  # the network's choice: an HF vocabulary's BOS is a real token
    b, n = uniforms.shape
    out = torch.empty(b, n, dtype=torch.long, device=uniforms.device)
    tokens = torch.full((b, 1), net.bos, dtype=torch.long, device=uniforms.device)
    given = 0 if prefix is None else prefix.shape[1]
    if given:
        out[:, :given] = prefix
        tokens = torch.cat([tokens, out[:, :given]], dim=1)
    logits, cache = net.forward_step(tokens, None)
    for i in range(given, n):
        out[:, i] = next_tokens(logits[:, -1, :width], uniforms[:, i], temperature, top_k, top_p)
        if i + 1 < n:
            logits, cache = net.forward_step(out[:, i:i + 1], cache)
    return out


def prompt_prefixes(sampler: Any, seeds: Sequence[int], device: torch.device) -> torch.Tensor | None:
    """The prompt of each seed's sequence where the sampler names a prompt source (`sampler.prompts`), else None."""
    prompts = (getattr(sampler, "keywords", None) or {}).get("prompts")
    return None if prompts is None else prompts.prefixes(seeds).to(device)


class TinyLM(NeonModule, HasLikelihood, HasTextSamples):
    """The tiny language model family: a batch {"x": LongTensor [B, L]} holds byte ids in [0, 256), L ≤ context;
    the network reads [BOS, x[:, :-1]] and predicts x. Unconditional; an EMA copy samples when `ema_decay` is set."""

    family = "tiny language model"
    samplers = {"lm": sample_tokens}

    def __init__(self, network: Mapping[str, Any], optimizer=None, ema_decay: float | None = None):
        self.network_kwargs = plain_kwargs(network)
        super().__init__(self.build_net(self.network_kwargs), optimizer=optimizer,
                         ema=EMA(decay=ema_decay) if ema_decay else None, num_classes=0)

    @classmethod
    def build_net(cls, network: Mapping[str, Any]) -> TinyGPT:
        """The transformer of `model.network`."""
        return TinyGPT(**network)

    @property
    def image_shape(self) -> tuple[int]:
        """A sample is `context` tokens."""
        return (self.net.context,)

    @classmethod
    def diversity_seeking(cls, settings: Mapping[str, Any]) -> list[str]:
        """A temperature above 1 flattens every next-token distribution (top_k = 0, top_p = 1 filter nothing)."""
        return setting_above(settings, "temperature", 1, "temperature > 1")

    @classmethod
    def check_sampler_settings(cls, settings: Mapping[str, Any], key: str) -> None:
        """A negative temperature, a top-k below 0 or a top-p outside (0, 1]: one line before any work."""
        check_lm_sampler(settings, key)

    def decode_samples(self, x: torch.Tensor) -> list[str]:
        """Sampled byte ids as text (bytes that are not UTF-8 shown as U+FFFD)."""
        return [bytes(row).decode("utf-8", errors="replace") for row in x.long().cpu().tolist()]

    def optimizer_params(self) -> list[dict[str, Any]]:
        """Weight decay on the matrices (embeddings included), none on LayerNorm gains and biases."""
        params = list(self.net.parameters())
        return [{"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
                {"params": [p for p in params if p.ndim >= 2]}]

    def check_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """`x` as long token ids on the module's device, or a one-line error saying what the batch must hold."""
        bos, context = self.net.bos, self.net.context
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool or x.ndim != 2:
            raise NeonError(f"the {self.family} reads batches of token ids (an integer tensor [batch, length]), "
                            f"got {x.dtype} {tuple(x.shape)}: use a text data module")
        if not 1 <= x.shape[1] <= context:
            raise NeonError(f"sequences of {x.shape[1]} tokens for model.network.context = {context}: make the data's "
                            "sequence length at most the context")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= bos):
            raise NeonError(f"token ids must lie in [0, {bos}) (id {bos} is BOS), got ids from {int(x.min())} to "
                            f"{int(x.max())}: use byte ids (UTF-8)")
        return x.to(self.device, torch.long)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the network reads to predict `x`: BOS, then x shifted right by one."""
        return torch.cat([torch.full_like(x[:, :1], self.net.bos), x[:, :-1]], dim=1)

    def loss(self, batch: Batch, noise: StepNoise) -> torch.Tensor:
        x = self.check_tokens(batch["x"])
        rng = noise.per_sample() if self.training and self.net.dropout > 0 else None  # masks from the step's noise
        logits = self.net(self.inputs(x), rng)
        return F.cross_entropy(logits.flatten(0, 1).float(), x.flatten())

    def token_nll(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(summed NLL in nats as a float64 scalar, token count) of `x` [N, L] under the sampling network in eval
        mode, NLL_BATCH sequences at a time."""
        x = self.check_tokens(x)
        net = self.sampling_net
        was_training = net.training
        net.eval()
        total = 0.0  # a Python float: summed in float64 on every device
        try:
            with torch.no_grad():
                for chunk in x.split(NLL_BATCH):
                    logits = net(self.inputs(chunk))
                    nll = F.cross_entropy(logits.flatten(0, 1).float(), chunk.flatten(), reduction="none")
                    total += float(nll.double().sum())
        finally:
            net.train(was_training)
        return torch.tensor(total, dtype=torch.float64), x.numel()

    def generate(self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        uniforms = PerSampleRNG(seeds, self.device).rand(self.net.context)  # one uniform per token, from the seed
        return sampler(self.sampling_net, uniforms, prefix=prompt_prefixes(sampler, seeds, self.device)), None

    def export_samples(self, x: torch.Tensor) -> np.ndarray:
        """The token ids as an int64 array [N, context]."""
        return x.detach().cpu().numpy().astype(np.int64)
