"""Lightning's view of a model family: `LightningNeon` lets a Lightning Trainer train a `NeonModule`, and
`ResumableCheckpoint` makes a pretraining resumable. The families are plain torch modules, so the tasks that only sample or score (sample, evaluate, export) never
import Lightning, which costs seconds at every start."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from neon.core.contract import Batch, NeonModule
from neon.core.errors import NeonError
from neon.core.io import StateDict
from neon.core.seeding import StepNoise


@dataclass(frozen=True)
class TrainSettings:
    """How a run trains a family, held by the run (never written onto the family): the optimizer (None: the
    model config's own, `model.optimizer`), the seed of the training noise, a linear learning-rate warmup
    (steps, 0: none) and whether the family's EMA is kept (off: θ is the raw trained network)."""

    optimizer: Callable[..., torch.optim.Optimizer] | None = None
    noise_seed: int = 0
    lr_warmup_steps: int = 0
    ema: bool = True


class LightningNeon(L.LightningModule):
    """Trains `family` (a NeonModule) in place with the run's `settings`: its own loss on globally seeded noise,
    the optimizer with its warmup, and its EMA after every optimizer step. The state dict is the family's own,
    so a Lightning checkpoint of this holds the same keys as the family module's."""

    def __init__(self, family: NeonModule, settings: TrainSettings = TrainSettings()):
        super().__init__()
        self.family = family
        self.settings = settings

    def neon_weights(self) -> StateDict:
        """θ as Neon sees it (callbacks read it through here): the raw network where the EMA is not kept."""
        return self.family.neon_weights() if self.settings.ema else self.family.net.state_dict()

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.family.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        return self.family.load_state_dict(state_dict, *args, **kwargs)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        family = self.family
        self._batch_size = local = len(batch["x"])
        rank, world = self.trainer.global_rank, self.trainer.world_size
        # the global batch is the ranks' shares in rank order (GlobalBatchSampler), all of equal size
        noise = StepNoise(self.settings.noise_seed, self.global_step, slice(rank * local, (rank + 1) * local), local * world,
                          self.device)
        loss = family.loss(batch, noise)
        # logging costs a sizeable share of a small network's step: only on the steps the logger keeps
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # here rather than in on_train_batch_end, so callbacks of that hook (snapshots) see the updated EMA
        family = self.family
        if family.ema is not None and self.settings.ema:
            family.ema_rule.update(family.ema, family.net, batch_size=self._batch_size * self.trainer.world_size)

    def configure_optimizers(self):
        family = self.family
        factory = self.settings.optimizer or family.optimizer_factory
        if factory is None:
            raise NeonError("no optimizer configured: set model.optimizer (pretraining) or neon.optimizer")
        optimizer = factory(family.optimizer_params())
        if not self.settings.lr_warmup_steps:
            return optimizer
        warmup = int(self.settings.lr_warmup_steps)
        # step k (from 0) runs at lr·k/warmup, as a per-iteration linear warmup does
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, k / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class ResumableCheckpoint(L.Callback):
    """Every `every` optimizer steps, the whole training state (weights, EMA, optimizer, step, the global
    RNG) into `path`, written under a temporary name and renamed: a kill leaves the previous one whole.
    `pretrain_into` resumes from it with the batch stream past the global batches already trained on, so
    the resumed run equals an uninterrupted one bit for bit."""

    def __init__(self, path: Path, every: int):
        self.path, self.every, self._saved = Path(path), every, -1
        self._rng: torch.Tensor | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: LightningNeon, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every or step == self._saved or step >= trainer.max_steps:
            return
        self._saved = step
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)  # collective: every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)

    def state_dict(self) -> dict[str, Any]:
        # the training noise is seeded per step; this covers anything else drawing from the global RNG
        return {"cpu_rng": torch.get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng = state_dict["cpu_rng"]

    def on_train_start(self, trainer: L.Trainer, pl_module: LightningNeon) -> None:
        # set only now: creating the data loader's iterator (after the restore) draws from the global RNG,
        # as it did before step 0 of the uninterrupted run
        rng, self._rng = self._rng, None
        if rng is not None:
            torch.set_rng_state(rng)
