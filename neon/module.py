"""The LightningModule every model family subclasses: a network, its own loss, its samplers, EMA."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from neon.errors import NeonError
from neon.io import StateDict, load_state_dict
from neon.seeding import StepNoise

Batch = dict[str, torch.Tensor]
Sampler = Callable[..., torch.Tensor]


def plain_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor settings with tuples and config lists as plain lists (comparable, YAML-writable)."""
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(kwargs).items()}


class EMA:
    """Exponential moving average of weights: a fixed decay, or a half-life counted in samples."""

    def __init__(self, decay: float | None = None, halflife_samples: float | None = None):
        if (decay is None) == (halflife_samples is None):
            raise NeonError("EMA needs exactly one of model.ema.decay or model.ema.halflife_samples")
        self.decay = decay
        self.halflife_samples = halflife_samples

    def beta(self, batch_size: int) -> float:
        """The decay for one optimizer step over `batch_size` samples."""
        if self.decay is not None:
            return float(self.decay)
        return 0.5 ** (batch_size / max(float(self.halflife_samples), 1e-8))

    @torch.no_grad()
    def update(self, ema: nn.Module, net: nn.Module, batch_size: int) -> None:
        """Move `ema` toward `net`; buffers are copied."""
        beta = self.beta(batch_size)
        for pe, pn in zip(ema.parameters(), net.parameters()):
            pe.lerp_(pn.detach(), 1.0 - beta)
        for be, bn in zip(ema.buffers(), net.buffers()):
            be.copy_(bn)


class NeonModule(L.LightningModule):
    """Base of every family. A family supplies `net`, `loss` and `generate`, and may override
    `read_checkpoint` to load its official release format."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        ema: EMA | None = None,
        num_classes: int = 0,
    ):
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.ema_rule = ema
        self.ema = copy.deepcopy(net).requires_grad_(False) if ema is not None else None
        self.num_classes = num_classes
        self.noise_seed = 0  # seeds the training noise; the pipeline sets it from the run's seed
        self.lr_warmup_steps = 0  # linear learning-rate warmup from 0 over this many steps (0: none)

    # --- what a family implements
    def loss(self, batch: Batch, noise: StepNoise) -> torch.Tensor:
        """The family's own training loss on a batch (pretraining and fine-tuning use the same one); every
        random draw comes from `noise`, so it does not depend on the process count."""
        raise NotImplementedError

    def generate(
        self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One sample per seed with `sampler`; returns (samples, labels or None)."""
        raise NotImplementedError

    def config_overrides(self) -> dict:
        """Model-config entries that differ from the config because a checkpoint set them."""
        return {}

    def export_samples(self, x: torch.Tensor):
        """Samples as a numpy array for .npz files (families with images return uint8 NHWC)."""
        return x.detach().cpu().numpy()

    def read_checkpoint(self, path: str | Path) -> StateDict:
        """Weights of the sampling network from a file (families add their official formats)."""
        return load_state_dict(path)

    # --- shared behaviour
    @property
    def sampling_net(self) -> nn.Module:
        """The network used to sample: the EMA copy where the family keeps one."""
        return self.ema if self.ema is not None else self.net

    def neon_weights(self) -> StateDict:
        """θ as Neon sees it: the sampling network's state dict."""
        return self.sampling_net.state_dict()

    def load_neon_weights(self, state: StateDict, source: str = "checkpoint") -> None:
        """Load θ into the network (and its EMA), naming any missing, unexpected or misshapen key."""
        own = self.net.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            detail = []
            if missing:
                detail.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
            if unexpected:
                detail.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
            raise NeonError(
                f"{source} does not fit model {type(self).__name__} ({'; '.join(detail)}): "
                "check that model= matches the checkpoint's family and size"
            )
        for key, value in own.items():
            if tuple(value.shape) != tuple(state[key].shape):
                raise NeonError(
                    f"{source}: key '{key}' has shape {tuple(state[key].shape)} but model "
                    f"{type(self).__name__} expects {tuple(value.shape)}: check the model size settings"
                )
        self.net.load_state_dict(state)
        if self.ema is not None:
            self.ema.load_state_dict(state)

    def load_checkpoint(self, path: str | Path) -> None:
        """Read a checkpoint file and load it as θ."""
        self.load_neon_weights(self.read_checkpoint(path), source=f"checkpoint '{path}'")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        self._batch_size = local = len(batch["x"])
        rank, world = self.trainer.global_rank, self.trainer.world_size
        # the global batch is the ranks' shares in rank order (GlobalBatchSampler), all of equal size
        noise = StepNoise(self.noise_seed, self.global_step, slice(rank * local, (rank + 1) * local), local * world,
                          self.device)
        loss = self.loss(batch, noise)
        # logging costs a sizeable share of a small network's step: only on the steps the logger keeps
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # here rather than in on_train_batch_end, so callbacks of that hook (snapshots) see the updated EMA
        if self.ema is not None:
            self.ema_rule.update(self.ema, self.net, batch_size=self._batch_size * self.trainer.world_size)

    def optimizer_params(self) -> Iterable[nn.Parameter] | list[dict[str, Any]]:
        """What the optimizer trains: the network's parameters (families may return parameter groups)."""
        return self.net.parameters()

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise NeonError("no optimizer configured: set model.optimizer (pretraining) or neon.optimizer")
        optimizer = self.optimizer_factory(self.optimizer_params())
        if not self.lr_warmup_steps:
            return optimizer
        warmup = int(self.lr_warmup_steps)
        # step k (from 0) runs at lr·k/warmup, as a per-iteration linear warmup does
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, k / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
