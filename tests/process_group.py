"""Run a function in a real CPU process group (gloo), as the ranks of a DDP job would."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from neon.launch.distributed import free_port


def _rank_main(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def in_process_group(world: int, fn: Callable, *args) -> None:
    """Call `fn(rank, *args)` in `world` spawned processes joined in one gloo group (`fn` must be a
    module-level function); any rank's failure fails the call."""
    mp.start_processes(_rank_main, args=(world, free_port(), fn, args), nprocs=world, start_method="spawn")
