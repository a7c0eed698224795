"""Shared helpers: run the `neon` command in a subprocess with its own cache and run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A toy run small enough for a test: short pretrain, small S, few evaluation samples.
TINY_TOY = [
    "experiment=toy2d",
    "model.pretrain.steps=300",
    "neon.n_synthetic=200",
    "neon.budget_steps=5",
    "neon.w=[0.0,0.5,1.0]",
    "metrics.num_samples=2000",
    "metrics.block_size=2000",
    "trainer.enable_progress_bar=false",
]


def cli_command(args: list[str], tmp_path: Path, run_dir: str = "run", env: dict | None = None) -> dict:
    """Keyword arguments for subprocess.run/Popen of `neon ARGS` with a private cache under tmp_path."""
    full_env = dict(os.environ, NEON_CACHE_DIR=str(tmp_path / "cache"), PYTHONWARNINGS="ignore", **(env or {}))
    code = "import sys; from neon.cli import main; sys.argv[0] = 'neon'; main()"
    return dict(args=[sys.executable, "-c", code, *args, f"hydra.run.dir={tmp_path / run_dir}"], cwd=tmp_path,
                env=full_env, capture_output=True, text=True)


def run_cli(args: list[str], tmp_path: Path, run_dir: str = "run", env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `neon ARGS` with a private cache under tmp_path."""
    return subprocess.run(**cli_command(args, tmp_path, run_dir, env), timeout=600)


def summary_of(tmp_path: Path, run_dir: str = "run") -> dict:
    """The summary.json a run wrote."""
    return json.loads((tmp_path / run_dir / "summary.json").read_text())


@pytest.fixture(scope="session")
def tiny_toy_run(tmp_path_factory) -> Path:
    """One tiny end-to-end toy run shared by several tests; returns its tmp folder."""
    tmp = tmp_path_factory.mktemp("toy")
    proc = run_cli(TINY_TOY, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp
