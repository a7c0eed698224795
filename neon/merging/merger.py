"""θ_neon = (1 + w)·θ_r − w·θ_s from a θ_r held in memory — the one place the pipeline makes it. Free of
Lightning, so a run whose θ_s are all cached (or a task that never trains) does not import it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neon.core.io import StateDict, save_state_dict
from neon.merging.extrapolate import WSpec, extrapolate
from neon.weights.lightning_checkpoints import save_checkpoint_pair


class NeonMerger:
    """Merges θ_s with the remembered θ_r (`base`) for any w, in memory or into files."""

    def __init__(self, base: StateDict | None = None):
        self.base = base

    def merged(self, theta_s: StateDict, w: WSpec) -> StateDict:
        """θ_neon for one w, in memory (e.g. to evaluate it)."""
        if self.base is None:
            raise RuntimeError("NeonMerger has no θ_r yet: pass base=, or merge after fitting has started")
        return extrapolate(self.base, theta_s, w)

    def write(self, theta_s: StateDict, w: WSpec, path: Path, module: Any = None, model_cfg: Any = None) -> Path:
        """Write θ_neon for one w as safetensors at `path`; given the family module (and its model config), also
        as a Lightning checkpoint beside it (`.ckpt` for `.safetensors`), the module then holding θ_neon."""
        theta_neon = self.merged(theta_s, w)
        if module is None:
            return save_state_dict(theta_neon, path)
        module.load_neon_weights(theta_neon, source="θ_neon")
        save_checkpoint_pair(module, path.with_name(path.name.removesuffix(".safetensors")), model_cfg)
        return path
