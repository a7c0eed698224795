"""The noise schedulers' training objective: noise a clean image to a random timestep and regress the
scheduler's prediction target (docs/upstream/diffusers.md)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from neon.seeding import StepNoise


def prediction_target(scheduler, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network regresses for `prediction_type`: the noise, the velocity or the clean image."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, eps, t)
    return x0


def scheduler_loss(net: nn.Module, scheduler, x0: torch.Tensor, labels: torch.Tensor | None,
                   noise: StepNoise) -> torch.Tensor:
    """Mean squared error of the network at x_t = add_noise(x0, ε, t); t and ε come from the step's noise,
    t uniform over the scheduler's training timesteps (so DDP draws what one process draws)."""
    t = noise.randint(int(scheduler.config.num_train_timesteps))
    eps = noise.randn(*x0.shape[1:], dtype=x0.dtype)
    xt = scheduler.add_noise(x0, eps, t)
    # a learned variance's channels (the second half, DiT) get no target: the variational term is not used
    prediction = net(xt, t, class_labels=labels).sample[:, :x0.shape[1]]
    return F.mse_loss(prediction.float(), prediction_target(scheduler, x0, eps, t).float())
