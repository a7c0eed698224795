"""The degradation data: the synthetic set S drawn from θ_r, written to shards or streamed live."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from neon.errors import NeonError
from neon.io import atomic_path
from neon.module import NeonModule, Sampler


def balanced_labels(indices: Sequence[int], num_classes: int) -> torch.Tensor | None:
    """Class i mod C for sample i, so every class is equally represented (None if unconditional)."""
    if num_classes <= 0:
        return None
    return torch.tensor([i % num_classes for i in indices], dtype=torch.long)


def generate_block(
    module: NeonModule, sampler: Sampler, seeds: Sequence[int], indices: Sequence[int], class_balanced: bool
) -> dict[str, torch.Tensor]:
    """Samples for one block of seeds, as CPU tensors {'x', 'seed'[, 'label']}."""
    labels = balanced_labels(indices, module.num_classes) if class_balanced else None
    if labels is not None:
        labels = labels.to(module.device)
    with torch.no_grad():
        x, y = module.generate([seeds[i] for i in indices], sampler, labels)
    out = {"x": x.detach().cpu(), "seed": torch.tensor([seeds[i] for i in indices], dtype=torch.long)}
    if y is not None:
        out["label"] = y.detach().cpu()
    return out


def _blocks(lo: int, hi: int, block_size: int) -> Iterator[range]:
    # Blocks are aligned to global sample indices, so a sample is computed in the same company
    # (hence to the same bits) however the work is split into shards, workers or ranks.
    start = lo
    while start < hi:
        end = min(hi, (start // block_size + 1) * block_size)
        yield range(start, end)
        start = end


def write_synthetic_set(
    module: NeonModule,
    sampler: Sampler,
    seeds: Sequence[int],
    out_dir: str | Path,
    block_size: int = 256,
    shard_size: int = 8192,
    class_balanced: bool = True,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> list[Path]:
    """Write S as shards `shard_XXXXX.pt`; rank r writes shards r, r + W, ...; finished shards are kept."""
    if shard_size % block_size:
        raise NeonError(f"neon.synthetic.shard_size ({shard_size}) must be a multiple of block_size ({block_size})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(len(seeds) / shard_size)
    paths = []
    mine = range(rank, n_shards, world_size)
    bar = tqdm(total=sum(min(len(seeds), (s + 1) * shard_size) - s * shard_size for s in mine),
               desc="synthesize S", unit="sample", disable=not progress)
    for s in mine:
        path = out_dir / f"shard_{s:05d}.pt"
        lo, hi = s * shard_size, min(len(seeds), (s + 1) * shard_size)
        if not path.exists():  # resume: shards already written are complete (atomic rename)
            parts = []
            for block in _blocks(lo, hi, block_size):
                parts.append(generate_block(module, sampler, seeds, block, class_balanced))
                bar.update(len(block))
            shard = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            with atomic_path(path) as tmp:
                torch.save(shard, tmp)
        else:
            bar.update(hi - lo)
        paths.append(path)
    bar.close()
    return paths


class SyntheticShards(Dataset):
    """S read back from its shards (memory-mapped): items {'x', 'seed'[, 'label']}."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        files = sorted(directory.glob("shard_*.pt"))
        if not files:
            raise NeonError(f"no synthetic shards (shard_*.pt) in '{directory}': run task=synthesize first")
        shards = [torch.load(f, map_location="cpu", mmap=True, weights_only=True) for f in files]
        self.data = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}

    def __len__(self) -> int:
        return len(self.data["x"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.data.items()}


class SyntheticStream(IterableDataset):
    """S generated live from a frozen copy of θ_r, never stored. Worker k takes blocks k, k + W, ...;
    every sample is the same as in the written shards, whatever the worker count."""

    def __init__(self, module: NeonModule, sampler: Sampler, seeds: Sequence[int], block_size: int, class_balanced: bool):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.sampler, self.seeds = sampler, list(seeds)
        self.block_size, self.class_balanced = block_size, class_balanced

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for b, block in enumerate(_blocks(0, len(self.seeds), self.block_size)):
            if b % workers == worker:
                out = generate_block(self.module, self.sampler, self.seeds, block, self.class_balanced)
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

    def dataset(self) -> Dataset:
        """S as a dataset: the shards, or a live stream."""
        if self.directory is not None:
            return SyntheticShards(self.directory)
        return SyntheticStream(*self.stream_args)

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset()
        if isinstance(ds, IterableDataset):
            return DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers)
        gen = torch.Generator().manual_seed(self.shuffle_seed)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=True, generator=gen, num_workers=self.num_workers)
