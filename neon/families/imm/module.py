"""The IMM family as a NeonModule: θ is the IMMPrecond-wrapped DiT (its EMA at 0.9999 is what samples and
what Neon merges, as in the reference fine-tune); the latent space (SD-VAE or the images) is frozen."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neon.errors import NeonError
from neon.families.imm.loss import imm_loss
from neon.families.imm.network import IMMPrecond
from neon.families.imm.sampler import pushforward_sampler
from neon.families.latent_family import LatentImageModule, check_architecture
from neon.io import StateDict, dim_of
from neon.module import EMA, Batch, Sampler, plain_kwargs
from neon.persistence import read_snapshot
from neon.seeding import PerSampleRNG, StepNoise


class IMMModule(LatentImageModule):
    """IMM: the moment-matching loss over groups of `loss.group_size` consecutive samples (the fine-tune batch
    must be a multiple of it on every process); samples are images in [-1, 1] on the 8-bit grid the reference
    decodes to (truncated)."""

    family = "IMM"
    samplers = {"imm": pushforward_sampler}

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
        if Path(path).suffix == ".pkl":
            state = read_snapshot(path, what="IMM snapshot").state_dict
        else:
            state = super().read_checkpoint(path)
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
    def generate(self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None = None):
        rng = PerSampleRNG(seeds, self.device)
        net = self.sampling_net
        # the release's order: the initial latent, then the class
        noise = rng.randn(net.img_channels, net.img_resolution, net.img_resolution) * net.sigma_data
        labels = self.labels_for(rng, labels)
        return self.finish_images(sampler(net, self.latent, noise, labels), self.quantize), labels
