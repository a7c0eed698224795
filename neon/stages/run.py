"""What every task needs: the run folder, the artifact cache, stage timings, models and trainers."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from neon.core.cache import ArtifactCache
from neon.core.collectives import is_main
from neon.core.errors import NeonError
from neon.core.io import write_text
from neon.core.values import plain
from neon.stages.settings import MetricSettings, NeonSettings, RunSettings

if TYPE_CHECKING:  # Lightning takes seconds to import: only the stages that train import it
    import lightning as L

    from neon.core.contract import NeonModule

log = logging.getLogger("neon")

# Keys of the model group that describe the run, not the constructor.
MODEL_META_KEYS = ("checkpoint", "pretrain")


def model_spec(cfg: DictConfig) -> dict[str, Any]:
    """The model group as constructor settings, resolved against the whole config (so that
    ${paths.cache_dir} and the like resolve); a missing mandatory value (???) raises."""
    model = cfg.model
    return {k: OmegaConf.to_container(model[k], resolve=True, throw_on_missing=True)
            if isinstance(model[k], (DictConfig, ListConfig)) else model[k]
            for k in model if k not in MODEL_META_KEYS}


def write_resolved_config(cfg: DictConfig, out: Path) -> None:
    """`config_resolved.yaml`: Hydra keeps the config with its interpolations in .hydra/; this is what ran."""
    write_text(out / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))


_ACTIVE_STAGES: list[str] = []  # the stages under way in this process, innermost last
_LEFT_BY_EXCEPTION: list[str] = []  # the innermost stage an exception (an interrupt) is unwinding through


def current_stage() -> str:
    """The stage under way, or the one an exception just left (for the interrupt message), or 'start-up'."""
    if _ACTIVE_STAGES:
        return _ACTIVE_STAGES[-1]
    return _LEFT_BY_EXCEPTION[0] if _LEFT_BY_EXCEPTION else "start-up"


@dataclass
class Run:
    """One job: its config, output folder, artifact cache and the seconds spent per stage."""

    cfg: DictConfig
    out: Path
    cache: ArtifactCache
    seconds: dict[str, float] = field(default_factory=dict)
    logger_cfg: Any = None  # the `logger` group; None: no logger (and none on ranks other than 0)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Run":
        out = Path(cfg.paths.output_dir)
        logger_cfg = None
        if is_main():  # under DDP, rank 0 alone writes the run folder and logs
            out.mkdir(parents=True, exist_ok=True)
            write_resolved_config(cfg, out)
            logger_cfg = cfg.logger if cfg.get("logger") else None
        return cls(cfg=cfg, out=out, cache=ArtifactCache(cfg.paths.cache_dir), logger_cfg=logger_cfg)

    @functools.cached_property
    def settings(self) -> RunSettings:
        """The job's top-level keys (seed, device, progress, resume, previews), checked and typed once."""
        return RunSettings.of(self.cfg)

    @functools.cached_property
    def neon(self) -> NeonSettings:
        """The `neon` group, checked and typed once (the stages read it here, never from the config)."""
        return NeonSettings.of(self.cfg)

    @functools.cached_property
    def metrics(self) -> MetricSettings:
        """The `metrics` group, checked and typed once."""
        return MetricSettings.of(self.cfg)

    @functools.cached_property
    def logger(self) -> Any:
        """The configured logger, built on first use: the loggers are Lightning's, and tasks that never train
        or log curves (sample, evaluate, merge, export) should not pay for importing it."""
        return instantiate(self.logger_cfg) if self.logger_cfg is not None else None

    def log_results(self, rows: list[dict[str, float]], summary: dict[str, Any],
                    images: dict[str, Path] | None = None) -> None:
        """Send the w-curve (one step per w), the headline numbers and PNGs (curves, sample grids) to the
        configured logger; loggers without images (CSV) keep only the numbers."""
        if self.logger is None:
            return
        self.logger.log_hyperparams(plain(self.cfg))
        for step, row in enumerate(rows):
            self.logger.log_metrics({f"neon/{k}": v for k, v in row.items()}, step=step)
        self.logger.log_metrics({f"summary/{k}": v for k, v in summary.items()}, step=len(rows))
        if hasattr(self.logger, "log_image"):
            for key, path in (images or {}).items():
                if Path(path).exists() and Path(path).suffix == ".png":  # text previews stay files in the run folder
                    self.logger.log_image(key, images=[str(path)])
        self.logger.save()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage (accumulating) and log its start and end."""
        log.debug("stage %s: start", name)
        start = time.perf_counter()
        _ACTIVE_STAGES.append(name)
        _LEFT_BY_EXCEPTION.clear()
        try:
            yield
        except BaseException:
            if not _LEFT_BY_EXCEPTION:
                _LEFT_BY_EXCEPTION.append(name)
            raise
        finally:
            _ACTIVE_STAGES.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            log.debug("stage %s: %.1f s so far", name, self.seconds[name])

    @property
    def device(self) -> torch.device:
        """Where sampling and evaluation run."""
        want = self.settings.device
        if want == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(want)

    def build_module(self, spec: dict[str, Any] | None = None) -> NeonModule:
        """The family's module (a NeonModule) from the model config (or `spec`, its constructor settings), with
        fresh weights."""
        from neon.core.contract import NeonModule

        module = instantiate(model_spec(self.cfg) if spec is None else spec)
        if not isinstance(module, NeonModule):
            raise NeonError(f"model._target_ {self.cfg.model._target_} is not a NeonModule family")
        return module

    def model_key(self) -> dict[str, Any]:
        """The model's constructor settings (what the weights' meaning depends on)."""
        return {k: plain(v) for k, v in self.cfg.model.items() if k not in MODEL_META_KEYS}

    def trainer(self, max_steps: int, callbacks: list | None = None, **overrides: Any) -> L.Trainer:
        """A Lightning Trainer from the trainer group, for one stage."""
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks = list(callbacks or [])
        if self.cfg.trainer.get("enable_progress_bar", True):
            # a redraw per step floods logs and non-terminal outputs for fast small models
            callbacks.append(TQDMProgressBar(refresh_rate=self.settings.progress_refresh_rate))
        return instantiate(
            self.cfg.trainer,
            max_steps=max_steps,
            max_epochs=-1,
            logger=self.logger if self.logger is not None else False,
            callbacks=callbacks,
            default_root_dir=str(self.out),
            # our loaders shard the global batches themselves (GlobalBatchSampler)
            use_distributed_sampler=False,
            **overrides,
        )

    def sampler(self, overrides: Any = None):
        """The synthesis sampler, or the evaluation sampler when `overrides` (metrics.sampler) are given."""
        spec = self.cfg.sampler
        if overrides:
            spec = OmegaConf.merge(spec, overrides)
        return instantiate(spec)
