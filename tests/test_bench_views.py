"""Every bench figure in docs/benchmarks.md can be generated from a recorded JSON: each bench script writes its
figures and settings as plain numbers, and its view in docs/bench_views.py renders every one of them. The scripts
that run in-process run for real at their tiny size (`--quick`); those that time whole processes (seconds each)
build their JSON with their own `summarize` from tiny or made-up measurements. Never a check of a time's size."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("startup", "merge_speed", "edm_overhead", "metrics_speed", "eval_speed", "parallel_jobs", "sweep_cost",
           "ddp_synthesis", "toy_overhead", "xar_overhead", "imm_overhead", "var_sampling")


def load(path: Path, name: str):
    """A script or docs module loaded from its file (bench/ and docs/ are no packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


views = load(ROOT / "docs" / "bench_views.py", "docs_bench_views")


def bench(name: str):
    return load(ROOT / "bench" / f"{name}.py", f"bench_views_{name}")


def view(name: str) -> Callable[[dict], str]:
    return views.VIEWS["startup_tasks" if name == "startup" else name]


@pytest.fixture(autouse=True)
def keep_threads():
    """The in-process benches set torch's threads: give the next test in this process the count it had."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def shows(text: str, *figures: tuple[object, Callable[[object], str]]) -> None:
    """Each (value, format) is a plain JSON number and `text` holds it as formatted."""
    for value, fmt in figures:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), value
        assert fmt(value) in text, (fmt(value), text)


def quick(name: str, tmp_path: Path) -> dict:
    """The script run at its tiny size with one thread; its JSON as written (so plain JSON)."""
    out = tmp_path / f"{name}.json"
    bench(name).main(["--quick", "--threads", "1", "--json", str(out)])
    return json.loads(out.read_text())


def count(x: float) -> str:
    return f"{x:,}"


def plain(x: object) -> str:
    return str(x)


def versus_figures(side: dict, unit: str) -> list[tuple]:
    """The figures of a framework-against-bare row: both rates and the overhead."""
    return [(side[f"framework_{unit}_per_s"], views.rate), (side[f"bare_{unit}_per_s"], views.rate),
            (side["overhead"], views.change)]


def test_edm_overhead(tmp_path: Path):
    r = quick("edm_overhead", tmp_path)
    text = view("edm_overhead")(r)
    assert r["settings"]["threads"] == 1 and list(r["networks"]) == list(bench("edm_overhead").NETWORKS)
    for name, n in r["networks"].items():
        assert name in text
        shows(text, (n["parameters"], count), (n["sampling"]["images"], count), (n["sampling"]["num_steps"], plain),
              (n["finetune"]["batch"], plain), (n["finetune"]["steps"], plain),
              *versus_figures(n["sampling"], "images"), *versus_figures(n["finetune"], "steps"))
    shows(text, (r["settings"]["threads"], plain))


def test_metrics_speed(tmp_path: Path):
    r = quick("metrics_speed", tmp_path)
    e, s = r["extraction"], r["statistics"]
    assert e["ratio"] == e["seconds"]["torch_fidelity"] / e["seconds"]["ours"]  # within the run
    shows(view("metrics_speed")(r), (e["images"], plain), (e["ours_images_per_s"], views.rate),
          (e["fidelity_images_per_s"], views.rate), (e["ratio"], lambda x: views.times(x, 3)), (s["rows"], count),
          (s["dim"], plain), (s["peak_extra_mib"], lambda x: f"{x:.0f} MiB"), (s["float64_copy_mib"], lambda x: f"{x:.0f} MiB"),
          (r["settings"]["threads"], plain))


def test_toy_overhead(tmp_path: Path):
    r = quick("toy_overhead", tmp_path)
    f, s = r["finetune"], r["sampling"]
    shows(view("toy_overhead")(r), (f["batch"], count), (f["steps"], count), (f["framework_steps_per_s"], views.rate),
          (f["bare_steps_per_s"], views.rate), (f["ratio"], views.times), (s["samples"], count),
          (s["ddim_steps"], plain), (s["seconds"]["framework"], lambda x: f"{x:.3f} s"),
          (s["seconds"]["bare"], lambda x: f"{x:.3f} s"), (s["ratio"], views.times), (r["parameters"], count),
          (r["settings"]["threads"], plain))


def test_xar_overhead(tmp_path: Path):
    r = quick("xar_overhead", tmp_path)
    s, f, m = r["sampling"], r["finetune"], r["settings"]["model"]
    text = view("xar_overhead")(r)
    shows(text, *[(s["images_per_s"][k], views.rate) for k in ("framework", "bare", "no_cache")],
          *[(f["steps_per_s"][k], views.rate) for k in ("framework", "bare", "dropout")],
          (s["overhead"], views.change), (s["cache_speedup"], views.times),
          (s["max_difference_no_cache"], lambda x: f"{x:.1e}"), (f["overhead"], views.change),
          (f["dropout_cost"], views.change), (f["dropout"], plain), (s["batch"], plain), (s["num_steps"], plain),
          (s["clusters"], plain), (f["batch"], plain), (f["steps"], plain), (m["embed_dim"], plain),
          (m["channels"], plain), (r["settings"]["threads"], plain))


def test_imm_overhead(tmp_path: Path):
    r = quick("imm_overhead", tmp_path)
    s, f, m = r["sampling"], r["finetune"], r["settings"]["model"]
    shows(view("imm_overhead")(r), *versus_figures(s, "images"), *versus_figures(f, "steps"), (s["batch"], plain),
          (s["num_steps"], plain), (s["cfg"], plain), (f["batch"], plain), (f["steps"], plain), (s["rounds"], plain),
          (m["hidden_size"], plain), (m["depth"], plain), (r["settings"]["threads"], plain))


def test_var_sampling(tmp_path: Path):
    r = quick("var_sampling", tmp_path)
    s = r["settings"]
    text = view("var_sampling")(r)
    assert r["deterministic"] is True and s["tokens"] == sum(n * n for n in s["model"]["patch_nums"])
    shows(text, *[(r["images_per_s"][k], views.rate) for k in ("framework", "bare", "no_cache")],
          (r["overhead"], views.change), (r["cache_speedup"], views.times), (s["tokens"], plain), (s["batch"], plain),
          (s["threads"], plain), (s["model"]["embed_dim"], plain))


def test_startup(tmp_path: Path):
    startup = bench("startup")
    names = ["import torch", "import torch + load", *startup.TASKS]
    best = {name: (1.0 + 0.25 * i, 1.5 + 0.25 * i) for i, name in enumerate(names)}  # distinct made-up seconds
    r = json.loads(json.dumps(startup.summarize(best, list(startup.TASKS), repeats=2, images=3, threads=1)))
    text = view("startup")(r)
    shows(text, (r["anchors"]["import_torch_s"], views.seconds), (r["anchors"]["import_torch_and_load_s"], views.seconds),
          (r["settings"]["repeats"], plain), (r["settings"]["images"], plain))
    for name, t in r["tasks"].items():
        assert f"task={name}" in text or name == "help"
        shows(text, (t["first_work_s"], views.seconds), (t["exit_s"], views.seconds),
              (t["first_work_over_torch_s"], lambda x: f"{x:+.2f}"),
              (t["first_work_over_torch_and_load_s"], lambda x: f"{x:+.2f}"),
              (t["first_work_ratio_to_torch"], views.times))
    assert "`stage sample: start`" in text and "`neon --help`" in text


def test_merge_speed(tmp_path: Path):
    merge = bench("merge_speed")
    paths = merge.write_inputs(tmp_path, 2**-16)  # two 16 KiB models; each method once, in this process
    args = {"floor": (paths["theta_r"], paths["theta_s"], tmp_path / "floor.bin"),
            "neon-merge": (paths["theta_r"], paths["theta_s"], tmp_path / "merged.safetensors"),
            "naive": (paths["theta_r_pt"], paths["theta_s_pt"], tmp_path / "merged.pt")}
    runs = {m: [merge.child(m, *args[m])] for m in merge.METHODS}
    r = json.loads(json.dumps(merge.summarize(runs, paths["theta_r"].stat().st_size, repeats=1, threads=1)))
    text = view("merge_speed")(r)
    for name, m in r["methods"].items():
        assert f"`{name}`" in text
        shows(text, (m["seconds"], views.seconds), (m["ratio_to_floor"], views.times),
              (m["peak_private_gib"], lambda x: f"{x:.3f}"))
    shows(text, (r["settings"]["gib_per_file"], lambda x: f"{x:.3f} GiB"), (r["settings"]["w"], plain))


def test_eval_speed():
    ev = bench("eval_speed")
    runs = {n: {"ours": [{"wall_s": 10.0 + n, "work_s": 8.0 + n, "fid": 12.3456789}],
                "fidelity": [{"wall_s": 20.0 + n, "work_s": 17.5 + n, "fid": 12.3456780}]} for n in (8, 1000)}
    r = json.loads(json.dumps(ev.summarize(runs, reference=500, repeats=1, threads=1, side_by_side=True)))
    text = view("eval_speed")(r)
    for n, row in r["sizes"].items():
        shows(text, (int(n), count), *[(row[m][k], views.long_seconds) for m in ev.METHODS for k in ("wall_s", "work_s")], (row["ratio_wall"], views.times),
              (row["ratio_work"], views.times), (row["ours"]["fid"], lambda x: f"{x:.6g}"),
              (row["fid_rel_diff"], lambda x: f"{x:.1e}"))
    shows(text, (r["settings"]["reference_images"], plain), (r["settings"]["repeats"], plain))
    assert "side by side" in text


def test_parallel_jobs():
    pj = bench("parallel_jobs")
    runs = {"serial": [12.5, 12.0], "parallel": [11.0, 11.5], "parallel, threads=cores": [21.0, 20.5]}
    results = {"serial": [{"fid_neon": 1.0, "threads": 2, "threads_why": "2 cores / 1 process"}] * 2,
               "parallel": [{"fid_neon": 1.0, "threads": 1, "threads_why": "2 cores / 2 processes"}] * 2,
               "parallel, threads=cores": [{"fid_neon": 1.0004, "threads": 2, "threads_why": "threads=2"}] * 2}
    r = json.loads(json.dumps(pj.summarize(runs, results, repeats=2, job_args="experiment=toy2d")))
    text = view("parallel_jobs")(r)
    for mode, m in r["modes"].items():
        assert mode in text and m["threads_why"] in text
        shows(text, (m["seconds"], views.long_seconds), (m["ratio_to_serial"], views.times),
              *[(t, plain) for t in m["threads_per_job"]])
    shows(text, (r["fid_max_abs_diff_across_modes"], lambda x: f"{x:.3g}"), (r["settings"]["jobs"], plain),
          (r["settings"]["cores"], plain))


def test_sweep_cost():
    sc = bench("sweep_cost")
    r = json.loads(json.dumps(sc.summarize("toy", 500, {"cached": (38.2, 340, 2), "naive": (521.3, 1700, 2)})))
    text = view("sweep_cost")(r)
    s = r["settings"]
    assert s["jobs"] == len(s["budgets"]) * len(s["ws"]) * len(s["sampler_values"])
    for side in r["sides"].values():
        shows(text, (side["seconds"], lambda x: f"{x:,.0f}"), (side["finetune_steps"], count), (side["threads"], plain))
    shows(text, (r["wall_ratio"], lambda x: views.times(x, 1)), (r["steps_ratio"], lambda x: views.times(x, 1)),
          (s["jobs"], plain), (s["pretrain_steps"], plain), *[(b, plain) for b in s["budgets"]])


def test_ddp_synthesis():
    ddp = bench("ddp_synthesis")
    runs = {"one": [(0.45, 6.6, 2), (0.43, 6.5, 2)], "two": [(0.40, 7.2, 1), (0.41, 7.3, 1)]}
    r = json.loads(json.dumps(ddp.summarize(2000, 250, runs)))
    text = view("ddp_synthesis")(r)
    for side in r["sides"].values():
        shows(text, (side["samples_per_s"], views.rate), (side["seconds"], views.seconds),
              (side["seconds_with_startup"], lambda x: f"{x:.1f}"), (side["threads_per_process"], plain))
    shows(text, (r["speedup"], views.times), (r["settings"]["n"], count), (r["settings"]["block"], plain))
    assert r["sides"]["one"]["seconds"] == 0.43  # each side's best round


def test_a_recorded_bench_json_renders_through_build_tables(tmp_path: Path):
    # the path a figure takes: the script's JSON, docs/record.py, then build_tables.py with these views merged in
    ddp = bench("ddp_synthesis")
    out = tmp_path / "ddp.json"
    ddp.emit(ddp.summarize(2000, 250, {"one": [(0.43, 6.5, 2)], "two": [(0.40, 7.2, 1)]}), "", out)
    record = load(ROOT / "docs" / "record.py", "docs_record_for_bench_views")
    build_tables = load(ROOT / "docs" / "build_tables.py", "docs_build_tables_for_bench_views")
    command = "python bench/ddp_synthesis.py --json OUT"
    record.record("ddp_synthesis", out, command, results=tmp_path / "results")
    text = build_tables.render("ddp_synthesis", "ddp_synthesis", tmp_path / "results")
    assert text.startswith(views.ddp_synthesis(json.loads(out.read_text())))
    assert f"`{command}`" in text and ", 2 threads," in text  # the provenance reads the threads from the settings


def test_every_script_has_a_view_and_a_record_command():
    assert len(views.VIEWS) == len(SCRIPTS) and all(callable(view(name)) for name in SCRIPTS)
    build_tables = load(ROOT / "docs" / "build_tables.py", "docs_build_tables_for_bench_views")
    own = {name for name, view in build_tables.VIEWS.items() if view.__module__ == build_tables.__name__}
    assert not set(views.VIEWS) & own, "a bench view would replace one of build_tables.py's"
    assert set(views.VIEWS) <= set(build_tables.VIEWS)  # merged in: a block may name them
    lines = [line for line in (ROOT / "bench" / "record_commands.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    commands = dict(line.split("\t", 1) for line in lines)
    assert sorted(commands) == sorted(SCRIPTS) and len(lines) == len(SCRIPTS)
    for name, command in commands.items():
        argv = shlex.split(command)
        assert argv[:2] == ["python", f"bench/{name}.py"] and "--json" in argv and "--quick" not in argv, command
        source = (ROOT / "bench" / f"{name}.py").read_text()
        for flag in (a for a in argv if a.startswith("--")):  # every option the command gives, the script takes
            assert re.search(rf"add_argument\(\"{re.escape(flag)}\"", source), (name, flag)
