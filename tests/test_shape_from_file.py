"""Tasks that never meet the data take the network's shape (resolution, channels, classes) from an EDM
snapshot and log it; everything else still checks the snapshot against the config."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from neon.core.errors import NeonError
from neon.families.edm import EDMModule
from neon.launch.cli import CONF_DIR
from tests.edm_snapshot import TINY_DDPMPP, write_snapshot

DIGITS_NET = dict(precond="EDMPrecond", img_resolution=8, img_channels=1, label_dim=10, model_type="ResMLP", hidden=32,
                  num_blocks=1, noise_channels=16, label_dropout=0.1)


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"paths.output_dir={tmp_path / 'run'}",
                                            f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"])


@pytest.fixture()
def rgb_unconditional(tmp_path: Path) -> Path:
    path = tmp_path / "network-snapshot-rgb.pkl"
    write_snapshot(path, network=dict(TINY_DDPMPP, label_dim=0))
    return path


def test_data_tasks_still_check_the_snapshot_against_the_config(rgb_unconditional: Path):
    with pytest.raises(NeonError, match="built with img_channels=3 but the model config says img_channels=1"):
        EDMModule(DIGITS_NET).load_checkpoint(rgb_unconditional)


def test_sample_takes_the_shape_from_the_snapshot(tmp_path: Path, rgb_unconditional: Path, caplog):
    from neon.tasks.export import run_sample

    cfg = _cfg(tmp_path, "task=sample", f"model.checkpoint={rgb_unconditional}", "sample.seeds=0-2",
               "sample.batch_size=2", "sampler.num_steps=2")
    with caplog.at_level(logging.INFO, logger="neon"):
        summary = run_sample(cfg)
    with np.load(summary["out"]) as f:
        assert f["arr_0"].shape == (3, 8, 8, 3) and f["arr_0"].dtype == np.uint8 and "arr_1" not in f.files
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "records img_channels=3 (the config says 1): taken from the snapshot" in said
    assert "records label_dim=0 (the config says 10)" in said
    # the snapshot's images, as the module loaded under its own settings draws them
    module = EDMModule(dict(TINY_DDPMPP, label_dim=0))
    module.load_checkpoint(rgb_unconditional)
    x, y = module.eval().generate([0, 1, 2], instantiate(cfg.sampler))
    assert y is None and np.array_equal(module.export_samples(x), np.load(summary["out"])["arr_0"])


def test_a_snapshot_is_read_once_and_only_its_network_is_built(tmp_path: Path, rgb_unconditional: Path, monkeypatch):
    """θ_r from a snapshot of another architecture: the module is built once, with the snapshot's settings (the
    config's network, e.g. a 64×64 DDPM++, is never built), and the file is read once."""
    from neon.families.edm import module as edm_module
    from neon.stages.base import load_base
    from neon.stages.run import Run

    built, reads = [], []
    build, read = edm_module.build_network, edm_module.read_snapshot
    monkeypatch.setattr(edm_module, "build_network", lambda network: built.append(dict(network)) or build(network))
    monkeypatch.setattr(edm_module, "read_snapshot", lambda *a, **k: reads.append(a[0]) or read(*a, **k))
    cfg = _cfg(tmp_path, "task=sample", "model=edm_ffhq64_ddpmpp_uncond", f"model.checkpoint={rgb_unconditional}")
    module, _, _ = load_base(Run.from_config(cfg), shape_from_checkpoint=True)
    assert [b["img_resolution"] for b in built] == [8] and built[0]["model_channels"] == TINY_DDPMPP["model_channels"]
    assert [Path(r) for r in reads] == [rgb_unconditional]
    assert module.network_kwargs["model_channels"] == TINY_DDPMPP["model_channels"]
    written = read(rgb_unconditional).state_dict
    assert all(torch.equal(module.net.state_dict()[k], v) for k, v in written.items())
