"""Release-mode sampling (`sample.rng=release`): the seeding of each family's official script — one generator
for the batch, labels given, drawn as the release draws them, or the null class — instead of one generator
per image. The families implement `NeonModule.generate_release`; this module holds what they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

from neon.core.errors import NeonError

RNG_MODES = ("per_seed", "release")
RANDOM, UNCONDITIONAL, SORTED = "random", "unconditional", "sorted"
# What `sample.labels` may be: None or 'random' (drawn as the release draws them), 'unconditional' (the null
# class), 'sorted' (each class in turn, an equal share of the images each: the official FID scripts' labels),
# or one class id per image.
LabelSpec = Union[str, list[int]]


@dataclass
class Draw:
    """One batch drawn in release mode: images in [-1, 1] (as `generate` returns them), their labels (None:
    unconditional), the sampler's float output as it returns it, and the latents it decoded (None: none)."""

    samples: torch.Tensor
    labels: torch.Tensor | None
    raw: torch.Tensor
    latents: torch.Tensor | None = None


def label_spec(value: Any) -> LabelSpec:
    """`sample.labels` checked: None/'random', 'unconditional', or a list of class ids."""
    if value is None or value == RANDOM:
        return RANDOM
    if value in (UNCONDITIONAL, SORTED):
        return str(value)
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str):
        ids = list(value)
        if ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            return [int(i) for i in ids]
    raise NeonError(f"sample.labels must be a list of class ids, 'random', 'sorted' or 'unconditional', got {value!r}")


def check_rng_mode(value: Any) -> str:
    """`sample.rng` checked: 'per_seed' or 'release'."""
    if value not in RNG_MODES:
        raise NeonError(f"sample.rng must be one of {list(RNG_MODES)}, got {value!r}")
    return str(value)


def batch_labels(spec: LabelSpec, start: int, size: int, device: torch.device) -> torch.Tensor | None:
    """The given class ids of images start..start+size (None for 'random' and 'unconditional')."""
    if not isinstance(spec, list):
        return None
    return torch.tensor(spec[start:start + size], dtype=torch.long, device=device)


def resolve_labels(spec: LabelSpec, n: int, num_classes: int) -> LabelSpec:
    """'sorted' as the class ids it stands for: image i of n gets class i·C // n (n/C images of class 0, then
    of class 1, …, as xAR's eval.py and VAR's 50-per-class FID lay them out); other specs unchanged."""
    if spec != SORTED:
        return spec
    if not num_classes:
        raise NeonError("sample.labels=sorted needs a class-conditional model; this one has no classes")
    return [i * num_classes // n for i in range(n)]


@dataclass(frozen=True)
class ReleaseSampling:
    """`sample.rng=release` as task=evaluate and task=search use it: the seed of the release's generator, the
    labels and the batch size (the release's draws depend on it)."""

    release_seed: int
    labels: LabelSpec
    batch_size: int

    @classmethod
    def from_config(cls, cfg: Any) -> ReleaseSampling | None:
        """The `sample.*` settings when `sample.rng=release`, else None (per-seed sampling)."""
        sample = cfg.get("sample") or {}
        if check_rng_mode(sample.get("rng", "per_seed")) != "release":
            return None
        batch = sample.get("batch_size")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
            raise NeonError(f"sample.batch_size must be a positive integer, got {batch!r}")
        spec = label_spec(sample.get("labels"))
        return cls(int(sample.get("release_seed", 0)), spec, batch)

    def key(self) -> dict[str, Any]:
        """What the samples depend on besides the weights, sampler and count (cache keys, summaries)."""
        return {"rng": "release", "release_seed": self.release_seed, "batch_size": self.batch_size,
                "labels": self.labels}


def check_label_count(spec: LabelSpec, n: int) -> None:
    """A list of labels must name one class per image."""
    if isinstance(spec, list) and len(spec) != n:
        raise NeonError(f"sample.labels lists {len(spec)} classes for {n} images (sample.seeds): give one per image")


class RecordingLatent:
    """A latent space that remembers what it last decoded (the sampler's latents), and is otherwise the same."""

    def __init__(self, latent: Any):
        self._latent, self.decoded = latent, None

    def decode(self, z: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.decoded = z.detach().clone()
        return self._latent.decode(z, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._latent, name)


def sizes_of(n: int, batch: int) -> Sequence[int]:
    """Batch sizes of n images drawn `batch` at a time (the last one may be smaller)."""
    return [min(batch, n - start) for start in range(0, n, batch)]
