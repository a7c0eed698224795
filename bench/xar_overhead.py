"""xAR framework overhead, as ratios measured within one run (this machine is noisy).

  sampling:  XARModule.generate (one generator per image, labels, 8-bit rounding, KV cache) vs a bare call of
             the same sampler function with one generator for the batch; and vs the same steps without the
             KV cache (every step re-runs the whole prefix of clean clusters under the block-causal mask);
  fine-tune: Lightning Trainer + XARModule steps/s vs a bare PyTorch loop over the same loss, batch and
             optimizer (dropout off in both); and the cost of xAR's dropout (0.1, masks seeded per sample).

A mid-size random model on CPU: width 256, 2+2 blocks, a 8×8 latent grid of 16 channels in 2×2 clusters
(the images are the latents). Interleaved rounds, best of `--rounds`.
Usage: .venv/bin/python bench/xar_overhead.py [--batch 16] [--ft-batch 32] [--steps 10] [--quick] [--json OUT]
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

from neon.core.seeding import PerSampleRNG, StepNoise  # noqa: E402
from neon.families.xar import PixelLatent, XARModule, xar_sampler  # noqa: E402
from neon.families.xar.sampler import cluster_cfg, sde_drift  # noqa: E402
from neon.families.xar.transformer import TRAIN  # noqa: E402
from neon.stages.training import LightningNeon  # noqa: E402

NET = dict(embed_dim=256, depth=2, num_heads=4, num_classes=10, channels=16, grid=8, cluster_grid=2,
           attn_dropout=0.0, proj_dropout=0.0)
QUICK_NET = dict(NET, embed_dim=32, num_heads=2)  # --quick: the same grid, a narrow network
SETTINGS = dict(num_steps=10, cfg=2.0)
DROPOUT = 0.1  # xAR's own


@torch.no_grad()
def sample_without_cache(module: XARModule, labels: torch.Tensor, rng: PerSampleRNG) -> torch.Tensor:
    """The same steps, but every network call re-runs the clean earlier clusters instead of a cache."""
    net, b = module.net, len(labels)
    both = torch.cat([labels, torch.full_like(labels, net.num_classes)])
    times = torch.cat([torch.linspace(1.0, 0.04, SETTINGS["num_steps"], dtype=torch.float64), torch.zeros(1)])
    done: list[torch.Tensor] = []
    for c in range(net.num_clusters):
        w = cluster_cfg(SETTINGS["cfg"], c, net.num_clusters)
        x = rng.randn(net.cluster_size, net.channels).to(torch.float64)
        for j in range(SETTINGS["num_steps"]):
            t, dt = times[j], times[j + 1] - times[j]
            last = j == SETTINGS["num_steps"] - 1
            eps = None if last else rng.randn(net.cluster_size, net.channels, dtype=torch.float64)
            prefix = torch.cat([*done, x.float()], dim=1).repeat(2, 1, 1)
            t_rows = torch.cat([torch.zeros(2 * b * c), torch.full((2 * b,), float(t))])
            end = (c + 1) * net.cluster_size
            v = net.run(prefix, net.condition(both, t_rows), 0, TRAIN, net.mask[:, :, :end, :end])[:, -net.cluster_size:]
            d = sde_drift(v.to(torch.float64), x.repeat(2, 1, 1), t, w)
            x = x + dt * d if last else x + d * dt + torch.sqrt(2 * t) * (eps * torch.sqrt(dt.abs()))
        done.append(x.float())
    return module.latent.decode(net.from_sequence(torch.cat(done, dim=1)))


def sampling(module: XARModule, batch: int, rounds: int) -> dict:
    """Images/s of the framework, the bare sampler and the uncached steps, interleaved, best of `rounds`."""
    seeds, labels = list(range(batch)), torch.arange(batch) % 10
    sampler = partial(xar_sampler, **SETTINGS)
    runs = {
        "framework": lambda: module.generate(seeds, sampler, labels),
        "bare": lambda: xar_sampler(module.net, module.latent, labels, torch.Generator().manual_seed(0), **SETTINGS),
        "no_cache": lambda: sample_without_cache(module, labels, PerSampleRNG(seeds)),
    }
    cached = xar_sampler(module.net, module.latent, labels, PerSampleRNG(seeds), **SETTINGS)
    agree = (cached - runs["no_cache"]()).abs().max().item()  # also the warm-up
    times = {k: float("inf") for k in runs}
    for _ in range(rounds):  # interleaved rounds, so drifts in machine load hit all three alike
        for name, fn in runs.items():
            times[name] = min(times[name], best_of(fn, repeats=1))
    return {"batch": batch, **SETTINGS, "clusters": module.net.num_clusters, "seconds": times,
            "images_per_s": {k: batch / v for k, v in times.items()},
            "overhead": times["framework"] / times["bare"] - 1, "cache_speedup": times["no_cache"] / times["framework"],
            "max_difference_no_cache": agree}


def fine_tune(net: dict, batch: int, steps: int, rounds: int) -> dict:
    """Steps/s of the framework and a bare loop (dropout off) and of the framework with dropout, best of `rounds`."""
    def build(dropout: float) -> XARModule:
        torch.manual_seed(0)
        return XARModule(dict(net, attn_dropout=dropout, proj_dropout=dropout), PixelLatent(in_channels=16, image_size=8),
                         ema_decay=None,
                         optimizer=partial(torch.optim.AdamW, lr=1e-4, betas=(0.9, 0.96), weight_decay=0.02))

    data = {"x": torch.randn(batch, 16, 8, 8), "label": torch.arange(batch) % 10}
    plain, dropped = build(0.0), build(DROPOUT)

    def framework_run(module: XARModule) -> None:
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, max_epochs=-1, logger=False,
                            enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
        trainer.fit(LightningNeon(module), DataLoader(Repeat(data), batch_size=None))

    opt = torch.optim.AdamW(plain.optimizer_params(), lr=1e-4, betas=(0.9, 0.96), weight_decay=0.02)

    def bare_loop() -> None:
        plain.train()
        for step in range(steps):
            loss = plain.loss(data, StepNoise.single(batch, step=step))
            opt.zero_grad()
            loss.backward()
            opt.step()

    runs = {"framework": lambda: framework_run(plain), "bare": bare_loop, "dropout": lambda: framework_run(dropped)}
    times = {k: float("inf") for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name] = min(times[name], best_of(fn, repeats=1))
    return {"batch": batch, "steps": steps, "dropout": DROPOUT, "seconds": times,
            "steps_per_s": {k: steps / v for k, v in times.items()},
            "overhead": times["framework"] / times["bare"] - 1, "dropout_cost": times["dropout"] / times["framework"] - 1}


def report(result: dict) -> str:
    """The measurements as two lines."""
    s, f = result["sampling"], result["finetune"]
    ips, sps = s["images_per_s"], f["steps_per_s"]
    return (f"xAR sampling, batch {s['batch']}, {s['num_steps']} steps × {s['clusters']} clusters: "
            f"framework (KV cache) {ips['framework']:.1f} img/s, bare {ips['bare']:.1f} img/s (overhead "
            f"{100 * s['overhead']:+.1f}%), without the cache {ips['no_cache']:.1f} img/s "
            f"(cache speed-up ×{s['cache_speedup']:.2f}; max difference to the cached images "
            f"{s['max_difference_no_cache']:.1e})\n"
            f"xAR fine-tune, batch {f['batch']}: framework {sps['framework']:.2f} steps/s, bare {sps['bare']:.2f} steps/s "
            f"(overhead {100 * f['overhead']:+.1f}%); with dropout {f['dropout']} (seeded masks) "
            f"{sps['dropout']:.2f} steps/s ({100 * f['dropout_cost']:+.1f}%)")


def main(argv: list[str] | None = None) -> dict:
    """Measure sampling and fine-tune; print the lines and write the JSON where asked."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ft-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a narrow network, batch 2, one step, one round (a smoke test)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    net, batch, ft_batch, steps, rounds = ((QUICK_NET, 2, 2, 1, 1) if args.quick else
                                           (NET, args.batch, args.ft_batch, args.steps, args.rounds))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = XARModule(net, PixelLatent(in_channels=16, image_size=8)).eval()
    with torch.no_grad():  # away from the release's init, so guidance and the cache matter
        for q in module.net.parameters():
            q.add_(torch.randn_like(q) * 0.02)
    result = {"settings": {"threads": torch.get_num_threads(), "rounds": rounds,
                           "model": {k: net[k] for k in ("embed_dim", "depth", "num_heads", "channels", "grid",
                                                         "cluster_grid")},
                           "compared": "XARModule.generate against the bare sampler and against the steps without "
                                       "the KV cache; Lightning fit against a bare loop, and with dropout"},
              "sampling": sampling(module, batch, rounds), "finetune": fine_tune(net, ft_batch, steps, rounds)}
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
