"""VAR (Tian et al. 2024): multi-scale VQVAE tokens, predicted coarse to fine by a class-conditional transformer."""

from neon.families.var.module import VARModule
from neon.families.var.sampler import var_sampler

__all__ = ["VARModule", "var_sampler"]
