"""xAR framework overhead, as ratios measured within one run (this machine is noisy).

  sampling:  XARModule.generate (one generator per image, labels, 8-bit rounding, KV cache) vs a bare call of
             the same sampler function with one generator for the batch; and vs the same steps without the
             KV cache (every step re-runs the whole prefix of clean clusters under the block-causal mask);
  fine-tune: Lightning Trainer + XARModule steps/s vs a bare PyTorch loop over the same loss, batch and
             optimizer (dropout off in both); and the cost of xAR's dropout (0.1, masks seeded per sample).

A mid-size random model on CPU: width 256, 2+2 blocks, a 8×8 latent grid of 16 channels in 2×2 clusters
(the images are the latents). Interleaved rounds, best of 3. Usage: .venv/bin/python bench/xar_overhead.py
"""

from __future__ import annotations

import argparse
from functools import partial

import lightning as L
import torch
from timing import Repeat, best_of  # bench/ is on the path when a script here runs
from torch.utils.data import DataLoader

from neon.core.seeding import PerSampleRNG, StepNoise
from neon.families.xar import PixelLatent, XARModule, xar_sampler
from neon.families.xar.sampler import cluster_cfg, sde_drift
from neon.families.xar.transformer import TRAIN
from neon.stages.training import LightningNeon

NET = dict(embed_dim=256, depth=2, num_heads=4, num_classes=10, channels=16, grid=8, cluster_grid=2,
           attn_dropout=0.0, proj_dropout=0.0)
SETTINGS = dict(num_steps=10, cfg=2.0)



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


def sampling(module: XARModule, batch: int) -> None:
    seeds, labels = list(range(batch)), torch.arange(batch) % 10
    sampler = partial(xar_sampler, **SETTINGS)
    runs = {
        "framework": lambda: module.generate(seeds, sampler, labels),
        "bare": lambda: xar_sampler(module.net, module.latent, labels, torch.Generator().manual_seed(0), **SETTINGS),
        "no cache": lambda: sample_without_cache(module, labels, PerSampleRNG(seeds)),
    }
    cached = xar_sampler(module.net, module.latent, labels, PerSampleRNG(seeds), **SETTINGS)
    agree = (cached - runs["no cache"]()).abs().max().item()  # also the warm-up
    times = {k: float("inf") for k in runs}
    for _ in range(3):  # interleaved rounds, so drifts in machine load hit all three alike
        for name, fn in runs.items():
            times[name] = min(times[name], best_of(fn, repeats=1))
    ips = {k: batch / v for k, v in times.items()}
    print(f"xAR sampling, batch {batch}, {SETTINGS['num_steps']} steps × {module.net.num_clusters} clusters: "
          f"framework (KV cache) {ips['framework']:.1f} img/s, bare {ips['bare']:.1f} img/s (overhead "
          f"{100 * (times['framework'] / times['bare'] - 1):+.1f}%), without the cache {ips['no cache']:.1f} img/s "
          f"(cache speed-up ×{times['no cache'] / times['framework']:.2f}; max difference to the cached images "
          f"{agree:.1e})")


def fine_tune(batch: int, steps: int) -> None:
    def build(dropout: float) -> XARModule:
        torch.manual_seed(0)
        net = dict(NET, attn_dropout=dropout, proj_dropout=dropout)
        return XARModule(net, PixelLatent(in_channels=16, image_size=8), ema_decay=None,
                         optimizer=partial(torch.optim.AdamW, lr=1e-4, betas=(0.9, 0.96), weight_decay=0.02))

    data = {"x": torch.randn(batch, 16, 8, 8), "label": torch.arange(batch) % 10}
    plain, dropped = build(0.0), build(0.1)

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

    runs = {"framework": lambda: framework_run(plain), "bare": bare_loop, "dropout 0.1": lambda: framework_run(dropped)}
    times = {k: float("inf") for k in runs}
    for _ in range(3):
        for name, fn in runs.items():
            times[name] = min(times[name], best_of(fn, repeats=1))
    sps = {k: steps / v for k, v in times.items()}
    print(f"xAR fine-tune, batch {batch}: framework {sps['framework']:.2f} steps/s, bare {sps['bare']:.2f} steps/s "
          f"(overhead {100 * (times['framework'] / times['bare'] - 1):+.1f}%); with dropout 0.1 (seeded masks) "
          f"{sps['dropout 0.1']:.2f} steps/s ({100 * (times['dropout 0.1'] / times['framework'] - 1):+.1f}%)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ft-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = XARModule(NET, PixelLatent(in_channels=16, image_size=8)).eval()
    with torch.no_grad():  # away from the release's init, so guidance and the cache matter
        for q in module.net.parameters():
            q.add_(torch.randn_like(q) * 0.02)
    sampling(module, args.batch)
    fine_tune(args.ft_batch, args.steps)


if __name__ == "__main__":
    main()
