"""Bad input: one clear line naming the file, key or value, a non-zero exit, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from neon.core.errors import NeonError
from neon.core.io import load_state_dict
from neon.families.toy2d import ToyDiffusion
from tests.helpers import TINY_TOY, cli_error, run_cli


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neon: error: "), proc.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize(
    "override,expect",
    [
        ("task=foo", "unknown task 'foo'"),
        ("model=foo", "unknown model 'foo'"),
        ("neon.w=abc", "'abc'"),
        ("neon.w=[1.0,x]", "'x'"),
        ("neon.budget_steps=0", "neon.budget_steps must be a positive integer, got 0"),
        ("neon.n_synthetic=-5", "neon.n_synthetic must be a positive integer, got -5"),
        ("model.checkpoint=/no/such/theta.safetensors", "'/no/such/theta.safetensors' does not exist"),
        ("neon.synthetic.blok=3", "no config key 'neon.synthetic.blok'"),
        ("sampler=heun", "sampler=heun is not a sampler of model toy2d (diffusion toy), which samples with "
                         "neon.families.toy2d.ddim: use sampler=ddim_toy or drop the override"),
    ],
)
def test_bad_input_is_refused_in_one_line(override: str, expect: str):
    assert expect in cli_error([*TINY_TOY, override])


@pytest.mark.parametrize("override,expect", [
    ("task=foo", "unknown task 'foo'"),  # refused before Hydra starts
    ("neon.budget_steps=0", "neon.budget_steps must be a positive integer, got 0"),  # refused inside the task
])
@pytest.mark.slow
def test_the_command_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, override: str, expect: str):
    line = one_line_error(run_cli([*TINY_TOY, override], tmp_path))
    assert expect in line
    assert not (tmp_path / "cache" / "pretrain").exists() or not any((tmp_path / "cache" / "pretrain").iterdir())


def test_checkpoint_of_another_size_names_key_and_shapes(tmp_path: Path):
    save_file(ToyDiffusion(hidden=16).net.state_dict(), tmp_path / "small.safetensors")
    line = cli_error([*TINY_TOY, f"model.checkpoint={tmp_path / 'small.safetensors'}"])
    assert "key 'inp.weight' has shape (16, 3)" in line and "(32, 3)" in line


def test_unreadable_and_foreign_checkpoints(tmp_path: Path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(NeonError, match="checkpoint '.*junk.pt' is not a checkpoint file"):
        load_state_dict(tmp_path / "junk.pt")
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(NeonError, match="holds no state dict"):
        load_state_dict(tmp_path / "empty.pt")
    save_file({"other.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(NeonError, match="missing blocks.0.bias.*unexpected other.weight"):
        ToyDiffusion().load_checkpoint(tmp_path / "other.safetensors")


def test_metric_settings_a_user_can_get_wrong_are_one_line_errors(tmp_path: Path, caplog):
    import logging

    import numpy as np

    from neon.analysis.sweep_table import SweepTable
    from neon.metrics.frechet import frechet_distance
    from neon.metrics.reference import Reference
    from neon.metrics.scores import compute_scores

    reference = Reference(mu=np.zeros(4), sigma=np.eye(4), source="test")
    features = {"pool": np.random.default_rng(0).normal(size=(16, 4))}
    assert np.isfinite(compute_scores(features, reference, ["fid"])["fid"])
    with pytest.raises(NeonError, match="metrics.compute: unknown metric 'fdd': use fid, sfid, fd_dinov2, isc, kid or pr"):
        compute_scores(features, reference, ["fdd"])
    with pytest.raises(NeonError, match="metrics.compute asks for isc, but .* class logits"):
        compute_scores(features, reference, ["isc"])
    with pytest.raises(NeonError, match="statistics differ in shape .* another extractor"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(3), np.eye(3))
    # a sweep table that cannot be written says why in the log instead of passing in silence
    with caplog.at_level(logging.WARNING, logger="neon"):
        SweepTable().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "gone")}}}))
    assert any("no sweep table" in r.getMessage() for r in caplog.records)
