"""IMM framework overhead, as ratios measured within one run (this machine is noisy).

  sampling:  IMMModule.generate (one generator per image, labels, 8-bit rounding) vs a bare call of the
             same pushforward sampler on one batch of noise, 8 steps with guidance;
  fine-tune: Lightning Trainer + IMMModule steps/s vs a bare PyTorch loop over the same loss, batch and
             optimizer.

A small random IMM on CPU: a DiT of width 256, depth 4, patch 2 over 16×16×4 latents (64 tokens; the
latents are the images). Interleaved rounds, best of 5 (sampling) and 3 (fine-tune).
Usage: .venv/bin/python bench/imm_overhead.py [--batch 32] [--ft-batch 32] [--steps 10] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import emit  # noqa: E402  (bench/ holds the scripts' shared helpers)
from timing import Repeat, best_of  # noqa: E402

from neon.core.seeding import StepNoise  # noqa: E402
from neon.families.imm import IMMModule, pushforward_sampler  # noqa: E402
from neon.families.latents import PixelLatent  # noqa: E402
from neon.stages.training import LightningNeon  # noqa: E402

NET = dict(img_resolution=16, img_channels=4, num_classes=10, model_type=None, hidden_size=256, depth=4,
           num_heads=4, patch_size=2)
QUICK_NET = dict(NET, hidden_size=32, depth=1, num_heads=2)  # --quick: the same latents, a narrow network
SAMPLER = dict(num_steps=8, cfg=1.5)


def interleaved(runs: dict, rounds: int) -> dict[str, float]:
    """The best seconds of each of `runs` over `rounds` rounds, one call of each per round in turn."""
    times = {k: float("inf") for k in runs}
    for _ in range(rounds):  # interleaved rounds, so drifts in machine load hit both alike
        for name, fn in runs.items():
            times[name] = min(times[name], best_of(fn, repeats=1))
    return times


def rates(times: dict[str, float], count: int, unit: str) -> dict:
    """`count` per second of the framework and the bare side, and the framework's overhead in time."""
    return {"seconds": times, f"framework_{unit}_per_s": count / times["framework"],
            f"bare_{unit}_per_s": count / times["bare"], "overhead": times["framework"] / times["bare"] - 1}


def main(argv: list[str] | None = None) -> dict:
    """Measure sampling and fine-tune; print the lines and write the JSON where asked."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ft-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sampling-rounds", type=int, default=5)
    p.add_argument("--finetune-rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a narrow network, batches 2 and 4 (IMM's group), one step, one round (a smoke test)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    net, batch, ft_batch, steps, s_rounds, f_rounds = (
        (QUICK_NET, 2, 4, 1, 1, 1) if args.quick else
        (NET, args.batch, args.ft_batch, args.steps, args.sampling_rounds, args.finetune_rounds))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = IMMModule(net, PixelLatent(in_channels=4, image_size=16), ema_decay=None,
                       optimizer=partial(torch.optim.AdamW, lr=1e-4))
    with torch.no_grad():  # away from adaLN-Zero's init, so every layer works
        for q in module.net.parameters():
            q.add_(torch.randn_like(q) * 0.02)
    module.eval()

    seeds, labels = list(range(batch)), torch.arange(batch) % 10
    sampler = partial(pushforward_sampler, **SAMPLER)
    noise = torch.randn(batch, 4, 16, 16) * 0.5
    sampling = interleaved({"framework": lambda: module.generate(seeds, sampler, labels),
                            "bare": lambda: pushforward_sampler(module.net, module.latent, noise, labels, **SAMPLER)},
                           s_rounds)

    data = {"x": torch.rand(ft_batch, 4, 16, 16) * 2 - 1, "label": torch.arange(ft_batch) % 10}
    module.train()
    opt = torch.optim.AdamW(module.net.parameters(), lr=1e-4)

    def framework_run() -> None:
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, max_epochs=-1, logger=False,
                            enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
        trainer.fit(LightningNeon(module), DataLoader(Repeat(data), batch_size=None))

    def bare_loop() -> None:
        for step in range(steps):
            loss = module.loss(data, StepNoise.single(ft_batch, step=step))
            opt.zero_grad()
            loss.backward()
            opt.step()

    finetune = interleaved({"framework": framework_run, "bare": bare_loop}, f_rounds)
    result = {"settings": {"threads": torch.get_num_threads(),
                           "model": {k: net[k] for k in ("hidden_size", "depth", "patch_size", "img_resolution",
                                                         "img_channels")},
                           "compared": "IMMModule.generate against the bare pushforward sampler; Lightning fit "
                                       "against a bare loop"},
              "sampling": {"batch": batch, **SAMPLER, "rounds": s_rounds, **rates(sampling, batch, "images")},
              "finetune": {"batch": ft_batch, "steps": steps, "rounds": f_rounds, **rates(finetune, steps, "steps")}}
    s, f = result["sampling"], result["finetune"]
    lines = [f"IMM sampling, batch {s['batch']}, {s['num_steps']} steps with guidance: framework "
             f"{s['framework_images_per_s']:.1f} img/s, bare {s['bare_images_per_s']:.1f} img/s (overhead "
             f"{100 * s['overhead']:+.1f}%)",
             f"IMM fine-tune, batch {f['batch']}: framework {f['framework_steps_per_s']:.2f} steps/s, bare "
             f"{f['bare_steps_per_s']:.2f} steps/s (overhead {100 * f['overhead']:+.1f}%)"]
    return emit(result, "\n".join(lines), args.json)


if __name__ == "__main__":
    main()
