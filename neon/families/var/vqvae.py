"""VAR's multi-scale VQVAE, written here with the state-dict keys and shapes of the released
`vae_ch160v4096z32.pth`: a conv encoder/decoder and a residual quantizer over a pyramid of token maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from neon.core.errors import NeonError
from neon.families.conv_autoencoder import Decoder, Encoder


class Phi(nn.Conv2d):
    """The residual refinement of a token map: h·(1 − r) + conv(h)·r."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


class PhiSet(nn.Module):
    """The Phi convs, shared by scales: `qresi_ls` (partially shared, the release), `qresi` (one shared) or
    one per scale. Scale si of K uses the conv whose tick is nearest to si / (K − 1)."""

    def __init__(self, channels: int, ratio: float, share: int, num_scales: int):
        super().__init__()
        self.share = share
        if share == 1:
            self.qresi = Phi(channels, ratio)
            self.index = [0] * num_scales
            return
        count = num_scales if share == 0 else share
        self.qresi_ls = nn.ModuleList(Phi(channels, ratio) for _ in range(count))
        if share == 0:
            self.index = list(range(num_scales))
            return
        edge = 1 / 3 / count if count == 4 else 1 / 2 / count
        ticks = np.linspace(edge, 1 - edge, count)
        # the nearest tick in float64 numpy arithmetic: its rounding settles exact ties as the release does
        self.index = [int(np.argmin(np.abs(ticks - si / (num_scales - 1)))) if num_scales > 1 else 0
                      for si in range(num_scales)]

    def forward(self, h: torch.Tensor, si: int) -> torch.Tensor:
        if self.share == 1:
            return self.qresi(h)
        return self.qresi_ls[self.index[si]](h)


class MultiScaleQuantizer(nn.Module):
    """Residual quantization over the token-map pyramid `patch_nums` (the last one is the latent size)."""

    def __init__(self, vocab_size: int, channels: int, patch_nums: Sequence[int], quant_resi: float = 0.5,
                 share_quant_resi: int = 4, beta: float = 0.25):
        super().__init__()
        self.vocab_size, self.channels, self.beta = vocab_size, channels, beta
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.embedding = nn.Embedding(vocab_size, channels)
        self.quant_resi = PhiSet(channels, quant_resi, share_quant_resi, len(self.patch_nums))
        # usage statistics kept by the release's training code; part of its state dict
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Codebook index of each row of z [N, C] (squared L2 distance)."""
        weight = self.embedding.weight
        z = z.float()  # under autocast z may be half precision while the codebook stays float32
        dist = z.pow(2).sum(1, keepdim=True) + weight.pow(2).sum(1)
        dist.addmm_(z, weight.T, beta=1, alpha=-2)
        return dist.argmin(dim=1)

    def _upsampled(self, h: torch.Tensor, si: int, size: int) -> torch.Tensor:
        # a token map brought to the latent size (bicubic), then refined by its Phi
        if si != len(self.patch_nums) - 1:
            h = F.interpolate(h, size=(size, size), mode="bicubic")
        return self.quant_resi(h, si)

    def encode(self, f: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Latent map f [B, C, H, W] → (one index map [B, pn²] per scale, f̂ after each scale). The residual
        is taken from f detached, so f̂ carries gradients to the codebook and the Φ convs only (training)."""
        b, c, size, _ = f.shape
        rest, f_hat, indices, f_hats = f.detach(), torch.zeros_like(f), [], []
        last = len(self.patch_nums) - 1
        for si, pn in enumerate(self.patch_nums):
            z = F.interpolate(rest, size=(pn, pn), mode="area") if si != last else rest
            with torch.no_grad():
                idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, pn, pn)
            h = self._upsampled(self.embedding(idx).permute(0, 3, 1, 2), si, size)
            f_hat = f_hat + h
            rest = rest - h.detach()
            indices.append(idx.reshape(b, pn * pn))
            f_hats.append(f_hat)
        return indices, f_hats

    def teacher_inputs(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """The transformer's inputs for scales 1..K−1 [B, L − pn_0², C]: f̂ after each scale, area-pooled
        to the next scale's size."""
        b, size = indices[0].shape[0], self.patch_nums[-1]
        f_hat = torch.zeros(b, self.channels, size, size, device=indices[0].device)
        out = []
        for si in range(len(self.patch_nums) - 1):
            pn, nxt = self.patch_nums[si], self.patch_nums[si + 1]
            h = self.embedding(indices[si]).transpose(1, 2).reshape(b, self.channels, pn, pn)
            f_hat = f_hat + self._upsampled(h, si, size)
            out.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").view(b, self.channels, -1).transpose(1, 2))
        return torch.cat(out, dim=1)

    def next_input(self, si: int, f_hat: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add scale si's token map h [B, C, pn, pn] into f̂ (in place); return (f̂, the next scale's input
        map, or f̂ after the last scale)."""
        f_hat.add_(self._upsampled(h, si, self.patch_nums[-1]))
        if si == len(self.patch_nums) - 1:
            return f_hat, f_hat
        nxt = self.patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(nxt, nxt), mode="area")


class VQVAE(nn.Module):
    """Encoder, quantizer and decoder with the release's names: `encoder.*`, `quant_conv`, `quantize.*`,
    `post_quant_conv`, `decoder.*`. Defaults are those of `vae_ch160v4096z32.pth`."""

    def __init__(self, vocab_size: int = 4096, z_channels: int = 32, ch: int = 160,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, in_channels: int = 3,
                 using_sa: bool = True, using_mid_sa: bool = True, dropout: float = 0.0, quant_resi: float = 0.5,
                 share_quant_resi: int = 4, patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)):
        super().__init__()
        arch = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, in_channels=in_channels,
                    z_channels=z_channels, using_sa=using_sa, using_mid_sa=using_mid_sa, dropout=dropout)
        self.encoder, self.decoder = Encoder(**arch), Decoder(**arch)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 3, padding=1)
        self.quantize = MultiScaleQuantizer(vocab_size, z_channels, patch_nums, quant_resi, share_quant_resi)
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.in_channels = in_channels

    @property
    def patch_nums(self) -> tuple[int, ...]:
        """Side lengths of the token maps, coarse to fine."""
        return self.quantize.patch_nums

    @property
    def image_size(self) -> int:
        """Side length of the images this VAE encodes and decodes."""
        return self.patch_nums[-1] * self.downsample

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images."""
        return (self.in_channels, self.image_size, self.image_size)

    def encode_indices(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images in [-1, 1] → one token-index map [B, pn²] per scale."""
        return self.quantize.encode(self.quant_conv(self.encoder(images)))[0]

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """The accumulated latent f̂ → images in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    # --- the release's names for the image ↔ token round trips
    def img_to_idxBl(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images in [-1, 1] [B, 3, H, W] → one token-index map [B, pn²] per scale, rows in (h, w) order."""
        if tuple(images.shape[1:]) != self.image_shape:
            raise NeonError(f"images of shape {tuple(images.shape[1:])} do not fit this VQVAE, which encodes "
                            f"{self.image_shape} (the last patch size {self.patch_nums[-1]} × {self.downsample})")
        return self.encode_indices(images)

    def idxBl_to_fhat(self, indices: Sequence[torch.Tensor], last_one: bool = True
                      ) -> torch.Tensor | list[torch.Tensor]:
        """Token maps [B, pn²] → f̂ = Σ_si Φ_si(bicubic(h_si → full size)) (the last scale not resized); with
        `last_one=False` the f̂ after every scale."""
        quant, size = self.quantize, self.patch_nums[-1]
        if len(indices) != len(self.patch_nums):
            raise NeonError(f"{len(indices)} token maps given but this VQVAE has {len(self.patch_nums)} scales "
                            f"{list(self.patch_nums)}")
        b = indices[0].shape[0]
        f_hat = torch.zeros(b, quant.channels, size, size, device=indices[0].device)
        out = []
        for si, (pn, idx) in enumerate(zip(self.patch_nums, indices, strict=True)):
            if tuple(idx.shape) != (b, pn * pn):
                raise NeonError(f"token map {si} has shape {tuple(idx.shape)} but scale {si} needs ({b}, {pn * pn})")
            h = quant.embedding(idx.long()).transpose(1, 2).reshape(b, quant.channels, pn, pn)
            f_hat = f_hat + quant._upsampled(h, si, size)
            out.append(f_hat)
        return out[-1] if last_one else out

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """The accumulated latent f̂ → images in [-1, 1] (the release's name for `decode`)."""
        return self.decode(f_hat)

    def idxBl_to_img(self, indices: Sequence[torch.Tensor], same_shape: bool = True, last_one: bool = True
                     ) -> torch.Tensor | list[torch.Tensor]:
        """Token maps [B, pn²] → images in [-1, 1] decoded from f̂ after the last scale, or (`last_one=False`)
        after each scale; `same_shape=True` only (every scale brought to full size, as the release samples)."""
        if not same_shape:
            raise NeonError("idxBl_to_img(same_shape=False), the release's progressive variant, is not "
                            "supported: use same_shape=True (what training and sampling use)")
        f_hats = self.idxBl_to_fhat(indices, last_one=False)
        return self.decode(f_hats[-1]) if last_one else [self.decode(f) for f in f_hats]
