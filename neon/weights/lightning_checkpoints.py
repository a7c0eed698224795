"""θ as a Lightning checkpoint beside its safetensors, for tools that load `.ckpt` files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neon.core.contract import NeonModule
from neon.core.io import atomic_path, save_state_dict
from neon.core.values import plain


def _lightning_version() -> str:
    # from the installed package's metadata: importing Lightning costs seconds a merge does not need
    from importlib.metadata import version

    return version("lightning")


def save_checkpoint_pair(module: NeonModule, stem: Path, model_cfg: Any) -> None:
    """Write the module's θ as `stem.safetensors` and as a Lightning checkpoint `stem.ckpt`."""
    save_state_dict(module.neon_weights(), stem.with_name(stem.name + ".safetensors"))
    with atomic_path(stem.with_name(stem.name + ".ckpt")) as tmp:
        torch.save(
            {
                "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                "pytorch-lightning_version": _lightning_version(),
                "hyper_parameters": {"model": {**plain(model_cfg), **module.config_overrides()}},
                "epoch": 0,
                "global_step": 0,
            },
            tmp,
        )
