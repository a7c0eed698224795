"""One GPU, one script, under 8 minutes: are the CUDA paths sound, how fast are the paper's models, and what
would each paper row cost on this GPU?

1. `pytest -m gpu -q` (tests/test_gpu.py: per-sample CUDA generators, fp16/autocast paths, attention
   kernels, NCCL), in a subprocess; its exit code and summary go into the JSON.
2. At the paper's sizes with random weights (the VAEs and tokenizers are random files of the release's
   layout written to a temporary folder): EDM DDPM++ CIFAR-10 (Heun-18), VAR-d16, xAR-B (40 steps, fp16
   autocast as the paper config samples), IMM-XL/2 (8 steps). Each model is composed from its paper
   experiment (experiments/paper/*.yaml) and built by `neon.stages.run.model_spec` as the CLI builds it.
   - sampling images/s: the framework's path for S (`neon.data.synthetic.generate_block`: one generator
     per image, class-balanced labels, 8-bit rounding, the copy to the CPU) against a bare call of the
     same sampler function on one batch of noise with one generator;
   - fine-tune steps/s: a Lightning fit of the module (steady state, measured between steps inside the
     fit; the fit's start-up is reported apart) against a bare PyTorch loop with the same loss, optimizer,
     precision, gradient clipping and EMA update. Precision is the paper configs' advice: 16-mixed for xAR
     and IMM (their reference trains under fp16 autocast), 32-true for EDM (use_fp16 is off in its config)
     and VAR (its config states none).
3. Inception extraction images/s at each row's image size: `InceptionFeatures.extract` as the evaluation
   calls it (its network stays on the CPU: generate_block hands it CPU images), and the same network on the
   GPU, with a random-weight file of the standard architecture (tests/inception_weights.py).
4. Each paper row's estimated Neon cost on this GPU: S (neon.n_synthetic) + the fine-tune to the largest
   budget (neon.budget_steps at the global batch neon.batch_size, i.e. batch_size / per-GPU batch
   optimizer steps per step on one GPU) + one 10K and one 50K evaluation (metrics.num_samples and
   task.final_num_samples: sampling plus Inception), beside the paper's stated share of training compute.
   A search task scores many 10K points: multiply that column by their number.

Per-GPU batch: the paper configs' neon.batch_size is the global batch of the reference runs, which used
8 GPUs (the xAR and IMM recipes say so; we assume the same for EDM and VAR): 512/8 = 64 (EDM), 768/8 = 96
(VAR-d16), 256/8 = 32 (xAR-B), 512/8 = 64 (IMM, a multiple of its loss's group of 4). Sampling uses the
same batch.

`--dry-run`: the same code on the CPU with the tiny model configs (edm_digits, var_tiny with a random
tokenizer file, xar_tiny, imm_tiny), batches of 4, a few steps and 4 Inception images; the paper recipes
are still read for the cost arithmetic, whose numbers then mean nothing. tests/test_gpu_check.py runs it.

Usage: python bench/gpu_check.py [--out gpu_check.json] [--rows edm,var,xar,imm] [--skip-tests] [--dry-run]
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):  # the package and tests/ (random Inception weights) from a checkout
    if _p not in sys.path:
        sys.path.insert(0, _p)

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from timing import Repeat  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from neon.core.contract import NeonModule  # noqa: E402
from neon.core.io import atomic_path, write_json  # noqa: E402
from neon.core.seeding import StepNoise  # noqa: E402
from neon.core.values import plain
from neon.data.synthetic import generate_block  # noqa: E402
from neon.families.var.vqvae import VQVAE  # noqa: E402
from neon.launch.cli import CONF_DIR  # noqa: E402
from neon.metrics.inception import InceptionFeatures  # noqa: E402
from neon.stages.run import model_spec  # noqa: E402
from neon.stages.training import LightningNeon  # noqa: E402
from tests.helpers import random_batch  # noqa: E402
from tests.inception_weights import write_random_inception  # noqa: E402

REFERENCE_GPUS = 8  # GPUs of the reference runs: per-GPU batch = neon.batch_size / 8


@dataclass(frozen=True)
class Row:
    """One paper row: its experiment config, the tiny model of the dry run, the fine-tune precision on a GPU
    and the share of training compute the paper states for it (None: not stated)."""

    key: str
    title: str
    experiment: str
    tiny: str
    tiny_overrides: tuple[str, ...]
    precision: str
    stated_share: str | None


ROWS = (
    Row("edm", "EDM DDPM++ CIFAR-10 cond, Heun-18", "paper/edm_cifar10_cond", "edm_digits", ("sampler.num_steps=4",),
        "32-true", "1.75% (the paper's efficiency table)"),
    Row("var", "VAR-d16 ImageNet 256", "paper/var_d16_in256", "var_tiny", (), "32-true", None),
    Row("xar", "xAR-B ImageNet 256, 40 steps", "paper/xar_b_in256", "xar_tiny", ("sampler.num_steps=4",), "16-mixed",
        None),
    Row("imm", "IMM-XL/2 ImageNet 256, 8 steps", "paper/imm_in256", "imm_tiny", ("sampler.num_steps=2",), "16-mixed",
        None),
)


@dataclass(frozen=True)
class Sizes:
    """How much to measure: batches, rounds, steps, Inception images."""

    batch: int | None  # None: the reference per-GPU batch of each row
    rounds: int  # interleaved framework/bare rounds after a warm-up; the best is kept
    max_steps: int  # timed fine-tune steps per round (fewer when a step is slow)
    step_budget_s: float  # aim for about this many seconds of timed steps per round
    inception_images: int
    inception_batch: int


GPU_SIZES = Sizes(batch=None, rounds=2, max_steps=10, step_budget_s=5.0, inception_images=128, inception_batch=64)
DRY_SIZES = Sizes(batch=4, rounds=1, max_steps=2, step_budget_s=0.0, inception_images=4, inception_batch=4)


# ------------------------------------------------------------------ building the models


def compose_config(overrides: list[str]) -> DictConfig:
    """The run config the CLI would compose from these overrides."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def random_vae_file(cfg: DictConfig, folder: Path) -> str | None:
    """A random-weight file of the model's VAE or tokenizer in the release's layout (None: it needs none)."""
    model = cfg.model
    if "vae" in model:  # VAR's VQVAE: a plain state dict, as vae_ch160v4096z32.pth
        part = VQVAE(**{"patch_nums": plain(model.network.patch_nums), **plain(model.vae)})
        state: Any = part.state_dict()
    elif "latent" in model:
        part = instantiate(model.latent)
        if not hasattr(part, "load_release"):  # pixel latents: nothing to read
            return None
        state = {"state_dict": part.state_dict()}  # the LDM layout (kl16.ckpt, an SD-VAE .ckpt)
    else:
        return None
    path = folder / "random_vae.pth"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return str(path)


def build_module(cfg: DictConfig, folder: Path) -> NeonModule:
    """The model of `cfg` with random weights (its VAE from a random file), as `neon` builds it."""
    vae = random_vae_file(cfg, folder)
    if vae is not None:
        cfg.model.vae_checkpoint = vae
        if "vae_pretrain" in cfg.model:
            cfg.model.vae_pretrain = None
    torch.manual_seed(0)
    return instantiate(model_spec(cfg))


# ------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of `fn()` including the device's work."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def overhead_pct(framework_s: float, bare_s: float) -> float:
    """How much longer the framework takes than the bare loop, in percent."""
    return 100 * (framework_s / bare_s - 1)


# ------------------------------------------------------------------ sampling


def class_labels(module: NeonModule, batch: int, device: torch.device) -> torch.Tensor:
    """Class-balanced ids 0, 1, ... mod C, as S draws them."""
    return torch.arange(batch, device=device) % max(module.num_classes, 1)


def bare_sampling(module: NeonModule, sampler, batch: int, device: torch.device) -> Callable[[], Any]:
    """The family's sampler function called directly on one batch of noise with one generator."""
    net, labels = module.sampling_net, class_labels(module, batch, device)
    if module.family == "EDM":
        latents = torch.randn(batch, *module.image_shape, device=device)
        onehot = F.one_hot(labels, module.num_classes).float() if module.num_classes else None
        return lambda: sampler(net, latents, onehot)
    if module.family == "VAR":
        return lambda: sampler(net, module.vae, labels, torch.Generator(device).manual_seed(0))
    if module.family == "xAR":
        return lambda: sampler(net, module.latent, labels, torch.Generator(device).manual_seed(0))
    if module.family == "IMM":
        noise = torch.randn(batch, net.img_channels, net.img_resolution, net.img_resolution, device=device)
        return lambda: sampler(net, module.latent, noise * net.sigma_data, labels)
    raise ValueError(f"no bare sampling loop for family {module.family}")


def measure_sampling(module: NeonModule, sampler, batch: int, sizes: Sizes, device: torch.device) -> dict:
    """Images/s of S's generation path and of the bare sampler, interleaved, best of `sizes.rounds`."""
    module.to(device).eval()
    seeds = list(range(batch))
    runs = {"framework": lambda: generate_block(module, sampler, seeds, range(batch), class_balanced=True),
            "bare": bare_sampling(module, sampler, batch, device)}
    with torch.no_grad():
        for fn in runs.values():  # warm-up: kernels chosen, memory pools filled
            fn()
        best = {name: math.inf for name in runs}
        for _ in range(sizes.rounds):
            for name, fn in runs.items():
                best[name] = min(best[name], seconds(fn, device))
    return {"batch": batch, "framework_img_s": batch / best["framework"], "bare_img_s": batch / best["bare"],
            "overhead_pct": overhead_pct(best["framework"], best["bare"])}


# ------------------------------------------------------------------ fine-tuning


AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class StepClock(L.Callback):
    """Seconds from the end of the warm-up steps to the end of the last step, inside a fit."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device = warmup, device
        self.start = self.end = math.nan

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(self.device)
        if batch_idx == self.warmup - 1:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def lightning_fit(module: NeonModule, data: dict, steps: int, precision: str, clip: float | None,
                  device: torch.device) -> tuple[float, float]:
    """(seconds of `steps` steady-state steps, seconds of the whole fit) of a Lightning fit after one warm-up step."""
    clock = StepClock(warmup=1, device=device)
    trainer = L.Trainer(accelerator=device.type, devices=1, precision=precision, max_steps=steps + 1, max_epochs=-1,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, gradient_clip_val=clip, callbacks=[clock])
    start = time.perf_counter()
    trainer.fit(LightningNeon(module), DataLoader(Repeat(data), batch_size=None))
    return clock.end - clock.start, time.perf_counter() - start


class BareLoop:
    """The fine-tune step without Lightning: the same loss, optimizer, autocast, gradient scaling, clipping
    and EMA update, the batch copied to the device each step as a loader's would be."""

    def __init__(self, module: NeonModule, data: dict, precision: str, clip: float | None, device: torch.device):
        self.module, self.data, self.clip, self.device = module, data, clip, device
        self.dtype = AUTOCAST[precision]
        self.optimizer = module.optimizer_factory(module.optimizer_params())
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.step = 0

    def run(self, steps: int) -> None:
        """`steps` optimizer steps."""
        module, opt = self.module, self.optimizer
        module.train()
        for _ in range(steps):
            batch = {k: v.to(self.device) for k, v in self.data.items()}
            size = len(batch["x"])
            noise = StepNoise(0, self.step, slice(0, size), size, self.device)  # LightningNeon's default seed
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                loss = module.loss(batch, noise)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(opt)
            else:
                loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(module.net.parameters(), self.clip)
            if self.scaler is not None:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            if module.ema is not None:
                module.ema_rule.update(module.ema, module.net, batch_size=size)
            self.step += 1


def measure_finetune(module: NeonModule, batch: int, precision: str, clip: float | None, sizes: Sizes,
                     device: torch.device) -> dict:
    """Steps/s of a Lightning fit against the bare loop, interleaved, best of `sizes.rounds`."""
    data = random_batch(module, batch)
    module.to(device)
    bare = BareLoop(module, data, precision, clip, device)
    warm = seconds(lambda: bare.run(2), device) / 2  # warm-up, and the step time that sets the step count
    steps = max(2, min(sizes.max_steps, int(sizes.step_budget_s / max(warm, 1e-9))))
    best = {"framework": math.inf, "bare": math.inf}
    fit_seconds = math.inf
    for _ in range(sizes.rounds):
        framework_s, whole_s = lightning_fit(module, data, steps, precision, clip, device)
        best["framework"], fit_seconds = min(best["framework"], framework_s), min(fit_seconds, whole_s)
        module.to(device)  # Lightning's teardown leaves the module on the CPU
        best["bare"] = min(best["bare"], seconds(lambda: bare.run(steps), device))
    return {"batch": batch, "precision": precision, "timed_steps": steps,
            "framework_steps_s": steps / best["framework"], "bare_steps_s": steps / best["bare"],
            "overhead_pct": overhead_pct(best["framework"], best["bare"]),
            "fit_startup_s": fit_seconds - best["framework"] * (steps + 1) / steps}


# ------------------------------------------------------------------ Inception


def measure_inception(weights: Path, shape: tuple[int, int, int], sizes: Sizes, device: torch.device) -> dict:
    """Images/s of the evaluation's feature extraction (network on the CPU) and of the network on `device`."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(sizes.inception_images, *shape, generator=g) * 2 - 1
    pipeline = InceptionFeatures(str(weights), batch_size=sizes.inception_batch)
    on_device = InceptionFeatures(str(weights), batch_size=sizes.inception_batch).network().to(device)
    uint8 = (images * 127.5 + 128).clip(0, 255).to(torch.uint8).to(device)

    def device_run() -> None:
        with torch.no_grad():
            for i in range(0, len(uint8), sizes.inception_batch):
                on_device(uint8[i:i + sizes.inception_batch])

    runs = {"pipeline": lambda: pipeline.extract(images), "on_device": device_run}
    for fn in runs.values():
        fn()
    best = {name: math.inf for name in runs}
    for _ in range(sizes.rounds):
        for name, fn in runs.items():
            best[name] = min(best[name], seconds(fn, device))
    n = sizes.inception_images
    return {"images": n, "image_shape": list(shape), "pipeline_img_s": n / best["pipeline"],
            "on_device_img_s": n / best["on_device"]}


# ------------------------------------------------------------------ the paper rows' cost


def recipe(paper: DictConfig) -> dict:
    """What a paper row's Neon run computes: S, the fine-tune to the largest budget, the evaluation sizes."""
    budgets = plain(paper.neon.budget_steps)
    task = paper.get("task") or {}
    return {"n_synthetic": int(paper.neon.n_synthetic),
            "budget_steps": max(budgets) if isinstance(budgets, list) else int(budgets),
            "global_batch": int(paper.neon.batch_size),
            "eval_small": int(paper.metrics.num_samples),
            "eval_large": int(task.get("final_num_samples") or 50000)}


def row_cost(plan: dict, sampling: dict, finetune: dict, inception: dict) -> dict:
    """GPU-seconds on this GPU of each part of the row's run, from the measured framework rates."""
    per_step = math.ceil(plan["global_batch"] / finetune["batch"])  # per-GPU steps per global step on one GPU
    sample_s = 1 / sampling["framework_img_s"]
    extract_s = 1 / inception["pipeline_img_s"]
    out = {"synthesis_s": plan["n_synthetic"] * sample_s,
           "finetune_s": plan["budget_steps"] * per_step / finetune["framework_steps_s"],
           "eval_small_s": plan["eval_small"] * (sample_s + extract_s),
           "eval_large_s": plan["eval_large"] * (sample_s + extract_s),
           "eval_large_with_inception_on_device_s": plan["eval_large"] * (sample_s + 1 / inception["on_device_img_s"])}
    out["total_s"] = out["synthesis_s"] + out["finetune_s"] + out["eval_small_s"] + out["eval_large_s"]
    return out


# ------------------------------------------------------------------ the run


def run_gpu_tests(timeout_s: int) -> dict:
    """`pytest -m gpu -q` in a subprocess (a driver script: its own interpreter and CUDA context)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:  # a hung test (an NCCL wait) must not cost the measurements
        lines = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or "")
        return {"returncode": None, "summary": f"timed out after {timeout_s} s", "seconds": time.perf_counter() - start,
                "output_tail": "\n".join(lines.strip().splitlines()[-40:])}
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return {"returncode": proc.returncode, "summary": lines[-1] if lines else "", "seconds": time.perf_counter() - start,
            "output_tail": "\n".join(lines[-40:])}


def measure_row(row: Row, dry_run: bool, sizes: Sizes, device: torch.device, folder: Path) -> dict:
    """Build one row's model with random weights and measure its sampling and fine-tune rates."""
    paper = compose_config([f"experiment={row.experiment}", f"paths.cache_dir={folder}"])
    cfg = compose_config([f"model={row.tiny}", f"paths.cache_dir={folder}", *row.tiny_overrides]) if dry_run else paper
    start = time.perf_counter()
    module = build_module(cfg, folder)
    built_s = time.perf_counter() - start
    plan = recipe(paper)
    batch = sizes.batch or plan["global_batch"] // REFERENCE_GPUS
    precision = row.precision if device.type == "cuda" else ("bf16-mixed" if "mixed" in row.precision else "32-true")
    clip = paper.trainer.get("gradient_clip_val")
    out = {"title": row.title, "experiment": row.experiment, "model": plain(cfg.model._target_),
           "parameters": sum(p.numel() for p in module.net.parameters()), "image_shape": list(module.image_shape),
           "build_s": built_s, "sampler": plain(cfg.sampler), "recipe": plan,
           "stated_share": row.stated_share or "not stated"}
    out["sampling"] = measure_sampling(module, instantiate(cfg.sampler), batch, sizes, device)
    out["finetune"] = measure_finetune(module, batch, precision, clip, sizes, device)
    module.cpu()
    del module
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def hours(s: float) -> str:
    """Seconds as GPU-hours, short."""
    return f"{s / 3600:.2f} h" if s >= 36 else f"{s:.1f} s"


def print_table(report: dict) -> None:
    """The measured rates, then each paper row's estimated cost on this GPU."""
    print(f"\n{report['device']}{' (dry run: tiny models, the costs mean nothing)' if report['dry_run'] else ''}")
    print(f"{'':<36} {'sampling img/s':^28} | {'fine-tune steps/s':^38}")
    print(f"{'row':<36} {'batch':>5} {'neon':>8} {'bare':>8} {'ovh':>5} | {'batch':>5} {'neon':>7} {'bare':>7} "
          f"{'ovh':>5} {'precision':>10}")
    for row in report["rows"].values():
        if "error" in row:
            print(f"{row['title']:<36} FAILED: {row['error'].splitlines()[-1]}")
            continue
        s, f = row["sampling"], row["finetune"]
        print(f"{row['title']:<36} {s['batch']:>5} {s['framework_img_s']:>8.1f} {s['bare_img_s']:>8.1f} "
              f"{s['overhead_pct']:>+4.0f}% | {f['batch']:>5} {f['framework_steps_s']:>7.2f} {f['bare_steps_s']:>7.2f} "
              f"{f['overhead_pct']:>+4.0f}% {f['precision']:>10}")
    for size, inc in report["inception"].items():
        print(f"Inception {size}: evaluation path (CPU network) {inc['pipeline_img_s']:.1f} img/s, "
              f"network on {report['device_type']} {inc['on_device_img_s']:.1f} img/s")
    print(f"\n{'row':<36} {'S':>9} {'fine-tune':>10} {'10K eval':>9} {'50K eval':>9} {'total':>9}  paper's share")
    for row in report["rows"].values():
        if "cost" in row:
            c = row["cost"]
            print(f"{row['title']:<36} {hours(c['synthesis_s']):>9} {hours(c['finetune_s']):>10} "
                  f"{hours(c['eval_small_s']):>9} {hours(c['eval_large_s']):>9} {hours(c['total_s']):>9}  "
                  f"{row['stated_share']}")


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when the GPU tests passed (or were skipped) and every row was measured."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check.json", help="the JSON report (default gpu_check.json)")
    p.add_argument("--dry-run", action="store_true", help="tiny models on the CPU, a few steps: checks the script")
    p.add_argument("--skip-tests", action="store_true", help="do not run `pytest -m gpu` first")
    p.add_argument("--rows", default=",".join(r.key for r in ROWS), help="which rows, e.g. edm,imm")
    p.add_argument("--tests-timeout", type=int, default=300, help="seconds allowed to `pytest -m gpu`")
    args = p.parse_args(argv)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(wanted) - {r.key for r in ROWS})
    if unknown:
        p.error(f"--rows: unknown {unknown}; choose from {[r.key for r in ROWS]}")

    start = time.perf_counter()
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.dry_run:
        print("no CUDA device: measuring on the CPU (use --dry-run for the quick check)")
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})",
        "device_type": device.type, "dry_run": args.dry_run, "torch": torch.__version__,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "reference_gpus": REFERENCE_GPUS, "rows": {}, "inception": {}}
    if not args.skip_tests:
        report["gpu_tests"] = run_gpu_tests(args.tests_timeout)
        print(f"pytest -m gpu: {report['gpu_tests']['summary']} ({report['gpu_tests']['seconds']:.0f} s)")
        write_json(args.out, report)

    failed = False
    with tempfile.TemporaryDirectory(prefix="neon-gpu-check-") as tmp:
        folder = Path(tmp)
        for row in (r for r in ROWS if r.key in wanted):
            t0 = time.perf_counter()
            try:
                report["rows"][row.key] = measure_row(row, args.dry_run, sizes, device, folder)
            except Exception:  # one row's failure is recorded whole; the GPU time goes on to the next
                failed = True
                report["rows"][row.key] = {"title": row.title, "error": traceback.format_exc()}
                print(report["rows"][row.key]["error"], file=sys.stderr)
            print(f"{row.title}: measured in {time.perf_counter() - t0:.0f} s")
            write_json(args.out, report)  # what was measured survives a run cut short
        weights = write_random_inception(folder / "inception.pth")
        shapes = sorted({tuple(r["image_shape"][1:]) for r in report["rows"].values() if "image_shape" in r})
        for hw in shapes:
            report["inception"][f"{hw[0]}x{hw[1]}"] = measure_inception(weights, (3, *hw), sizes, device)
    for row in report["rows"].values():
        if "sampling" in row and "finetune" in row:
            size = "x".join(str(d) for d in row["image_shape"][1:])
            row["cost"] = row_cost(row["recipe"], row["sampling"], row["finetune"], report["inception"][size])
    report["wall_s"] = time.perf_counter() - start
    write_json(args.out, report)
    print_table(report)
    print(f"\nwall time {report['wall_s']:.0f} s; report in {args.out}")
    tests_ok = report.get("gpu_tests", {}).get("returncode", 0) in (0, 5)  # 5: no test selected
    return 0 if tests_ok and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
