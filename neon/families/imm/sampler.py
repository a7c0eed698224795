"""IMM's pushforward sampler: a few uniform jumps T → … → eps of the network x_t → x_s, guidance on the
network output, no noise after the start (so the sample is a function of its initial noise)."""

from __future__ import annotations

import torch

from neon.core.errors import NeonError
from neon.families.imm.network import IMMPrecond

SUPPORTED_STEPS = (1, 2, 4, 8)  # the release's presets, and the step counts the reference protocol sweeps


def check_settings(num_steps: int, cfg: float | None) -> None:
    """Refuse step counts outside the released presets and non-numeric guidance, naming the value."""
    if isinstance(num_steps, bool) or num_steps not in SUPPORTED_STEPS:
        raise NeonError(f"sampler.num_steps must be one of {list(SUPPORTED_STEPS)} (IMM's uniform pushforward "
                        f"presets), got {num_steps!r}")
    if cfg is not None and (isinstance(cfg, bool) or not isinstance(cfg, (int, float))):
        raise NeonError(f"sampler.cfg must be a number or null (no guidance), got {cfg!r}")


@torch.no_grad()
def pushforward_sampler(net: IMMPrecond, latent, noise: torch.Tensor, labels: torch.Tensor, num_steps: int = 8,
                        cfg: float | None = 1.5) -> torch.Tensor:
    """Images from initial latents `noise` (N(0, σ_d²), float32) and class ids `labels`: `num_steps` jumps on
    linspace(T, eps) in float64 with the network in float32; `cfg` null runs the conditional network alone
    (a number, 1 included, doubles the batch as the release does)."""
    check_settings(num_steps, cfg)
    times = torch.linspace(net.T, net.eps, num_steps + 1, dtype=torch.float64, device=noise.device)
    x = noise.to(torch.float64)
    for t, s in zip(times[:-1], times[1:], strict=True):
        x = (net(x, t, s, labels) if cfg is None else net.cfg_forward(x, t, s, labels, float(cfg))).to(torch.float64)
    return latent.decode(x.float())
