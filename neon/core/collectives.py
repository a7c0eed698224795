"""The few collective operations of a job's processes (DDP ranks): who this process is, waiting for the others,
rank 0's decisions shared, and strided shares gathered back in order. Every stage runs on every rank; ranks
split sampling work and the fine-tune's batches, and only rank 0 writes results. Without a process group each
is the one-process answer. Starting the processes is the launcher's (neon.launch.distributed)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch.distributed as dist
from filelock import FileLock


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the running process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the process that writes results (rank 0, or the only process)."""
    return rank_world()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if rank_world()[1] > 1:
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's value of `obj` on every rank."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_lock(path: str) -> Iterator[None]:
    """A file lock held by rank 0 on behalf of all ranks (they follow its decisions by `broadcast`)."""
    with FileLock(path) if is_main() else contextlib.nullcontext():
        yield


def interleave(shares: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rank r holds items r, r + W, ...: put them back in order (a rank with no items may hold no arrays)."""
    world = len(shares)
    out = {}
    for key in shares[0]:
        total = sum(len(s[key]) for s in shares if key in s)
        arr = np.empty((total, *shares[0][key].shape[1:]), dtype=shares[0][key].dtype)
        for r, share in enumerate(shares):
            if key in share:
                arr[r::world] = share[key]
        out[key] = arr
    return out


def gather_strided(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays split by a strided share of items (rank r holds items r, r + W, ...) gathered on every rank in
    item order; in one process, `local` itself."""
    world = rank_world()[1]
    if world == 1:
        return local
    shares: list = [None] * world
    dist.all_gather_object(shares, local)
    return interleave(shares)
