"""Lightning callbacks: NeonMerge, the merge (neon/merging/merger.py) at fit end and at fine-tune snapshots."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L

from neon.core.io import StateDict
from neon.merging.extrapolate import WSpec, check_w, merged_name
from neon.merging.merger import NeonMerger


def neon_weights_of(module: L.LightningModule) -> StateDict:
    """θ of any LightningModule: `neon_weights()` where defined, else its whole state dict."""
    getter = getattr(module, "neon_weights", None)
    return getter() if getter is not None else module.state_dict()


class NeonMerge(NeonMerger, L.Callback):
    """θ_neon = (1 + w)·θ_r − w·θ_s for every w, as a callback: θ_r is remembered when fitting starts (unless
    given); θ_s is taken after each of `budgets` optimizer steps (snapshots of one fine-tune), else at fit end,
    handed to `keep_theta_s(step, θ_s)` (e.g. into the artifact cache) and, with `out_dir`, merged for every
    w into `theta_neon_w{w}[_B{step}].safetensors` (`NeonMerger.write`)."""

    def __init__(self, ws: Sequence[WSpec] = (), out_dir: str | Path | None = None, base: StateDict | None = None,
                 budgets: Iterable[int] = (), keep_theta_s: Callable[[int, StateDict], Any] | None = None):
        super().__init__(base)
        self.ws = [check_w(w) for w in ws]
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.budgets = sorted(set(budgets))
        self.keep_theta_s = keep_theta_s
        self.paths: dict[str, Path] = {}  # file name → θ_neon written by the callback
        self.taken: list[int] = []  # the steps at which θ_s was taken

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.base is None and self.ws and trainer.is_global_zero:
            self.base = {k: v.detach().cpu().clone() for k, v in neon_weights_of(pl_module).items()}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # after the optimizer step (and the EMA update): a snapshot here equals a fine-tune stopped here
        if trainer.global_step in self.budgets and trainer.global_step not in self.taken:
            self._take(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.budgets:  # no snapshots asked for: θ_s is the fitted network
            self._take(trainer, pl_module)

    def _take(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        self.taken.append(step)
        if not trainer.is_global_zero:  # under DDP every rank holds the same θ_s: rank 0 writes it
            return
        theta_s = {k: v.detach().cpu().clone() for k, v in neon_weights_of(pl_module).items()}
        if self.keep_theta_s is not None:
            self.keep_theta_s(step, theta_s)
        if self.out_dir is not None:
            several = len(self.budgets) > 1
            for w in self.ws:
                name = merged_name(w, step if several else None)
                self.paths[name] = self.write(theta_s, w, self.out_dir / name)
