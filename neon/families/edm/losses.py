"""Training losses of each preconditioning (per-element, as the official code returns them). The random
draws come from the step's `StepNoise` instead of the global generator (same distributions)."""

from __future__ import annotations

import torch

from neon.families.edm.precond import EDMPrecond, Precond, VEPrecond, VPPrecond
from neon.seeding import StepNoise


def edm_loss(net: EDMPrecond, images: torch.Tensor, labels: torch.Tensor | None, noise: StepNoise,
             P_mean: float = -1.2, P_std: float = 1.2) -> torch.Tensor:
    """ln σ ~ N(P_mean, P_std²), weight (σ² + σ_d²)/(σ·σ_d)²."""
    sigma = (noise.randn(1, 1, 1) * P_std + P_mean).exp()
    sd = net.sigma_data
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    n = noise.randn(*images.shape[1:], dtype=images.dtype) * sigma
    return weight * (net(images + n, sigma, labels) - images) ** 2


def vp_loss(net: VPPrecond, images: torch.Tensor, labels: torch.Tensor | None, noise: StepNoise) -> torch.Tensor:
    """t ~ U(ε_t, 1) mapped through the VP schedule, weight 1/σ²."""
    u = noise.rand(1, 1, 1)
    sigma = net.sigma(1 + u * (net.epsilon_t - 1))
    n = noise.randn(*images.shape[1:], dtype=images.dtype) * sigma
    return (net(images + n, sigma, labels) - images) ** 2 / sigma ** 2


def ve_loss(net: VEPrecond, images: torch.Tensor, labels: torch.Tensor | None, noise: StepNoise) -> torch.Tensor:
    """σ log-uniform on [σ_min, σ_max], weight 1/σ²."""
    u = noise.rand(1, 1, 1)
    sigma = net.sigma_min * ((net.sigma_max / net.sigma_min) ** u)
    n = noise.randn(*images.shape[1:], dtype=images.dtype) * sigma
    return (net(images + n, sigma, labels) - images) ** 2 / sigma ** 2


LOSSES = {EDMPrecond: edm_loss, VPPrecond: vp_loss, VEPrecond: ve_loss}


def loss_for(net: Precond):
    """The loss that trains this preconditioning."""
    return LOSSES[type(net)]
