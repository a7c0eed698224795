"""Every config under conf/ and experiments/ composes, and its parts instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from neon.core.contract import NeonModule
from neon.launch.cli import CONF_DIR
from neon.stages.run import model_spec

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, str(f.relative_to(CONF_DIR / g).with_suffix(""))) for g in GROUPS for f in sorted((CONF_DIR / g).rglob("*.yaml"))]


def compose_with(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_every_group_has_options_and_experiments_are_found():
    assert {"task", "model", "data", "sampler", "neon", "trainer", "logger", "metrics", "experiment"} <= set(GROUPS)
    assert ("experiment", "toy2d") in OPTIONS
    assert (CONF_DIR / "experiment").resolve() == (CONF_DIR.parent / "experiments").resolve()


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group: str, option: str, tmp_path: Path):
    cfg = compose_with(f"{group}={option}", f"paths.cache_dir={tmp_path}")
    # a model that needs the user's files asks for them (and builds nothing, GBs, without)
    needs = next((k for k in ("vae_checkpoint", "pretrained") if OmegaConf.is_missing(cfg.model, k)), None)
    for key in ("model", "data", "sampler", "neon", "metrics", "task", "trainer"):
        if not (key == "model" and needs):
            OmegaConf.to_container(cfg[key], resolve=True)  # no dangling interpolation
    get_method(cfg.task.entry)
    if needs:
        with pytest.raises(MissingMandatoryValue, match=needs):
            model_spec(cfg)
    else:
        if cfg.model.get("vae_pretrain"):
            cfg.model.vae_pretrain.steps = 2  # the tokenizer is trained on first use: keep it short here
        assert isinstance(instantiate(model_spec(cfg)), NeonModule)
    assert callable(instantiate(cfg.sampler))
    assert hasattr(instantiate(cfg.data), "reference")
    assert callable(instantiate(cfg.metrics.extractor))
    assert callable(instantiate(cfg.neon.optimizer))
    if cfg.get("logger"):
        assert "_target_" in cfg.logger


@pytest.mark.slow
def test_cli_runs_from_any_directory(tmp_path: Path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "neon", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "task:" in proc.stdout and "neon.tasks.pipeline.run_neon" in proc.stdout


def test_every_config_file_is_installed_with_the_package(monkeypatch):
    # non-editable installs read configs from <prefix>/share/neon/conf: setup.py's one rule lists them
    import os

    root = CONF_DIR.parent
    source = (root / "setup.py").read_text()
    namespace: dict = {}
    exec(compile(source.split("\nsetup(")[0], "setup.py", "exec"), namespace)  # the rule, without running setup()
    monkeypatch.chdir(root)
    installed = {os.path.relpath(os.path.join(dest, os.path.basename(f)), "share/neon/conf")
                 for dest, files in namespace["config_files"]() for f in files}
    wanted = {
        os.path.relpath(os.path.join(folder, name), CONF_DIR)
        for folder, _, files in os.walk(CONF_DIR, followlinks=True)
        for name in files
        if name.endswith(".yaml")
    }
    assert len(wanted) > 60 and wanted == installed, sorted(wanted ^ installed)
