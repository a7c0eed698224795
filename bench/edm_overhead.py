"""EDM framework overhead, as ratios measured within one run (this machine is noisy).

  sampling:  EDMModule.generate (one generator per image, labels, 8-bit rounding) vs a bare loop that
             calls the same network with the same Heun steps on one batch of noise;
  fine-tune: Lightning Trainer + EDMModule steps/s vs a bare PyTorch loop with the same model, loss,
             batch and optimizer.

Two networks: the digits default (ResMLP, 8×8) and a small DDPM++ at 32×32 (where the network, not the
framework, dominates a step). Interleaved rounds, best of `--rounds`.
Usage: .venv/bin/python bench/edm_overhead.py [--threads 2] [--rounds 3] [--quick] [--json OUT]
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
from neon.families.edm import EDMModule, heun_sampler  # noqa: E402
from neon.stages.training import LightningNeon  # noqa: E402

NETWORKS = {
    "digits ResMLP 8x8": dict(precond="EDMPrecond", img_resolution=8, img_channels=1, label_dim=10, model_type="ResMLP",
                              hidden=128, num_blocks=3),
    "DDPM++ 32x32 (32 ch)": dict(precond="EDMPrecond", img_resolution=32, img_channels=3, label_dim=10,
                                 model_type="SongUNet", model_channels=32, channel_mult=[1, 2, 2], num_blocks=1,
                                 attn_resolutions=[16], dropout=0.0),
}
# per network: images sampled, fine-tune steps, fine-tune batch (the sizes the published figures were taken at)
SIZES = {"digits ResMLP 8x8": dict(n_images=1000, steps=200, batch=256),
         "DDPM++ 32x32 (32 ch)": dict(n_images=32, steps=10, batch=32)}
QUICK = dict(n_images=2, steps=1, batch=2)


def bench(name: str, network: dict, n_images: int, steps: int, batch: int, num_steps: int, rounds: int) -> dict:
    """Sampling and fine-tune of one network, framework against bare loop, interleaved, best of `rounds`."""
    torch.manual_seed(0)
    module = EDMModule(network, optimizer=partial(torch.optim.Adam, lr=1e-4), ema_halflife_kimg=None).eval()
    sampler = partial(heun_sampler, num_steps=num_steps)
    seeds = list(range(n_images))
    latents, onehot = torch.randn(n_images, *module.image_shape), torch.eye(10)[torch.arange(n_images) % 10]
    framework, bare = [], []
    for _ in range(rounds):  # interleaved rounds
        framework.append(best_of(lambda: module.generate(seeds, sampler), repeats=1))
        bare.append(best_of(lambda: heun_sampler(module.net, latents, onehot, num_steps=num_steps), repeats=1))
    framework, bare = min(framework), min(bare)
    sampling = {"images": n_images, "num_steps": num_steps, "seconds": {"framework": framework, "bare": bare},
                "framework_images_per_s": n_images / framework, "bare_images_per_s": n_images / bare,
                "overhead": framework / bare - 1}

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
    for _ in range(rounds):  # interleaved rounds, so drifts in machine load hit both alike
        t_fw.append(best_of(framework_run, repeats=1))
        t_bare.append(best_of(bare_loop, repeats=1))
    t_fw, t_bare = min(t_fw), min(t_bare)
    finetune = {"batch": batch, "steps": steps, "seconds": {"framework": t_fw, "bare": t_bare},
                "framework_steps_per_s": steps / t_fw, "bare_steps_per_s": steps / t_bare, "overhead": t_fw / t_bare - 1}
    return {"parameters": sum(p.numel() for p in module.net.parameters()), "sampling": sampling, "finetune": finetune}


def report(result: dict) -> str:
    """The measurements as lines, one per network and side."""
    lines = []
    for name, r in result["networks"].items():
        s, f = r["sampling"], r["finetune"]
        lines.append(f"{name}: sampling {s['images']} images, {s['num_steps']} Heun steps: framework "
                     f"{s['framework_images_per_s']:.1f} img/s, bare {s['bare_images_per_s']:.1f} img/s, overhead "
                     f"{100 * s['overhead']:+.1f}%")
        lines.append(f"{name}: fine-tune batch {f['batch']}: framework {f['framework_steps_per_s']:.1f} steps/s, bare "
                     f"{f['bare_steps_per_s']:.1f} steps/s, overhead {100 * f['overhead']:+.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Measure both networks; print the lines and write the JSON where asked."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-steps", type=int, default=18, help="Heun steps of the sampler")
    p.add_argument("--quick", action="store_true", help="two images, one step of each, one round (a smoke test)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    rounds, num_steps = (1, 2) if args.quick else (args.rounds, args.num_steps)
    torch.set_num_threads(args.threads)
    result = {"settings": {"threads": torch.get_num_threads(), "rounds": rounds,
                           "compared": "EDMModule.generate / Lightning fit against a bare Heun loop / bare "
                                       "PyTorch loop"},
              "networks": {name: bench(name, net, **(QUICK if args.quick else SIZES[name]), num_steps=num_steps,
                                       rounds=rounds) for name, net in NETWORKS.items()}}
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
