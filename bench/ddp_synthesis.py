"""Synthesis throughput of a two-process DDP job against one process on the same machine.

S is drawn from the digits EDM (random weights: the cost does not depend on them) with Heun-18,
once by one process using every core, once by two processes (gloo) each using half of them and
taking every other block. Times are taken between barriers, so process start-up is left out (and
reported apart). Usage: .venv/bin/python bench/ddp_synthesis.py [--n 2000] [--block 250]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from neon.data.synthetic import write_synthetic_set
from neon.families.edm import EDMModule, heun_sampler
from neon.launch.distributed import free_port

NETWORK = dict(precond="EDMPrecond", img_resolution=8, img_channels=1, label_dim=10, model_type="ResMLP", hidden=128,
               num_blocks=3, noise_channels=64)


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
    write_synthetic_set(module, partial(heun_sampler, num_steps=18), list(range(n)), out, block_size=block,
                        shard_size=block * 4, progress=False)
    seconds = time.perf_counter() - start
    if world > 1:
        dist.destroy_process_group()
    if rank == 0:
        queue.put(seconds)


def timed(world: int, n: int, block: int) -> tuple[float, float]:
    """(seconds drawing S, seconds including process start) with `world` processes."""
    port = free_port()
    queue = mp.get_context("spawn").SimpleQueue()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        mp.start_processes(_rank, args=(world, port, n, block, out, queue), nprocs=world, start_method="spawn")
        total = time.perf_counter() - start
    return queue.get(), total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--block", type=int, default=250)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    one, two = [], []
    for _ in range(args.rounds):  # interleaved, so drifts in machine load hit both alike
        one.append(timed(1, args.n, args.block))
        two.append(timed(2, args.n, args.block))
    (s1, t1), (s2, t2) = min(one), min(two)
    print(f"S of {args.n} digits (Heun-18, blocks of {args.block}) on {os.cpu_count()} cores: one process "
          f"{args.n / s1:.0f} samples/s, two processes {args.n / s2:.0f} samples/s (×{s1 / s2:.2f}); "
          f"with process start-up {t1:.1f} s vs {t2:.1f} s")


if __name__ == "__main__":
    main()
