"""Any local Hugging Face causal LM as a family: its own loss, per-seed KV-cached sampling, `generate` as release
mode, θ back out as a model folder (docs/families/hf_causal_lm.md; facts in docs/upstream/transformers.md)."""

from neon.families.hf_lm.module import HFCausalLM

__all__ = ["HFCausalLM"]
