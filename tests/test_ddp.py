"""DDP inside one job: two CPU processes (gloo) give the one-process S, θ_s and FIDs; alone, inside a
multirun and under the submitit launcher's tasks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from neon.core.collectives import gather_strided
from neon.core.errors import NeonError
from neon.core.seeding import StepNoise
from neon.data.batches import GlobalBatchSampler
from neon.merging.extrapolate import extrapolate
from tests.helpers import run_cli, run_task, seeded_cache, summary_of
from tests.process_group import in_process_group
from tests.summary_checks import check_neon_summary

DDP = ["trainer=ddp", "trainer.devices=2"]
TOY = ["experiment=toy2d", "model.pretrain.steps=300", "neon.n_synthetic=200", "neon.budget_steps=[5,20]",
       "neon.w=[0.0,0.5,1.0]", "neon.batch_size=100", "neon.synthetic.block_size=50", "neon.synthetic.shard_size=100",
       "metrics.num_samples=2000", "metrics.block_size=500", "trainer.enable_progress_bar=false"]


def test_ranks_share_each_global_batch():
    single = GlobalBatchSampler(10, 4, seed=3, rank=0, world=1)
    shares = [GlobalBatchSampler(10, 4, seed=3, rank=r, world=2) for r in range(2)]
    streams = [iter(s) for s in (single, *shares)]
    for _ in range(7):  # several epochs: 2 whole batches each, the remainder dropped
        whole, a, b = (next(s) for s in streams)
        assert whole == a + b and len(set(whole)) == 4
    full = [next(iter(GlobalBatchSampler(6, 100, seed=0, rank=r, world=2))) for r in range(2)]
    assert full == [[0, 1, 2], [3, 4, 5]]  # batch ≥ n: the whole set every step
    with pytest.raises(NeonError, match="divisible by the number of processes"):
        GlobalBatchSampler(10, 5, seed=0, rank=0, world=2)


def test_step_noise_rows_are_slices_of_the_global_draw():
    whole = StepNoise(7, 3, slice(0, 6), 6)
    parts = [StepNoise(7, 3, slice(3 * r, 3 * r + 3), 6) for r in range(2)]
    for draw in (lambda n: n.randn(2, 2), lambda n: n.rand(1), lambda n: n.randint(10)):
        assert torch.equal(draw(whole), torch.cat([draw(p) for p in parts]))
    assert not torch.equal(StepNoise(7, 4, slice(0, 6), 6).randn(2), StepNoise(7, 3, slice(0, 6), 6).randn(2))


def _gather_rank(rank: int, n: int) -> None:
    # rank r holds items r, r + 2, ...: its share of n items, as task=sample and evaluation split seeds
    mine = np.arange(rank, n, 2)
    local = {"x": mine.astype(np.int64) * 10, "y": mine.astype(np.float32)[:, None]} if len(mine) else {}
    gathered = gather_strided(local)
    assert gathered["x"].tolist() == [10 * i for i in range(n)]
    assert gathered["y"][:, 0].tolist() == list(range(n)) and gathered["y"].dtype == np.float32


@pytest.mark.parametrize("n", [5, 1])
def test_strided_shares_are_gathered_in_item_order(n: int):
    in_process_group(2, _gather_rank, n)  # 5: uneven shares; 1: rank 1 holds nothing


def _finetunes(cache: Path) -> dict[int, dict[str, torch.Tensor]]:
    out = {}
    for folder in (cache / "finetune").iterdir():
        if folder.is_dir():
            out[json.loads((folder / "key.json").read_text())["budget_steps"]] = load_file(folder / "theta_s.safetensors")
    return out


def _shards(cache: Path) -> list[dict[str, torch.Tensor]]:
    return [torch.load(p, weights_only=True) for p in sorted((cache / "synthetic").glob("*/shard_*.pt"))]


@pytest.mark.slow
def test_two_processes_give_the_one_process_results(tmp_path: Path, shared_cache: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    seeded_cache(one, shared_cache, TOY)
    run_task(TOY, one)  # the one-process reference runs in this process; the two ranks through the command
    theta_r = next((one / "cache" / "pretrain").glob("*/theta_r.safetensors"))
    proc = run_cli([*TOY, *DDP, f"model.checkpoint={theta_r}"], two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = summary_of(one), summary_of(two)
    # S is split across the ranks by blocks: the union is the one-process S, bit for bit
    assert [s["seed"].tolist() for s in _shards(one / "cache")] == [s["seed"].tolist() for s in _shards(two / "cache")]
    assert all(torch.equal(x["x"], y["x"]) for x, y in zip(_shards(one / "cache"), _shards(two / "cache"), strict=True))
    # the same global batches and per-step noise: the same θ_s up to float summation order
    fa, fb = _finetunes(one / "cache"), _finetunes(two / "cache")
    assert sorted(fa) == sorted(fb) == [5, 20]
    for budget in fa:
        for key in fa[budget]:
            torch.testing.assert_close(fa[budget][key], fb[budget][key], rtol=1e-5, atol=1e-6)
    assert b["fid_base"] == pytest.approx(a["fid_base"], rel=1e-6)  # features gathered from both ranks
    for pa, pb in zip(a["grid"], b["grid"], strict=True):
        assert pb["fid"] == pytest.approx(pa["fid"], rel=1e-4)
    assert a["w"] == b["w"] and a["budget_steps"] == b["budget_steps"]
    # rank 0 alone wrote the run folder and the log
    assert (two / "run" / "theta_neon.safetensors").is_file()
    assert "[rank 0]" in proc.stderr and "[rank 1]" not in proc.stderr


@pytest.mark.slow
def test_ddp_jobs_inside_a_multirun(tmp_path: Path):
    proc = run_cli(["-m", *TOY, *DDP, "neon.w=[0.0,1.0]", "sampler.score_scale=1.05,1.1",
                    f"hydra.sweep.dir={tmp_path / 'sw'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "sw" / "sweep.csv").open()))
    assert [r["sampler.score_scale"] for r in rows] == ["1.05", "1.1"]
    assert all((tmp_path / "sw" / r["job"] / "summary.json").is_file() for r in rows)
    assert len([p for p in (tmp_path / "cache" / "pretrain").iterdir() if p.is_dir()]) == 1  # θ_r built once


@pytest.mark.slow
def test_submitit_tasks_are_the_ranks_of_one_job(tmp_path: Path):
    # hydra/launcher=submitit_slurm with tasks_per_node = GPUs runs this same path on a cluster
    proc = run_cli(["-m", *TOY, *DDP, "neon.w=[0.0,1.0]", "hydra/launcher=submitit_local",
                    "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10",
                    f"hydra.sweep.dir={tmp_path / 'sw'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "sw" / "sweep.csv").open()))
    assert len(rows) == 1
    job = tmp_path / "sw" / rows[0]["job"]
    summary = json.loads((job / "summary.json").read_text())
    check_neon_summary(summary, job)  # the best of the grid rank 0 gathered, θ_r its w = 0 point
    assert (float(rows[0]["fid_neon"]), float(rows[0]["fid_base"])) == (summary["fid_neon"], summary["fid_base"])
    task0, task1 = (next((tmp_path / "sw").rglob(f"*_{t}_log.out")).read_text() for t in (0, 1))
    assert "global_rank=1(2)" in task1  # submitit started the second rank as its second task
    assert "FID θ_r" in task0 and "FID θ_r" not in task1  # rank 0 alone reports


def test_launcher_and_trainer_must_agree_on_the_process_count(tmp_path: Path, monkeypatch):
    # as if torchrun had started this process as rank 0 of 2: refused before any group is joined
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(NeonError, match="started 2 processes but the trainer asks for 3") as info:
        run_task([*TOY, "trainer=ddp", "trainer.devices=3"], tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_a_rank_error_is_one_line(tmp_path: Path):
    proc = run_cli([*TOY, *DDP, "neon.batch_size=99", "neon.n_synthetic=300"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("neon: error: rank") and "divisible by the number of processes" in last


@pytest.mark.slow
def test_torchrun_ranks_join_its_group(tmp_path: Path):
    env = dict(os.environ, NEON_CACHE_DIR=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "-m", "neon", *TOY,
                           *DDP, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("FID θ_r =") == 1  # rank 0 alone reports
    summary = summary_of(tmp_path)
    check_neon_summary(summary, tmp_path / "run")
    assert {g["budget_steps"] for g in summary["grid"]} == {5, 20}
    # the written θ_neon is the reported merge of the ranks' θ_r and θ_s
    a = summary["artifacts"]
    theta_r, theta_neon = a["theta_r"], a["theta_neon"]
    expect = extrapolate(load_file(theta_r), load_file(a["theta_s"][str(summary["budget_steps"])]), summary["w"])
    got = load_file(theta_neon)
    assert sorted(got) == sorted(expect) and all(torch.equal(got[k], expect[k]) for k in expect)
    # one process scores θ_r and θ_neon from their files, in a cache of its own: the ranks' FIDs (features
    # gathered from both; the same seeds, so equal up to float summation order, as in the test above)
    single = run_task([*TOY, "task=evaluate", f"task.checkpoints=[{theta_r},{theta_neon}]"], tmp_path, "single",
                      cache=tmp_path / "single_cache")
    assert single["fid"][theta_r] == pytest.approx(summary["fid_base"], rel=1e-6)
    assert single["fid"][theta_neon] == pytest.approx(summary["fid_neon"], rel=1e-6)
