"""Numbers that hold up: task=neon picks w and B (and the control its w) on the selection seeds and reports the
picks scored on disjoint held-out seeds; a held-out offset that overlaps is one line before any work; the
sweep table carries the held-out figures and picks its best job on the selection seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from neon.analysis.heldout import heldout_figures, mean_interval, relative_gain
from neon.analysis.sweep_table import write_sweep_table
from neon.core.errors import NeonError
from neon.core.io import load_state_dict, write_json
from neon.launch.preflight import preflight
from tests.helpers import TINY_TOY, run_task, seeded_cache, task_config

RUN = [*TINY_TOY, "+neon.control=true", "metrics.heldout_seed_offset=50000"]


def test_overlapping_heldout_seeds_are_one_line_before_any_work():
    with pytest.raises(NeonError) as err:  # selection seeds 1,000,000-1,019,999 (toy2d_fd)
        preflight(["experiment=toy2d", "metrics.heldout_seed_offset=1019999"])
    message = str(err.value)
    assert "\n" not in message and "metrics.heldout_seed_offset=1019999" in message
    assert "metrics.seed_offset picks on (1000000-1019999)" in message
    with pytest.raises(NeonError, match="overlap the seeds metrics.seed_offset"):  # two sets reach further
        preflight(["experiment=toy2d", "metrics.seed_sets=2", "metrics.heldout_seed_offset=1039999"])
    with pytest.raises(NeonError, match="overlap the seeds neon.auto.seed_offset picks on"):
        preflight(["experiment=toy2d", "neon.w=auto", "metrics.heldout_seed_offset=3000000"])
    preflight(["experiment=toy2d", "metrics.heldout_seed_offset=1020000"])  # adjacent: disjoint, accepted
    preflight(["experiment=toy2d", "metrics.heldout_seed_offset=null"])  # off


def test_every_metric_config_reports_on_seeds_disjoint_from_its_selection():
    for metrics in ("digits_fid", "fid10k", "fid50k", "pixel_fd", "toy2d_fd"):
        cfg = preflight([f"metrics={metrics}", "metrics.allow_small=true"]).cfg
        assert cfg.metrics.heldout_seed_offset is not None, metrics
    paper = preflight(["experiment=paper/edm_cifar10_cond", "metrics.allow_small=true"]).cfg.metrics
    assert (paper.num_samples, paper.heldout_num_samples, paper.heldout_seed_offset) == (10000, 50000, 0)
    assert paper.seed_offset >= 50000  # FID-10K picks, FID-50K on generate.py's seeds 0-49999 reports


def test_heldout_figures_and_the_gain_interval():
    assert relative_gain(10.0, 8.0) == pytest.approx(0.2) and relative_gain(0.0, 1.0) is None
    assert relative_gain(float("nan"), 1.0) is None
    lo, hi = mean_interval([0.1, 0.2, 0.3])  # mean 0.2, sd 0.1, t(0.975, 2) = 4.3027
    assert (lo + hi) / 2 == pytest.approx(0.2) and (hi - lo) / 2 == pytest.approx(4.302653 * 0.1 / math.sqrt(3))
    assert mean_interval([0.1]) is None
    sets = [{"fid": 10.0, "seeds": "0-9"}, {"fid": 12.0, "seeds": "10-19"}]
    base = {"fid": 11.0, "fid_sd": 1.41, "seeds": "0-19", "seed_sets": sets}
    neon = {"fid": 9.0, "fid_sd": 1.0, "seeds": "0-19", "seed_sets": [{"fid": 9.0}, {"fid": 9.0}]}
    out = heldout_figures(base, neon, None)
    assert out["gain_heldout_sets"] == pytest.approx([0.1, 0.25]) and out["fid_control_heldout"] is None
    assert out["gain_heldout"] == pytest.approx(1 - 9 / 11) and out["fid_neon_heldout_sd"] == 1.0
    lo, hi = out["gain_heldout_interval"]
    assert lo < 0.1 and hi > 0.25 and (lo + hi) / 2 == pytest.approx(0.175)


@pytest.mark.slow
def test_neon_reports_its_picks_on_heldout_seeds(tmp_path: Path, shared_cache: Path, capsys):
    cache = seeded_cache(tmp_path, shared_cache, RUN)
    summary = run_task(RUN, tmp_path, cache=cache)
    assert summary["seeds_selection"] == "1000000-1001999" and summary["seeds_heldout"] == "50000-51999"
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("held-out seeds 50000-51999 (reported): FID θ_r") and "selection seeds" in out[-2]

    # each held-out figure is the pick scored again on the held-out seeds: recompute two of them independently
    # a fresh cache: scored anew, not read back from the run's cached scores
    cfg, _ = task_config([*RUN, "metrics.seed_offset=50000"], tmp_path, "rescore", tmp_path / "fresh_cache")
    from hydra.utils import instantiate

    from neon.stages.evaluator import Evaluator
    from neon.stages.run import Run, model_spec

    module = instantiate(model_spec(cfg))
    evaluator = Evaluator(Run.from_config(cfg), module)
    theta_neon = load_state_dict(tmp_path / "run" / "theta_neon.safetensors")
    theta_r = load_state_dict(summary["artifacts"]["theta_r"])
    assert evaluator.score(theta_neon)["fid"] == summary["fid_neon_heldout"]
    assert evaluator.score(theta_r)["fid"] == summary["fid_base_heldout"]
    assert summary["fid_base_heldout"] != summary["fid_base"]  # other seeds, another figure
    assert summary["gain_heldout"] == pytest.approx(1 - summary["fid_neon_heldout"] / summary["fid_base_heldout"])
    assert math.isfinite(summary["fid_control_heldout"])
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["fid_neon_heldout"] == summary["fid_neon_heldout"]


def test_sweep_table_reports_the_heldout_figures_of_the_job_picked_on_selection(tmp_path: Path):
    # job 0 is best on its selection seeds, job 1 would look best on the held-out ones: the pick is job 0
    for name, lr, sel, held in (("0", "1e-4", 3.0, 3.6), ("1", "1e-5", 3.2, 3.1)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- neon.optimizer.lr={lr}\n")
        write_json(tmp_path / name / "summary.json", {
            "task": "neon", "fid_base": 4.0, "fid_neon": sel, "w": 1.0, "budget_steps": 10,
            "fid_base_heldout": 4.2, "fid_neon_heldout": held, "gain_heldout": 1 - held / 4.2, "seconds": {}})
    write_sweep_table(tmp_path)
    md = (tmp_path / "sweep.md").read_text()
    header = md.splitlines()[0]
    assert "fid_neon_heldout" in header and "gain_heldout" in header and "fid_control_heldout" in header
    assert ("Best job on the selection seeds: neon.optimizer.lr=1e-4 (w = 1.0, B = 10); on its held-out seeds "
            "θ_r 4.2 → θ_neon 3.6 (+14.3%).") in md
    assert "| 0 | 1e-4 | 4 |  | 3 |" in md and "| 3.6 |" in md
