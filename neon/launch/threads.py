"""CPU threads per process. torch's default (one thread per core in every process) oversubscribes the cores
as soon as a job runs several processes on one machine (DDP ranks, parallel sweep jobs), which can slow
sampling many times over; the default here shares the cores among them instead."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from neon.core.errors import NeonError
from neon.launch.layout import external_launch, processes_wanted

log = logging.getLogger("neon")


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM or taskset allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def local_ranks(cfg: DictConfig) -> int:
    """Processes of this job on this machine: the ranks an outside launcher started here (torchrun's
    LOCAL_WORLD_SIZE, submitit's tasks per node), else the ranks the trainer will spawn (trainer.devices with
    a DDP strategy, for tasks that run under DDP), else 1."""
    layout = external_launch()
    if layout is not None:
        return int(layout["local_world"])
    if not cfg.task.get("ddp", False):
        return 1
    return max(1, processes_wanted(cfg.trainer) // int(cfg.trainer.get("num_nodes", 1) or 1))


def sweep_width(hydra_cfg: DictConfig) -> int | None:
    """Jobs Hydra's basic sweeper hands its launcher at once, from a sweep's `hydra` node (multirun.yaml): the
    product of the choices of every sweep override (command line and hydra.sweeper.params), capped by
    hydra.sweeper.max_batch_size; None for another sweeper or a sweep it cannot count here (glob)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    sweeper = hydra_cfg.get("sweeper") or {}
    if "BasicSweeper" not in str(sweeper.get("_target_", "")):
        return None  # e.g. Optuna: its own n_jobs decides how many run at once
    args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    args += list(hydra_cfg.get("overrides", {}).get("task", []) or [])
    choices: dict[str, int] = {}  # by key: a later override of a key replaces an earlier one, as the sweeper does
    try:
        for override in OverridesParser.create().parse_overrides(args):
            key = override.get_key_element()
            choices[key] = len(list(override.sweep_string_iterator())) if override.is_sweep_override() else 1
    except HydraException:
        return None
    jobs = math.prod(choices.values())
    cap = sweeper.get("max_batch_size")
    return max(1, min(jobs, int(cap)) if cap else jobs)


def _submitit_local_jobs(sweep_dir: str) -> int | None:
    # the job's own config holds only its own overrides; the sweep's are in the multirun.yaml Hydra wrote first
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    return sweep_width(OmegaConf.load(path).hydra)


def launcher_jobs() -> tuple[int, str | None]:
    """Sweep jobs the Hydra launcher runs side by side on this machine, and which launcher: joblib's
    `hydra.launcher.n_jobs` (negative as joblib counts: -1 all cores); submitit_local starts every job of a
    batch at once: the sweep's width (its multirun.yaml); 1 for the basic launcher (one job at a time) and for
    others."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return 1, None
    hc = HydraConfig.get()
    target = str(hc.launcher.get("_target_", "")) if hc.mode == RunMode.MULTIRUN else ""
    if "joblib" in target.lower():
        n = int(hc.launcher.get("n_jobs", -1) or -1)
        return (n if n > 0 else max(1, machine_cores() + 1 + n)), "joblib n_jobs"
    if "submitit" in target and "LocalLauncher" in target:
        n = _submitit_local_jobs(hc.sweep.dir)
        if n is None:
            log.info("threads: submitit_local runs the sweep's jobs side by side and their number is unknown "
                     "here; set threads= to share the cores")
            return 1, None
        return n, "submitit_local jobs"
    return 1, None


def choose_threads(cfg: DictConfig, ranks: int | None = None, jobs: int | None = None) -> tuple[int, str]:
    """torch's CPU threads for one process of this job, and why: `threads` when set, else OMP_NUM_THREADS when
    set, else this machine's cores divided by the processes the job runs on it (its DDP ranks here × the
    launcher's parallel jobs), at least 1. `ranks` and `jobs` override what is detected."""
    if cfg.get("threads") is not None:
        n = cfg.threads
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise NeonError(f"threads must be a positive integer or null (cores / processes), got {n!r}")
        return n, f"threads={n}"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.strip().isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    ranks = local_ranks(cfg) if ranks is None else ranks
    jobs_found, launcher = launcher_jobs() if jobs is None else (jobs, "launcher jobs")
    processes = max(1, ranks * jobs_found)
    cores = machine_cores()
    why = f"{cores} cores / {processes} process{'es' if processes > 1 else ''}"
    if ranks > 1 and jobs_found > 1:
        why += f": {ranks} ranks × {jobs_found} {launcher}"
    elif jobs_found > 1:
        why += f" ({launcher})"
    return max(1, cores // processes), why


def apply_threads(cfg: DictConfig, ranks: int | None = None, jobs: int | None = None) -> int:
    """Set torch's CPU threads for this process (see `choose_threads`) and log the choice."""
    n, why = choose_threads(cfg, ranks, jobs)
    torch.set_num_threads(n)
    log.info("threads: %d (%s)", n, why)
    return n
