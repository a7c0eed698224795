"""xAR's sampler: clusters one after another, each integrated from noise by Euler–Maruyama on the
flow-matching SDE (time 1 → t_min, then one deterministic step to 0) with classifier-free guidance on the
drift, its scale ramped linearly over clusters. Seeded per sample (the pipeline) or per batch (the release)."""

from __future__ import annotations

import numbers

import torch

from neon.core.errors import NeonError
from neon.core.seeding import PerSampleRNG
from neon.families.xar.transformer import XARTransformer

# one generator for the whole batch (the release run on one device), a (start noise, step noise) pair
# of generators (the release on a GPU: start noise on the CPU, step noise on the GPU), or one per sample
Randomness = PerSampleRNG | torch.Generator | tuple[torch.Generator, torch.Generator]


def _normal(rng: Randomness, batch: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
            step: bool) -> torch.Tensor:
    if isinstance(rng, PerSampleRNG):
        if len(rng) != batch:
            raise NeonError(f"{len(rng)} sample generators for a batch of {batch}")
        return rng.randn(*shape, dtype=dtype).to(device)
    gen = rng[1 if step else 0] if isinstance(rng, tuple) else rng
    return torch.randn((batch, *shape), generator=gen, dtype=dtype, device=gen.device).to(device)


def cluster_cfg(cfg: float, cluster: int, clusters: int) -> float:
    """The guidance scale of one cluster: 1 for the first, `cfg` for the last, linear between."""
    if clusters == 1:
        return float(cfg)
    return (cfg - 1) * cluster / (clusters - 1.0) + 1  # the release's expression order (float rounding)


def check_settings(num_steps: int, cfg: float, t_min: float) -> None:
    """Refuse step counts, guidance scales and end times the sampler cannot use, naming the value."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise NeonError(f"sampler.num_steps must be a positive integer, got {num_steps!r}")
    if isinstance(cfg, bool) or not isinstance(cfg, numbers.Real):
        raise NeonError(f"sampler.cfg must be a number (1: no guidance), got {cfg!r}")
    if not 0 < float(t_min) < 1:
        raise NeonError(f"sampler.t_min must be in (0, 1), got {t_min!r}")


def sde_drift(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor, w: float) -> torch.Tensor:
    """The guided SDE drift for the doubled batch (conditional half first) from its velocity `v` at `x`, t."""
    # the score of the linear path x_t = (1 − t)·x₀ + t·ε from the velocity, then the drift with diffusion
    # 2t, in float64 and in the release's operation order (bit-exact sampling); guidance acts on the drift
    ratio = (1 - t) / -1.0
    score = (ratio * v - x) / (t ** 2 - ratio * t)
    drift = v - 0.5 * (2 * t) * score
    cond, uncond = drift.chunk(2)
    return uncond + w * (cond - uncond) if w > 1.0 else cond


@torch.no_grad()
def xar_sampler(net: XARTransformer, latent, labels: torch.Tensor, rng: Randomness, num_steps: int = 40,
                cfg: float = 2.7, t_min: float = 0.04, amp: bool = False) -> torch.Tensor:
    """Images for class ids `labels` [B], decoded by `latent`. Each cluster starts from float32 noise; each of
    its first num_steps − 1 steps draws float64 noise before the network call; the first step also feeds the
    clean previous cluster (at time 0) and caches its keys and values. `amp` runs the network and the decoder
    under float16 autocast on CUDA, as the release samples (the SDE arithmetic stays float64)."""
    check_settings(num_steps, cfg, t_min)
    b, device = labels.shape[0], labels.device
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=bool(amp) and device.type == "cuda")
    both = torch.cat([labels, torch.full_like(labels, net.num_classes)])  # conditional half, then null class
    times = torch.cat([torch.linspace(1.0, t_min, num_steps, dtype=torch.float64),
                       torch.zeros(1, dtype=torch.float64)]).to(device)
    shape = (net.cluster_size, net.channels)
    done: list[torch.Tensor] = []
    net.clear_cache()
    try:
        for c in range(net.num_clusters):
            w = cluster_cfg(cfg, c, net.num_clusters)
            x = _normal(rng, b, shape, torch.float32, device, step=False).to(torch.float64)
            for j in range(num_steps):
                t, dt = times[j], times[j + 1] - times[j]
                last = j == num_steps - 1
                eps = None if last else _normal(rng, b, shape, torch.float64, device, step=True)
                tokens, t_rows = x, torch.full((2 * b,), float(t), dtype=torch.float64, device=device)
                if j == 0 and done:
                    tokens = torch.cat([done[-1].to(torch.float64), x], dim=1)
                    t_rows = torch.cat([torch.zeros_like(t_rows), t_rows])
                with autocast:
                    v = net.sample_step(tokens.repeat(2, 1, 1).float(), both, t_rows, c, update_cache=j == 0)
                d = sde_drift(v.to(torch.float64), x.repeat(2, 1, 1), t, w)
                x = x + dt * d if last else x + d * dt + torch.sqrt(2 * t) * (eps * torch.sqrt(dt.abs()))
            done.append(x.float())
    finally:
        net.clear_cache()
    with autocast:
        return latent.decode(net.from_sequence(torch.cat(done, dim=1))).float()
