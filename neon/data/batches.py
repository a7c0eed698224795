"""Training batches that do not depend on the process count: one stream of global batches, drawn from
a seed; under DDP each rank takes its contiguous share of every global batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from neon.core.collectives import rank_world
from neon.core.errors import NeonError
from neon.core.seeding import mixed_seed


class TensorItems(Dataset):
    """Named tensors of equal length; indexing with a list of indices returns the stacked batch."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise NeonError(f"dataset tensors differ in length: {({k: len(v) for k, v in tensors.items()})}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int | Sequence[int]) -> dict[str, torch.Tensor]:
        if not isinstance(index, int):
            index = torch.as_tensor(index, dtype=torch.long)
        return {k: v[index] for k, v in self.tensors.items()}


class GlobalBatchSampler(Sampler[list[int]]):
    """Endless global batches of `batch_size` indices: each epoch a fresh permutation (from the seed and
    the epoch) cut into whole batches; with `batch_size` ≥ n, every batch is the whole set. This process
    yields rows [r·b, (r+1)·b) of each global batch, b = global size / world size."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int | None = None, world: int | None = None):
        if n <= 0:
            raise NeonError("the training set is empty")
        r, w = rank_world()
        self.rank, self.world = (r if rank is None else rank), (w if world is None else world)
        self.n, self.seed = n, seed
        self.full = batch_size >= n
        self.global_size = n if self.full else batch_size
        if self.global_size % self.world:
            what = f"the whole set of {n}" if self.full else f"batch size {batch_size}"
            raise NeonError(f"{what} cannot be split evenly over {self.world} processes: choose a batch size "
                            f"divisible by the number of processes")
        self.local_size = self.global_size // self.world
        self.start = 0  # global batches already consumed (set when a training resumes from a checkpoint)

    @property
    def rows(self) -> slice:
        """This process's rows of each global batch."""
        return slice(self.rank * self.local_size, (self.rank + 1) * self.local_size)

    def __iter__(self) -> Iterator[list[int]]:
        # a resumed training continues the stream where it stopped: skip `start` global batches
        starts = range(0, self.n - self.global_size + 1, self.global_size)
        epoch, skip = divmod(self.start, len(starts))
        while True:
            if self.full:
                order = torch.arange(self.n)
            else:
                order = torch.randperm(self.n, generator=torch.Generator().manual_seed(mixed_seed(self.seed, epoch)))
            for start in starts[skip:]:
                yield order[start:start + self.global_size][self.rows].tolist()
            epoch, skip = epoch + 1, 0


def global_batch_loader(dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0) -> DataLoader:
    """A loader of this process's share of each global batch (the dataset indexes a whole list at once)."""
    sampler = GlobalBatchSampler(len(dataset), batch_size, seed)
    # batch_size=None: the dataset returns a whole batch for a list of indices, no per-item collation
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers)
