"""EDM through the pipeline: the paper configs at tiny size from official-format snapshots, sample
files in the ADM layout, export, and the embedded default on digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from neon.core.errors import NeonError
from tests.edm_snapshot import write_snapshot
from tests.helpers import run_cli, run_task, summary_of

SMALL_NET = ["model.network.img_resolution=8", "model.network.model_channels=16", "model.network.channel_mult=[1,2]",
             "+model.network.num_blocks=1"]
SMALL_RUN = ["sampler.num_steps=3", "neon.n_synthetic=30", "neon.budget_steps=2", "neon.batch_size=8",
             "neon.w=[0.0,1.0]", "neon.synthetic.block_size=16", "neon.synthetic.shard_size=32",
             "metrics=pixel_fd", "metrics.num_samples=40", "metrics.allow_small=true", "metrics.block_size=20", "trainer.enable_progress_bar=false"]


def tiny_snapshot(tmp_path: Path, config: str) -> Path:
    network = yaml.safe_load((Path(__file__).parent.parent / "conf" / "model" / f"{config}.yaml").read_text())["model"]["network"]
    network.update(img_resolution=8, model_channels=16, channel_mult=[1, 2], num_blocks=1)
    path = tmp_path / f"{config}.pkl"
    write_snapshot(path, network)
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(192), sigma=np.eye(192) * 0.3)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("experiment,config", [("paper/edm_cifar10_cond", "edm_cifar10_ddpmpp_cond"),
                                               ("paper/edm_ffhq64", "edm_ffhq64_ddpmpp_uncond")])
def test_paper_experiment_runs_at_tiny_size(tmp_path: Path, experiment: str, config: str):
    snap = tiny_snapshot(tmp_path, config)
    run_task([f"experiment={experiment}", f"model.checkpoint={snap}", f"metrics.reference={tmp_path / 'ref.npz'}",
              *SMALL_NET, *SMALL_RUN], tmp_path)
    summary = summary_of(tmp_path)
    assert summary["n_synthetic"] == 30 and len(summary["w_curve"]) == 2
    shard = torch.load(next((Path(summary["artifacts"]["synthetic"])).glob("shard_*.pt")), weights_only=True)
    if "cifar" in experiment:  # conditional S keeps its labels, class-balanced
        assert torch.equal(shard["label"], torch.arange(30) % 10)
    else:
        assert "label" not in shard


def test_paper_experiment_without_checkpoint_says_what_to_set(tmp_path: Path):
    with pytest.raises(NeonError, match="give model.checkpoint=PATH") as info:
        run_task(["experiment=paper/edm_cifar10_cond", "metrics.reference=x.npz"], tmp_path)
    assert "\n" not in str(info.value)


def sample_args(tmp_path: Path) -> list[str]:
    """task=sample of a tiny class-conditional snapshot, ten seeds."""
    snap = tiny_snapshot(tmp_path, "edm_cifar10_ddpmpp_cond")
    return ["task=sample", "experiment=paper/edm_cifar10_cond", f"model.checkpoint={snap}", *SMALL_NET,
            "sampler.num_steps=4", "sample.seeds=0-9"]


@pytest.mark.slow
def test_sample_task_writes_adm_layout_whatever_the_batch(tmp_path: Path):
    common = sample_args(tmp_path)
    for batch in (3, 10):
        run_task([*common, f"sample.batch_size={batch}", f"sample.out={tmp_path / f'b{batch}.npz'}"], tmp_path,
                 run_dir=f"s{batch}")
    a, b = np.load(tmp_path / "b3.npz"), np.load(tmp_path / "b10.npz")
    assert a["arr_0"].dtype == np.uint8 and a["arr_0"].shape == (10, 8, 8, 3) and a["arr_1"].shape == (10,)
    assert np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int)).max() <= 1 and np.array_equal(a["arr_1"], b["arr_1"])


@pytest.mark.slow
def test_sample_task_under_ddp_writes_the_one_process_file(tmp_path: Path):
    common = sample_args(tmp_path)
    run_task([*common, "sample.batch_size=3", f"sample.out={tmp_path / 'one.npz'}"], tmp_path, "r1")
    a = np.load(tmp_path / "one.npz")
    # two DDP processes, each with its strided share of the seeds, gathered in seed order: the same file
    proc = run_cli([*common, "sample.batch_size=3", f"sample.out={tmp_path / 'two.npz'}", "trainer=ddp",
                    "trainer.devices=2"], tmp_path, "r2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = np.load(tmp_path / "two.npz")
    assert np.array_equal(two["arr_0"], a["arr_0"]) and np.array_equal(two["arr_1"], a["arr_1"])
    assert sorted(p.name for p in tmp_path.glob("two*.npz")) == ["two.npz"]
    assert json.loads((tmp_path / "r2" / "summary.json").read_text())["world_size"] == 2


def test_export_writes_weights_and_a_usable_config(tmp_path: Path):
    snap = tiny_snapshot(tmp_path, "edm_ffhq64_ddpmpp_uncond")
    run_task(["task=export", "experiment=paper/edm_ffhq64", f"model.checkpoint={snap}", *SMALL_NET], tmp_path)
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert "model.map_layer0.weight" in weights
    cfg = yaml.safe_load((tmp_path / "run" / "model.yaml").read_text())
    assert cfg["network"]["img_resolution"] == 8 and cfg["checkpoint"].endswith("model.safetensors")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["source"] == str(snap)


@pytest.mark.slow
def test_digits_default_small(tmp_path: Path, shared_cache: Path, capsys):
    run_task(["model.pretrain.steps=200", "neon.n_synthetic=300", "neon.budget_steps=3",
              "neon.w=[0.0,1.0]", "metrics.num_samples=300", "metrics.block_size=300",
              "sampler.num_steps=6", "trainer.enable_progress_bar=false"], tmp_path, cache=shared_cache)
    out = capsys.readouterr().out
    summary = summary_of(tmp_path)
    assert summary["family"] == "neon.families.edm.EDMModule"
    assert summary["fid_noise"]["fid_base_reseeded"] > 0 and len(summary["control"]["w_curve"]) == 2
    assert "| FID control |" in out and "seed noise" in out
    header = (tmp_path / "run" / "w_curve.csv").read_text().splitlines()[0]
    assert header == "w,fid,fid_control"


@pytest.mark.slow
def test_default_job_beats_base_beyond_noise_and_control(tmp_path: Path):
    proc = run_cli(["trainer.enable_progress_bar=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(tmp_path)
    gain = 1 - s["fid_neon"] / s["fid_base"]
    control_gain = 1 - s["control"]["fid_best"] / s["fid_base"]
    assert gain >= 0.30 and s["w"] > 0
    assert gain > 3 * s["fid_noise"]["relative"]
    assert control_gain < 0.10
