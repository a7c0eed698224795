"""A sweep of `--jobs` small jobs run side by side by Hydra's submitit_local launcher, against the same sweep
run one job after another by the basic launcher (one process), measured in one run.

The jobs: `neon -m experiment=toy2d` with small settings (`--job-args`), one job per `seed=0..N-1`, so every
job pretrains, synthesizes, fine-tunes, merges and evaluates its own θ (each mode gets a fresh cache, so both do
the same work). OMP_NUM_THREADS is removed from the jobs' environment: the thread default is what is measured
(`threads: null`: cores / the processes running side by side, which each job reads from its sweep's
multirun.yaml). `--oversubscribed` adds a third mode: submitit_local with `threads=<cores>` in every job, what
each job took before it knew how many ran beside it.

Every sweep runs as a fresh `python -m neon -m ...` process; its wall time (start to exit) is taken, rounds
interleaved (the order alternates), best of `--repeats`. Each job's FID and its logged thread count are read
back; the FIDs of a job are compared across modes.

Usage: .venv/bin/python bench/parallel_jobs.py [--jobs 10] [--repeats 2] [--oversubscribed] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import emit  # noqa: E402  (bench/ holds the scripts' shared helpers)

ROOT = Path(__file__).resolve().parent.parent
JOB_ARGS = ("experiment=toy2d model.pretrain.steps=60 neon.n_synthetic=200 neon.budget_steps=20 metrics.num_samples=1000 "
            "neon.w=[0,1]")
QUICK_JOB_ARGS = ("experiment=toy2d model.pretrain.steps=5 neon.n_synthetic=32 neon.budget_steps=2 neon.batch_size=32 "
                  "metrics.num_samples=64 neon.w=[0,1]")
MODES = {"serial": [], "parallel": ["hydra/launcher=submitit_local"]}


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sweep_command(job_args: str, jobs: int, mode: list[str], sweep_dir: Path) -> list[str]:
    """The `neon -m` command line of one sweep."""
    return [sys.executable, "-m", "neon", "-m", *job_args.split(), f"seed={','.join(map(str, range(jobs)))}", *mode,
            f"hydra.sweep.dir={sweep_dir}", "trainer.enable_progress_bar=false"]


def job_results(sweep_dir: Path, jobs: int) -> list[dict]:
    """Each job's FID of θ_neon and the threads it logged, in job order."""
    out = []
    for j in range(jobs):
        folder = sweep_dir / str(j)
        summary = json.loads((folder / "summary.json").read_text())
        logged = re.findall(r"threads: (\d+) \((.*)\)$", "".join(p.read_text() for p in folder.glob("*.log")), re.M)
        out.append({"fid_neon": summary["fid_neon"], "threads": int(logged[0][0]) if logged else None,
                    "threads_why": logged[0][1] if logged else None})
    return out


def timed_sweep(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one sweep process from its start to its exit."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return seconds


def measure(jobs: int, repeats: int, job_args: str, oversubscribed: bool) -> dict:
    """Best-of-`repeats` wall seconds of the sweep in each mode, rounds interleaved, and each job's results."""
    modes = dict(MODES)
    if oversubscribed:
        modes["parallel, threads=cores"] = [*MODES["parallel"], f"threads={cores()}"]
    runs: dict[str, list[float]] = {m: [] for m in modes}
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="neon-parallel-jobs-") as tmp:
        tmp = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        for r in range(repeats):
            order = list(modes) if r % 2 == 0 else list(modes)[::-1]
            for i, mode in enumerate(order):
                sweep_dir = tmp / f"sweep-{r}-{i}"
                env["NEON_CACHE_DIR"] = str(tmp / f"cache-{r}-{i}")  # fresh: every mode does all the work
                runs[mode].append(timed_sweep(sweep_command(job_args, jobs, modes[mode], sweep_dir), env, tmp))
                results[mode] = job_results(sweep_dir, jobs)
    return summarize(runs, results, repeats, job_args)


def summarize(runs: dict[str, list[float]], results: dict[str, list[dict]], repeats: int, job_args: str) -> dict:
    """The result from each mode's sweep seconds and its jobs' results (as `job_results` reads them)."""
    jobs = len(results["serial"])
    serial = min(runs["serial"])
    fids = {m: [j["fid_neon"] for j in v] for m, v in results.items()}
    result = {"settings": {"jobs": jobs, "repeats": repeats, "cores": cores(), "job_args": job_args,
                           "omp_num_threads": "unset (the default applies)"},
              "modes": {}, "fid_max_abs_diff_across_modes": max(
                  abs(f - fids["serial"][j]) for m in fids for j, f in enumerate(fids[m]))}
    for mode in runs:
        best = min(runs[mode])
        result["modes"][mode] = {"seconds": best, "ratio_to_serial": best / serial, "all_seconds": runs[mode],
                                 "threads_per_job": sorted({j["threads"] for j in results[mode]}, key=str),
                                 "threads_why": results[mode][0]["threads_why"]}
    return result


def report(result: dict) -> str:
    """The measurements as a table."""
    s = result["settings"]
    lines = [f"{s['jobs']} jobs ({s['job_args']} seed=0..{s['jobs'] - 1}) on {s['cores']} cores, best of "
             f"{s['repeats']}; OMP_NUM_THREADS {s['omp_num_threads']}",
             f"{'mode':<24} {'seconds':>8} {'× serial':>9}  threads per job"]
    for mode, m in result["modes"].items():
        lines.append(f"{mode:<24} {m['seconds']:>8.1f} {m['ratio_to_serial']:>8.2f}×  {m['threads_per_job']} "
                     f"({m['threads_why']})")
    lines.append(f"largest difference of a job's FID across modes: {result['fid_max_abs_diff_across_modes']:.3g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--job-args", default=JOB_ARGS, help="the overrides every job shares (the sweep adds seed=)")
    p.add_argument("--oversubscribed", action="store_true", help="also: submitit_local with threads=<cores> per job")
    p.add_argument("--quick", action="store_true", help="two tiny jobs, one round (a smoke test of the bench)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    jobs, repeats, job_args = (2, 1, QUICK_JOB_ARGS) if args.quick else (args.jobs, args.repeats, args.job_args)
    result = measure(jobs, repeats, job_args, args.oversubscribed)
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
