"""The degradation data: the synthetic set S drawn from θ_r, written to shards or streamed live."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from neon.core.collectives import barrier, broadcast, rank_world
from neon.core.contract import NeonModule, Sampler
from neon.core.errors import NeonError
from neon.core.io import atomic_path
from neon.core.seeding import fixed_threads
from neon.data.batches import TensorItems, global_batch_loader
from neon.data.sample_blocks import generate_block


def _blocks(lo: int, hi: int, block_size: int) -> Iterator[range]:
    # Blocks are aligned to global sample indices, so a sample is computed in the same company
    # (hence to the same bits) however the work is split into shards, workers or ranks.
    start = lo
    while start < hi:
        end = min(hi, (start // block_size + 1) * block_size)
        yield range(start, end)
        start = end


def draw_block(module: NeonModule, sampler: Sampler, seeds: Sequence[int], block: range,
               class_balanced: bool) -> dict[str, torch.Tensor]:
    """One block of S, the same bits whatever torch's thread count in the process that draws it.

    A parallel matrix product or sum on the CPU splits its work by thread, so its last bits depend on the
    thread count; the sampler then carries that difference through every step. The count differs between the
    processes that draw S: a DataLoader worker runs one thread, the main process cores / processes (its
    choice depends on the machine, DDP ranks and parallel sweep jobs), so a streamed S changed with
    neon.synthetic.num_workers and a written one with the machine. Every block is therefore drawn on one
    thread (`fixed_threads`): the count every worker has anyway, and the only one MKL honours on any machine.
    That costs nothing in the workers nor on a GPU (the network's arithmetic runs there); it slows only a main
    process that draws S on a multi-core CPU, which more workers (stream) or DDP ranks (cached: they share
    the blocks) win back, with S unchanged. The thread count is restored after each block, never held
    across a yield: the fine-tune's steps between blocks keep the process's threads."""
    with fixed_threads():
        return generate_block(module, sampler, seeds, block, class_balanced)


def write_synthetic_set(
    module: NeonModule,
    sampler: Sampler,
    seeds: Sequence[int],
    out_dir: str | Path,
    block_size: int = 256,
    shard_size: int = 8192,
    class_balanced: bool = True,
    progress: bool = True,
) -> list[Path]:
    """Write S as shards `shard_XXXXX.pt`, computed block by block. Under DDP the ranks share the blocks
    (the union is the one-process S, bit for bit) and rank 0 joins them into shards. Finished blocks and
    shards are kept, so an interrupted run resumes where it stopped, with any number of processes."""
    if shard_size % block_size:
        raise NeonError(f"neon.synthetic.shard_size ({shard_size}) must be a multiple of block_size ({block_size})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = rank_world()
    shards = [(out_dir / f"shard_{s:05d}.pt", range(lo, min(len(seeds), lo + shard_size)))
              for s, lo in enumerate(range(0, len(seeds), shard_size))]
    blocks = [(out_dir / f"block_{b.start:09d}.pt", b)
              for path, span in shards if not path.exists() for b in _blocks(span.start, span.stop, block_size)]
    # rank 0 decides what is missing before anyone writes, so every rank sees the same list
    todo = broadcast([i for i, (path, _) in enumerate(blocks) if not path.exists()])
    mine = todo[rank::world]
    bar = tqdm(total=sum(len(blocks[i][1]) for i in mine), desc="synthesize S", unit="sample",
               disable=not progress or rank != 0)
    for i in mine:
        path, block = blocks[i]
        out = draw_block(module, sampler, seeds, block, class_balanced)
        with atomic_path(path) as tmp:
            torch.save(out, tmp)
        bar.update(len(block))
    bar.close()
    barrier()
    if rank == 0:
        for path, span in shards:
            if path.exists():
                continue
            parts = [p for p, b in blocks if span.start <= b.start < span.stop]
            loaded = [torch.load(p, weights_only=True) for p in parts]
            with atomic_path(path) as tmp:
                torch.save({k: torch.cat([part[k] for part in loaded]) for k in loaded[0]}, tmp)
            for p in parts:
                p.unlink()
    barrier()
    return [path for path, _ in shards]


def read_synthetic_set(directory: str | Path) -> TensorItems:
    """S read back from its shards (memory-mapped): items {'x', 'seed'[, 'label']}."""
    directory = Path(directory)
    files = sorted(directory.glob("shard_*.pt"))
    if not files:
        raise NeonError(f"no synthetic shards (shard_*.pt) in '{directory}': run task=synthesize first")
    shards = [torch.load(f, map_location="cpu", mmap=True, weights_only=True) for f in files]
    return TensorItems({k: torch.cat([s[k] for s in shards]) for k in shards[0]})


class SyntheticStream(IterableDataset):
    """S generated live from a frozen copy of θ_r, never stored. Worker k takes blocks k, k + W, ...;
    every sample is the same as in the written shards, whatever the worker count and threads (`draw_block`)."""

    def __init__(self, module: NeonModule, sampler: Sampler, seeds: Sequence[int], block_size: int, class_balanced: bool):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.sampler, self.seeds = sampler, list(seeds)
        self.block_size, self.class_balanced = block_size, class_balanced

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for b, block in enumerate(_blocks(0, len(self.seeds), self.block_size)):
            if b % workers == worker:
                out = draw_block(self.module, self.sampler, self.seeds, block, self.class_balanced)
                for i in range(len(block)):
                    yield {k: v[i] for k, v in out.items()}


class SyntheticDataModule(L.LightningDataModule):
    """Serves S for fine-tuning: from written shards (`directory`) or streamed live (`module`)."""

    def __init__(
        self,
        batch_size: int,
        directory: str | Path | None = None,
        module: NeonModule | None = None,
        sampler: Sampler | None = None,
        seeds: Sequence[int] = (),
        block_size: int = 256,
        class_balanced: bool = True,
        num_workers: int = 0,
        shuffle_seed: int = 0,
    ):
        super().__init__()
        if (directory is None) == (module is None):
            raise NeonError("SyntheticDataModule needs either a shard directory or a module to stream from")
        self.batch_size, self.num_workers, self.shuffle_seed = batch_size, num_workers, shuffle_seed
        self.directory = directory
        self.stream_args = (module, sampler, seeds, block_size, class_balanced)

    def train_dataloader(self) -> DataLoader:
        if self.directory is not None:
            return global_batch_loader(read_synthetic_set(self.directory), self.batch_size, self.shuffle_seed,
                                       self.num_workers)
        if rank_world()[1] > 1:
            raise NeonError("neon.synthetic.mode=stream runs in one process: with trainer=ddp use "
                            "neon.synthetic.mode=cached (the ranks then share the sampling)")
        return DataLoader(SyntheticStream(*self.stream_args), batch_size=self.batch_size, num_workers=self.num_workers)
