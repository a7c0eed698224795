"""The whole pipeline on the toy at a reduced size: outputs, resume, and each stage run alone."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neon.merging.extrapolate import extrapolate
from tests.helpers import TINY_TOY, run_task, seeded_cache, summary_of
from tests.summary_checks import check_neon_summary


@pytest.mark.slow
def test_run_folder_holds_config_summary_and_w_curve(tiny_toy_run: Path):
    run = tiny_toy_run / "run"
    summary = summary_of(tiny_toy_run)
    for key in ("fid_base", "fid_neon", "w", "budget_steps", "n_synthetic", "sampler", "seconds"):
        assert key in summary, key
    assert summary["budget_steps"] == 5 and summary["n_synthetic"] == 200
    assert summary["sampler"]["score_scale"] == 1.1 and summary["eval_sampler"]["score_scale"] == 1.0
    assert set(summary["seconds"]) >= {"pretrain", "synthesize", "finetune", "merge", "evaluate"}
    rows = list(csv.DictReader((run / "w_curve.csv").open()))
    assert [r["w"] for r in rows] == ["0", "0.5", "1"]
    fids = [float(r["fid"]) for r in rows]
    assert summary["fid_base"] == fids[0] and summary["fid_neon"] == min(fids)
    assert summary["w"] == [0.0, 0.5, 1.0][fids.index(min(fids))]
    for png in ("w_curve.png", "samples_theta_r.png", "samples_theta_neon.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG", png
    assert (run / ".hydra" / "config.yaml").exists()
    assert set(load_file(run / "theta_neon.safetensors")) == {"inp.weight", "inp.bias", "out.weight", "out.bias",
                                                              *[f"blocks.{i}.{p}" for i in range(4) for p in ("weight", "bias")]}
    assert "state_dict" in torch.load(run / "theta_neon.ckpt", weights_only=True)


@pytest.mark.slow
def test_rerun_reuses_finished_stages(tiny_toy_run: Path, caplog):
    # the command's run, then the same job again in-process on its cache (the cache, not the process, is tested)
    first = summary_of(tiny_toy_run)
    # as if the first run had been interrupted after S: its θ_s and scores are gone
    for kind in ("finetune", "eval"):
        shutil.rmtree(tiny_toy_run / "cache" / kind)
    with caplog.at_level(logging.INFO, logger="neon"):
        run_task(TINY_TOY, tiny_toy_run, run_dir="rerun")
    log = caplog.text
    assert "θ_r: reusing" in log and "S: reusing" in log and "θ_s: fine-tuned 5 steps" in log
    second = summary_of(tiny_toy_run, "rerun")
    assert second["fid_neon"] == first["fid_neon"] and second["w_curve"] == first["w_curve"]
    # and a third run redoes nothing at all: every artifact and score is the one already cached
    cache = tiny_toy_run / "cache"
    before = sorted(str(p.relative_to(cache)) for p in cache.glob("*/*") if not p.name.endswith(".lock"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="neon"):
        run_task(TINY_TOY, tiny_toy_run, run_dir="third")
    assert "θ_r: reusing" in caplog.text and "pretrained into" not in caplog.text
    assert "S: reusing" in caplog.text and "θ_s: reusing" in caplog.text and "fine-tuned" not in caplog.text
    assert sorted(str(p.relative_to(cache)) for p in cache.glob("*/*") if not p.name.endswith(".lock")) == before
    assert summary_of(tiny_toy_run, "third")["w_curve"] == second["w_curve"]


def test_each_stage_runs_alone_on_given_paths(tmp_path: Path):
    small = TINY_TOY
    run_task(["task=pretrain", *small], tmp_path, "pre")
    theta_r = tmp_path / "pre" / "theta_r.safetensors"
    assert (tmp_path / "pre" / "theta_r.ckpt").exists()

    run_task(["task=synthesize", f"model.checkpoint={theta_r}", f"task.out={tmp_path / 'S'}", *small], tmp_path, "syn")
    assert len(torch.load(tmp_path / "S" / "shard_00000.pt", weights_only=True)["x"]) == 200

    run_task(["task=finetune", f"model.checkpoint={theta_r}", f"task.synthetic={tmp_path / 'S'}", *small], tmp_path, "ft")
    theta_s = tmp_path / "ft" / "theta_s.safetensors"
    by_callback = load_file(tmp_path / "ft" / "theta_neon_w0.5.safetensors")
    expect = extrapolate(load_file(theta_r), load_file(theta_s), 0.5)
    assert all(torch.equal(by_callback[k], expect[k]) for k in expect)

    run_task(["task=merge", f"task.base={theta_r}", f"task.aux={theta_s}", *small, "neon.w=[0.5,1.5]"], tmp_path, "mg")
    streamed = load_file(tmp_path / "mg" / "theta_neon_w0.5.safetensors")
    assert all(torch.equal(streamed[k], expect[k]) for k in expect)
    assert (tmp_path / "mg" / "theta_neon_w1.5.safetensors").exists()

    merged = tmp_path / "mg" / "theta_neon_w0.5.safetensors"
    run_task(["task=evaluate", f"task.checkpoints=[{theta_r},{merged}]", *small], tmp_path, "ev")
    fids = json.loads((tmp_path / "ev" / "summary.json").read_text())["fid"]
    assert set(fids) == {str(theta_r), str(merged)} and all(v >= 0 for v in fids.values())


@pytest.mark.slow
def test_budget_list_is_one_finetune_with_snapshots(tmp_path: Path, shared_cache: Path, caplog):
    base = [a for a in TINY_TOY if not a.startswith("neon.budget_steps")]
    seeded_cache(tmp_path, shared_cache, base)
    with caplog.at_level(logging.INFO, logger="neon"):
        run_task([*base, "neon.budget_steps=[3,6]"], tmp_path, "both")
    assert "fine-tuned 6 steps, snapshots at [3, 6]" in caplog.text
    summary = summary_of(tmp_path, "both")
    assert {g["budget_steps"] for g in summary["grid"]} == {3, 6}
    # the reported budget and w are the grid's best point; w_curve.csv is its budget's line, w_grid.csv the grid
    check_neon_summary(summary, tmp_path / "both")
    assert (tmp_path / "both" / "w_grid.csv").read_text().startswith("budget_steps,w,fid")
    # a later job asking for one of those budgets reuses the snapshot, and it equals a fresh 3-step fine-tune
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="neon"):
        run_task([*base, "neon.budget_steps=3"], tmp_path, "reuse")
    assert "θ_s: reusing" in caplog.text
    # the fresh fine-tune starts from the same θ_r (copied: θ_r is not what is compared) in a cache without θ_s
    fresh = tmp_path / "fresh"
    shutil.copytree(tmp_path / "cache" / "pretrain", fresh / "cache" / "pretrain")
    run_task([*base, "neon.budget_steps=3"], fresh)
    a = load_file(summary_of(tmp_path, "reuse")["artifacts"]["theta_s"]["3"])
    b = load_file(summary_of(fresh)["artifacts"]["theta_s"]["3"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_control_is_fine_tuned_from_theta_r_whatever_was_evaluated_last(tmp_path: Path, shared_cache: Path):
    # two runs whose w grids end differently (the evaluations leave θ_neon at the last w in the module): the
    # control, fine-tuned on the real data from θ_r, is the same network in both, so its scores agree
    grid = [a for a in TINY_TOY if not a.startswith("neon.w")]
    controls = []
    for name, last in (("a", "1.0"), ("b", "4.0")):
        folder = tmp_path / name
        cache = seeded_cache(folder, shared_cache, TINY_TOY)
        summary = run_task([*grid, f"neon.w=[0.0,0.5,{last}]", "+neon.control=true"], folder, cache=cache)
        controls.append(summary["control"]["w_curve"][:2])
    assert controls[0] == controls[1]


@pytest.mark.slow
def test_rounds_start_each_round_from_the_last_theta_neon(tmp_path: Path, shared_cache: Path):
    cache = seeded_cache(tmp_path, shared_cache, TINY_TOY)
    summary = run_task([*TINY_TOY, "neon.rounds=2"], tmp_path, cache=cache)
    first, second = (summary_of(tmp_path, f"run/round_{k}") for k in (1, 2))
    # round 2's θ_r is round 1's θ_neon file, so its θ_r scores exactly what round 1's pick scored, on both seed sets
    assert second["artifacts"]["theta_r"] == first["artifacts"]["theta_neon"]
    assert second["fid_base"] == first["fid_neon"] and second["fid_base_heldout"] == first["fid_neon_heldout"]
    assert second["artifacts"]["synthetic"] != first["artifacts"]["synthetic"]  # S drawn again, from θ_neon
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["rounds"][1]["fid_neon_heldout"] == second["fid_neon_heldout"] == summary["fid_neon_heldout"]
    assert summary["gain_rounds_heldout"] == pytest.approx(1 - second["fid_neon_heldout"] / first["fid_base_heldout"])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rounds"] == summary["rounds"]
