"""The two U-Net backbones of EDM, written from docs/upstream/edm.md: the DDPM++/NCSN++ network of Song
et al. and the ADM network of Dhariwal & Nichol.

Both are described as an ordered list of named layers, each with a role (`Layer`); the module keys
(`enc.32x32_conv`, `dec.16x16_aux_norm`, ...) are the released ones, and the forward pass dispatches on
the roles recorded when the network was built, never on key names."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from neon.core.errors import NeonError
from neon.families.edm.blocks import (
    Dense,
    GroupNormFloor,
    InitRule,
    RandomFourierEmbedding,
    ResamplingConv,
    ResBlock,
    SinusoidalEmbedding,
    drop_class_labels,
)


class Layer(NamedTuple):
    """One entry of an encoder or decoder: its release key, what the forward pass does with it, the module."""

    key: str
    role: str
    module: nn.Module


# Roles. Encoder: "stem" and "block" produce a feature map kept for the decoder; the "image_*" roles carry
# a downsampled copy of the input image alongside (NCSN++'s skip and residual encoders).
# Decoder: "block" keeps the width, "merge" first concatenates the matching encoder output; the "head_*"
# roles turn features into an image at one resolution and sum the heads across resolutions.
ENCODER_ROLES = {"stem", "block", "image_down", "image_add", "image_residual"}
DECODER_ROLES = {"block", "merge", "head_up", "head_norm", "head_conv"}


class LayeredUNet(nn.Module):
    """A U-Net stored as `enc` and `dec` module dicts plus the role of each entry."""

    def _install(self, encoder: list[Layer], decoder: list[Layer]) -> None:
        self.enc = nn.ModuleDict({layer.key: layer.module for layer in encoder})
        self.dec = nn.ModuleDict({layer.key: layer.module for layer in decoder})
        self.enc_roles = [layer.role for layer in encoder]
        self.dec_roles = [layer.role for layer in decoder]

    def encode(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the encoder; returns the bottleneck features and the feature maps the decoder merges."""
        kept: list[torch.Tensor] = []
        image = x
        for role, module in zip(self.enc_roles, self.enc.values(), strict=True):
            if role == "image_down":
                image = module(image)
            elif role == "image_add":
                x = x + module(image)
                kept[-1] = x
            elif role == "image_residual":
                x = (x + module(image)) / math.sqrt(2)
                kept[-1] = image = x
            else:
                x = module(x) if role == "stem" else module(x, emb)
                kept.append(x)
        return x, kept

    def decode(self, x: torch.Tensor, emb: torch.Tensor, kept: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the decoder; returns its last features and the summed image heads (None without heads)."""
        image = head = None
        for role, module in zip(self.dec_roles, self.dec.values(), strict=True):
            if role == "head_up":
                image = module(image)
            elif role == "head_norm":
                head = module(x)
            elif role == "head_conv":
                head = module(F.silu(head))
                image = head if image is None else head + image
            else:
                if role == "merge":
                    x = torch.cat([x, kept.pop()], dim=1)
                x = module(x, emb)
        return x, image


class Level(NamedTuple):
    """One resolution of a U-Net: its index (0 = finest), side length, key prefix and channel multiplier."""

    index: int
    res: int
    tag: str
    mult: int


def _levels(img_resolution: int, channel_mult: Sequence[int]) -> list[Level]:
    """The U-Net's resolutions from the finest to the coarsest."""
    return [Level(i, img_resolution >> i, f"{img_resolution >> i}x{img_resolution >> i}", mult)
            for i, mult in enumerate(channel_mult)]


class DDPMppUNet(LayeredUNet):
    """DDPM++ (positional embedding, plain encoder) and NCSN++ (Fourier embedding, residual encoder,
    skip decoder): the `SongUNet` of the release."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0.0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[int] = (1, 1)):
        if embedding_type not in ("positional", "fourier"):
            raise NeonError(f"model.network.embedding_type '{embedding_type}': use positional or fourier")
        if encoder_type not in ("standard", "skip", "residual"):
            raise NeonError(f"model.network.encoder_type '{encoder_type}': use standard, skip or residual")
        if decoder_type not in ("standard", "skip"):
            raise NeonError(f"model.network.decoder_type '{decoder_type}': use standard or skip")
        super().__init__()
        self.label_dropout = label_dropout
        noise_width = model_channels * channel_mult_noise
        emb_width = model_channels * channel_mult_emb
        plain = InitRule("xavier_uniform")
        near_zero = InitRule("xavier_uniform", weight_gain=1e-5)
        block = dict(emb_channels=emb_width, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False, init=plain,
                     init_zero=near_zero, init_attn=InitRule("xavier_uniform", weight_gain=math.sqrt(0.2)))

        # this network feeds its embedding MLP [sin | cos]
        if embedding_type == "positional":
            self.map_noise = SinusoidalEmbedding(noise_width, endpoint=True, sin_first=True)
        else:
            self.map_noise = RandomFourierEmbedding(noise_width, sin_first=True)
        self.map_label = Dense(label_dim, noise_width, init=plain) if label_dim else None
        self.map_augment = Dense(augment_dim, noise_width, bias=False, init=plain) if augment_dim else None
        self.map_layer0 = Dense(noise_width, emb_width, init=plain)
        self.map_layer1 = Dense(emb_width, emb_width, init=plain)

        levels = _levels(img_resolution, channel_mult)
        encoder = list(self._encoder(levels, in_channels, model_channels, num_blocks, attn_resolutions,
                                     encoder_type, resample_filter, block, plain))
        widths = [layer.module.out_channels for layer in encoder if layer.role in ("stem", "block")]
        decoder = list(self._decoder(levels, widths, out_channels, model_channels, num_blocks, attn_resolutions,
                                     decoder_type, resample_filter, block, near_zero))
        self._install(encoder, decoder)

    @staticmethod
    def _encoder(levels, in_channels, model_channels, num_blocks, attn_resolutions, encoder_type,
                 resample_filter, block, plain) -> Iterator[Layer]:
        width = image_width = in_channels
        for level, res, tag, mult in levels:
            if level == 0:
                yield Layer(f"{tag}_conv", "stem", ResamplingConv(width, model_channels, 3, init=plain))
                width = model_channels
            else:
                yield Layer(f"{tag}_down", "block", ResBlock(width, width, down=True, **block))
                if encoder_type == "skip":
                    yield Layer(f"{tag}_aux_down", "image_down",
                                ResamplingConv(image_width, image_width, 0, down=True, resample_filter=resample_filter))
                    yield Layer(f"{tag}_aux_skip", "image_add", ResamplingConv(image_width, width, 1, init=plain))
                elif encoder_type == "residual":
                    yield Layer(f"{tag}_aux_residual", "image_residual",
                                ResamplingConv(image_width, width, 3, down=True, resample_filter=resample_filter,
                                               fused_resample=True, init=plain))
                    image_width = width
            for i in range(num_blocks):
                yield Layer(f"{tag}_block{i}", "block",
                            ResBlock(width, model_channels * mult, attention=res in attn_resolutions, **block))
                width = model_channels * mult

    @staticmethod
    def _decoder(levels, widths, out_channels, model_channels, num_blocks, attn_resolutions, decoder_type,
                 resample_filter, block, near_zero) -> Iterator[Layer]:
        width = widths[-1]
        coarsest = len(levels) - 1
        for level, res, tag, mult in reversed(levels):
            if level == coarsest:
                yield Layer(f"{tag}_in0", "block", ResBlock(width, width, attention=True, **block))
                yield Layer(f"{tag}_in1", "block", ResBlock(width, width, **block))
            else:
                yield Layer(f"{tag}_up", "block", ResBlock(width, width, up=True, **block))
            for i in range(num_blocks + 1):
                attention = i == num_blocks and res in attn_resolutions
                yield Layer(f"{tag}_block{i}", "merge",
                            ResBlock(width + widths.pop(), model_channels * mult, attention=attention, **block))
                width = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < coarsest:
                    yield Layer(f"{tag}_aux_up", "head_up",
                                ResamplingConv(out_channels, out_channels, 0, up=True, resample_filter=resample_filter))
                yield Layer(f"{tag}_aux_norm", "head_norm", GroupNormFloor(width, eps=1e-6))
                yield Layer(f"{tag}_aux_conv", "head_conv", ResamplingConv(width, out_channels, 3, init=near_zero))

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            labels = drop_class_labels(class_labels, self.label_dropout, self.training)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        x, kept = self.encode(x, emb)
        return self.decode(x, emb, kept)[1]


class ADMUNet(LayeredUNet):
    """The ADM U-Net (EDM's ImageNet-64 backbone): the `DhariwalUNet` of the release."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0.0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_width = model_channels * channel_mult_emb
        plain = InitRule("kaiming_uniform", weight_gain=math.sqrt(1 / 3), bias_gain=math.sqrt(1 / 3))
        zero = InitRule("kaiming_uniform", weight_gain=0.0, bias_gain=0.0)
        block = dict(emb_channels=emb_width, channels_per_head=64, dropout=dropout, init=plain, init_zero=zero)

        self.map_noise = SinusoidalEmbedding(model_channels)
        self.map_augment = Dense(augment_dim, model_channels, bias=False, init=zero) if augment_dim else None
        self.map_layer0 = Dense(model_channels, emb_width, init=plain)
        self.map_layer1 = Dense(emb_width, emb_width, init=plain)
        self.map_label = (Dense(label_dim, emb_width, bias=False,
                                init=InitRule("kaiming_normal", weight_gain=math.sqrt(label_dim)))
                          if label_dim else None)

        encoder: list[Layer] = []
        width = in_channels
        for level, res, tag, mult in _levels(img_resolution, channel_mult):
            if level == 0:
                encoder.append(Layer(f"{tag}_conv", "stem", ResamplingConv(width, model_channels * mult, 3, init=plain)))
                width = model_channels * mult
            else:
                encoder.append(Layer(f"{tag}_down", "block", ResBlock(width, width, down=True, **block)))
            for i in range(num_blocks):
                encoder.append(Layer(f"{tag}_block{i}", "block",
                                     ResBlock(width, model_channels * mult, attention=res in attn_resolutions, **block)))
                width = model_channels * mult
        widths = [layer.module.out_channels for layer in encoder]

        decoder: list[Layer] = []
        for level, res, tag, mult in reversed(_levels(img_resolution, channel_mult)):
            if level == len(channel_mult) - 1:
                decoder.append(Layer(f"{tag}_in0", "block", ResBlock(width, width, attention=True, **block)))
                decoder.append(Layer(f"{tag}_in1", "block", ResBlock(width, width, **block)))
            else:
                decoder.append(Layer(f"{tag}_up", "block", ResBlock(width, width, up=True, **block)))
            for i in range(num_blocks + 1):
                decoder.append(Layer(f"{tag}_block{i}", "merge",
                                     ResBlock(width + widths.pop(), model_channels * mult,
                                              attention=res in attn_resolutions, **block)))
                width = model_channels * mult
        self._install(encoder, decoder)
        self.out_norm = GroupNormFloor(width)
        self.out_conv = ResamplingConv(width, out_channels, 3, init=zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(drop_class_labels(class_labels, self.label_dropout, self.training))
        emb = F.silu(emb)
        x, kept = self.encode(x, emb)
        x = self.decode(x, emb, kept)[0]
        return self.out_conv(F.silu(self.out_norm(x)))
