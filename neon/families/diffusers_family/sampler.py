"""Sampling through a diffusers scheduler as DDPMPipeline and DDIMPipeline loop, with one generator per
image (docs/upstream/diffusers.md): the images equal the pipeline's for a list of per-image generators."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from neon.errors import NeonError


def scheduler_sampler(net: nn.Module, scheduler, latents: torch.Tensor, labels: torch.Tensor | None,
                      generators: Sequence[torch.Generator], num_inference_steps: int = 50, eta: float = 0.0,
                      scheduler_class: str | None = None) -> torch.Tensor:
    """Denoise `latents` over `num_inference_steps` of `scheduler` (or the class `scheduler_class` built from
    its config); `eta` for schedulers that take one (DDIM). Returns the last sample, unclipped."""
    if scheduler_class is not None:
        import diffusers

        from neon.families.diffusers_family.folder import SCHEDULERS

        if scheduler_class not in SCHEDULERS:
            raise NeonError(f"sampler.scheduler_class '{scheduler_class}' is not one of {', '.join(SCHEDULERS)}")
        scheduler = getattr(diffusers, scheduler_class).from_config(scheduler.config)
    takes_eta = "eta" in inspect.signature(scheduler.step).parameters
    if eta and not takes_eta:
        raise NeonError(f"sampler.eta={eta}: {type(scheduler).__name__} takes no eta; use "
                        "sampler.scheduler_class=DDIMScheduler or eta=0")
    step_kwargs = {"eta": eta} if takes_eta else {}
    # a list of one generator is that generator, as diffusers' randn_tensor treats it
    generator = list(generators) if len(generators) > 1 else generators[0]
    scheduler.set_timesteps(int(num_inference_steps))
    x = latents
    for t in scheduler.timesteps:
        out = net(x, t, class_labels=labels).sample
        x = scheduler.step(out, t, x, generator=generator, **step_kwargs).prev_sample
    return x
