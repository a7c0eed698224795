"""The benches cannot rot unseen: each runs at its tiny size (`--quick`) and its JSON holds every section with
positive times."""

from __future__ import annotations

import importlib.util
import json
import math
import os
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


@pytest.mark.slow
def test_eval_speed_bench_times_both_paths_and_their_fids_agree(tmp_path: Path, capsys):
    bench = load_script("eval_speed")
    # side by side, one thread each: the mode the 10,000-image figure is measured in
    bench.main(["--quick", "--threads", "1", "--side-by-side", "--json", str(tmp_path / "eval.json")])
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["settings"]["side_by_side"] is True and result["settings"]["repeats"] == 1
    assert list(result["sizes"]) == ["8"]  # --quick: 8 images, one round
    row = result["sizes"]["8"]
    assert set(row) == {*bench.METHODS, "ratio_wall", "ratio_work", "fid_rel_diff"}
    for method in bench.METHODS:
        assert set(row[method]) == {"wall_s", "work_s", "fid", "all_wall_s"}, method
        assert positive(row[method]["wall_s"]) and positive(row[method]["work_s"]), method
        assert row[method]["all_wall_s"] == [row[method]["wall_s"]], method  # one round: its best is itself
        assert math.isfinite(row[method]["fid"]) and row[method]["fid"] > 0, method
    # the ratios are ours over torch-fidelity's, of the times beside them
    assert row["ratio_wall"] == row["ours"]["wall_s"] / row["fidelity"]["wall_s"] and positive(row["ratio_wall"])
    assert row["ratio_work"] == row["ours"]["work_s"] / row["fidelity"]["work_s"] and positive(row["ratio_work"])
    assert row["fid_rel_diff"] <= bench.RTOL
    assert "torch-fidelity" in capsys.readouterr().out


@pytest.mark.slow
def test_parallel_jobs_bench_runs_both_launchers_and_parallel_jobs_share_the_cores(tmp_path: Path):
    bench = load_script("parallel_jobs")
    bench.main(["--quick", "--json", str(tmp_path / "jobs.json")])
    result = json.loads((tmp_path / "jobs.json").read_text())
    modes = result["modes"]
    assert set(modes) == {"serial", "parallel"}
    assert modes["serial"]["ratio_to_serial"] == 1.0 and positive(modes["parallel"]["ratio_to_serial"])
    cores, jobs = result["settings"]["cores"], result["settings"]["jobs"]
    # one job at a time takes every core; jobs side by side share them (read from each job's log)
    assert modes["serial"]["threads_per_job"] == [cores]
    assert modes["parallel"]["threads_per_job"] == [max(1, cores // jobs)]
    assert "submitit_local jobs" in modes["parallel"]["threads_why"]
    assert result["fid_max_abs_diff_across_modes"] < 1e-3  # the same jobs, whichever launcher ran them


def test_eval_speed_times_each_side_by_side_process_to_its_own_exit(tmp_path: Path, monkeypatch):
    # waiting on the slow one first must not charge the quick one the slow one's time. The bench's clock is a
    # counter here, one tick per poll: the slow process ends only once the bench has seen the quick one end
    # and a tick has passed, so the quick one's time must be the smaller, by at least that tick.
    import time as real_time

    bench = load_script("eval_speed")
    go = tmp_path / "go"
    state = {"tick": 0, "go_at": None, "quick_done_at": None}

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            return float(state["tick"])

        @staticmethod
        def sleep(_: float) -> None:
            real_time.sleep(0.01)
            state["tick"] += 1
            if state["quick_done_at"] is None and started["quick"][0].poll() is not None:
                state["quick_done_at"] = state["tick"]  # the bench's next poll sees the quick one ended
            elif state["quick_done_at"] is not None and state["go_at"] is None:
                go.touch()
                state["go_at"] = state["tick"]

    monkeypatch.setattr(bench, "time", Clock)
    slow = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.01)\nprint('slow')"
    started = {"slow": bench.start([sys.executable, "-c", slow], dict(os.environ), tmp_path, tmp_path / "slow.log"),
               "quick": bench.start([sys.executable, "-c", "print('{}')"], dict(os.environ), tmp_path,
                                    tmp_path / "quick.log")}
    times = bench.finish(started)
    assert times["quick"][0] <= state["quick_done_at"] < state["go_at"] <= times["slow"][0], (times, state)
    assert times["quick"][1].strip() == "{}" and times["slow"][1].strip() == "slow"


def test_startup_vs_edm_compares_the_images_and_refuses_a_folder_without_generate_py(tmp_path: Path, capsys):
    import numpy as np
    from PIL import Image

    bench = load_script("startup_vs_edm")
    with pytest.raises(SystemExit):
        bench.main(["--edm-repo", str(tmp_path)])
    assert "holds no generate.py: give a local clone of NVlabs/edm" in capsys.readouterr().err
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "official").mkdir()
    for seed, image in enumerate(images):  # generate.py's layout: one PNG per seed
        Image.fromarray(image).save(tmp_path / "official" / f"{seed:06d}.png")
    changed = images.copy()
    changed[1, 2, 3, 0] = (int(images[1, 2, 3, 0]) + 100) % 256  # one value of one image moved
    np.savez(tmp_path / "neon.npz", arr_0=images)
    assert bench.same_images(tmp_path, 3) == 0
    np.savez(tmp_path / "neon.npz", arr_0=changed)
    assert bench.same_images(tmp_path, 3) == abs(int(changed[1, 2, 3, 0]) - int(images[1, 2, 3, 0])) > 0


def test_suite_time_reads_the_counts_of_a_junit_report(tmp_path: Path):
    bench = load_script("suite_time")
    report = tmp_path / "junit.xml"
    report.write_text('<testsuites><testsuite name="a" tests="7" failures="1" errors="0" skipped="2"/>'
                      '<testsuite name="b" tests="3" failures="0" errors="1" skipped="0"/></testsuites>')
    assert bench.counts(report) == {"tests": 10, "failures": 1, "errors": 1, "skipped": 2}
    report.write_text('<testsuite name="a" tests="4" failures="0" errors="0" skipped="1"/>')
    assert bench.counts(report) == {"tests": 4, "failures": 0, "errors": 0, "skipped": 1}


@pytest.mark.slow
def test_lm_sampling_bench_times_both_samplers_and_both_fine_tunes(tmp_path: Path, capsys):
    bench = load_script("lm_sampling")
    bench.main(["--quick", "--threads", "1", "--json", str(tmp_path / "lm.json")])
    result = json.loads((tmp_path / "lm.json").read_text())
    for key in ("sampling", "sampling_filtered"):
        s = result[key]
        assert positive(s["ours_tokens_per_s"]) and positive(s["generate_tokens_per_s"]), key
        assert s["ratio"] == s["ours_tokens_per_s"] / s["generate_tokens_per_s"], key
    assert result["sampling"]["settings"] == bench.SETTINGS
    assert result["sampling_filtered"]["settings"] == bench.FILTERED
    f = result["finetune"]
    assert positive(f["ours_steps_per_s"]) and positive(f["bare_steps_per_s"]) and positive(f["fit_ratio"])
    assert f["ratio"] == pytest.approx(f["ours_steps_per_s"] / f["bare_steps_per_s"])
    assert "generate" in capsys.readouterr().out
