"""Training a small multi-scale VQVAE from scratch (the tiny VAR's tokenizer): reconstruction MSE plus
the quantizer's commitment and codebook terms at every scale, straight-through gradients."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from neon.families.var.vqvae import VQVAE
from neon.io import StateDict


def quantize_with_loss(vae: VQVAE, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f̂ with straight-through gradients to f, the VQ loss averaged over scales)."""
    quant = vae.quantize
    b, c, size, _ = f.shape
    target = f.detach()
    rest, f_hat, loss = target.clone(), torch.zeros_like(target), f.new_zeros(())
    last = len(quant.patch_nums) - 1
    for si, pn in enumerate(quant.patch_nums):
        z = F.interpolate(rest, size=(pn, pn), mode="area") if si != last else rest
        with torch.no_grad():
            idx = quant.nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, pn, pn)
        h = quant._upsampled(quant.embedding(idx).permute(0, 3, 1, 2), si, size)
        f_hat = f_hat + h
        rest = rest - h.detach()
        loss = loss + quant.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, target)
    return (f_hat.detach() - target) + f, loss / len(quant.patch_nums)


def train_vqvae(vae: VQVAE, images: torch.Tensor, steps: int, lr: float, batch_size: int, seed: int = 0) -> StateDict:
    """Train `vae` on images in [-1, 1] with Adam; returns its state dict."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    for _ in range(steps):
        x = images[torch.randint(len(images), (min(batch_size, len(images)),), generator=gen)]
        f_hat, vq_loss = quantize_with_loss(vae, vae.quant_conv(vae.encoder(x)))
        loss = F.mse_loss(vae.decoder(vae.post_quant_conv(f_hat)), x) + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in vae.eval().state_dict().items()}
