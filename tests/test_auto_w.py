"""neon.w=auto: the line search, block-wise w, and the toy against its swept best w."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neon.analysis.auto_w import choose_w, line_search, memoised
from neon.core.errors import NeonError
from neon.merging.extrapolate import extrapolate, w_for
from neon.stages.settings import AutoSettings
from tests.helpers import run_task, summary_of

AUTO = {"start": 0.0, "step": 0.5, "w_min": 0.0, "w_max": 8.0, "tolerance": 0.1, "rounds": 1, "num_samples": None,
        "seed_offset": 3000000, "groups": None}


@pytest.mark.parametrize("target", [0.0, 0.37, 1.6, 4.9, 7.95, 20.0])
def test_line_search_finds_the_minimum_of_a_unimodal_curve(target):
    points = []
    f = memoised(lambda w: abs(w - target) ** 1.5, points, "t")
    w = line_search(f, 0.0, 0.5, 0.0, 8.0, 0.1)
    assert abs(w - min(target, 8.0)) <= 0.05
    assert len(points) <= 16  # a 0.1 grid over [0, 8] would cost 81 evaluations
    assert len({p["w"] for p in points}) == len(points)  # never scores a w twice


def test_line_search_walks_down_to_negative_w_when_allowed():
    f = memoised(lambda w: (w + 1.3) ** 2, [], "t")
    assert abs(line_search(f, 0.0, 0.5, -4.0, 4.0, 0.05) + 1.3) <= 0.025
    g = memoised(lambda w: (w + 1.3) ** 2, [], "t")
    assert line_search(g, 0.0, 0.5, 0.0, 4.0, 0.05) == 0.0  # w_min = 0: stays at the bound


def test_blockwise_w_with_equal_coefficients_equals_scalar_w():
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(5, 3, generator=g) for k in ("enc.0.weight", "mid.weight", "dec.1.bias")}
    base["steps"] = torch.tensor(3)
    aux = {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 1
           for k, v in base.items()}
    scalar = extrapolate(base, aux, 1.3)
    blockwise = extrapolate(base, aux, {"^enc": 1.3, "mid": 1.3, "default": 1.3})
    for key in base:
        assert torch.equal(scalar[key], blockwise[key]), key


def test_choose_w_searches_each_group_after_the_scalar_w():
    # a score whose best w differs per group: the block-wise search must find each group's own optimum
    best = {"^enc": 0.5, "^dec": 2.0, "default": 1.0}

    def score(w) -> float:
        return sum((w_for(k, w) - w_for(k, best)) ** 2 for k in ("enc.a", "dec.b", "mid.c"))

    points = []
    w, s = choose_w(score, AutoSettings.of({**AUTO, "groups": {"encoder": "^enc", "decoder": "^dec"}}), points)
    assert set(w) == {"^enc", "^dec", "default"}
    assert abs(w["^enc"] - 0.5) <= 0.05 and abs(w["^dec"] - 2.0) <= 0.05 and abs(w["default"] - 1.0) <= 0.05
    assert s == pytest.approx(score(w)) and s < score(w["default"])
    assert {p["search"] for p in points} == {"scalar", "encoder (round 1)", "decoder (round 1)", "rest (round 1)"}


@pytest.mark.parametrize("bad, key", [({"w_min": 2.0, "w_max": 1.0}, "w_min"), ({"step": 0.0}, "step"),
                                      ({"tolerance": -1.0}, "tolerance"), ({"start": 9.0}, "start")])
def test_bad_auto_settings_name_the_key(bad, key):
    with pytest.raises(NeonError, match=f"neon.auto.{key}"):
        AutoSettings.of({**AUTO, **bad})


@pytest.mark.slow
def test_auto_w_on_the_toy_lands_near_the_swept_best(tmp_path: Path, shared_cache: Path):
    # the paper's toy (ζ = 1.1, B = 50) swept on a 0.2 grid, then neon.w=auto on the same θ_r, S and θ_s
    # (θ_r, the toy's full pretrain and nearly all of this test's time, comes from the session's cache: the
    # toy-paper test shares it). Measured: swept best 0.8 on both a 0.1 and a 0.2 grid, auto 0.78 in 10 scores.
    common = ["experiment=toy2d", "metrics.num_samples=8000", "metrics.block_size=8000",
              "trainer.enable_progress_bar=false"]
    grid = [round(0.2 * i, 1) for i in range(0, 16)]
    run_task([*common, f"neon.w=[{','.join(map(str, grid))}]"], tmp_path, "grid", shared_cache)
    swept = summary_of(tmp_path, "grid")
    run_task([*common, "neon.w=auto"], tmp_path, "auto", shared_cache)
    auto = summary_of(tmp_path, "auto")

    assert swept["w"] > 0.2  # the toy's mode-seeking S wants a positive w
    assert abs(auto["w"] - swept["w"]) <= 0.2
    # auto's tolerance is 0.1: it costs less than half of a 0.1 grid over the same [0, 3] (31 scores)
    assert auto["auto_w"]["evaluations"] < 31 / 2
    assert auto["fid_neon"] <= swept["fid_neon"] * 1.2
    assert [p["w"] for p in auto["w_curve"]] == ["0", f"{auto['w']:g}"]
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["auto_w"]["points"]


def test_auto_w_is_refused_where_w_must_be_given(tmp_path: Path):
    with pytest.raises(NeonError, match="neon.w=auto is for task=neon"):
        run_task(["experiment=toy2d", "task=finetune", "neon.w=auto"], tmp_path)
