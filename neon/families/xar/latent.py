"""The latent spaces xAR generates in: MAR's KL-16 VAE (the release's `kl16.ckpt`, LDM names) with its
scale factor, or the images themselves (the tiny model)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from neon.errors import NeonError
from neon.families.conv_autoencoder import KL_STYLE, Decoder, Encoder
from neon.io import StateDict, unwrap_state_dict


class KLAutoencoder(nn.Module):
    """Encoder → `quant_conv` → diagonal Gaussian (mean, log-variance) → `post_quant_conv` → decoder.
    Latents are the posterior times `scale_factor`; defaults are those of MAR's KL-16 (256 px → 16×16×16)."""

    def __init__(self, embed_dim: int = 16, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, in_channels: int = 3, image_size: int = 256, scale_factor: float = 0.2325):
        super().__init__()
        arch = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, in_channels=in_channels,
                    z_channels=embed_dim, using_mid_sa=True, dropout=0.0, style=KL_STYLE)
        # attention at the encoder's lowest resolution, none in the decoder's levels (both have it mid-way)
        self.encoder = Encoder(**arch, using_sa=True, double_z=True)
        self.decoder = Decoder(**arch, using_sa=False)
        self.quant_conv = nn.Conv2d(2 * embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)
        self.channels, self.in_channels, self.image_size = embed_dim, in_channels, image_size
        self.size = image_size // 2 ** (len(ch_mult) - 1)
        self.scale_factor = scale_factor

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images."""
        return (self.in_channels, self.image_size, self.image_size)

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the posterior for images in [-1, 1]; log-variance clamped to [-30, 20]."""
        mean, logvar = self.quant_conv(self.encoder(images)).chunk(2, dim=1)
        return mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))

    def encode(self, images: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Scaled latents: a posterior sample (mean + std·noise), or the mean when `noise` is None."""
        mean, std = self.moments(images)
        z = mean if noise is None else mean + std * noise.to(mean)
        return z * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images (about [-1, 1], not clamped)."""
        return self.decoder(self.post_quant_conv(z / self.scale_factor))

    def load_release(self, path: str | Path) -> None:
        """The release's file (`{'model': state dict}` or a plain state dict); every key must match."""
        if not Path(path).is_file():
            raise NeonError(f"model.vae_checkpoint '{path}' does not exist: xAR needs MAR's KL-16 VAE "
                            "(kl16.ckpt) as a local file")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise NeonError(f"cannot read VAE '{path}': {type(exc).__name__}: {exc}") from None
        state: StateDict = unwrap_state_dict(obj["model"] if isinstance(obj, dict) and "model" in obj else obj, path)
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:  # the release loads non-strictly: a wrong file would silently stay random
            raise NeonError(f"VAE '{path}' does not fit model.vae (missing {missing[:4]}, unexpected "
                            f"{unexpected[:4]}): it must be MAR's KL-16 (kl16.ckpt) or match ch/ch_mult/embed_dim")
        for key, value in own.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise NeonError(f"VAE '{path}': key '{key}' has shape {tuple(state[key].shape)} but model.vae "
                                f"expects {tuple(value.shape)}: check ch, ch_mult and embed_dim")
        self.load_state_dict(state)


class PixelLatent(nn.Module):
    """Images as their own latents (a tiny model on small images): `patch`×`patch` pixel blocks folded into
    channels, so C×S×S images become (C·patch²)×(S/patch)×(S/patch) latents, times `scale_factor`."""

    def __init__(self, in_channels: int = 1, image_size: int = 8, patch: int = 1, scale_factor: float = 1.0):
        super().__init__()
        if image_size % patch:
            raise NeonError(f"model.latent: image_size {image_size} is not a multiple of patch {patch}")
        self.in_channels, self.image_size, self.patch = in_channels, image_size, patch
        self.channels, self.size = in_channels * patch * patch, image_size // patch
        self.scale_factor = scale_factor

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images."""
        return (self.in_channels, self.image_size, self.image_size)

    def encode(self, images: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """The images' pixel blocks as channels, scaled."""
        return F.pixel_unshuffle(images, self.patch) * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The latents as images, unscaled."""
        return F.pixel_shuffle(z / self.scale_factor, self.patch)
