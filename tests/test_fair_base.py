"""The fair base: where task=search tunes the guidance of θ_neon, θ_r is tuned over the same values by the same
rule, and the summary, the printed table and the guidance plot show fid_base, fid_base_tuned and fid_neon."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from neon.analysis.run_report import search_table
from tests.helpers import TINY_TOY, run_task, summary_of
from tests.summary_checks import check_search_summary

# the toy's evaluation score scale ζ stands in for a guidance scale
SEARCH = [*(a for a in TINY_TOY if not a.startswith("neon.w")), "task=search", "neon.w=[0.0,0.5,1.0]",
          "task.cfg_key=score_scale", "task.cfg_values=[0.9,1.0,1.1]", "task.tolerance=100",
          "task.final_num_samples=2500"]


def test_search_reports_the_base_tuned_over_the_same_guidance(tmp_path: Path, shared_cache: Path, capsys):
    summary = run_task(SEARCH, tmp_path, cache=shared_cache)
    assert summary_of(tmp_path)["fid_base_tuned"] == summary["fid_base_tuned"]
    coarse = check_search_summary(summary, [0.0, 0.5, 1.0], final_num_samples=2500)
    small = [p for p in summary["points"] if p["num_samples"] == 2000]
    # θ_r at each guidance value: the w = 0 points of the coarse grid (θ_r itself, whatever the budget)
    theta_r = {p["cfg"]: p["fid"] for p in small if p["w"] == 0.0}
    assert {p["cfg"]: p["fid"] for p in summary["base_cfg_curve"]} == theta_r and set(theta_r) == {0.9, 1.0, 1.1}
    assert summary["cfg_base_tuned"] == min(theta_r, key=theta_r.get)
    # the same rule as θ_neon's: chosen on the search's samples, reported at the final size
    final = [p for p in summary["points"] if p["num_samples"] == 2500 and p["w"] == 0.0]
    assert {p["cfg"] for p in final} == {summary["cfg"], summary["cfg_base_tuned"]}
    assert summary["fid_base_tuned"] == next(p["fid"] for p in final if p["cfg"] == summary["cfg_base_tuned"])
    assert summary["fid_base"] == next(p["fid"] for p in final if p["cfg"] == summary["cfg"])
    if summary["cfg_base_tuned"] != summary["cfg"]:
        assert summary["fid_base_tuned"] != summary["fid_base"]
    # the table and the plot show all three
    table = search_table(summary)
    assert table in capsys.readouterr().out
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:-1]] == [
        "θ_r at θ_neon's guidance", "θ_r at its tuned guidance", f"θ_neon (B = {summary['budget_steps']})"]
    assert table.splitlines()[-1] == (f"(picked on seeds {summary['seeds_selection']}; these scores on the held-out "
                                      f"seeds {summary['seeds_heldout']})")
    assert f"{summary['fid_base_tuned']:.4g}" in table
    rows = list(csv.DictReader((tmp_path / "run" / "guidance_curve.csv").open()))
    assert [float(r["cfg"]) for r in rows] == [0.9, 1.0, 1.1]
    assert [float(r["fid_base"]) for r in rows] == [theta_r[c] for c in (0.9, 1.0, 1.1)]
    # θ_neon's line: the best coarse point at each guidance value (small-sample FID, over w and the budgets)
    best_neon = {c: min(p["fid"] for p in coarse if p["cfg"] == c) for c in (0.9, 1.0, 1.1)}
    assert [float(r["fid_neon"]) for r in rows] == [best_neon[c] for c in (0.9, 1.0, 1.1)]
    assert summary["neon_cfg_curve"] == [{"cfg": c, "fid": best_neon[c]} for c in (0.9, 1.0, 1.1)]
    assert (tmp_path / "run" / "guidance_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_search_without_guidance_reports_no_tuned_base(tmp_path: Path, shared_cache: Path):
    args = [a for a in SEARCH if not a.startswith("task.cfg")]
    summary = run_task(args, tmp_path, cache=shared_cache)
    assert "fid_base_tuned" not in summary and not (tmp_path / "run" / "guidance_curve.png").exists()
    assert "tuned guidance" not in search_table(summary)


def test_sweep_table_lists_search_jobs_with_the_tuned_base(tmp_path: Path):
    from neon.analysis.sweep_table import write_sweep_table
    from neon.core.io import write_json

    jobs = {"0": {"task": "search", "fid_base": 5.0, "fid_base_tuned": 4.5, "fid_neon": 3.0, "w": 1.0,
                  "budget_steps": 4, "seconds": {"evaluate": 1.0}},
            "1": {"task": "neon", "fid_base": 6.0, "fid_neon": 2.0, "w": 1.5, "budget_steps": 40, "n_synthetic": 10,
                  "seconds": {}}}
    for name, summary in jobs.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- task={summary['task']}\n")
        write_json(tmp_path / name / "summary.json", summary)
    write_sweep_table(tmp_path)
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["task"], r["fid_base"], r["fid_base_tuned"], r["fid_neon"]) for r in rows] == [
        ("search", "5.0", "4.5", "3.0"), ("neon", "6.0", "", "2.0")]


def test_a_guidance_sweep_names_its_fair_base(tmp_path: Path):
    # `neon -m sampler.cfg=...`: each job scores θ_r at its own guidance; sweep.md names the best of those
    # beside the best θ_neon (a sweep whose θ_r scores are all equal has nothing to add)
    from neon.analysis.sweep_table import write_sweep_table
    from neon.core.io import write_json

    for name, cfg, base, neon, w in (("0", 1.0, 5.0, 4.2, 0.5), ("1", 2.0, 4.4, 4.0, 1.0), ("2", 3.0, 4.9, 3.9, 1.5)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- experiment=var_digits\n- sampler.cfg={cfg}\n")
        write_json(tmp_path / name / "summary.json", {"task": "neon", "fid_base": base, "fid_neon": neon, "w": w,
                                                       "seconds": {}})
    write_sweep_table(tmp_path)
    assert (tmp_path / "sweep.md").read_text().splitlines()[-1] == (
        "Fair base over this sweep: θ_r at its best 4.4 (sampler.cfg=2.0); best θ_neon 3.9 (sampler.cfg=3.0, "
        "w = 1.5): -11.4% against it.")
    for name in ("0", "1", "2"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        write_json(tmp_path / name / "summary.json", {**summary, "fid_base": 5.0})
    write_sweep_table(tmp_path)
    assert "Fair base" not in (tmp_path / "sweep.md").read_text()
