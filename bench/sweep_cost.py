"""What a sweep costs with the artifact cache against the naive way (every job from scratch).

A 3 budgets × 5 w × 2 sampler settings multirun (30 jobs), run twice in one go: with the shared cache,
and with a private cache per job (the naive cost). Reports the wall-time ratio and the fine-tune steps
actually run. On the toy, the naive jobs also pretrain θ_r; on the digits default θ_r is a given
checkpoint (as in the paper), pretrained once before both sweeps.
Usage: .venv/bin/python bench/sweep_cost.py [--family toy|digits] [--pretrain-steps 2000] [--json OUT]
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

CODE = "import sys; from neon.launch.cli import main; sys.argv[0] = 'neon'; main()"
WS = (0.2, 0.4, 0.6, 0.8, 1.0)
FAMILIES = {  # experiment, budgets, the swept sampler key and its two settings, metric settings
    "toy": ("toy2d", (20, 50, 100), "sampler.score_scale", (1.05, 1.1),
            ["metrics.num_samples=5000", "metrics.block_size=5000"]),
    "digits": ("digits", (20, 40, 80), "sampler.num_steps", (12, 18), ["neon.control=false"]),
}
SIDES = ("cached", "naive")


def neon(args: list[str], cwd: Path) -> None:
    subprocess.run([sys.executable, "-c", CODE, *args, "trainer.enable_progress_bar=false"], check=True,
                   capture_output=True, cwd=cwd)


def job_threads(job: Path) -> int | None:
    """The torch threads a sweep's job logged ("threads: N (why)"), None where it logged none."""
    found = re.findall(r"threads: (\d+) \(", "".join(p.read_text() for p in job.glob("*.log")))
    return int(found[0]) if found else None


def sweep(tmp: Path, family: str, name: str, extra: list[str], naive: bool) -> tuple[float, int, int | None]:
    """(wall seconds, fine-tune steps run, the first job's torch threads) of one multirun."""
    experiment, budgets, key, values, metric_args = FAMILIES[family]
    cache = f"{tmp}/naive_cache/${{hydra:job.num}}" if naive else f"{tmp}/cache"
    args = ["-m", f"experiment={experiment}", *metric_args, *extra, f"paths.cache_dir={cache}",
            "neon.budget_steps=" + ",".join(map(str, budgets)), "neon.w=" + ",".join(map(str, WS)),
            f"{key}=" + ",".join(map(str, values)), f"hydra.sweep.dir={tmp}/{name}"]
    start = time.perf_counter()
    neon(args, tmp)
    seconds = time.perf_counter() - start
    root = Path(f"{tmp}/naive_cache" if naive else f"{tmp}/cache")
    steps = sum(json.loads(k.read_text())["budget_steps"] for k in root.rglob("finetune/*/key.json"))
    return seconds, steps, job_threads(tmp / name / "0")


def summarize(family: str, pretrain_steps: int | None, runs: dict[str, tuple[float, int, int | None]]) -> dict:
    """The result of both sweeps (`runs`: per side, as `sweep` returns it): their costs and the ratios."""
    experiment, budgets, key, values, metric_args = FAMILIES[family]
    sides = {side: {"seconds": seconds, "finetune_steps": steps, "threads": threads}
             for side, (seconds, steps, threads) in runs.items()}
    return {"settings": {"family": family, "experiment": experiment, "jobs": len(budgets) * len(WS) * len(values),
                         "budgets": list(budgets), "ws": list(WS), "sampler_key": key, "sampler_values": list(values),
                         "metric_args": metric_args, "pretrain_steps": pretrain_steps,
                         "theta_r": "pretrained by every job (naive: each its own)" if family == "toy" else
                         "a given checkpoint, pretrained once before both sweeps",
                         "threads": sides["cached"]["threads"],
                         "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                         "compared": "one multirun with the shared cache against the same with a private cache per job"},
            "sides": sides, "wall_ratio": sides["naive"]["seconds"] / sides["cached"]["seconds"],
            "steps_ratio": sides["naive"]["finetune_steps"] / max(sides["cached"]["finetune_steps"], 1)}


def report(result: dict) -> str:
    """The measurements as one line."""
    s, cached, naive = result["settings"], result["sides"]["cached"], result["sides"]["naive"]
    return (f"{s['jobs']}-job sweep on {s['family']} (pretrain {s['pretrain_steps'] or 'default'} steps): shared cache "
            f"{cached['seconds']:.0f} s, naive {naive['seconds']:.0f} s, wall-time ratio {result['wall_ratio']:.1f}×; "
            f"fine-tune steps run {cached['finetune_steps']} vs {naive['finetune_steps']} ({result['steps_ratio']:.1f}×)")


def main(argv: list[str] | None = None) -> dict:
    """Run both sweeps; print the line and write the JSON where asked."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=sorted(FAMILIES), default="toy")
    p.add_argument("--pretrain-steps", type=int, default=None, help="default: 2000 (toy), the experiment's (digits)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        steps = args.pretrain_steps or (2000 if args.family == "toy" else None)
        extra = [f"model.pretrain.steps={steps}"] if steps else []
        if args.family == "digits":  # θ_r given, as with a released checkpoint
            neon(["experiment=digits", "task=pretrain", *extra, f"paths.cache_dir={tmp}/base_cache",
                  f"hydra.run.dir={tmp}/base"], tmp)
            extra = [f"model.checkpoint={tmp}/base/theta_r.safetensors"]
        runs = {side: sweep(tmp, args.family, side, extra, naive=side == "naive") for side in SIDES}
    result = summarize(args.family, steps, runs)
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
