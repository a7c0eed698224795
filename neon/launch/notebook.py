"""Run `neon` from a notebook: each call is a fresh process (as on the command line), its summary returned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from neon.core.errors import NeonError
from neon.core.io import read_json


def neon(*overrides: str, run_dir: str | Path, multirun: bool = False) -> dict | list[dict]:
    """`neon OVERRIDES` into `run_dir`: the run's summary.json, or with `multirun` every job's, in job order."""
    run_dir = Path(run_dir)
    where = f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}"
    cmd = [sys.executable, "-m", "neon", *(["-m"] if multirun else []), *overrides, where,
           "trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NeonError(f"`neon {' '.join(overrides)}` failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    if not multirun:
        return read_json(run_dir / "summary.json")
    jobs = sorted(run_dir.glob("*/summary.json"), key=lambda p: int(p.parent.name))
    return [read_json(p) for p in jobs]
