"""EDM's denoising loss λ(σ)·(D(y + n; σ) − y)², n ~ N(0, σ²I), per element; σ and λ come from the
preconditioning. Every draw comes from the step's `StepNoise` (σ first, then n), not the global generator."""

from __future__ import annotations

import torch

from neon.core.seeding import StepNoise
from neon.families.edm.precond import Preconditioner


def denoising_loss(net: Preconditioner, images: torch.Tensor, labels: torch.Tensor | None, noise: StepNoise,
                   **sigma_kwargs: float) -> torch.Tensor:
    """The per-element training loss of any preconditioning (`sigma_kwargs`: EDM's P_mean, P_std)."""
    sigma = net.training_sigma(noise, **sigma_kwargs)
    weight = net.loss_weight(sigma)
    perturbation = noise.randn(*images.shape[1:], dtype=images.dtype) * sigma
    return weight * (net(images + perturbation, sigma, labels) - images) ** 2
