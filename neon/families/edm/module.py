"""The EDM family as a NeonModule: a preconditioned network, its loss, EMA by half-life, Heun sampling."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from neon.core.contract import (
    EMA,
    Batch,
    HasOutputTwin,
    HasReleaseCheckpoints,
    HasReleaseSampling,
    NeonModule,
    Sampler,
    plain_kwargs,
    setting_above,
)
from neon.core.errors import NeonError
from neon.core.io import StateDict
from neon.core.release_sampling import UNCONDITIONAL, Draw, LabelSpec, batch_labels, sizes_of
from neon.core.seeding import PerSampleRNG, StepNoise
from neon.families.edm.losses import denoising_loss
from neon.families.edm.precond import PRECONDS, Preconditioner
from neon.families.edm.sampler import heun_sampler
from neon.metrics.images import to_uint8
from neon.weights.persistence import Snapshot, read_snapshot

log = logging.getLogger("neon")

# What a snapshot must share with the config: the data it generates. The rest of the architecture
# (channels, blocks, attention, dropout, ...) is taken from the snapshot's recorded constructor kwargs.
_IDENTITY_KEYS = ("img_resolution", "img_channels", "label_dim")


def build_network(network: Mapping[str, Any]) -> Preconditioner:
    """A preconditioned network from `{precond: EDMPrecond, <official constructor kwargs>}`."""
    kwargs = dict(network)
    name = kwargs.pop("precond", "EDMPrecond")
    if name not in PRECONDS:
        raise NeonError(f"model.network.precond '{name}' is not supported: choose one of {sorted(PRECONDS)}")
    return PRECONDS[name](**kwargs)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


class EDMModule(NeonModule, HasOutputTwin, HasReleaseSampling, HasReleaseCheckpoints):
    """EDM: D(x; σ) with EDM/VP/VE preconditioning, trained with its matching loss; samples are images in
    [-1, 1], rounded to the 8-bit grid like the PNGs the official generator writes (`quantize`)."""

    family = "EDM"
    release_note = ("EDM's releases (edm-*.pkl, network-snapshot-*.pkl) are persistence pickles that carry "
                    "their own source code; none is written here. The safetensors hold the `ema` network's "
                    "state dict under the release's names, to load by name into the network the official code "
                    "builds")
    samplers = {"heun": heun_sampler}
    twin_outputs = ("forward",)  # the denoiser D(x; σ)

    def __init__(self, network: Mapping[str, Any], optimizer=None, ema_halflife_kimg: float | None = 500.0,
                 ema_decay: float | None = None, loss: Mapping[str, float] | None = None, quantize: bool = True):
        self.network_kwargs = plain_kwargs(network)
        net = self.build_net(self.network_kwargs)
        if ema_decay is not None:
            ema = EMA(decay=ema_decay)
        else:
            ema = EMA(halflife_samples=ema_halflife_kimg * 1000) if ema_halflife_kimg else None
        super().__init__(net, optimizer=optimizer, ema=ema, num_classes=net.label_dim)
        self.loss_kwargs = dict(loss or {})
        self.quantize = quantize

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the generated images."""
        return (self.net.img_channels, self.net.img_resolution, self.net.img_resolution)

    @classmethod
    def build_net(cls, network: Mapping[str, Any]) -> Preconditioner:
        """The preconditioned network of `model.network`."""
        return build_network(network)

    @classmethod
    def diversity_seeking(cls, settings: Mapping[str, Any]) -> list[str]:
        """Heun sampling at high churn adds fresh noise every step (a heuristic bound)."""
        return setting_above(settings, "S_churn", 50, "S_churn ≥ 50", inclusive=True)

    def one_hot(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Class indices as the float one-hot vectors the network takes (None if unconditional)."""
        if not self.num_classes or labels is None:
            return None
        return F.one_hot(labels.long(), self.num_classes).to(torch.float32)

    def loss(self, batch: Batch, noise: StepNoise) -> torch.Tensor:
        x = batch["x"]
        if tuple(x.shape[1:]) != self.image_shape:
            raise NeonError(f"images of shape {tuple(x.shape[1:])} do not fit the network, which expects {self.image_shape}")
        labels = self.one_hot(batch.get("label")) if self.num_classes else None
        if self.num_classes and labels is None:
            raise NeonError("the model is class-conditional but the data has no labels")
        # summed over pixels, averaged over the batch, as the official training loop does
        return denoising_loss(self.net, x, labels, noise, **self.loss_kwargs).sum() / len(x)

    def generate(self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None = None):
        raw, labels = self._sample(seeds, sampler, labels)
        return self._finish(raw), labels

    def _sample(self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None):
        # the sampler's float output and the labels, seeded per image as generate.py seeds them
        rng = PerSampleRNG(seeds, self.device)
        latents = rng.randn(*self.image_shape)
        if self.num_classes and labels is None:
            labels = rng.randint(self.num_classes)  # drawn after the latents, as generate.py does
        raw = sampler(self.sampling_net, latents, self.one_hot(labels), randn_like=rng.randn_like)
        return raw, (labels.long() if labels is not None else None)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantize:
            x = to_uint8(x).to(torch.float32) / 127.5 - 1
        return x.to(torch.float32)

    def generate_release(self, release_seed: int, seeds: Sequence[int], batch_size: int, sampler: Sampler,
                         labels: LabelSpec) -> Iterator[Draw]:
        """generate.py seeds every image itself (`--seeds`), so release mode is per-seed mode over `seeds`;
        `release_seed` is not used. Labels: given (`--class` for all, or one per image), random (per seed,
        after the latents) or unconditional (an unconditional network only)."""
        if labels == UNCONDITIONAL and self.num_classes:
            raise NeonError(f"this EDM network is class-conditional ({self.num_classes} classes) and has no null "
                            "class: give sample.labels as class ids or 'random'")
        for start, size in zip(range(0, len(seeds), batch_size), sizes_of(len(seeds), batch_size), strict=True):
            given = batch_labels(labels, start, size, self.device)
            raw, drawn = self._sample(seeds[start:start + size], sampler, given)
            yield Draw(self._finish(raw), drawn, raw.to(torch.float32))

    def export_samples(self, x: torch.Tensor) -> np.ndarray:
        """Images as uint8 NHWC, the layout of the ADM evaluation suite."""
        return to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()

    def read_checkpoint(self, path: str | Path) -> StateDict:
        """Official `*.pkl` snapshots (their `ema` network) as well as safetensors and torch files."""
        if Path(path).suffix != ".pkl":
            return super().read_checkpoint(path)
        return _checked_snapshot(path, self.network_kwargs, shape_from_checkpoint=False).state_dict

    @classmethod
    def spec_for_checkpoint(cls, spec: dict[str, Any], path: str | Path, shape_from_checkpoint: bool) -> dict[str, Any]:
        """An official snapshot brings its architecture: the module is built with it at once (building the
        config's network first, a 64×64 DDPM++ and its EMA copy, would cost seconds for nothing)."""
        if Path(path).suffix != ".pkl":
            return spec
        network = plain_kwargs(spec["network"])
        snap = _checked_snapshot(path, network, shape_from_checkpoint, keep=True)
        return {**spec, "network": _adopted(path, snap, network)}

    def load_checkpoint(self, path: str | Path, shape_from_checkpoint: bool = False) -> None:
        """Load θ; an official snapshot also brings its architecture (rebuilt from its recorded kwargs)."""
        if Path(path).suffix == ".pkl":
            snap = _checked_snapshot(path, self.network_kwargs, shape_from_checkpoint)
            adopted = _adopted(path, snap, self.network_kwargs)
            if adopted != self.network_kwargs:
                self._rebuild(adopted)
            self.load_neon_weights(snap.state_dict, source=f"checkpoint '{path}'")
            return
        super().load_checkpoint(path, shape_from_checkpoint)

    def _rebuild(self, network: dict[str, Any]) -> None:
        self.network_kwargs = network
        self.replace_net(build_network(network))
        self.num_classes = self.net.label_dim


# the snapshot `spec_for_checkpoint` read, kept for the load that follows it: a release is read once
_KEPT: dict[tuple[str, int, int], Snapshot] = {}


def _snapshot(path: str | Path, keep: bool = False) -> Snapshot:
    stat = Path(path).stat() if Path(path).is_file() else None
    key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size) if stat else None
    snap = _KEPT.pop(key, None) if key else None
    if snap is None:
        snap = read_snapshot(path, what="EDM snapshot")
    _KEPT.clear()
    if keep and key:
        _KEPT[key] = snap
    return snap


def _checked_snapshot(path: str | Path, network: Mapping[str, Any], shape_from_checkpoint: bool,
                      keep: bool = False) -> Snapshot:
    """The snapshot at `path`, refused in one line where its preconditioning or data shape is not the config's
    (the data shape is taken from the file with `shape_from_checkpoint`)."""
    snap = _snapshot(path, keep)
    want = network.get("precond", "EDMPrecond")
    if snap.class_name != want:
        raise NeonError(f"snapshot '{path}' holds a {snap.class_name} network but model.network.precond is {want}")
    for key in _IDENTITY_KEYS:
        if key in snap.init_kwargs and key in network and not _same(snap.init_kwargs[key], network[key]):
            if shape_from_checkpoint:  # the file is the truth where no data is involved
                log.info("snapshot '%s' records %s=%r (the config says %r): taken from the snapshot", path, key,
                         snap.init_kwargs[key], network[key])
                continue
            raise NeonError(
                f"snapshot '{path}' was built with {key}={snap.init_kwargs[key]!r} but the model config says "
                f"{key}={network[key]!r}: set model.network.{key} to match the snapshot"
            )
    return snap


def _adopted(path: str | Path, snap: Snapshot, network: Mapping[str, Any]) -> dict[str, Any]:
    """The network settings the snapshot records, logged where they differ from `network`."""
    adopted = {"precond": snap.class_name, **snap.init_kwargs}
    changed = sorted(k for k in adopted if not _same(adopted[k], network.get(k, adopted[k])))
    changed += sorted(k for k in network if k not in adopted and k != "precond")
    if not changed:
        return dict(network)
    log.info("snapshot '%s' sets the architecture: %s", path,
             ", ".join(f"{k}={adopted.get(k, '(default)')!r}" for k in changed))
    return plain_kwargs(adopted)
