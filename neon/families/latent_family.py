"""What the class-conditional latent image families (VAR, xAR, IMM) share: a frozen latent space (read from
the user's file), per-seed class labels, images on the reference's 8-bit grid, checkpoint architecture checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from neon.core.contract import NeonModule
from neon.core.errors import NeonError
from neon.core.seeding import PerSampleRNG
from neon.metrics.images import truncated_uint8

# (what, found in the checkpoint, wanted by the config, the config key to change)
ArchitectureCheck = tuple[str, object, object, str]


def check_architecture(path: object, family: str, checks: Sequence[ArchitectureCheck], hint: str) -> None:
    """Refuse a checkpoint whose architecture differs from the config, naming both values and the key."""
    for what, found, want, key in checks:
        if found != want:
            raise NeonError(f"{family} checkpoint '{path}' has {what} {found} but the config gives {want}: set {key} "
                            f"to match ({hint})")


def check_class_ids(labels: torch.Tensor, num_classes: int, family: str) -> None:
    """Refuse class ids outside [0, num_classes), naming the first bad one."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise NeonError(f"class id {bad} is out of range: this {family} has classes 0..{num_classes - 1}")


class LatentImageModule(NeonModule):
    """A NeonModule whose network generates in a frozen latent space, `latent_space` (`latent` unless the
    family names it otherwise; it has `image_shape`, and for `attach_latent` `channels`, `size`, `encode`,
    `decode`, and `load_release` when it comes from a file)."""

    @property
    def latent_space(self) -> nn.Module:
        """The frozen latent space (tokenizer or VAE) the network generates in."""
        return self.latent

    def attach_latent(self, latent: nn.Module, vae_checkpoint: str | None, channels: int, size: int,
                      needs: str, keys: str) -> None:
        """Check that `latent` gives channels×size×size latents, load its file, freeze it."""
        if (latent.channels, latent.size) != (channels, size):
            raise NeonError(f"the latent space gives {latent.channels}×{latent.size}×{latent.size} latents but the "
                            f"{self.family} network expects {channels}×{size}×{size}: set {keys} to match model.latent")
        if vae_checkpoint:
            latent.load_release(vae_checkpoint)
        elif hasattr(latent, "load_release"):
            raise NeonError(f"{self.family} needs its VAE: give model.vae_checkpoint=PATH ({needs})")
        self.latent = latent.eval().requires_grad_(False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the generated images."""
        return tuple(self.latent_space.image_shape)

    def train(self, mode: bool = True) -> "LatentImageModule":
        super().train(mode)
        self.latent_space.eval()  # frozen (no dropout, no statistics) in every stage
        return self

    def check_images(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Refuse training images of the wrong shape, or without labels."""
        if tuple(x.shape[1:]) != self.image_shape:
            raise NeonError(f"images of shape {tuple(x.shape[1:])} do not fit the latent space, which expects "
                            f"{self.image_shape}")
        if labels is None:
            raise NeonError(f"{self.family} is class-conditional but the data has no labels")

    def draw_labels(self, rng: PerSampleRNG) -> torch.Tensor:
        """One uniform class per seed, drawn from its generator."""
        return torch.cat([torch.randint(self.num_classes, (1,), generator=g, device=self.device)
                          for g in rng.generators]) if len(rng) else torch.zeros(0, dtype=torch.long)

    def labels_for(self, rng: PerSampleRNG, labels: torch.Tensor | None) -> torch.Tensor:
        """The given class ids (checked), or `draw_labels`."""
        if labels is None:
            labels = self.draw_labels(rng)
        labels = labels.to(self.device).long()
        check_class_ids(labels, self.num_classes, self.family)
        return labels

    def finish_images(self, x: torch.Tensor, quantize: bool) -> torch.Tensor:
        """Decoded images in [-1, 1], on the 8-bit grid the reference writes (truncated) when `quantize`."""
        if quantize:
            x = truncated_uint8(x).to(torch.float32) / 127.5 - 1
        return x.to(torch.float32).clamp(-1, 1)

    def export_samples(self, x: torch.Tensor) -> np.ndarray:
        """Images as uint8 NHWC, the layout of the ADM evaluation suite."""
        return truncated_uint8(x).permute(0, 2, 3, 1).cpu().numpy()
