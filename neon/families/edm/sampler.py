"""EDM's Heun sampler (deterministic, or stochastic with churn), stepping in float64."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


@torch.no_grad()
def heun_sampler(net, latents: torch.Tensor, class_labels: torch.Tensor | None = None,
                 randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like, num_steps: int = 18,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, S_churn: float = 0.0,
                 S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0) -> torch.Tensor:
    """Karras et al. (2022), Algorithm 2: 2nd-order Heun steps over a ρ-spaced σ schedule.

    With churn, noise is drawn at every step (scaled by zero outside [S_min, S_max]) so that the stream
    of draws, and hence every image under a given seed, is the official generator's. Without churn every
    draw would be multiplied by zero and none follows, so none is made: same images, less time.
    """
    sigma_min, sigma_max = max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max)
    i = torch.arange(num_steps, dtype=torch.float64, device=latents.device)
    t_steps = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([net.round_sigma(t_steps), torch.zeros_like(t_steps[:1])])

    x_next = latents.to(torch.float64) * t_steps[0]
    for step, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur) if S_churn > 0 else x_cur
        d_cur = (x_hat - net(x_hat, t_hat, class_labels).to(torch.float64)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if step < num_steps - 1:
            d_prime = (x_next - net(x_next, t_next, class_labels).to(torch.float64)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next
