"""Training losses of each preconditioning (per-element, as the official code returns them)."""

from __future__ import annotations

import torch

from neon.families.edm.precond import EDMPrecond, Precond, VEPrecond, VPPrecond


def edm_loss(net: EDMPrecond, images: torch.Tensor, labels: torch.Tensor | None,
             P_mean: float = -1.2, P_std: float = 1.2) -> torch.Tensor:
    """ln σ ~ N(P_mean, P_std²), weight (σ² + σ_d²)/(σ·σ_d)²."""
    sigma = (torch.randn([images.shape[0], 1, 1, 1], device=images.device) * P_std + P_mean).exp()
    sd = net.sigma_data
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    noise = torch.randn_like(images) * sigma
    return weight * (net(images + noise, sigma, labels) - images) ** 2


def vp_loss(net: VPPrecond, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """t ~ U(ε_t, 1) mapped through the VP schedule, weight 1/σ²."""
    u = torch.rand([images.shape[0], 1, 1, 1], device=images.device)
    sigma = net.sigma(1 + u * (net.epsilon_t - 1))
    noise = torch.randn_like(images) * sigma
    return (net(images + noise, sigma, labels) - images) ** 2 / sigma ** 2


def ve_loss(net: VEPrecond, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """σ log-uniform on [σ_min, σ_max], weight 1/σ²."""
    u = torch.rand([images.shape[0], 1, 1, 1], device=images.device)
    sigma = net.sigma_min * ((net.sigma_max / net.sigma_min) ** u)
    noise = torch.randn_like(images) * sigma
    return (net(images + noise, sigma, labels) - images) ** 2 / sigma ** 2


LOSSES = {EDMPrecond: edm_loss, VPPrecond: vp_loss, VEPrecond: ve_loss}


def loss_for(net: Precond):
    """The loss that trains this preconditioning."""
    return LOSSES[type(net)]
