"""What a sweep costs with the artifact cache against the naive way (every job from scratch).

A 3 budgets × 5 w × 2 sampler settings multirun (30 jobs) on the toy, run twice in one go: with the
shared cache, and with a private cache per job (the naive cost). Reports the wall-time ratio and the
fine-tune steps actually run. Usage: .venv/bin/python bench/sweep_cost.py [--pretrain-steps 2000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGETS, WS, SCALES = (20, 50, 100), (0.2, 0.4, 0.6, 0.8, 1.0), (1.05, 1.1)


def sweep(tmp: Path, name: str, pretrain_steps: int, naive: bool) -> tuple[float, int]:
    cache = f"{tmp}/naive_cache/${{hydra:job.num}}" if naive else f"{tmp}/cache"
    args = ["-m", "experiment=toy2d", f"model.pretrain.steps={pretrain_steps}", "metrics.num_samples=5000",
            "metrics.block_size=5000", "trainer.enable_progress_bar=false", f"paths.cache_dir={cache}",
            "neon.budget_steps=" + ",".join(map(str, BUDGETS)), "neon.w=" + ",".join(map(str, WS)),
            "sampler.score_scale=" + ",".join(map(str, SCALES)), f"hydra.sweep.dir={tmp}/{name}"]
    code = "import sys; from neon.cli import main; sys.argv[0] = 'neon'; main()"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, cwd=tmp)
    seconds = time.perf_counter() - start
    steps = 0
    root = Path(f"{tmp}/naive_cache" if naive else f"{tmp}/cache")
    for key in root.rglob("finetune/*/key.json"):
        steps += json.loads(key.read_text())["budget_steps"]
    return seconds, steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pretrain-steps", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t_cached, s_cached = sweep(Path(tmp), "cached", args.pretrain_steps, naive=False)
        t_naive, s_naive = sweep(Path(tmp), "naive", args.pretrain_steps, naive=True)
    jobs = len(BUDGETS) * len(WS) * len(SCALES)
    print(f"{jobs}-job sweep on the toy (pretrain {args.pretrain_steps} steps): shared cache {t_cached:.0f} s, "
          f"naive {t_naive:.0f} s, wall-time ratio {t_naive / t_cached:.1f}×; fine-tune steps run {s_cached} vs "
          f"{s_naive} ({s_naive / max(s_cached, 1):.1f}×)")


if __name__ == "__main__":
    main()
