"""Sweeps: the sweep table after a multirun, the report plots, and the resumable search protocol."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from neon.core.errors import NeonError
from tests.helpers import TINY_TOY, run_cli, run_task, seeded_cache, summary_of
from tests.summary_checks import check_neon_summary, check_search_summary

BASE = [a for a in TINY_TOY if not a.startswith("neon.w")]


@pytest.mark.slow
def test_multirun_writes_a_sweep_table_and_report(tmp_path: Path, shared_cache: Path):
    # a Hydra multirun and its sweep callback: through the command
    proc = run_cli(["-m", *BASE, "neon.w=[0.0,1.0]", "sampler.score_scale=1.05,1.1", "neon.budget_steps=[3,5]",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    assert [r["sampler.score_scale"] for r in rows] == ["1.05", "1.1"]
    for r in rows:  # each row: its job's best grid point and its θ_r score, as the job scored them
        job = tmp_path / "sweep" / r["job"]
        summary = json.loads((job / "summary.json").read_text())
        check_neon_summary(summary, job)
        assert {g["budget_steps"] for g in summary["grid"]} == {3, 5}
        assert (float(r["fid_neon"]), float(r["fid_base"]), float(r["w"]), int(r["budget_steps"])) == (
            summary["fid_neon"], summary["fid_base"], summary["w"], summary["budget_steps"])
    assert (tmp_path / "sweep" / "sweep.md").read_text().startswith("| job | sampler.score_scale |")
    run_task(["task=report", f"dir={tmp_path / 'sweep'}", "task.heat_key=sampler.score_scale"], tmp_path, "rep")
    for name in ("report_w_curves.png", "report_u_curve.png", "report_heatmap_w_sampler_score_scale.png"):
        assert (tmp_path / "sweep" / name).read_bytes()[:4] == b"\x89PNG", name


def _fake_job(folder: Path, lr: str, fids: list[float], control: float) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- experiment=study/imm\n- neon.optimizer.lr={lr}\n")
    grid = [{"budget_steps": b, "w": w, "fid": f} for b, w, f in zip((40, 40, 200), (0.0, 1.0, 1.0), fids, strict=True)]
    (folder / "summary.json").write_text(json.dumps({
        "task": "neon", "fid_base": fids[0], "fid_neon": min(fids), "w": 1.0, "budget_steps": 40,
        "n_synthetic": 100, "grid": grid, "control": {"fid_best": control}, "fid_noise": {"relative": 0.05},
        "seconds": {"evaluate": 1.0}}))


def test_a_study_sweep_reports_its_swept_setting_and_the_control(tmp_path: Path):
    from omegaconf import OmegaConf

    from neon.analysis.sweep_table import SweepTable

    _fake_job(tmp_path / "sw" / "0", "1e-5", [3.0, 2.5, 2.8], 3.1)
    _fake_job(tmp_path / "sw" / "1", "1e-4", [3.0, 3.4, 4.0], 3.3)
    SweepTable(heat_key="neon.optimizer.lr").on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(
        tmp_path / "sw")}}}))
    rows = list(csv.DictReader((tmp_path / "sw" / "sweep.csv").open()))
    assert [(r["neon.optimizer.lr"], r["fid_control"], r["seed_noise"]) for r in rows] == [
        ("1e-5", "3.1", "0.05"), ("1e-4", "3.3", "0.05")]
    # the heatmap's axis comes from the jobs' overrides (the summary does not hold the lr)
    assert (tmp_path / "sw" / "report_heatmap_w_neon_optimizer_lr.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "sw" / "report_u_curve.png").is_file()


def test_report_of_a_missing_folder_is_one_line(tmp_path: Path):
    with pytest.raises(NeonError, match="does not exist") as info:
        run_task(["task=report", f"dir={tmp_path / 'nope'}"], tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_search_stops_early_refines_and_resumes(tmp_path: Path, shared_cache: Path):
    args = ["task=search", *BASE, "neon.budget_steps=[3,6]", "neon.w=[0.0,100.0,1000.0,10000.0,100000.0]",
            "task.tolerance=0.0", "task.final_num_samples=3000"]
    seeded_cache(tmp_path, shared_cache, args)
    run_task(args, tmp_path, "s1")
    s = summary_of(tmp_path, "s1")
    # the coarse lines stop at the first w past their best, the refined points lie at ±0.1 of the coarse best,
    # the pick is the best of those three and fid_neon its score at final_num_samples
    coarse = check_search_summary(s, [0.0, 100.0, 1000.0, 1e4, 1e5], refine_step=0.1, final_num_samples=3000)
    assert {p["budget_steps"] for p in coarse} == {3, 6} and {p["num_samples"] for p in coarse} == {2000}
    assert len(coarse) < 10  # some w-line stopped before its end
    evals = len(list((tmp_path / "cache" / "eval").glob("*[0-9a-f]")))
    run_task(args, tmp_path, "s2")  # as if restarted: every point is served from the cache
    assert len(list((tmp_path / "cache" / "eval").glob("*[0-9a-f]"))) == evals
    again = json.loads((tmp_path / "s2" / "summary.json").read_text())
    assert again["points"] == s["points"] and again["w"] == s["w"]


@pytest.mark.slow
def test_wandb_offline_one_run_per_job_in_one_group(tmp_path: Path, shared_cache: Path):
    proc = run_cli(["-m", *BASE, "neon.w=[0.0,1.0]", "logger=wandb", "sampler.score_scale=1.0,1.1",
                    f"hydra.sweep.dir={tmp_path / 'grp7f3a'}"], tmp_path, env={"WANDB_API_KEY": "", "HOME": str(tmp_path)},
                   cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "grp7f3a").glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 2  # one finished run per job, each in its own job folder
    for run in runs:
        raw = run.read_bytes()  # protobuf records keep strings as they are
        for key in (b"grp7f3a", b"neon/fid", b"neon/w", b"summary/fid_neon", b"neon/w_curve", b"samples/theta_r",
                    b"samples/theta_neon"):
            assert key in raw, key


@pytest.mark.slow
def test_submitit_local_launcher_runs_jobs_as_separate_processes(tmp_path: Path):
    # the same launcher path as hydra/launcher=submitit_slurm on a cluster, on this machine
    proc = run_cli(["-m", *BASE, "neon.w=[0.0,1.0]", "sampler.score_scale=1.05,1.1", "hydra/launcher=submitit_local",
                    "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path / 'sw'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "sw" / "sweep.csv").open()))
    assert len(rows) == 2 and {r["sampler.score_scale"] for r in rows} == {"1.05", "1.1"}
    assert len([p for p in (tmp_path / "cache" / "pretrain").iterdir() if p.is_dir()]) == 1  # θ_r built once


@pytest.mark.slow
def test_optuna_sweeper_minimises_fid_over_w(tmp_path: Path, shared_cache: Path):
    proc = run_cli(["-m", *BASE, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.direction=minimize",
                    "neon.w=interval(0,2)", f"hydra.sweep.dir={tmp_path / 'opt'}"], tmp_path, cache=shared_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import yaml

    result = yaml.safe_load((tmp_path / "opt" / "optimization_results.yaml").read_text())
    rows = list(csv.DictReader((tmp_path / "opt" / "sweep.csv").open()))
    assert len(rows) == 3 and result["best_value"] == min(float(r["fid_neon"]) for r in rows)
    assert 0 <= result["best_params"]["neon.w"] <= 2
