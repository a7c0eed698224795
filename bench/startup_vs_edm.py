"""`neon task=sample` against NVlabs/edm's `generate.py` as whole processes, side by side, on one 8×8 snapshot.

Both draw the same seeds with the same Heun sampler (18 steps) from one snapshot that the official code
writes, and the images are compared: they must be equal. Each command is a fresh process, rounds interleaved
(so drifts in machine load hit both alike), best of `--repeats`; the figures are the difference and the ratio
of the two best times, measured within one run.

The official code is not part of this project: give a local clone with `--edm-repo DIR`. It runs unchanged
on a CUDA machine. Without CUDA the same script is run on the CPU: a launcher points its process group at
gloo instead of NCCL and its `device` default at the CPU before calling `generate.main` (nothing else of it
is changed).

Usage: .venv/bin/python bench/startup_vs_edm.py --edm-repo PATH/TO/edm [--repeats 7] [--threads 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import emit  # noqa: E402  (bench/ holds the scripts' shared helpers)

ROOT = Path(__file__).resolve().parent.parent

# the official networks' constructor: a small unconditional DDPM++ at 8×8, dropout on (eval mode must hold)
WRITE_SNAPSHOT = """
import pickle, sys, torch
sys.path.insert(0, sys.argv[1])
from training.networks import EDMPrecond
torch.manual_seed(0)
net = EDMPrecond(img_resolution=8, img_channels=3, label_dim=0, model_type='SongUNet', model_channels=16,
                 channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.13)
with torch.no_grad():
    for p in net.parameters():
        p.add_(torch.randn_like(p) * 0.05)
with open(sys.argv[2], 'wb') as f:
    pickle.dump({'ema': net.eval().requires_grad_(False)}, f)
"""

# generate.py as it is; on a machine without CUDA, its process group on gloo and its device on the CPU
RUN_GENERATE = """
import sys, torch
repo = sys.argv.pop(1)
sys.path.insert(0, repo)
if not torch.cuda.is_available():
    import torch.distributed as td
    _init = td.init_process_group
    td.init_process_group = lambda *a, **k: _init(*a[1:], **{**k, 'backend': 'gloo'})
    torch.cuda.set_device = lambda *a, **k: None
import generate
if not torch.cuda.is_available():
    fn = generate.main.callback
    fn.__defaults__ = tuple(torch.device('cpu') if isinstance(d, torch.device) else d for d in fn.__defaults__)
sys.argv[0] = 'generate.py'
generate.main()
"""


def commands(repo: Path, snapshot: Path, work: Path, images: int) -> dict[str, list[str]]:
    """The command line of each side."""
    py = sys.executable
    return {
        "generate.py": [py, "-c", RUN_GENERATE, str(repo), f"--network={snapshot}", f"--outdir={work / 'official'}",
                        f"--seeds=0-{images - 1}", f"--batch={images}"],
        "neon task=sample": [py, "-m", "neon", "task=sample", "model=edm_ffhq64_ddpmpp_uncond",
                             f"model.checkpoint={snapshot}", f"sample.seeds=0-{images - 1}",
                             f"sample.batch_size={images}", f"sample.out={work / 'neon.npz'}",
                             f"hydra.run.dir={work / 'neon_run'}", "trainer.enable_progress_bar=false"],
    }


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds from the process's start to its exit (it must succeed)."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} … failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return seconds


def same_images(work: Path, images: int) -> int:
    """The largest uint8 difference between the official PNGs and neon's samples of the same seeds."""
    from PIL import Image

    ours = np.load(work / "neon.npz")["arr_0"]
    official = np.stack([np.asarray(Image.open(work / "official" / f"{s:06d}.png")) for s in range(images)])
    if official.shape != ours.shape:
        raise RuntimeError(f"image shapes differ: generate.py {official.shape}, neon {ours.shape}")
    return int(np.abs(official.astype(np.int16) - ours.astype(np.int16)).max())


def measure(repo: Path, repeats: int, images: int, threads: int) -> dict:
    """Best-of-`repeats` whole-process times of both sides, rounds interleaved, and the images' largest difference."""
    with tempfile.TemporaryDirectory(prefix="neon-vs-edm-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": str(threads), "NEON_CACHE_DIR": str(work / "cache"), "PYTHONWARNINGS": "ignore"}
        snapshot = work / "network-snapshot.pkl"
        subprocess.run([sys.executable, "-c", WRITE_SNAPSHOT, str(repo), str(snapshot)], env=env, check=True)
        cmds = commands(repo, snapshot, work, images)
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(repeats):
            for name, argv in cmds.items():
                times[name].append(timed(argv, env, work))
        diff = same_images(work, images)
    official, ours = min(times["generate.py"]), min(times["neon task=sample"])
    return {"settings": {"repeats": repeats, "images": images, "threads": threads, "python": sys.version.split()[0],
                         "snapshot": "EDMPrecond SongUNet 8×8×3, 16 channels, dropout 0.13, unconditional",
                         "sampler": "Heun, 18 steps (both defaults)"},
            "seconds": {k: v for k, v in times.items()},
            "best_s": {"generate.py": official, "neon task=sample": ours},
            "neon_minus_generate_s": ours - official, "neon_over_generate": ours / official,
            "max_uint8_difference": diff}


def report(result: dict) -> str:
    """The measurements as lines."""
    b = result["best_s"]
    return (f"whole process, best of {result['settings']['repeats']} ({result['settings']['images']} images, "
            f"{result['settings']['threads']} thread(s)): generate.py {b['generate.py']:.2f} s, neon task=sample "
            f"{b['neon task=sample']:.2f} s → neon {result['neon_minus_generate_s']:+.2f} s, "
            f"{result['neon_over_generate']:.3f}× its time; images differ by at most "
            f"{result['max_uint8_difference']} (uint8)")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edm-repo", type=Path, required=True, help="a local clone of NVlabs/edm")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if not (args.edm_repo / "generate.py").is_file():
        p.error(f"--edm-repo '{args.edm_repo}' holds no generate.py: give a local clone of NVlabs/edm")
    result = measure(args.edm_repo.resolve(), args.repeats, args.images, args.threads)
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
