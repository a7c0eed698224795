"""xAR (Ren et al. 2025): flow matching over clusters of VAE latents, predicted one cluster after another."""

from neon.families.latents import KLAutoencoder, PixelLatent
from neon.families.xar.module import XARModule
from neon.families.xar.sampler import xar_sampler

__all__ = ["PixelLatent", "KLAutoencoder", "XARModule", "xar_sampler"]
