"""`task=report`: tables and plots of a finished sweep folder (its own module: it needs neither the model
family nor Lightning)."""

from __future__ import annotations

from omegaconf import DictConfig

from neon.analysis.sweep_table import write_report
from neon.core.errors import NeonError
from neon.stages.run import log


def run_report(cfg: DictConfig) -> dict:
    """Tables and plots of a finished sweep folder (`dir=`)."""
    folder = cfg.get("dir") or cfg.task.get("dir")
    if not folder:
        raise NeonError("task=report needs dir=<sweep folder>, e.g. dir=multirun/2026-11-26_10-00-00_000000")

    paths = write_report(folder, heat_key=cfg.task.heat_key)
    for p in paths:
        log.info("wrote %s", p)
    return {"task": "report", "files": [str(p) for p in paths]}
