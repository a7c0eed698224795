"""The IMM family as a NeonModule: θ is the IMMPrecond-wrapped DiT (its EMA at 0.9999 is what samples and
what Neon merges, as in the reference fine-tune); the latent space (SD-VAE or the images) is frozen."""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neon.core.contract import (
    EMA,
    Batch,
    HasOutputTwin,
    HasReleaseCheckpoints,
    HasReleaseSampling,
    Sampler,
    plain_kwargs,
)
from neon.core.errors import NeonError
from neon.core.io import StateDict, dim_of
from neon.core.release_sampling import UNCONDITIONAL, Draw, LabelSpec, RecordingLatent, batch_labels, sizes_of
from neon.core.seeding import PerSampleRNG, StepNoise
from neon.families.imm.loss import imm_loss
from neon.families.imm.network import IMMPrecond
from neon.families.imm.sampler import pushforward_sampler
from neon.families.latent_family import LatentImageModule, check_architecture, check_class_ids
from neon.weights.persistence import read_snapshot
from neon.weights.readers import read_weights

log = logging.getLogger("neon")

# Settings a snapshot records that change outputs without changing any tensor's shape: compared with the config.
SCHEDULE_KEYS = ("temb_type", "time_scale", "sigma_data", "T", "eps")
# Recorded settings neon implements one value of: (key, the only value supported).
FIXED_KEYS = (("noise_schedule", "fm"), ("f_type", "euler_fm"), ("s_embed", True))
_DEFAULTS = {k: p.default for k, p in inspect.signature(IMMPrecond).parameters.items()}


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return not math.isclose(float(a), float(b), rel_tol=0, abs_tol=0)
    return a != b


def settings_to_adopt(path: str | Path, recorded: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded schedule settings that differ from a config left at IMMPrecond's defaults (to adopt);
    a one-line NeonError where the config sets another value on purpose, or the snapshot needs a variant
    neon does not implement."""
    for key, only in FIXED_KEYS:
        if key in recorded and recorded[key] != only:
            raise NeonError(f"IMM snapshot '{path}' was built with {key}={recorded[key]!r}; neon implements only "
                            f"{key}={only!r}: use a release built that way (imagenet256_ts_a2.pkl, _s_a1.pkl)")
    adopt = {}
    for key in SCHEDULE_KEYS:
        if key not in recorded or not _differs(recorded[key], config.get(key, _DEFAULTS[key])):
            continue
        mine = config.get(key, _DEFAULTS[key])
        if _differs(mine, _DEFAULTS[key]):
            raise NeonError(f"IMM snapshot '{path}' was built with {key}={recorded[key]!r} but the config sets "
                            f"model.network.{key}={mine!r}: set model.network.{key}={recorded[key]!r} (or drop the "
                            "override to adopt the snapshot's)")
        adopt[key] = recorded[key]
    return adopt


class IMMModule(LatentImageModule, HasOutputTwin, HasReleaseSampling, HasReleaseCheckpoints):
    """IMM: the moment-matching loss over groups of `loss.group_size` consecutive samples (the fine-tune batch
    must be a multiple of it on every process); samples are images in [-1, 1] on the 8-bit grid the reference
    decodes to (truncated)."""

    family = "IMM"
    release_note = ("IMM's releases (imagenet256_ts_a2.pkl) are persistence pickles that carry their own source "
                    "code; none is written here. The safetensors hold the `ema` network's state dict under the "
                    "release's names: generate_images.py copies a network's parameters and buffers by name, "
                    "so they load into the network the official code builds")
    samplers = {"imm": pushforward_sampler}
    twin_outputs = ("forward", "cfg_forward")  # x_s = x − (t − s)·σ_d·F is affine in F: combining x_s combines F

    def __init__(self, network: Mapping[str, Any], latent: nn.Module, vae_checkpoint: str | None = None,
                 optimizer=None, ema_decay: float | None = 0.9999, loss: Mapping[str, Any] | None = None,
                 quantize: bool = True):
        self.network_kwargs = plain_kwargs(network)
        net = self.build_net(self.network_kwargs)
        super().__init__(net, optimizer=optimizer, ema=EMA(decay=ema_decay) if ema_decay else None,
                         num_classes=net.num_classes)
        self.attach_latent(latent, vae_checkpoint, net.img_channels, net.img_resolution,
                           needs="the sd-vae-ft-ema folder or its diffusion_pytorch_model.safetensors",
                           keys="model.network.img_channels and model.network.img_resolution")
        self.loss_kwargs, self.quantize = dict(loss or {}), quantize

    @classmethod
    def build_net(cls, network: Mapping[str, Any]) -> IMMPrecond:
        """The IMMPrecond-wrapped DiT of `model.network`."""
        return IMMPrecond(**network)

    # --- checkpoints
    def read_checkpoint(self, path: str | Path) -> StateDict:
        """A released snapshot (.pkl, its `ema` network, read without running its code) or a state dict,
        checked for depth, width, patch size, channels, tokens and classes."""
        return self._checked(path, read_weights(path, what="IMM snapshot" if Path(path).suffix == ".pkl"
                                                else "checkpoint"))

    def _checked(self, path: str | Path, state: StateDict) -> StateDict:
        net = self.net.model
        proj = state.get("model.x_embedder.proj.weight")
        depth = len({int(m.group(1)) for k in state if (m := re.match(r"model\.blocks\.(\d+)\.", k))})
        checks = [
            ("depth", depth, len(net.blocks), "model.network.depth (or model_type)"),
            ("width", dim_of(state, "model.pos_embed", 2), net.pos_embed.shape[2], "model.network.hidden_size"),
            ("patch size", int(proj.shape[2]) if proj is not None else None, net.patch_size,
             "model.network.patch_size"),
            ("input channels", dim_of(state, "model.x_embedder.proj.weight", 1), net.in_channels,
             "model.network.img_channels"),
            ("token count", dim_of(state, "model.pos_embed", 1), net.grid ** 2, "model.network.img_resolution"),
            ("class count", (dim_of(state, "model.y_embedder.embedding_table.weight", 0) or 1) - 1, net.num_classes,
             "model.network.num_classes"),
        ]
        check_architecture(path, "IMM", checks, "model=imm_xl2 for the released ImageNet-256 snapshot")
        return state

    def load_checkpoint(self, path: str | Path, shape_from_checkpoint: bool = False) -> None:
        """Load θ; a released snapshot's recorded schedule (T, eps, sigma_data, time_scale, temb_type) is
        compared with the config: adopted, with a log line, where the config was left at its defaults,
        else a one-line error naming both values."""
        if Path(path).suffix == ".pkl":
            snap = read_snapshot(path, what="IMM snapshot")
            adopt = settings_to_adopt(path, snap.init_kwargs, self.network_kwargs)
            if adopt:
                log.info("IMM snapshot '%s' records %s: adopted (the config left %s at the default)", path,
                         ", ".join(f"{k}={v!r}" for k, v in adopt.items()), ", ".join(adopt))
                self.network_kwargs.update(adopt)
                for net in filter(None, (self.net, self.ema)):
                    for key, value in adopt.items():
                        setattr(net, key, value)
            # the snapshot read once: its weights, checked as read_checkpoint checks them
            self.load_neon_weights(self._checked(path, snap.state_dict), source=f"checkpoint '{path}'")
            return
        super().load_checkpoint(path, shape_from_checkpoint)

    # --- training
    def loss(self, batch: Batch, noise: StepNoise) -> torch.Tensor:
        x, labels = batch["x"], batch.get("label")
        self.check_images(x, labels)
        group = int(self.loss_kwargs.get("group_size", 4))
        if x.shape[0] % group:
            raise NeonError(f"IMM's loss takes groups of {group} samples, but a process got a batch of {x.shape[0]}: "
                            f"make neon.batch_size (per process) a multiple of {group}")
        net = self.net
        with torch.no_grad():
            z = self.latent.encode(x, noise.randn(net.img_channels, net.img_resolution, net.img_resolution).to(x))
        return imm_loss(net, z, labels.long(), noise, **self.loss_kwargs).to(torch.float32)

    # --- sampling
    def generate_release(self, release_seed: int, seeds: Sequence[int], batch_size: int, sampler: Sampler,
                         labels: LabelSpec) -> Iterator[Draw]:
        """generate_images.py with `eval.seed=release_seed`: numpy seeded with it draws torch's seed; then, batch
        after batch from that one device generator, the initial latents (× σ_d) and the labels (uniform
        integers) when not given; 'unconditional' gives the null class (the all-zero one-hot row)."""
        net = self.sampling_net
        g = torch.Generator(self.device).manual_seed(int(np.random.RandomState(int(release_seed)).randint(2 ** 31)))
        for start, size in zip(range(0, len(seeds), batch_size), sizes_of(len(seeds), batch_size), strict=True):
            noise = torch.randn((size, net.img_channels, net.img_resolution, net.img_resolution), generator=g,
                                device=self.device) * net.sigma_data
            given = batch_labels(labels, start, size, self.device)
            if labels == UNCONDITIONAL:
                given = torch.full((size,), self.num_classes, dtype=torch.long, device=self.device)
            elif given is None:
                given = torch.randint(0, self.num_classes, (size,), generator=g, device=self.device)
            else:
                check_class_ids(given, self.num_classes, self.family)
            latent = RecordingLatent(self.latent)
            raw = sampler(net, latent, noise, given)
            yield Draw(self.finish_images(raw, self.quantize), None if labels == UNCONDITIONAL else given, raw,
                       latent.decoded)

    def generate(self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None = None):
        rng = PerSampleRNG(seeds, self.device)
        net = self.sampling_net
        # the release's order: the initial latent, then the class
        noise = rng.randn(net.img_channels, net.img_resolution, net.img_resolution) * net.sigma_data
        labels = self.labels_for(rng, labels)
        return self.finish_images(sampler(net, self.latent, noise, labels), self.quantize), labels
