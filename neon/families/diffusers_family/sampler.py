"""Sampling through a diffusers scheduler as DDPMPipeline, DDIMPipeline and DiTPipeline loop, with one
generator per image (docs/upstream/diffusers.md): for the same seeds (and labels) the latents equal the
pipeline's with a list of per-image generators."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from neon.core.errors import NeonError


def _scheduler_of(scheduler, scheduler_class: str | None):
    if scheduler_class is None:
        return scheduler
    import diffusers

    from neon.families.diffusers_family.folder import SCHEDULERS

    if scheduler_class not in SCHEDULERS:
        raise NeonError(f"sampler.scheduler_class '{scheduler_class}' is not one of {', '.join(SCHEDULERS)}")
    return getattr(diffusers, scheduler_class).from_config(scheduler.config)


def guided_prediction(net: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                      guidance_scale: float, null_label: int | None) -> torch.Tensor:
    """The network's prediction for the scheduler: with guidance > 1, one pass over [x, x] with [labels,
    null] and ε_uncond + g·(ε_cond − ε_uncond); only the first channels of x's count (a learned variance's
    second half is dropped, as DiTPipeline does)."""
    channels = x.shape[1]
    guided = guidance_scale > 1 and labels is not None
    if guided:
        if null_label is None:
            raise NeonError(f"sampler.guidance_scale={guidance_scale}: the network has no null class to guide "
                            "with; use guidance_scale=1")
        x = torch.cat([x, x])
        labels = torch.cat([labels, torch.full_like(labels, null_label)])
    # return_dict=False: a plain tuple, which the output-space twin can combine (neon/analysis/output_twin.py)
    out = net(x, t.expand(len(x)), class_labels=labels, return_dict=False)[0][:, :channels]
    if guided:
        cond, uncond = out.chunk(2)
        out = uncond + guidance_scale * (cond - uncond)
    return out


def scheduler_sampler(net: nn.Module, scheduler, latents: torch.Tensor, labels: torch.Tensor | None,
                      generators: Sequence[torch.Generator], null_label: int | None = None,
                      num_inference_steps: int = 50, eta: float = 0.0, scheduler_class: str | None = None,
                      guidance_scale: float = 1.0) -> torch.Tensor:
    """Denoise `latents` over `num_inference_steps` of `scheduler` (or the class `scheduler_class` built from
    its config); `eta` for schedulers that take one (DDIM), classifier-free guidance with the network's
    `null_label`. Returns the last sample, unclipped."""
    scheduler = _scheduler_of(scheduler, scheduler_class)
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
        scaled = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = guided_prediction(net, scaled, t, labels, guidance_scale, null_label)
        # DiTPipeline steps its doubled batch (both halves alike) without a generator; stepping one half
        # with the per-image generators is the same for deterministic schedulers and seeds stochastic ones
        x = scheduler.step(out, t, x, generator=generator, **step_kwargs).prev_sample
    return x
