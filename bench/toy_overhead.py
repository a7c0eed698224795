"""Framework overhead on the toy, as ratios measured in one run (this machine is noisy).

  fine-tune: Lightning Trainer + NeonModule steps/s vs a bare PyTorch loop over the same loss;
  sampling:  NeonModule.generate (per-sample seeds) vs a bare DDIM loop on one batch of noise.

Usage: .venv/bin/python bench/toy_overhead.py [--steps 2000] [--samples 20000] [--threads 1] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import emit  # noqa: E402  (bench/ holds the scripts' shared helpers)

from neon.core.seeding import StepNoise  # noqa: E402
from neon.data.batches import TensorItems, global_batch_loader  # noqa: E402
from neon.families.toy2d import ToyDiffusion, ddim  # noqa: E402
from neon.stages.training import LightningNeon  # noqa: E402

POINTS, DDIM_STEPS = 1000, 20  # the fine-tune's batch (all points) and the sampler's steps


def timed(fn) -> float:
    """Wall seconds of one call of `fn`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(steps: int, samples: int) -> dict:
    """Seconds of the framework's and a bare loop's fine-tune and sampling, one run each."""
    points = torch.randn(POINTS, 2)
    module = ToyDiffusion(optimizer=partial(torch.optim.Adam, lr=1e-4))
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
    t_framework = timed(lambda: trainer.fit(LightningNeon(module), global_batch_loader(TensorItems({"x": points}),
                                                                                       len(points), seed=0)))

    bare = ToyDiffusion()
    opt = torch.optim.Adam(bare.net.parameters(), lr=1e-4)

    def bare_loop() -> None:
        for _ in range(steps):
            loss = bare.loss({"x": points}, StepNoise.single(len(points)))
            opt.zero_grad()
            loss.backward()
            opt.step()

    t_bare = timed(bare_loop)
    sampler = partial(ddim, steps=DDIM_STEPS, score_scale=1.0)
    seeds = list(range(samples))
    t_gen = timed(lambda: module.generate(seeds, sampler))
    noise = torch.randn(samples, 2)
    t_bare_gen = timed(lambda: sampler(module.net, noise))
    return {"finetune": {"steps": steps, "batch": POINTS, "seconds": {"framework": t_framework, "bare": t_bare},
                         "framework_steps_per_s": steps / t_framework, "bare_steps_per_s": steps / t_bare,
                         "ratio": t_framework / t_bare},
            "sampling": {"samples": samples, "ddim_steps": DDIM_STEPS, "seconds": {"framework": t_gen, "bare": t_bare_gen},
                         "ratio": t_gen / t_bare_gen},
            "parameters": sum(p.numel() for p in module.net.parameters())}


def report(result: dict) -> str:
    """The measurements as two lines."""
    f, s = result["finetune"], result["sampling"]
    return (f"fine-tune: framework {f['framework_steps_per_s']:.0f} steps/s, bare {f['bare_steps_per_s']:.0f} steps/s, "
            f"framework/bare time ratio {f['ratio']:.2f}\n"
            f"sampling {s['samples']}: framework {s['seconds']['framework']:.3f} s, bare {s['seconds']['bare']:.3f} s, "
            f"ratio {s['ratio']:.2f} (the difference is one torch.Generator per sample)")


def main(argv: list[str] | None = None) -> dict:
    """Measure both sides; print the lines and write the JSON where asked."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="two steps, four samples (a smoke test)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    steps, samples = (2, 4) if args.quick else (args.steps, args.samples)
    torch.set_num_threads(args.threads)
    result = {"settings": {"threads": torch.get_num_threads(), "rounds": 1,
                           "compared": "Lightning fit and NeonModule.generate against a bare PyTorch loop and a bare "
                                       "DDIM loop"},
              **measure(steps, samples)}
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
