"""EDM (Karras et al. 2022): preconditioned diffusion networks, their losses, the Heun sampler, and a
loader for the official snapshots. State-dict keys and shapes match the released networks."""

from neon.families.edm.module import EDMModule
from neon.families.edm.sampler import heun_sampler

__all__ = ["EDMModule", "heun_sampler"]
