"""EDM framework overhead, as ratios measured within one run (this machine is noisy).

  sampling:  EDMModule.generate (one generator per image, labels, 8-bit rounding) vs a bare loop that
             calls the same network with the same Heun steps on one batch of noise;
  fine-tune: Lightning Trainer + EDMModule steps/s vs a bare PyTorch loop with the same model, loss,
             batch and optimizer.

Two networks: the digits default (ResMLP, 8×8) and a small DDPM++ at 32×32 (where the network, not the
framework, dominates a step). Usage: .venv/bin/python bench/edm_overhead.py [--threads 2]
"""

from __future__ import annotations

import argparse
from functools import partial

import lightning as L
import torch
from timing import Repeat, best_of  # bench/ is on the path when a script here runs
from torch.utils.data import DataLoader

from neon.core.seeding import StepNoise
from neon.families.edm import EDMModule, heun_sampler
from neon.stages.training import LightningNeon

NETWORKS = {
    "digits ResMLP 8x8": dict(precond="EDMPrecond", img_resolution=8, img_channels=1, label_dim=10, model_type="ResMLP",
                              hidden=128, num_blocks=3),
    "DDPM++ 32x32 (32 ch)": dict(precond="EDMPrecond", img_resolution=32, img_channels=3, label_dim=10,
                                 model_type="SongUNet", model_channels=32, channel_mult=[1, 2, 2], num_blocks=1,
                                 attn_resolutions=[16], dropout=0.0),
}





def bench(name: str, network: dict, n_images: int, steps: int, batch: int, num_steps: int) -> None:
    torch.manual_seed(0)
    module = EDMModule(network, optimizer=partial(torch.optim.Adam, lr=1e-4), ema_halflife_kimg=None).eval()
    sampler = partial(heun_sampler, num_steps=num_steps)
    seeds = list(range(n_images))
    latents, onehot = torch.randn(n_images, *module.image_shape), torch.eye(10)[torch.arange(n_images) % 10]
    framework, bare = [], []
    for _ in range(3):  # interleaved rounds
        framework.append(best_of(lambda: module.generate(seeds, sampler), repeats=1))
        bare.append(best_of(lambda: heun_sampler(module.net, latents, onehot, num_steps=num_steps), repeats=1))
    framework, bare = min(framework), min(bare)
    print(f"{name}: sampling {n_images} images, {num_steps} Heun steps: framework {n_images / framework:.1f} img/s, "
          f"bare {n_images / bare:.1f} img/s, overhead {100 * (framework / bare - 1):+.1f}%")

    data = {"x": torch.rand(batch, *module.image_shape) * 2 - 1, "label": torch.arange(batch) % 10}
    module.train()
    opt = torch.optim.Adam(module.net.parameters(), lr=1e-4)

    def framework_run() -> None:
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, max_epochs=-1, logger=False,
                            enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
        trainer.fit(LightningNeon(module), DataLoader(Repeat(data), batch_size=None))

    def bare_loop() -> None:
        for _ in range(steps):
            loss = module.loss(data, StepNoise.single(len(data["x"])))
            opt.zero_grad()
            loss.backward()
            opt.step()

    t_fw, t_bare = [], []
    for _ in range(3):  # interleaved rounds, so drifts in machine load hit both alike
        t_fw.append(best_of(framework_run, repeats=1))
        t_bare.append(best_of(bare_loop, repeats=1))
    t_fw, t_bare = min(t_fw), min(t_bare)
    print(f"{name}: fine-tune batch {batch}: framework {steps / t_fw:.1f} steps/s, bare {steps / t_bare:.1f} steps/s, "
          f"overhead {100 * (t_fw / t_bare - 1):+.1f}%")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bench("digits ResMLP 8x8", NETWORKS["digits ResMLP 8x8"], n_images=1000, steps=200, batch=256, num_steps=18)
    bench("DDPM++ 32x32 (32 ch)", NETWORKS["DDPM++ 32x32 (32 ch)"], n_images=32, steps=10, batch=32, num_steps=18)


if __name__ == "__main__":
    main()
