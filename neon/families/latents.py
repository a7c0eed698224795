"""Latent spaces the families generate in: KL autoencoders with LDM names (MAR's KL-16 for xAR; the Stable
Diffusion VAE for IMM, also read from the diffusers layout), with their latent normalisation, or the images
themselves (tiny models)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from neon.core.errors import NeonError
from neon.core.io import StateDict, check_state_fits, load_state_dict, read_torch_file, unwrap_state_dict
from neon.families.conv_autoencoder import KL_STYLE, SD_STYLE, Decoder, Encoder


class KLAutoencoder(nn.Module):
    """Encoder → `quant_conv` → diagonal Gaussian (mean, log-variance) → `post_quant_conv` → decoder.
    Latents are posterior · `scale_factor` + `shift` (numbers or one per channel); defaults are those of MAR's
    KL-16 (256 px → 16×16×16, × 0.2325, attention at the encoder's lowest resolution, x·sigmoid(x))."""

    def __init__(self, embed_dim: int = 16, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, in_channels: int = 3, image_size: int = 256,
                 scale_factor: float | Sequence[float] = 0.2325, shift: float | Sequence[float] = 0.0,
                 encoder_attention: bool = True, activation: str = "swish"):
        super().__init__()
        styles = {"swish": KL_STYLE, "silu": SD_STYLE}
        if activation not in styles:
            raise NeonError(f"model.latent.activation must be one of {sorted(styles)}, got {activation!r}")
        arch = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, in_channels=in_channels,
                    z_channels=embed_dim, using_mid_sa=True, dropout=0.0, style=styles[activation])
        # attention in the middle of both; at the encoder's lowest resolution too for KL-16, not for SD's VAE
        self.encoder = Encoder(**arch, using_sa=encoder_attention, double_z=True)
        self.decoder = Decoder(**arch, using_sa=False)
        self.quant_conv = nn.Conv2d(2 * embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)
        self.channels, self.in_channels, self.image_size = embed_dim, in_channels, image_size
        self.size = image_size // 2 ** (len(ch_mult) - 1)
        self.scale_factor, self.shift = _per_channel(scale_factor, embed_dim), _per_channel(shift, embed_dim)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images."""
        return (self.in_channels, self.image_size, self.image_size)

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the posterior for images in [-1, 1]; log-variance clamped to [-30, 20]."""
        mean, logvar = self.quant_conv(self.encoder(images)).chunk(2, dim=1)
        return mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))

    def encode(self, images: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Normalised latents of a posterior sample (mean + std·noise), or of the mean when `noise` is None."""
        mean, std = self.moments(images)
        z = mean if noise is None else mean + std * noise.to(mean)
        return z * _as_map(self.scale_factor, z) + _as_map(self.shift, z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents → images (about [-1, 1], not clamped)."""
        return self.decoder(self.post_quant_conv((z - _as_map(self.shift, z)) / _as_map(self.scale_factor, z)))

    def load_release(self, path: str | Path) -> None:
        """An LDM-layout file (`{'model': ...}`, `{'state_dict': ...}` or a plain state dict) or a diffusers
        AutoencoderKL (its folder, or its `diffusion_pytorch_model.safetensors`/`.bin`); every key must match."""
        path = Path(path)
        if path.is_dir():
            found = [path / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
                     if (path / n).is_file()]
            if not found:
                raise NeonError(f"model.vae_checkpoint '{path}' is a folder without diffusion_pytorch_model."
                                "safetensors or .bin: give the VAE's weights file or its diffusers folder")
            path = found[0]
        if not path.is_file():
            raise NeonError(f"model.vae_checkpoint '{path}' does not exist: give the VAE as a local file "
                            "(kl16.ckpt for xAR, the sd-vae-ft-ema folder or weights file for IMM)")
        if path.suffix == ".safetensors":
            state = load_state_dict(path, what="VAE")
        else:
            obj = read_torch_file(path, what="VAE")
            obj = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
            state = unwrap_state_dict(obj, path)
        state = {k: v for k, v in state.items() if not k.startswith("loss.")}  # LDM training-loss weights
        if any(".down_blocks." in k or ".mid_block." in k for k in state):
            state = from_diffusers(state)
        # the releases load non-strictly: a wrong file would silently stay random, so every key must match
        check_state_fits(self.state_dict(), state, f"VAE '{path}'", "model.latent",
                         "check ch, ch_mult, embed_dim and encoder_attention")
        self.load_state_dict(state)


def stable_diffusion_vae(raw_mean: Sequence[float], raw_std: Sequence[float], final_mean: float = 0.0,
                         final_std: float = 0.5, image_size: int = 256, ch: int = 128,
                         ch_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2) -> KLAutoencoder:
    """Stable Diffusion's VAE (sd-vae-ft-ema: 8× down, 4 latent channels, attention only mid-way) with IMM's
    per-channel normalisation: latent = (z − raw_mean)·final_std/raw_std + final_mean, in float32."""
    scale = np.float32(final_std) / np.asarray(raw_std, dtype=np.float32)
    shift = np.float32(final_mean) - np.asarray(raw_mean, dtype=np.float32) * scale
    return KLAutoencoder(embed_dim=len(scale), ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, in_channels=3,
                         image_size=image_size, scale_factor=scale.tolist(), shift=shift.tolist(),
                         encoder_attention=False, activation="silu")


def _per_channel(value: float | Sequence[float], channels: int) -> float | torch.Tensor:
    if isinstance(value, (int, float)):
        return float(value)
    values = [float(v) for v in value]
    if len(values) != channels:
        raise NeonError(f"model.latent: {len(values)} per-channel values for {channels} latent channels")
    return torch.tensor(values, dtype=torch.float32)


def _as_map(value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    return value if isinstance(value, float) else value.to(like).view(1, -1, 1, 1)


def from_diffusers(state: StateDict) -> StateDict:
    """A diffusers AutoencoderKL state dict under the LDM names (its attention's linear maps as 1×1 convs)."""
    ups = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k)))
    rules = [
        (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"\.conv_shortcut\.", ".nin_shortcut."),
        (r"\.(group_norm)\.", ".norm."),
        (r"\.(to_q|query)\.", ".q."), (r"\.(to_k|key)\.", ".k."), (r"\.(to_v|value)\.", ".v."),
        (r"\.(to_out\.0|proj_attn)\.", ".proj_out."),
    ]
    out: StateDict = {}
    for key, value in state.items():
        new = key
        if m := re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.(.*)", key):
            level = ups - 1 - int(m.group(1))  # diffusers counts up-blocks from the lowest resolution
            new = f"decoder.up.{level}." + ("block." if m.group(2) == "resnets" else "upsample.") + m.group(3)
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", new) and value.dim() == 2:
            value = value[:, :, None, None]  # linear → 1×1 conv
        out[new] = value
    return out


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
