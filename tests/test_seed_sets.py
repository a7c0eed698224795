"""metrics.seed_sets=k: every score over k consecutive seed sets, reported as the mean with its standard
deviation and minimum, each set scored (and cached) as a one-set score of its own seeds would be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neon.core.errors import NeonError
from neon.core.release_sampling import ReleaseSampling
from neon.metrics.scores import summarize_seed_sets
from neon.stages.evaluator import Evaluator
from neon.stages.run import Run
from tests.helpers import task_config

TOY = ["experiment=toy2d", "metrics.num_samples=300", "metrics.block_size=300", "metrics.allow_small=true"]


def evaluator(tmp_path: Path, *args: str) -> Evaluator:
    cfg, _ = task_config([*TOY, *args], tmp_path)
    run = Run.from_config(cfg)
    return Evaluator(run, run.build_module())


def test_three_sets_are_the_mean_sd_and_min_of_three_one_set_scores(tmp_path: Path):
    three = evaluator(tmp_path, "metrics.seed_sets=3")
    state = three.module.neon_weights()
    summary = three.score(state)
    singles = [evaluator(tmp_path, f"metrics.seed_offset={1000000 + 300 * i}").score(state)["fid"]
               for i in range(3)]
    assert [s["fid"] for s in summary["seed_sets"]] == singles
    assert summary["fid"] == pytest.approx(np.mean(singles)) and summary["fid_min"] == min(singles)
    assert summary["fid_sd"] == pytest.approx(np.std(singles, ddof=1)) and summary["fid_sd"] > 0
    assert [s["seeds"] for s in summary["seed_sets"]] == ["1000000-1000299", "1000300-1000599", "1000600-1000899"]
    assert summary["seeds"] == "1000000-1000899" and three.trace()["seed_sets"] == 3
    assert len([p for p in (tmp_path / "cache" / "eval").iterdir() if p.is_dir()]) == 3  # one score per set, shared


def test_summary_keeps_non_numeric_fields_and_skips_missing_metrics():
    sets = [{"fid": 2.0, "precision": None, "seeds": "0-9", "digest": "d", "num_samples": 10},
            {"fid": 4.0, "precision": None, "seeds": "10-19", "digest": "d", "num_samples": 10}]
    out = summarize_seed_sets(sets)
    assert out["fid"] == 3.0 and out["fid_min"] == 2.0 and out["precision"] is None and "precision_sd" not in out
    assert out["digest"] == "d" and out["num_samples"] == 10 and out["seeds"] == "0-19"


def test_seed_sets_need_per_seed_sampling(tmp_path: Path):
    ev = evaluator(tmp_path, "metrics.seed_sets=2")
    ev.release = ReleaseSampling.__new__(ReleaseSampling)
    with pytest.raises(NeonError, match="metrics.seed_sets > 1 needs per-seed sampling.*sample.rng=per_seed"):
        ev.seed_sets()
    with pytest.raises(NeonError, match="metrics.seed_sets must be a positive integer"):
        evaluator(tmp_path, "metrics.seed_sets=0").seed_sets()
