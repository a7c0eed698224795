"""VAR's sampler: next-scale prediction with classifier-free guidance ramped over scales, top-k and
top-p filtering, and either one generator per sample (the pipeline) or one per batch (the release)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from neon.core.errors import NeonError
from neon.core.seeding import PerSampleRNG
from neon.families.var.transformer import VARTransformer
from neon.families.var.vqvae import VQVAE

Randomness = torch.Generator | PerSampleRNG


def _streams(rng: Randomness, batch: int) -> Iterator[tuple[torch.Generator, slice]]:
    # one generator for the whole batch (the release's convention), or one per sample (ours): the rows
    # each generator draws for
    if isinstance(rng, torch.Generator):
        yield rng, slice(0, batch)
        return
    if len(rng) != batch:
        raise NeonError(f"{len(rng)} sample generators for a batch of {batch}")
    for i, g in enumerate(rng.generators):
        yield g, slice(i, i + 1)


def check_filters(top_k: int, top_p: float, vocab_size: int) -> None:
    """Refuse top-k / top-p settings outside their ranges, naming the value."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= vocab_size:
        raise NeonError(f"sampler.top_k must be an integer in [0, {vocab_size}] (0: no top-k), got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 <= float(top_p) <= 1:
        raise NeonError(f"sampler.top_p must be in [0, 1] (0 or 1: no top-p, as in the release), got {top_p!r}")


def filter_top_k_top_p_(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to −inf, in place, every logit outside the k largest and outside the smallest set of tokens
    holding probability top_p (the largest token always stays); top_k = 0 and top_p = 0 turn their filter off,
    as in the release."""
    if top_k > 0:
        kth = logits.topk(top_k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    if top_p <= 0:
        return logits
    ascending, order = logits.sort(dim=-1, descending=False)
    drop = ascending.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
    drop[..., -1:] = False
    logits.masked_fill_(drop.scatter(-1, order, drop), -torch.inf)
    return logits


def draw_tokens(logits: torch.Tensor, rng: Randomness) -> torch.Tensor:
    """One token per position [B, n] from filtered logits [B, n, V]."""
    b, n, v = logits.shape
    probs = logits.softmax(dim=-1)
    out = torch.empty(b, n, dtype=torch.long, device=logits.device)
    for g, rows in _streams(rng, b):
        out[rows] = torch.multinomial(probs[rows].reshape(-1, v), 1, replacement=True, generator=g).view(-1, n)
    return out


def gumbel_softmax(logits: torch.Tensor, tau: float, rng: Randomness) -> torch.Tensor:
    """Soft one-hot weights softmax((logits + Gumbel noise)/tau) with seeded noise."""
    gumbel = torch.empty_like(logits)
    for g, rows in _streams(rng, logits.shape[0]):
        gumbel[rows] = -torch.empty_like(logits[rows]).exponential_(generator=g).log()
    return ((logits + gumbel) / tau).softmax(dim=-1)


@torch.no_grad()
def var_sampler(net: VARTransformer, vae: VQVAE, labels: torch.Tensor, rng: Randomness, cfg: float = 1.5,
                top_k: int = 900, top_p: float = 0.95, more_smooth: bool = False) -> torch.Tensor:
    """Images in [-1, 1] for class ids `labels` [B]. At scale si of K the logits are
    (1 + t)·cond − t·uncond with t = cfg·si/(K − 1); `more_smooth` mixes the codebook with Gumbel-softmax
    weights instead of taking the drawn token."""
    check_filters(top_k, top_p, net.vocab_size)
    b, patch_nums, quant = labels.shape[0], net.patch_nums, vae.quantize
    last = len(patch_nums) - 1
    f_hat = quant.embedding.weight.new_zeros(b, quant.channels, patch_nums[-1], patch_nums[-1])
    nxt = None  # the VAE's input to the next scale, [B, pn², Cvae]
    net.set_caching(True)
    try:
        for si, pn in enumerate(patch_nums):
            ratio = si / last if last else 0.0
            logits = net.scale_logits(labels, si, nxt)
            t = cfg * ratio
            logits = (1 + t) * logits[:b] - t * logits[b:]
            filter_top_k_top_p_(logits, top_k, top_p)
            idx = draw_tokens(logits, rng)
            if more_smooth:  # the drawn tokens are discarded, as in the release
                weights = gumbel_softmax(logits.mul(1 + ratio), max(0.27 * (1 - ratio * 0.95), 0.005), rng)
                h = weights @ quant.embedding.weight.unsqueeze(0)
            else:
                h = quant.embedding(idx)
            h = h.transpose_(1, 2).reshape(b, quant.channels, pn, pn)
            f_hat, nxt = quant.next_input(si, f_hat, h)
            if si != last:
                nxt = nxt.view(b, quant.channels, -1).transpose(1, 2)
    finally:
        net.set_caching(False)
    return vae.decode(f_hat)
