"""The schedulers' training objectives: noise a clean image to a random timestep and regress the
scheduler's prediction target; for flow matching, interpolate toward the noise and regress the velocity
ε − x0 (docs/upstream/diffusers.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from neon.core.errors import NeonError
from neon.core.seeding import StepNoise
from neon.families.diffusers_family.folder import FLOW_SCHEDULERS

WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")


@dataclass(frozen=True)
class FlowWeighting:
    """The flow training scripts' `--weighting_scheme`: the density of the timestep and a loss weight per σ."""

    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    def __post_init__(self) -> None:
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise NeonError(f"model.flow_weighting.weighting_scheme '{self.weighting_scheme}' is not one of "
                            f"{', '.join(WEIGHTING_SCHEMES)}")

    def index(self, noise: StepNoise, steps: int) -> torch.Tensor:
        """The training timestep's index per image, ⌊u·steps⌋ with u from the scheme's density (the uniform
        `none` draws the index itself, as before there were schemes)."""
        scheme = self.weighting_scheme
        if scheme == "logit_normal":
            u = torch.sigmoid(self.logit_mean + self.logit_std * noise.randn())
        elif scheme == "mode":
            u0 = noise.rand()
            u = 1 - u0 - self.mode_scale * (torch.cos(math.pi * u0 / 2) ** 2 - 1 + u0)
        elif scheme == "none":
            return noise.randint(steps)
        else:
            u = noise.rand()
        # a sigmoid can round to 1.0: the last index, not one past the schedule
        return (u * steps).long().clamp(0, steps - 1)

    def weight(self, sigma: torch.Tensor) -> torch.Tensor | None:
        """The loss weight per image at its σ (None: 1)."""
        if self.weighting_scheme == "sigma_sqrt":
            return sigma.float() ** -2.0
        if self.weighting_scheme == "cosmap":
            return 2 / (math.pi * (1 - 2 * sigma.float() + 2 * sigma.float() ** 2))
        return None


def prediction_target(scheduler, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network regresses for `prediction_type`: the noise, the velocity or the clean image."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, eps, t)
    return x0


def noised(scheduler, x0: torch.Tensor, noise: StepNoise, flow: FlowWeighting = FlowWeighting()
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x_t, t, target, loss weight or None) for one batch: the training timestep's index over the scheduler's
    training schedule (uniform; flow schedulers: `flow`'s density), then ε, both from the step's noise (so DDP
    draws what one process draws)."""
    steps = int(scheduler.config.num_train_timesteps)
    is_flow = type(scheduler).__name__ in FLOW_SCHEDULERS
    index = flow.index(noise, steps) if is_flow else noise.randint(steps)
    eps = noise.randn(*x0.shape[1:], dtype=x0.dtype)
    if not is_flow:
        return scheduler.add_noise(x0, eps, index), index, prediction_target(scheduler, x0, eps, index), None
    # flow matching: the untouched training schedule's σ (shifted) and its timestep σ·num_train_timesteps
    sigma = scheduler.sigmas[index].to(x0.device, x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    xt = (1 - sigma) * x0 + sigma * eps
    return xt, scheduler.timesteps[index].to(x0.device), eps - x0, flow.weight(sigma)


def scheduler_loss(net: nn.Module, scheduler, x0: torch.Tensor, labels: torch.Tensor | None,
                   noise: StepNoise, flow: FlowWeighting = FlowWeighting()) -> torch.Tensor:
    """Mean squared error of the network's prediction at x_t against the scheduler's target (weighted per
    image by `flow`'s scheme for flow schedulers)."""
    xt, t, target, weight = noised(scheduler, x0, noise, flow)
    # a learned variance's channels (the second half, DiT) get no target: the variational term is not used
    prediction = net(xt, t, class_labels=labels).sample[:, :x0.shape[1]]
    if weight is None:
        return F.mse_loss(prediction.float(), target.float())
    return (weight * (prediction.float() - target.float()) ** 2).mean()
