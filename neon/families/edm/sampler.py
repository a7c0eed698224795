"""EDM's Heun sampler (Karras et al. 2022, Algorithm 2 with optional churn), written from
docs/upstream/edm.md: the probability-flow ODE integrated in float64 over a ρ-spaced σ schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """σ_0 = σ_max > … > σ_{n−1} = σ_min, evenly spaced in σ^(1/ρ) (float64)."""
    step = torch.arange(num_steps, dtype=torch.float64, device=device) / (num_steps - 1)
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (top + step * (bottom - top)) ** rho


def _ode_slope(net, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    # dx/dσ = (x − D(x; σ)) / σ
    return (x - net(x, sigma, labels).to(torch.float64)) / sigma


@torch.no_grad()
def heun_sampler(net, latents: torch.Tensor, class_labels: torch.Tensor | None = None,
                 randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like, num_steps: int = 18,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, S_churn: float = 0.0,
                 S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0) -> torch.Tensor:
    """Images from unit-variance `latents`: num_steps Heun steps (the last one Euler), 2·num_steps − 1
    network evaluations. With S_churn > 0, each step whose σ lies in [S_min, S_max] first raises σ by a
    factor 1 + γ and adds the matching fresh noise from `randn_like` (one draw per step, in step order)."""
    sigma_min, sigma_max = max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max)
    sigmas = net.round_sigma(karras_sigmas(num_steps, sigma_min, sigma_max, rho, latents.device))
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    gamma_max = min(S_churn / num_steps, math.sqrt(2) - 1)

    x = latents.to(torch.float64) * sigmas[0]
    for i in range(num_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if S_churn > 0:  # without churn the added noise would be zero: skip the draw
            gamma = gamma_max if S_min <= sigma <= S_max else 0
            raised = net.round_sigma(sigma + gamma * sigma)
            x = x + (raised ** 2 - sigma ** 2).sqrt() * S_noise * randn_like(x)
            sigma = raised
        slope = _ode_slope(net, x, sigma, class_labels)
        euler = x + (sigma_next - sigma) * slope
        if i == num_steps - 1:
            return euler
        slope_next = _ode_slope(net, euler, sigma_next, class_labels)
        x = x + (sigma_next - sigma) * (0.5 * slope + 0.5 * slope_next)
    return x
