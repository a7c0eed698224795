"""Synthesis throughput of a two-process DDP job against one process on the same machine.

S is drawn from the digits EDM (random weights: the cost does not depend on them) with Heun-18,
once by one process using every core, once by two processes (gloo) each using half of them and
taking every other block. Times are taken between barriers, so process start-up is left out (and
reported apart). Rounds interleaved, best of `--rounds`.
Usage: .venv/bin/python bench/ddp_synthesis.py [--n 2000] [--block 250] [--rounds 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import emit  # noqa: E402  (bench/ holds the scripts' shared helpers)

from neon.data.synthetic import write_synthetic_set  # noqa: E402
from neon.families.edm import EDMModule, heun_sampler  # noqa: E402
from neon.launch.distributed import free_port  # noqa: E402

NETWORK = dict(precond="EDMPrecond", img_resolution=8, img_channels=1, label_dim=10, model_type="ResMLP", hidden=128,
               num_blocks=3, noise_channels=64)
HEUN_STEPS = 18
WORLDS = {"one": 1, "two": 2}  # the two sides: processes drawing S


def _rank(rank: int, world: int, port: int, n: int, block: int, out: str, queue) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    module = EDMModule(NETWORK).eval()
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    write_synthetic_set(module, partial(heun_sampler, num_steps=HEUN_STEPS), list(range(n)), out, block_size=block,
                        shard_size=block * 4, progress=False)
    seconds = time.perf_counter() - start
    if world > 1:
        dist.destroy_process_group()
    if rank == 0:
        queue.put((seconds, torch.get_num_threads()))


def timed(world: int, n: int, block: int) -> tuple[float, float, int]:
    """(seconds drawing S, seconds including process start, torch threads per process) with `world` processes."""
    port = free_port()
    queue = mp.get_context("spawn").SimpleQueue()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        mp.start_processes(_rank, args=(world, port, n, block, out, queue), nprocs=world, start_method="spawn")
        total = time.perf_counter() - start
    seconds, threads = queue.get()
    return seconds, total, threads


def summarize(n: int, block: int, runs: dict[str, list[tuple[float, float, int]]]) -> dict:
    """The result of the rounds `runs` (per side, as `timed` returns them): each side's best round, the speed-up."""
    sides = {}
    for side, rounds in runs.items():
        seconds, total, threads = min(rounds)
        sides[side] = {"processes": WORLDS[side], "threads_per_process": threads, "seconds": seconds,
                       "seconds_with_startup": total, "samples_per_s": n / seconds,
                       "all_seconds": [r[0] for r in rounds]}
    return {"settings": {"n": n, "block": block, "rounds": len(runs["one"]), "cores": os.cpu_count(),
                         "heun_steps": HEUN_STEPS, "backend": "gloo",
                         "threads": sides["one"]["threads_per_process"],  # the one process's: it takes every core
                         "compared": "two gloo processes against one process, S of the digits EDM"},
            "sides": sides, "speedup": sides["one"]["seconds"] / sides["two"]["seconds"]}


def report(result: dict) -> str:
    """The measurements as one line."""
    s, one, two = result["settings"], result["sides"]["one"], result["sides"]["two"]
    return (f"S of {s['n']} digits (Heun-{s['heun_steps']}, blocks of {s['block']}) on {s['cores']} cores: one process "
            f"{one['samples_per_s']:.0f} samples/s, two processes {two['samples_per_s']:.0f} samples/s "
            f"(×{result['speedup']:.2f}); with process start-up {one['seconds_with_startup']:.1f} s vs "
            f"{two['seconds_with_startup']:.1f} s")


def main(argv: list[str] | None = None) -> dict:
    """Time both sides; print the line and write the JSON where asked."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--block", type=int, default=250)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    runs: dict[str, list[tuple[float, float, int]]] = {side: [] for side in WORLDS}
    for _ in range(args.rounds):  # interleaved, so drifts in machine load hit both alike
        for side, world in WORLDS.items():
            runs[side].append(timed(world, args.n, args.block))
    result = summarize(args.n, args.block, runs)
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
