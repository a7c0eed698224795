"""Framework overhead on the toy, as ratios measured in one run (this machine is noisy).

  fine-tune: Lightning Trainer + NeonModule steps/s vs a bare PyTorch loop over the same loss;
  sampling:  NeonModule.generate (per-sample seeds) vs a bare DDIM loop on one batch of noise.

Usage: .venv/bin/python bench/toy_overhead.py [--steps 2000] [--samples 20000] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import lightning as L
import torch

from neon.core.seeding import StepNoise
from neon.data.batches import TensorItems, global_batch_loader
from neon.families.toy2d import ToyDiffusion, ddim
from neon.stages.training import LightningNeon


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    points = torch.randn(1000, 2)

    module = ToyDiffusion(optimizer=partial(torch.optim.Adam, lr=1e-4))
    trainer = L.Trainer(accelerator="cpu", max_steps=args.steps, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
    t_framework = timed(lambda: trainer.fit(LightningNeon(module), global_batch_loader(TensorItems({"x": points}), len(points), seed=0)))

    bare = ToyDiffusion()
    opt = torch.optim.Adam(bare.net.parameters(), lr=1e-4)

    def bare_loop() -> None:
        for _ in range(args.steps):
            loss = bare.loss({"x": points}, StepNoise.single(len(points)))
            opt.zero_grad()
            loss.backward()
            opt.step()

    t_bare = timed(bare_loop)
    print(f"fine-tune: framework {args.steps / t_framework:.0f} steps/s, bare {args.steps / t_bare:.0f} steps/s, "
          f"framework/bare time ratio {t_framework / t_bare:.2f}")

    sampler = partial(ddim, steps=20, score_scale=1.0)
    seeds = list(range(args.samples))
    t_gen = timed(lambda: module.generate(seeds, sampler))
    noise = torch.randn(args.samples, 2)
    t_bare_gen = timed(lambda: sampler(module.net, noise))
    print(f"sampling {args.samples}: framework {t_gen:.3f} s, bare {t_bare_gen:.3f} s, ratio {t_gen / t_bare_gen:.2f} "
          "(the difference is one torch.Generator per sample)")


if __name__ == "__main__":
    main()
