"""Record a result for the docs: `python docs/record.py NAME RUN_DIR_OR_BENCH_JSON [--command "..."]`.

Copies a run's summary.json (or a bench's JSON) into docs/results/NAME.json with its provenance: the command,
the resolved config, the git commit (and whether the tree was dirty), the CPU model and its vector-instruction
flags, the cores, the torch version, the threads the run used (and where that figure comes from), the load
average and the dates. Record right after the run: the commit and the machine are read when recording, not from the run.
The tables in README.md and docs/ are generated from these files by `python docs/build_tables.py`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
# the CPU flags that decide which float kernels torch runs (and so the last bits of a result)
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.rstrip("\n")


def cpu() -> dict:
    """The CPU model and its vector flags from /proc/cpuinfo (platform's names where there is none)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": None, "source": "platform"}
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", info, re.M)
    present = set(flags.group(1).split()) if flags else set()
    return {"model": model.group(1).strip() if model else platform.processor() or platform.machine(),
            "flags": [f for f in VECTOR_FLAGS if f in present], "source": "/proc/cpuinfo"}


def run_command(run: Path) -> str | None:
    """`neon` with the overrides Hydra recorded for the run (for a job of a sweep: that job as one run), None
    where it recorded none."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    return shlex.join(["neon", *(yaml.safe_load(path.read_text()) or [])])


def run_threads(run: Path | None, config: dict | None, result: dict) -> tuple[int, str]:
    """The torch threads the run used, and where that figure was read."""
    log = run / "cli.log" if run else None
    if log and log.is_file():
        found = re.findall(r"threads: (\d+) \(([^)]*)\)", log.read_text(errors="replace"))
        if found:
            n, why = found[0]
            return int(n), f"cli.log ({why})"
    if config and isinstance(config.get("threads"), int):
        return config["threads"], "config (threads)"
    settings = result.get("settings") if isinstance(result.get("settings"), dict) else {}
    if isinstance(settings.get("threads"), int):  # a bench that records its --threads
        return settings["threads"], "the result's settings.threads"
    import torch

    return torch.get_num_threads(), "torch.get_num_threads() at record time: the run did not record it"


def sweep_result(sweep: Path) -> tuple[dict, Path, str | None]:
    """A multirun's jobs (overrides and summary each) and its sweep.md; a job folder (for the threads and the
    config) and the sweep's command from its multirun.yaml."""
    jobs = sorted((p.parent for p in sweep.glob("*/summary.json")), key=lambda p: (len(p.name), p.name))
    result = {"sweep": [{"job": j.name, "overrides": yaml.safe_load((j / ".hydra" / "overrides.yaml").read_text()),
                         "summary": json.loads((j / "summary.json").read_text())} for j in jobs],
              "sweep_md": (sweep / "sweep.md").read_text() if (sweep / "sweep.md").is_file() else None}
    multirun = sweep / "multirun.yaml"
    task = (yaml.safe_load(multirun.read_text()) or {}).get("hydra", {}).get("overrides", {}).get("task") \
        if multirun.is_file() else None
    return result, jobs[0], (shlex.join(["neon", "-m", *task]) if task else None)


def provenance(source: Path, command: str | None) -> tuple[dict, dict]:
    """The result (summary.json, a sweep's jobs or the bench's JSON) and its provenance."""
    run = source if source.is_dir() else None
    sweep_command = None
    if run is not None and not (run / "summary.json").is_file() and any(run.glob("*/summary.json")):
        result, run, sweep_command = sweep_result(source)  # a multirun folder: its jobs, read from one job
        result_path = run / "summary.json"
    else:
        result_path = run / "summary.json" if run else source
        if not result_path.is_file():
            raise SystemExit(f"record: {result_path} does not exist (give a run folder with summary.json, a "
                             "sweep folder or a JSON file)")
        result = json.loads(result_path.read_text())
    config, config_source = None, None
    if run and (run / "config_resolved.yaml").is_file():
        config, config_source = yaml.safe_load((run / "config_resolved.yaml").read_text()), "config_resolved.yaml"
    recorded = sweep_command or (run_command(run) if run else None)
    if command is None and recorded is None:
        raise SystemExit(f"record: {source} does not record its command: give --command \"...\"")
    threads, threads_source = run_threads(run, config, result)
    # the records themselves are no part of what made a result: recording several in a row leaves the tree "dirty"
    status = "\n".join(line for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
                        if not line[3:].startswith("docs/results/"))
    finished = dt.datetime.fromtimestamp(result_path.stat().st_mtime, dt.timezone.utc)
    if finished.timestamp() < int(git("log", "-1", "--format=%ct")):
        print("record: warning: the result is older than the last commit; the commit recorded is today's HEAD",
              file=sys.stderr)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return result, {
        "command": command if command is not None else recorded,
        "command_source": "--command" if command is not None else "multirun.yaml" if sweep_command else ".hydra/overrides.yaml",
        "config": config, "config_source": config_source,
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(status), "dirty_files": [line[3:] for line in status.splitlines()],
        "cpu": cpu(), "cores": affinity, "cores_machine": os.cpu_count(),
        "torch": metadata.version("torch"), "python": platform.python_version(),
        "threads": threads, "threads_source": threads_source,
        "load_average": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 min, when recorded: other work's share
        "finished": finished.isoformat(timespec="seconds"),
        "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def portable(obj: Any, folders: dict[str, str]) -> Any:
    """`obj` with every path under one of `folders` (machine path → label such as <run>) written from its label,
    so that a record names no folder of the machine that made it."""
    if isinstance(obj, dict):
        return {k: portable(v, folders) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, folders) for v in obj]
    if isinstance(obj, str):
        for folder, label in folders.items():
            if obj == folder or obj.startswith(folder.rstrip("/") + "/"):
                return label + obj[len(folder.rstrip("/")):]
    return obj


def machine_folders(source: Path, config: dict | None) -> dict[str, str]:
    """The run's (or sweep's) folder and its artifact cache, the longest first."""
    found = {str(source.resolve()): "<sweep>" if not (source / "summary.json").is_file() and source.is_dir()
             else "<run>" if source.is_dir() else "<bench>"}
    cache = ((config or {}).get("paths") or {}).get("cache_dir")
    if cache:
        found[str(cache)] = "<cache>"
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


def record(name: str, source: Path, command: str | None = None, results: Path = RESULTS) -> Path:
    """Write results/NAME.json (under a temporary name, then renamed) and return its path."""
    if not re.fullmatch(r"[\w.-]+", name):
        raise SystemExit(f"record: NAME {name!r} must be letters, digits, '_', '-' or '.'")
    result, prov = provenance(source, command)
    folders = machine_folders(source, prov["config"])
    result, prov = portable(result, folders), portable(prov, folders)
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"{name}.json"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"name": name, "result": result, "provenance": prov}, indent=1, ensure_ascii=False)
                   + "\n")
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the record's name: docs/results/NAME.json")
    parser.add_argument("source", type=Path, help="a run folder (summary.json), a sweep folder or a bench's JSON file")
    parser.add_argument("--command", help="the command that made it (default: the run's .hydra/overrides.yaml)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    print(record(args.name, args.source, args.command, args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
