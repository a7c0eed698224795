"""Lightning callbacks: the Neon merge at the end of a fine-tune."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L

from neon.io import StateDict, save_state_dict
from neon.merge import WSpec, check_w, extrapolate


def merged_name(w: WSpec) -> str:
    """File name of θ_neon for one w."""
    tag = f"{w:g}" if isinstance(w, float) else "blockwise"
    return f"theta_neon_w{tag}.safetensors"


def neon_weights_of(module: L.LightningModule) -> StateDict:
    """θ of any LightningModule: `neon_weights()` where defined, else its whole state dict."""
    getter = getattr(module, "neon_weights", None)
    return getter() if getter is not None else module.state_dict()


class NeonMerge(L.Callback):
    """Remember θ_r when fitting starts; at fit end write θ_neon = (1 + w)·θ_r − w·θ_s for each w."""

    def __init__(self, ws: Sequence[WSpec], out_dir: str | Path, base: StateDict | None = None):
        self.ws = [check_w(w) for w in ws]
        self.out_dir = Path(out_dir)
        self.base = base
        self.paths: dict[str, Path] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.base is None:
            self.base = {k: v.detach().cpu().clone() for k, v in neon_weights_of(pl_module).items()}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        theta_s = {k: v.detach().cpu() for k, v in neon_weights_of(pl_module).items()}
        for w in self.ws:
            path = self.out_dir / merged_name(w)
            save_state_dict(extrapolate(self.base, theta_s, w), path)
            self.paths[merged_name(w)] = path
