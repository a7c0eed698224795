"""IMM framework overhead, as ratios measured within one run (this machine is noisy).

  sampling:  IMMModule.generate (one generator per image, labels, 8-bit rounding) vs a bare call of the
             same pushforward sampler on one batch of noise, 8 steps with guidance;
  fine-tune: Lightning Trainer + IMMModule steps/s vs a bare PyTorch loop over the same loss, batch and
             optimizer.

A small random IMM on CPU: a DiT of width 256, depth 4, patch 2 over 16×16×4 latents (64 tokens; the
latents are the images). Interleaved rounds, best of 5 (sampling) and 3 (fine-tune). Usage: .venv/bin/python bench/imm_overhead.py
"""

from __future__ import annotations

import argparse
from functools import partial

import lightning as L
import torch
from timing import Repeat, best_of  # bench/ is on the path when a script here runs
from torch.utils.data import DataLoader

from neon.core.seeding import StepNoise
from neon.families.imm import IMMModule, pushforward_sampler
from neon.families.latents import PixelLatent
from neon.stages.training import LightningNeon

NET = dict(img_resolution=16, img_channels=4, num_classes=10, model_type=None, hidden_size=256, depth=4,
           num_heads=4, patch_size=2)



def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ft-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = IMMModule(NET, PixelLatent(in_channels=4, image_size=16), ema_decay=None,
                       optimizer=partial(torch.optim.AdamW, lr=1e-4))
    with torch.no_grad():  # away from adaLN-Zero's init, so every layer works
        for q in module.net.parameters():
            q.add_(torch.randn_like(q) * 0.02)
    module.eval()

    seeds, labels = list(range(args.batch)), torch.arange(args.batch) % 10
    sampler = partial(pushforward_sampler, num_steps=8, cfg=1.5)
    noise = torch.randn(args.batch, 4, 16, 16) * 0.5
    runs = {"framework": lambda: module.generate(seeds, sampler, labels),
            "bare": lambda: pushforward_sampler(module.net, module.latent, noise, labels, num_steps=8, cfg=1.5)}
    times = {k: float("inf") for k in runs}
    for _ in range(5):  # interleaved rounds, so drifts in machine load hit both alike
        for name, fn in runs.items():
            times[name] = min(times[name], best_of(fn, repeats=1))
    print(f"IMM sampling, batch {args.batch}, 8 steps with guidance: framework {args.batch / times['framework']:.1f} "
          f"img/s, bare {args.batch / times['bare']:.1f} img/s (overhead "
          f"{100 * (times['framework'] / times['bare'] - 1):+.1f}%)")

    data = {"x": torch.rand(args.ft_batch, 4, 16, 16) * 2 - 1, "label": torch.arange(args.ft_batch) % 10}
    module.train()
    opt = torch.optim.AdamW(module.net.parameters(), lr=1e-4)

    def framework_run() -> None:
        trainer = L.Trainer(accelerator="cpu", max_steps=args.steps, max_epochs=-1, logger=False,
                            enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
        trainer.fit(LightningNeon(module), DataLoader(Repeat(data), batch_size=None))

    def bare_loop() -> None:
        for step in range(args.steps):
            loss = module.loss(data, StepNoise.single(args.ft_batch, step=step))
            opt.zero_grad()
            loss.backward()
            opt.step()

    times = {"framework": float("inf"), "bare": float("inf")}
    for _ in range(3):
        for name, fn in (("framework", framework_run), ("bare", bare_loop)):
            times[name] = min(times[name], best_of(fn, repeats=1))
    print(f"IMM fine-tune, batch {args.ft_batch}: framework {args.steps / times['framework']:.2f} steps/s, bare "
          f"{args.steps / times['bare']:.2f} steps/s (overhead {100 * (times['framework'] / times['bare'] - 1):+.1f}%)")


if __name__ == "__main__":
    main()
