"""IMM (Zhou et al. 2025): few-step generation by Inductive Moment Matching, a DiT jumping x_t → x_s."""

from neon.families.imm.module import IMMModule
from neon.families.imm.sampler import pushforward_sampler

__all__ = ["IMMModule", "pushforward_sampler"]
