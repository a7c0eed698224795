"""The paper's appendix toy, full size: the three findings, from one multirun sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_cli, seeded_cache


@pytest.mark.slow
def test_toy_reproduces_the_papers_findings(tmp_path: Path, shared_cache: Path):
    # a Hydra multirun (the process is the point); θ_r, the toy's full pretrain, comes from the session's cache
    seeded_cache(tmp_path, shared_cache, ["experiment=toy2d"])
    # w over [-2, 2] in steps of 0.2 (the experiment's 0.1 halved: the best w of the four settings, +0.8, +0.2,
    # −0.9 and −0.3 in docs/toys.md, stay apart by far more than a step); both budgets from one fine-tune per S,
    # 10,000 points per score (the experiment's 20,000 halved)
    ws = ",".join(f"{0.2 * i - 2:.1f}" for i in range(21))
    proc = run_cli(
        ["-m", "experiment=toy2d", "sampler.score_scale=1.1,0.9", "neon.budget_steps=[50,250]", f"neon.w=[{ws}]",
         "metrics.num_samples=10000", "metrics.block_size=10000", f"hydra.sweep.dir={tmp_path / 'sweep'}",
         "trainer.enable_progress_bar=false"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    for job in sorted((tmp_path / "sweep").glob("[0-9]*")):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        summary = json.loads((job / "summary.json").read_text())
        for budget in (50, 250):  # the best w of each budget's w-curve
            best = min((p for p in summary["grid"] if p["budget_steps"] == budget), key=lambda p: p["fid"])
            results[(float(overrides["sampler.score_scale"]), budget)] = {
                "w": float(best["w"]), "fid_neon": best["fid"], "fid_base": summary["fid_base"]}
    assert len(results) == 4
    # one θ_r for the whole sweep, one S per score scale
    assert len([p for p in (tmp_path / "cache" / "pretrain").iterdir() if p.is_dir()]) == 1
    assert len([p for p in (tmp_path / "cache" / "synthetic").iterdir() if p.is_dir()]) == 2

    mode_seeking = results[(1.1, 50)]
    assert mode_seeking["w"] > 0
    assert mode_seeking["fid_neon"] <= mode_seeking["fid_base"] / 3
    assert results[(0.9, 50)]["w"] <= 0  # diversity-seeking S: no gain at positive w
    assert results[(1.1, 250)]["w"] < mode_seeking["w"]  # a longer fine-tune wants a smaller w
