"""The figures in README.md and docs/ come from the results recorded under docs/results/ (docs/record.py) and
are written into the pages by docs/build_tables.py; a page that differs from what the records generate fails.
The pages describe the software and what was measured; its history is in CHANGELOG.md."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_tables = load("build_tables")
record = load("record")


def test_the_pages_are_what_the_records_generate(capsys):
    assert build_tables.main(["--check"]) == 0, capsys.readouterr().out


def test_a_hand_edited_figure_is_caught(tmp_path: Path, capsys):
    shutil.copytree(ROOT / "docs" / "results", tmp_path / "docs" / "results")
    page = (ROOT / "README.md").read_text()
    blocks = list(build_tables.BLOCK.finditer(page))
    assert blocks, "README.md has no generated block"
    for block in blocks:  # in each block, the last digit of a figure (its longest, above the provenance) changed
        body = block.group(4).split("<sub>")[0]
        figure = max(re.finditer(r"\d+\.\d+", body), key=lambda m: len(m.group()))
        at = block.start(4) + figure.end() - 1
        edited = page[:at] + str((int(page[at]) + 1) % 10) + page[at + 1:]
        (tmp_path / "README.md").write_text(edited)
        assert build_tables.main(["--check", "--root", str(tmp_path)]) == 1
        line = edited[edited.rfind("\n", 0, at) + 1:edited.find("\n", at)]
        assert f"-{line}" in capsys.readouterr().out.splitlines()  # the diff shows the edited line
        assert build_tables.main(["--root", str(tmp_path)]) == 0  # regenerated: the recorded figure is back
        assert (tmp_path / "README.md").read_text() == page
        assert build_tables.main(["--check", "--root", str(tmp_path)]) == 0


def test_every_block_names_a_recorded_result_and_a_view():
    blocks = [m for p in build_tables.pages(ROOT) for m in build_tables.BLOCK.finditer(p.read_text())]
    assert blocks
    for m in blocks:
        if (m.group(2), m.group(3)) in build_tables.FROM_FILES:  # made from the repository's files (the paper rows)
            continue
        names = m.group(2).split("+")
        assert all((ROOT / "docs" / "results" / f"{name}.json").is_file() for name in names), m.group(2)
        assert m.group(3) in (build_tables.TABLES if len(names) > 1 else build_tables.VIEWS), m.group(0)


def test_a_table_over_several_records_shows_each_and_its_provenance(tmp_path: Path):
    results = tmp_path / "results"
    results.mkdir()
    base = json.loads((ROOT / "docs" / "results" / "default.json").read_text())
    for name, w in (("one", 1.5), ("two", 0.5)):
        rec = json.loads(json.dumps(base))
        rec["result"]["auto_w"] = {"w": w, "budget_steps": 40, "evaluations": 7, "proxy_num_samples": 1000}
        rec["provenance"]["command"] = f"neon neon.w=auto seed={name}"
        (results / f"{name}.json").write_text(json.dumps(rec))
    text = build_tables.render("one+two", "auto_w", results)
    assert "| `neon neon.w=auto seed=one` | 1.5 (40) | 7 × 1,000 |" in text
    assert "| `neon neon.w=auto seed=two` | 0.5 (40) | 7 × 1,000 |" in text
    assert "docs/results/one.json" in text and "docs/results/two.json" in text
    with pytest.raises(SystemExit, match="unknown view 'sweep'"):
        build_tables.render("one+two", "sweep", results)
    with pytest.raises(SystemExit, match="no recorded result .*three.json"):
        build_tables.render("one+three", "auto_w", results)


def test_record_keeps_the_run_and_its_provenance(tmp_path: Path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- seed=1\n- neon.w=[0.0,1.0]\n")
    (run / "config_resolved.yaml").write_text("seed: 1\nthreads: null\n")
    (run / "cli.log").write_text("[2026-12-07][neon.threads][INFO] - threads: 2 (2 cores / 1 process)\n")
    (run / "summary.json").write_text(json.dumps({"task": "neon", "fid_base": 6.2}))
    path = record.record("probe", run, results=tmp_path / "results")
    saved = json.loads(path.read_text())
    assert saved["result"] == {"task": "neon", "fid_base": 6.2}
    prov = saved["provenance"]
    assert prov["command"] == "neon seed=1 'neon.w=[0.0,1.0]'" and prov["config"] == {"seed": 1, "threads": None}
    assert (prov["threads"], prov["threads_source"]) == (2, "cli.log (2 cores / 1 process)")
    assert re.fullmatch(r"[0-9a-f]{40}", prov["commit"]) and isinstance(prov["dirty"], bool)
    assert prov["cpu"]["model"] and prov["cores"] >= 1 and prov["torch"] and prov["finished"] and prov["recorded"]
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["probe.json"]  # no temporary file left


def test_a_bench_result_needs_its_command(tmp_path: Path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"settings": {"threads": 1}, "ratio": 0.6}))
    with pytest.raises(SystemExit, match="--command"):
        record.record("bench", bench, results=tmp_path / "results")
    saved = json.loads(record.record("bench", bench, "python bench/x.py", tmp_path / "results").read_text())
    assert saved["provenance"]["threads_source"] == "the result's settings.threads"


def test_the_pages_hold_no_development_history():
    history = re.compile(r"this stop|was lent|earlier machine|slower .*machine|before (them|the fix)|after this stop",
                         re.I)
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = [f"{p.relative_to(ROOT)}:{i}: {line}" for p in pages
             for i, line in enumerate(p.read_text().splitlines(), 1) if history.search(line)]
    assert not found, "history belongs in CHANGELOG.md:\n" + "\n".join(found)
    assert (ROOT / "CHANGELOG.md").is_file()


def test_a_sweep_is_recorded_with_its_jobs_and_rendered_with_its_heldout_figures(tmp_path: Path):
    sweep = tmp_path / "sweep"
    figures = {"0": (4.0, 3.0, 4.2, 3.6), "1": (4.0, 3.2, 4.2, 3.1)}  # job 0 best on selection, job 1 held out
    for job, lr in (("0", "1e-4"), ("1", "1e-5")):
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text(f"- experiment=study/var\n- neon.optimizer.lr={lr}\n")
        (sweep / job / "cli.log").write_text("[x][neon][INFO] - threads: 2 (2 cores / 1 process)\n")
        base, neon, base_h, neon_h = figures[job]
        (sweep / job / "summary.json").write_text(json.dumps({
            "task": "neon", "fid_base": base, "fid_neon": neon, "w": 1.0, "budget_steps": 75,
            "fid_base_heldout": base_h, "fid_neon_heldout": neon_h, "gain_heldout": 1 - neon_h / base_h,
            "fid_control_heldout": base_h, "seeds_heldout": "4000000-4002999", "fid_noise": {"relative": 0.05}}))
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - experiment=study/var\n")
    saved = json.loads(record.record("study", sweep, results=tmp_path / "results").read_text())
    assert [j["job"] for j in saved["result"]["sweep"]] == ["0", "1"]
    assert saved["provenance"]["command"] == "neon -m experiment=study/var"
    assert saved["provenance"]["threads"] == 2
    text = build_tables.VIEWS["sweep"](saved["result"])
    assert text.splitlines()[0].startswith("| neon.optimizer.lr | w (B) |")
    assert "| 1e-4 | 1.0 (75) | 4 | 3 | 4.2 | 3.6 | 14.3% | 4.2 | 5.0% | — |" in text
    assert text.endswith("Best job on the selection seeds: neon.optimizer.lr=1e-4 (w = 1.0, B = 75); on its held-out "
                         "seeds (4000000-4002999) θ_r 4.2 → θ_neon 3.6, a gain of 14.3%.")


def test_a_record_names_no_folder_of_the_machine_that_made_it(tmp_path: Path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (run / "config_resolved.yaml").write_text(f"seed: 1\npaths:\n  cache_dir: {cache}\n")
    (run / "summary.json").write_text(json.dumps({"artifacts": {
        "theta_neon": str(run / "theta_neon.safetensors"), "theta_r": str(cache / "pretrain" / "k" / "theta_r.safetensors"),
        "other": "/opt/elsewhere/file"}}))
    saved = json.loads(record.record("probe", run, results=tmp_path / "results").read_text())
    assert saved["result"]["artifacts"] == {"theta_neon": "<run>/theta_neon.safetensors",
                                            "theta_r": "<cache>/pretrain/k/theta_r.safetensors",
                                            "other": "/opt/elsewhere/file"}
    assert saved["provenance"]["config"]["paths"]["cache_dir"] == "<cache>"
    assert str(tmp_path) not in json.dumps(saved)
