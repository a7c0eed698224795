"""bench/gpu_check.py cannot rot unseen: its dry run (the same code on the CPU with the tiny models) measures
every row, the Inception extraction and each paper row's cost, and writes them all to its JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def load_script():
    """bench/gpu_check.py as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_dry_run_measures_every_section(tmp_path: Path, capsys):
    gpu_check = load_script()
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--skip-tests", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["device_type"] == "cpu" and "gpu_tests" not in report
    assert set(report["rows"]) == {row.key for row in gpu_check.ROWS}
    for key, row in report["rows"].items():
        assert "error" not in row, row.get("error")
        sampling, finetune, cost = row["sampling"], row["finetune"], row["cost"]
        assert all(positive(sampling[k]) for k in ("framework_img_s", "bare_img_s")), key
        assert all(positive(finetune[k]) for k in ("framework_steps_s", "bare_steps_s")), key
        assert finetune["timed_steps"] >= 2 and sampling["batch"] == finetune["batch"] == 4
        assert all(positive(cost[k]) for k in ("synthesis_s", "finetune_s", "eval_small_s", "eval_large_s")), key
        assert cost["total_s"] == pytest.approx(cost["synthesis_s"] + cost["finetune_s"] + cost["eval_small_s"]
                                                + cost["eval_large_s"])
        # the paper recipe, read from experiments/paper/*.yaml even though tiny models were measured
        assert row["recipe"]["eval_small"] == 10000 and row["recipe"]["eval_large"] == 50000
    assert report["rows"]["edm"]["recipe"] == {"n_synthetic": 6000, "budget_steps": 977, "global_batch": 512,
                                               "eval_small": 10000, "eval_large": 50000}
    assert report["rows"]["edm"]["stated_share"].startswith("1.75%")
    assert report["rows"]["imm"]["stated_share"] == "not stated"
    assert report["inception"] and all(positive(v["pipeline_img_s"]) and positive(v["on_device_img_s"])
                                       for v in report["inception"].values())
    printed = capsys.readouterr().out
    assert "paper's share" in printed and all(row.title in printed for row in gpu_check.ROWS)


def test_rows_refuse_an_unknown_name(tmp_path: Path, capsys):
    gpu_check = load_script()
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--skip-tests", "--rows", "edm,sd3", "--out", str(tmp_path / "x.json")])
    assert "unknown ['sd3']" in capsys.readouterr().err
