"""EDM (Karras et al. 2022): preconditioned diffusion networks, their loss, the Heun sampler, and a reader
for the official snapshots; written from docs/upstream/edm.md. State-dict keys and shapes are the released
networks'."""

from neon.families.edm.module import EDMModule
from neon.families.edm.sampler import heun_sampler

__all__ = ["EDMModule", "heun_sampler"]
