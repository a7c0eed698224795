"""The schedulers' training objectives: noise a clean image to a random timestep and regress the
scheduler's prediction target; for flow matching, interpolate toward the noise and regress the velocity
ε − x0 (docs/upstream/diffusers.md)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from neon.families.diffusers_family.folder import FLOW_SCHEDULERS
from neon.seeding import StepNoise


def prediction_target(scheduler, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network regresses for `prediction_type`: the noise, the velocity or the clean image."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, eps, t)
    return x0


def noised(scheduler, x0: torch.Tensor, noise: StepNoise) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target) for one batch: the training timestep's index uniform over the scheduler's training
    schedule, then ε, both from the step's noise (so DDP draws what one process draws)."""
    index = noise.randint(int(scheduler.config.num_train_timesteps))
    eps = noise.randn(*x0.shape[1:], dtype=x0.dtype)
    if type(scheduler).__name__ not in FLOW_SCHEDULERS:
        return scheduler.add_noise(x0, eps, index), index, prediction_target(scheduler, x0, eps, index)
    # flow matching: the untouched training schedule's σ (shifted) and its timestep σ·num_train_timesteps
    sigma = scheduler.sigmas[index].to(x0.device, x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return (1 - sigma) * x0 + sigma * eps, scheduler.timesteps[index].to(x0.device), eps - x0


def scheduler_loss(net: nn.Module, scheduler, x0: torch.Tensor, labels: torch.Tensor | None,
                   noise: StepNoise) -> torch.Tensor:
    """Mean squared error of the network's prediction at x_t against the scheduler's target."""
    xt, t, target = noised(scheduler, x0, noise)
    # a learned variance's channels (the second half, DiT) get no target: the variational term is not used
    prediction = net(xt, t, class_labels=labels).sample[:, :x0.shape[1]]
    return F.mse_loss(prediction.float(), target.float())
