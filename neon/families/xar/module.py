"""The xAR family as a NeonModule: θ is the next-cluster transformer (its EMA at 0.9999 is what samples
and what Neon merges, as in the reference fine-tune); the latent space (KL-16 VAE or the images) is frozen."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

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
from neon.core.release_sampling import RANDOM, UNCONDITIONAL, Draw, LabelSpec, RecordingLatent, batch_labels, sizes_of
from neon.core.seeding import PerSampleRNG, StepNoise
from neon.families.latent_family import LatentImageModule, check_architecture, check_class_ids
from neon.families.xar.sampler import xar_sampler
from neon.families.xar.transformer import XARTransformer
from neon.weights.readers import WEIGHTS, read_weights


class XARModule(LatentImageModule, HasOutputTwin, HasReleaseSampling, HasReleaseCheckpoints):
    """xAR: per-cluster logit-normal times, velocity target ε − x, per-sample mean squared error; class labels
    dropped to the null class at `label_drop_prob`. Samples are images in [-1, 1] on the 8-bit grid of the
    reference's PNGs (`quantize`)."""

    family = "xAR"
    release_pth = ("the layout of xAR-B.pth, xAR-L.pth, xAR-H.pth: xAR's eval.py (`--resume`) and the Neon "
                   "authors' scripts read the file with torch.load and load it with load_state_dict")
    samplers = {"xar": xar_sampler}
    twin_outputs = ("sample_step",)  # the velocity of the cluster's tokens
    twin_state = ("clear_cache",)  # each network keeps its own keys and values

    def __init__(self, network: Mapping[str, Any], latent: nn.Module, vae_checkpoint: str | None = None,
                 optimizer=None, ema_decay: float | None = 0.9999, label_drop_prob: float = 0.1, hflip: bool = False,
                 quantize: bool = True, weights: str = "ema"):
        self.network_kwargs = plain_kwargs(network)
        net = self.build_net(self.network_kwargs)
        super().__init__(net, optimizer=optimizer, ema=EMA(decay=ema_decay) if ema_decay else None,
                         num_classes=net.num_classes)
        if weights not in WEIGHTS:
            raise NeonError(f"model.weights must be one of {list(WEIGHTS)}, got {weights!r}")
        self.attach_latent(latent, vae_checkpoint, net.channels, net.grid, needs="MAR's KL-16, kl16.ckpt",
                           keys="model.network.channels and model.network.grid")
        self.label_drop_prob, self.hflip, self.quantize, self.weights = label_drop_prob, hflip, quantize, weights

    @classmethod
    def build_net(cls, network: Mapping[str, Any]) -> XARTransformer:
        """The next-cluster transformer of `model.network`."""
        return XARTransformer(**network)

    # --- checkpoints
    def read_checkpoint(self, path: str | Path) -> StateDict:
        """A released xAR file or training checkpoint, checked for depth, width, heads, classes, latent layout."""
        state = read_weights(path, weights=self.weights)
        net = self.net
        rope = state.get("encoder_blocks.0.attn.rope.freqs")
        depth = len({int(m.group(1)) for k in state if (m := re.match(r"encoder_blocks\.(\d+)\.", k))})
        checks = [
            ("depth", depth, net.depth, "model.network.depth"),
            ("width", dim_of(state, "class_emb.weight", 1), net.dim, "model.network.embed_dim"),
            ("head count", net.dim // (4 * rope.numel()) if rope is not None and rope.numel() else None,
             net.num_heads, "model.network.num_heads"),
            ("class count", dim_of(state, "class_emb.weight", 0) - 1 if "class_emb.weight" in state else None,
             net.num_classes, "model.network.num_classes"),
            ("token count", dim_of(state, "encoder_pos_embed_learned", 1), net.seq_len, "model.network.grid"),
            ("latent channels", dim_of(state, "z_proj.weight", 1), net.channels, "model.network.channels"),
        ]
        check_architecture(path, "xAR", checks, "model=xar_b | xar_l | xar_h for the released files")
        return state

    # --- training
    def optimizer_params(self) -> list[dict[str, Any]]:
        """Two groups, as the release trains: no weight decay for biases and 1-D weights (norm gains), the
        optimizer's weight decay for the rest."""
        named = list(self.net.named_parameters())
        plain = [p for n, p in named if p.ndim == 1 or n.endswith(".bias")]
        decayed = [p for n, p in named if not (p.ndim == 1 or n.endswith(".bias"))]
        return [{"params": plain, "weight_decay": 0.0}, {"params": decayed}]

    def loss(self, batch: Batch, noise: StepNoise) -> torch.Tensor:
        x, labels = batch["x"], batch.get("label")
        self.check_images(x, labels)
        net, b = self.net, x.shape[0]
        if self.hflip:  # the reference fine-tune's random horizontal flip, drawn per sample
            x = torch.where((noise.rand() < 0.5).to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        with torch.no_grad():
            z = self.latent.encode(x, noise.randn(net.channels, net.grid, net.grid).to(x.device))
        labels = torch.where(noise.rand().to(x.device) < self.label_drop_prob, self.num_classes, labels.long())
        # a logit-normal time per (sample, cluster), computed in float64 and used in float32; rows
        # cluster-major as the network's conditions are
        normals = noise.randn(net.num_clusters, dtype=torch.float64).to(x.device)
        t = (1 / (1 + torch.exp(-normals))).float().t().reshape(-1)
        clean, eps = net.to_sequence(z), noise.randn(net.seq_len, net.channels).to(x.device)
        t_tok = t.view(net.num_clusters, b).t().repeat_interleave(net.cluster_size, dim=1).unsqueeze(-1)
        noisy = (1 - t_tok) * clean + t_tok * eps
        dropout_rng = noise.per_sample() if self.training and net.dropout else None
        out = net(noisy, labels, t, dropout_rng)
        return ((out - (eps - clean)) ** 2).mean(dim=(1, 2)).mean()  # per-sample mean, then batch mean

    # --- sampling
    def generate(self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None = None):
        rng = PerSampleRNG(seeds, self.device)
        labels = self.labels_for(rng, labels)  # drawn first when not given
        return self.finish_images(sampler(self.sampling_net, self.latent, labels, rng), self.quantize), labels

    def generate_release(self, release_seed: int, seeds: Sequence[int], batch_size: int, sampler: Sampler,
                         labels: LabelSpec) -> Iterator[Draw]:
        """eval.py after `torch.manual_seed(release_seed)`: one stream for the whole run, batch after batch —
        each cluster's start noise from the CPU generator, the SDE noise from the model device's (the same
        CPU generator on a CPU); labels given (the release always gives them) or the null class."""
        if labels == RANDOM:
            raise NeonError("xAR's release never draws labels (eval.py gives each class in turn): give "
                            "sample.labels as class ids or 'unconditional'")
        cpu = torch.Generator("cpu").manual_seed(int(release_seed))
        rng = cpu if self.device.type == "cpu" else (cpu, torch.Generator(self.device).manual_seed(int(release_seed)))
        for start, size in zip(range(0, len(seeds), batch_size), sizes_of(len(seeds), batch_size), strict=True):
            given = batch_labels(labels, start, size, self.device)
            if given is None:
                given = torch.full((size,), self.num_classes, dtype=torch.long, device=self.device)
            else:
                check_class_ids(given, self.num_classes, self.family)
            latent = RecordingLatent(self.latent)
            raw = sampler(self.sampling_net, latent, given, rng)
            yield Draw(self.finish_images(raw, self.quantize), None if labels == UNCONDITIONAL else given, raw,
                       latent.decoded)
