"""Helpers the test modules share: run the `neon` command in a subprocess, read what a run wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

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


def cli_command(args: list[str], tmp_path: Path, run_dir: str = "run", env: dict | None = None,
                cache: Path | None = None) -> dict:
    """Keyword arguments for subprocess.run/Popen of `neon ARGS`; the artifact cache is `cache`, by default a
    private one under tmp_path."""
    cache_dir = tmp_path / "cache" if cache is None else cache
    full_env = dict(os.environ, NEON_CACHE_DIR=str(cache_dir), PYTHONWARNINGS="ignore", **(env or {}))
    code = "import sys; from neon.launch.cli import main; sys.argv[0] = 'neon'; main()"
    return dict(args=[sys.executable, "-c", code, *args, f"hydra.run.dir={tmp_path / run_dir}"], cwd=tmp_path,
                env=full_env, capture_output=True, text=True)


def run_cli(args: list[str], tmp_path: Path, run_dir: str = "run", env: dict | None = None,
            cache: Path | None = None) -> subprocess.CompletedProcess:
    """Run `neon ARGS` in its own process; the artifact cache is `cache`, by default a private one under tmp_path."""
    return subprocess.run(**cli_command(args, tmp_path, run_dir, env, cache), timeout=600)


def summary_of(tmp_path: Path, run_dir: str = "run") -> dict:
    """The summary.json a run wrote."""
    return json.loads((tmp_path / run_dir / "summary.json").read_text())


def compose_config(args: list[str]):
    """The config `neon ARGS` would run, composed in-process with Hydra's compose API (sweeps are not expanded)."""
    from hydra import compose, initialize_config_dir

    from neon.launch.cli import CONF_DIR, _register_resolvers

    _register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=args, return_hydra_config=True)


def cli_error(args: list[str]) -> str:
    """The one-line message `neon ARGS` stops with before any work, found in-process: the command's pre-flight
    (neon.launch.preflight.preflight, as neon.launch.cli.main calls it), then θ_r's checkpoint load. Fails the
    test if neither refuses ARGS."""
    import pytest
    from hydra.utils import instantiate

    from neon.core.errors import NeonError, user_error
    from neon.launch.preflight import preflight
    from neon.stages.run import model_spec

    try:
        cfg = preflight(args).cfg
        if cfg is not None and cfg.model.get("checkpoint"):
            instantiate(model_spec(cfg)).load_checkpoint(cfg.model.checkpoint)
    except NeonError as exc:
        message = user_error(exc)
        assert message and "\n" not in message, message
        return message
    pytest.fail(f"neon {' '.join(args)} was not refused")


def task_config(args: list[str], tmp_path: Path, run_dir: str = "run", cache: Path | None = None):
    """(config, Hydra's group choices) of `neon ARGS`, composed in-process, with the run folder tmp_path/run_dir
    and the artifact cache `cache` (by default a private one under tmp_path) given as paths."""
    from omegaconf import OmegaConf, open_dict

    cache_dir = tmp_path / "cache" if cache is None else cache
    cfg = compose_config([*args, f"paths.cache_dir={cache_dir}", f"paths.output_dir={tmp_path / run_dir}"])
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]  # as inside a run, where Hydra's own settings are not part of the job's config
    return cfg, choices


@contextmanager
def command_threads(cfg) -> Iterator[None]:
    """torch's CPU threads as the command would set them for `cfg` (the count is part of θ_r's and θ_s's cache
    keys), restored afterwards: other tests in this process keep theirs (bit-for-bit records depend on it)."""
    import torch

    from neon.launch.threads import apply_threads

    before = torch.get_num_threads()
    apply_threads(cfg)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_task(args: list[str], tmp_path: Path, run_dir: str = "run", cache: Path | None = None):
    """Run the task `neon ARGS` names in this process, as the command would after composing its config (the
    sampler check, then the task's entry); returns the task's result. For tests whose point is the task, not
    the process: no interpreter start, no Hydra run (so no cli.log: read the `neon` logger with caplog)."""
    from hydra.utils import get_method

    from neon.core.contract import check_samplers
    from neon.launch.distributed import launch
    from neon.launch.loggers import quiet_libraries

    quiet_libraries()
    cfg, choices = task_config(args, tmp_path, run_dir, cache)
    check_samplers(cfg, choices)
    with command_threads(cfg):
        return launch(get_method(cfg.task.entry), cfg)


def seeded_cache(tmp_path: Path, shared_cache: Path, args: list[str]) -> Path:
    """A private artifact cache under tmp_path that already holds θ_r of `neon ARGS`: pretrained once per
    session into `shared_cache` (under its lock: xdist workers wait for each other) and copied here, so that a
    test which counts or corrupts its cache's S, θ_s or scores does not pretrain θ_r again."""
    import shutil

    from neon.stages.base import load_base
    from neon.stages.run import Run

    cfg, _ = task_config(args, tmp_path, "seed_cache", shared_cache)
    with command_threads(cfg):
        _, _, theta_r = load_base(Run.from_config(cfg))
    cache = tmp_path / "cache"
    shutil.copytree(theta_r.parent, cache / "pretrain" / theta_r.parent.name)
    return cache


def random_batch(module, n: int = 4) -> dict[str, torch.Tensor]:
    """Images in [-1, 1] of the module's shape (byte ids for text families), with class labels when it is
    conditional."""
    from neon.core.contract import HasTextSamples

    g = torch.Generator().manual_seed(1)
    if isinstance(module, HasTextSamples):
        batch = {"x": torch.randint(256, (n, *module.image_shape), generator=g)}
    else:
        batch = {"x": torch.rand(n, *module.image_shape, generator=g) * 2 - 1}
    if module.num_classes:
        batch["label"] = torch.randint(module.num_classes, (n,), generator=g)
    return batch


def rss_anon_mb() -> float:
    """This process's anonymous resident memory in MiB (Linux /proc): what a merge holds, not the mapped files."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0
