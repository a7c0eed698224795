"""`task=merge`: θ_neon streamed from two checkpoint files (its own module: it needs neither the model
family nor Lightning, so it starts as fast as `import torch`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from neon.analysis.run_report import w_label
from neon.core.errors import NeonError
from neon.core.io import write_json
from neon.merging.extrapolate import merge_files, merged_name
from neon.stages.run import Run
from neon.stages.settings import NeonSettings


def run_merge(cfg: DictConfig) -> dict:
    """Stream θ_neon for each w from `task.base` (default model.checkpoint) and `task.aux`, key by key: the
    merge rule of NeonMerge for checkpoints too large to hold two of in memory."""
    ws = NeonSettings.of(cfg).numeric_ws("merge")
    base, aux = cfg.task.get("base") or cfg.model.get("checkpoint"), cfg.task.get("aux")
    if not base or not aux:
        raise NeonError("task=merge needs task.base=θ_r (or model.checkpoint) and task.aux=θ_s checkpoint paths")
    run = Run.from_config(cfg)
    paths = {}
    with run.stage("merge"):
        for w in ws:
            name = Path(merged_name(w)).with_suffix(f".{cfg.task.format}").name
            paths[w_label(w)] = str(merge_files(base, aux, w, run.out / name,
                                                weights=cfg.model.get("weights") or "ema"))
    summary = {"task": "merge", "base": str(base), "aux": str(aux), "theta_neon": paths, "seconds": run.seconds}
    write_json(run.out / "summary.json", summary)
    return summary
