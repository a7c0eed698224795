"""One seed per sample: random draws that do not depend on batch size, workers or processes; and S drawn on a
fixed count of torch threads (`fixed_threads`), so that its arithmetic does not depend on the machine either."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from neon.core.errors import NeonError

SEED_MAX = 2**32 - 1  # the range every seed of a run stays in (numpy's and most tools' limit)
# torch's CPU threads while a sample of the synthetic set S is drawn (see `fixed_threads`)
SAMPLING_THREADS = 1


def check_seed(value: object, key: str) -> int:
    """An integer seed in 0 … 2³²−1, or a one-line error naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise NeonError(f"{key}={value!r} is not a seed: use an integer from 0 to {SEED_MAX}")
    return value


def parse_seeds(spec: str | int | Sequence[int], key: str = "sample.seeds") -> list[int]:
    """Parse a seed list: `"0-49999"`, `"1,5,7-9"`, an int, or a list of ints; ranges run low-high, no seed
    twice, each in 0 … 2³²−1."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [check_seed(spec, key)]
    if not isinstance(spec, str):
        return _distinct([check_seed(s, key) for s in spec], spec, key)
    seeds: list[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise NeonError(f"{key}='{spec}' is not a seed list: use forms like '0-49999' or '1,5,7-9' "
                            f"(quote a comma list on the command line: \"{key}='1,5,7-9'\")") from None
        if first > last:
            raise NeonError(f"{key}='{spec}': the range {part.strip()} runs backwards; write it low-high ({last}-{first})")
        seeds.extend(range(check_seed(first, key), check_seed(last, key) + 1))
    return _distinct(seeds, spec, key)


def _distinct(seeds: list[int], spec: object, key: str) -> list[int]:
    if len(set(seeds)) != len(seeds):
        twice = next(s for i, s in enumerate(seeds) if s in seeds[:i])
        raise NeonError(f"{key}={spec!r} names seed {twice} twice: each seed gives one sample, list each once")
    return seeds


def mixed_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (a run seed and an epoch or step)."""
    return int(np.random.SeedSequence([int(p) % (1 << 63) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class PerSampleRNG:
    """A batch of independent generators, one per sample seed.

    Every draw takes, for each sample, the next values of that sample's own generator, so a
    sample's noise depends only on its seed (the convention of EDM's generate.py).
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(int(s) % (1 << 32)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal noise of shape [batch, *shape]."""
        return torch.stack(
            [torch.randn(shape, generator=g, device=self.device, dtype=dtype) for g in self.generators]
        )

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform [0, 1) noise of shape [batch, *shape]."""
        return torch.stack(
            [torch.rand(shape, generator=g, device=self.device, dtype=dtype) for g in self.generators]
        )

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        """Integers in [0, high) of shape [batch, *shape]."""
        return torch.stack(
            [torch.randint(high, shape, generator=g, device=self.device) for g in self.generators]
        )

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Noise shaped like a batch tensor `x`."""
        return self.randn(*x.shape[1:], dtype=x.dtype).to(x.device)


class StepNoise:
    """The training noise of one optimizer step, drawn for the whole global batch from a generator seeded
    by (seed, step); each process keeps its own rows. Any number of processes thus draws the same noise
    for the same sample of the global batch, and a DDP fine-tune follows the one-process one."""

    def __init__(self, seed: int, step: int, rows: slice, global_size: int, device: torch.device | str = "cpu"):
        self.rows, self.global_size, self.device = rows, global_size, torch.device(device)
        self.seed, self.step = seed, step
        self.generator = torch.Generator(self.device).manual_seed(mixed_seed(seed, step))

    @classmethod
    def single(cls, batch_size: int, seed: int = 0, step: int = 0, device: torch.device | str = "cpu") -> "StepNoise":
        """Noise for a whole batch in one process (tests, benchmarks, bare loops)."""
        return cls(seed, step, slice(0, batch_size), batch_size, device)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal noise of shape [local batch, *shape]."""
        full = torch.randn((self.global_size, *shape), generator=self.generator, device=self.device, dtype=dtype)
        return full[self.rows]

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform [0, 1) noise of shape [local batch, *shape]."""
        full = torch.rand((self.global_size, *shape), generator=self.generator, device=self.device, dtype=dtype)
        return full[self.rows]

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        """Integers in [0, high) of shape [local batch, *shape]."""
        full = torch.randint(high, (self.global_size, *shape), generator=self.generator, device=self.device)
        return full[self.rows]

    def per_sample(self, stream: int = 1) -> PerSampleRNG:
        """One generator per local sample, seeded by (seed, step, stream, global row): for large draws
        (dropout masks) that each process makes only for its own rows."""
        seeds = [mixed_seed(self.seed, self.step, stream, row) for row in range(self.rows.start, self.rows.stop)]
        return PerSampleRNG(seeds, self.device)


@contextmanager
def fixed_threads(n: int = SAMPLING_THREADS) -> Iterator[int]:
    """torch's CPU threads set to `n` inside, this process's count restored on leaving.

    A parallel matrix product or sum splits its work by thread count, so its last bits depend on that count;
    arithmetic drawn under a fixed count does not. The default, one thread, is the only count that is the same
    in every process: a DataLoader worker always runs one thread (torch sets it), and MKL may quietly use
    fewer threads than asked for on a machine with fewer cores, so no larger count is reproducible."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
