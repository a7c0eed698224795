"""What a sweep costs with the artifact cache against the naive way (every job from scratch).

A 3 budgets × 5 w × 2 sampler settings multirun (30 jobs), run twice in one go: with the shared cache,
and with a private cache per job (the naive cost). Reports the wall-time ratio and the fine-tune steps
actually run. On the toy, the naive jobs also pretrain θ_r; on the digits default θ_r is a given
checkpoint (as in the paper), pretrained once before both sweeps.
Usage: .venv/bin/python bench/sweep_cost.py [--family toy|digits] [--pretrain-steps 2000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CODE = "import sys; from neon.launch.cli import main; sys.argv[0] = 'neon'; main()"
WS = (0.2, 0.4, 0.6, 0.8, 1.0)
FAMILIES = {  # experiment, budgets, the swept sampler key and its two settings, metric settings
    "toy": ("toy2d", (20, 50, 100), "sampler.score_scale", (1.05, 1.1),
            ["metrics.num_samples=5000", "metrics.block_size=5000"]),
    "digits": ("digits", (20, 40, 80), "sampler.num_steps", (12, 18), ["neon.control=false"]),
}


def neon(args: list[str], cwd: Path) -> None:
    subprocess.run([sys.executable, "-c", CODE, *args, "trainer.enable_progress_bar=false"], check=True,
                   capture_output=True, cwd=cwd)


def sweep(tmp: Path, family: str, name: str, extra: list[str], naive: bool) -> tuple[float, int]:
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
    return seconds, steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--family", choices=sorted(FAMILIES), default="toy")
    p.add_argument("--pretrain-steps", type=int, default=None, help="default: 2000 (toy), the experiment's (digits)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        steps = args.pretrain_steps or (2000 if args.family == "toy" else None)
        extra = [f"model.pretrain.steps={steps}"] if steps else []
        if args.family == "digits":  # θ_r given, as with a released checkpoint
            neon(["experiment=digits", "task=pretrain", *extra, f"paths.cache_dir={tmp}/base_cache",
                  f"hydra.run.dir={tmp}/base"], tmp)
            extra = [f"model.checkpoint={tmp}/base/theta_r.safetensors"]
        t_cached, s_cached = sweep(tmp, args.family, "cached", extra, naive=False)
        t_naive, s_naive = sweep(tmp, args.family, "naive", extra, naive=True)
    jobs = len(FAMILIES[args.family][1]) * len(WS) * len(FAMILIES[args.family][3])
    print(f"{jobs}-job sweep on {args.family} (pretrain {steps or 'default'} steps): shared cache {t_cached:.0f} s, "
          f"naive {t_naive:.0f} s, wall-time ratio {t_naive / t_cached:.1f}×; fine-tune steps run {s_cached} vs "
          f"{s_naive} ({s_naive / max(s_cached, 1):.1f}×)")


if __name__ == "__main__":
    main()
