"""Release-mode sampling (`sample.rng=release`): the seeding of each family's official script — one generator
for the batch, labels given, drawn as the release draws them, or the null class — instead of one generator
per image. The families implement `NeonModule.generate_release`; this module holds what they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

from neon.errors import NeonError

RNG_MODES = ("per_seed", "release")
RANDOM, UNCONDITIONAL = "random", "unconditional"
# What `sample.labels` may be: None or 'random' (drawn as the release draws them), 'unconditional' (the null
# class), or one class id per image.
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
    if value == UNCONDITIONAL:
        return UNCONDITIONAL
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str):
        ids = list(value)
        if ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            return [int(i) for i in ids]
    raise NeonError(f"sample.labels must be a list of class ids, 'random' or 'unconditional', got {value!r}")


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
