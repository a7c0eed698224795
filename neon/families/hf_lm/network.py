"""The network of a local Hugging Face causal LM as neon holds it: θ's keys are the folder's (tied copies left out,
as the folder stores them), and a KV-cached step for `neon.families.lm.sample_tokens`."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neon.core.errors import NeonError
from neon.data.hf_tokenizer import quiet_transformers


def tied_keys(net: nn.Module) -> dict[str, str]:
    """{tied parameter: the parameter it is}, e.g. GPT-2's {'lm_head.weight': 'transformer.wte.weight'}."""
    return dict(getattr(net, "all_tied_weights_keys", None) or {})


def _drop_tied(tied: dict[str, str], module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    # a tied parameter is the same tensor under two names: θ holds it once, under its source's name, as the
    # folder's weights file does (safetensors refuses shared tensors, and a merge would see it twice)
    for target in tied:
        state_dict.pop(prefix + target, None)


def _fill_tied(tied: dict[str, str], module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    # loading θ (without the tied names) fills them from their source, so strict loading finds every key
    for target, source in tied.items():
        if prefix + source in state_dict:
            state_dict[prefix + target] = state_dict[prefix + source]


def load_network(folder: Path, dtype: str = "auto") -> nn.Module:
    """`AutoModelForCausalLM.from_pretrained` of the local folder (never the Hub) in `dtype` ('auto': as saved),
    its state dict holding each tied parameter once."""
    quiet_transformers()
    from transformers import AutoModelForCausalLM

    if dtype != "auto" and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise NeonError(f"model.dtype={dtype!r} is not a torch dtype: use auto (as saved), float32, bfloat16 or "
                        "float16")
    net = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                               dtype=dtype if dtype == "auto" else getattr(torch, str(dtype)))
    tied = tied_keys(net)
    if tied:
        net.register_state_dict_post_hook(partial(_drop_tied, tied))
        net.register_load_state_dict_pre_hook(partial(_fill_tied, tied))
    return net


class CachedSteps:
    """A causal LM as `sample_tokens` reads a network: `forward_step(idx, cache)` runs the new positions through the
    model's own KV cache (`cache=`, `use_cache=True`), `bos` starts every sequence, and every id of the vocabulary
    may be drawn (`drawable`: an HF vocabulary's BOS/EOS is a real token)."""

    def __init__(self, net: nn.Module, bos: int, positions: int | None):
        self.net, self.bos, self.positions = net, int(bos), positions
        self.drawable = int(net.config.vocab_size)

    def forward_step(self, idx: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        """Logits [B, t, vocab] of `t` new positions after those in `cache` (None: none yet), and the grown cache."""
        start = 0 if cache is None else int(cache.get_seq_length())
        if self.positions is not None and start + idx.shape[1] > self.positions:
            raise NeonError(f"{start + idx.shape[1]} positions asked of a model with {self.positions} "
                            "(max_position_embeddings): lower model.max_new_tokens")
        out = self.net(input_ids=idx, cache=cache, use_cache=True)
        return out.logits, out.cache
