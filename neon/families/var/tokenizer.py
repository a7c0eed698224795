"""Training a small multi-scale VQVAE from scratch (the tiny VAR's tokenizer): reconstruction MSE plus
the quantizer's commitment and codebook terms at every scale, straight-through gradients."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from neon.core.io import StateDict
from neon.families.var.vqvae import VQVAE


def quantize_with_loss(vae: VQVAE, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f̂ with straight-through gradients to f, the VQ loss averaged over scales)."""
    _, f_hats = vae.quantize.encode(f)
    target = f.detach()
    loss = sum(vae.quantize.beta * F.mse_loss(fh.detach(), f) + F.mse_loss(fh, target) for fh in f_hats)
    return (f_hats[-1].detach() - target) + f, loss / len(f_hats)


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
