"""bench/startup.py and bench/merge_speed.py cannot rot unseen: each runs at its tiny size (`--quick`) and its
JSON holds every section with positive times."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_script(name: str):
    """bench/<name>.py as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_startup_and_merge_benches_measure_every_section(tmp_path: Path, capsys):
    startup = load_script("startup")
    startup.main(["--quick", "--json", str(tmp_path / "startup.json")])
    result = json.loads((tmp_path / "startup.json").read_text())
    assert positive(result["anchors"]["import_torch_s"]) and positive(result["anchors"]["import_torch_and_load_s"])
    assert set(result["tasks"]) == set(startup.TASKS)
    for name, t in result["tasks"].items():
        assert positive(t["first_work_s"]) and positive(t["first_work_ratio_to_torch"]), name
        assert t["exit_s"] >= t["first_work_s"], name
    # sample and evaluate stop the clock at their first stage, before their exit
    assert result["tasks"]["sample"]["marker"] == "stage sample: start"

    merge = load_script("merge_speed")
    merge.main(["--quick", "--json", str(tmp_path / "merge.json"), "--dir", str(tmp_path)])
    result = json.loads((tmp_path / "merge.json").read_text())
    assert set(result["methods"]) == {"floor", "neon-merge", "naive"}
    for name, m in result["methods"].items():
        assert positive(m["seconds"]) and positive(m["ratio_to_floor"]), name
    assert result["methods"]["floor"]["ratio_to_floor"] == 1.0
    # the naive script holds both models and the result; the streamed merge about one tensor
    assert result["methods"]["naive"]["peak_private_gib"] > result["methods"]["neon-merge"]["peak_private_gib"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merge.json", "startup.json"]  # the inputs are deleted
    assert "neon-merge" in capsys.readouterr().out
