"""Any local diffusers image pipeline as a family: its network, its scheduler's training objective and its
sampling loop (docs/families/diffusers.md; facts in docs/upstream/diffusers.md)."""

from neon.families.diffusers_family.module import DiffusersModule
from neon.families.diffusers_family.sampler import scheduler_sampler

__all__ = ["DiffusersModule", "scheduler_sampler"]
