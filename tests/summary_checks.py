"""Checks of a finished run's headline numbers against the scores it recorded: what task=neon and task=search
report must be the points they scored, picked by their rules (not merely values of the configured lists)."""

from __future__ import annotations

import csv
import math
from itertools import groupby
from pathlib import Path


def check_neon_summary(summary: dict, run_dir: Path | None = None) -> None:
    """task=neon on a w grid holding 0: the grid holds every (budget, w) scored; fid_neon, w and budget_steps are its first minimum;
    w_curve is the grid at that budget; fid_base is its w = 0 point; with `run_dir`, w_curve.csv (and
    w_grid.csv, with several budgets) hold the same numbers."""
    grid = summary["grid"]
    assert grid and all(math.isfinite(g["fid"]) for g in grid), grid
    from neon.analysis.run_report import w_label

    best = min(grid, key=lambda g: g["fid"])
    assert (summary["budget_steps"], w_label(summary["w"]), summary["fid_neon"]) == (best["budget_steps"], best["w"], best["fid"])
    at_best = [{"w": g["w"], "fid": g["fid"]} for g in grid if g["budget_steps"] == summary["budget_steps"]]
    assert summary["w_curve"] == at_best
    assert summary["fid_base"] == next(p["fid"] for p in summary["w_curve"] if p["w"] == "0")
    if run_dir is not None:
        rows = list(csv.DictReader((run_dir / "w_curve.csv").open()))
        assert [(r["w"], float(r["fid"])) for r in rows] == [(p["w"], p["fid"]) for p in at_best]
        budgets = {g["budget_steps"] for g in grid}
        if len(budgets) > 1:
            rows = list(csv.DictReader((run_dir / "w_grid.csv").open()))
            assert [(int(r["budget_steps"]), r["w"], float(r["fid"])) for r in rows] == [
                (g["budget_steps"], g["w"], g["fid"]) for g in grid]


def check_search_summary(summary: dict, ws: list[float], refine_step: float = 0.1,
                         final_num_samples: int | None = None) -> list[dict]:
    """task=search (neon/tasks/search.py run_search): its points in the order it scores them. The coarse grid,
    each (cfg, budget) line a prefix of the sorted `ws` stopped at its first FID above the line's best by more
    than the tolerance; then w ± refine_step around the coarse best; the pick is the best of those three, at the
    search's sample count (fid_search), then scored at `final_num_samples` (fid_neon) beside θ_r there
    (fid_base); with a guidance key, θ_r at every guidance value and at its own best (the fair base).
    Returns the coarse points."""
    points = summary["points"]
    n_cfg = len(summary.get("base_cfg_curve") or [])
    tail = 2 + (1 if final_num_samples else 0) + 1 + n_cfg + (1 if final_num_samples and n_cfg else 0)
    coarse, rest = points[:-tail], points[-tail:]
    small = coarse[0]["num_samples"]
    assert all(p["num_samples"] == small for p in coarse)
    grid = sorted(ws)
    for _, line in groupby(coarse, key=lambda p: (p["cfg"], p["budget_steps"])):
        line = list(line)
        assert [p["w"] for p in line] == grid[:len(line)], line
        fids = [p["fid"] for p in line]
        over = [f > min(fids[:i + 1]) + summary["tolerance"] for i, f in enumerate(fids)]
        # the line goes on while no point exceeds its best so far by the tolerance, and stops at the first that does
        assert not any(over[:-1]) and (over[-1] or len(line) == len(grid)), line
    best = min(coarse, key=lambda p: p["fid"])
    refined = rest[:2]
    for point, sign in zip(refined, (-1, 1), strict=True):
        assert (point["budget_steps"], point["cfg"], point["num_samples"]) == (
            best["budget_steps"], best["cfg"], small)
        assert point["w"] == round(best["w"] + sign * refine_step, 6)
    pick = min([best, *refined], key=lambda p: p["fid"])
    assert (summary["budget_steps"], summary["cfg"], summary["w"], summary["fid_search"]) == (
        pick["budget_steps"], pick["cfg"], pick["w"], pick["fid"])
    at = 2
    if final_num_samples:
        final = rest[at]
        at += 1
        assert (final["budget_steps"], final["cfg"], final["w"], final["num_samples"]) == (
            pick["budget_steps"], pick["cfg"], pick["w"], final_num_samples)
        assert summary["fid_neon"] == final["fid"]
    else:
        assert summary["fid_neon"] == pick["fid"]
    base = rest[at]
    assert (base["budget_steps"], base["cfg"], base["w"], base["num_samples"]) == (
        pick["budget_steps"], pick["cfg"], 0.0, final_num_samples or small)
    assert summary["fid_base"] == base["fid"]
    if summary.get("seeds_heldout"):  # the pick's final scores on seeds none of the picks was made on
        assert final_num_samples and final["seeds"] == base["seeds"] == summary["seeds_heldout"]
        first, last = (int(x) for x in summary["seeds_heldout"].split("-"))
        for p in (*coarse, *refined):
            a, b = (int(x) for x in p["seeds"].split("-"))
            assert b < first or a > last, (p, summary["seeds_heldout"])
        assert summary["fid_neon_heldout"] == summary["fid_neon"] and summary["fid_base_heldout"] == summary["fid_base"]
    return coarse
