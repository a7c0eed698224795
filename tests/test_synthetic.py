"""S depends only on θ_r, the sampler and the seeds: not on batch size, workers, threads, shards or ranks."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from itertools import islice
from pathlib import Path

import pytest
import torch

from neon.core.errors import NeonError
from neon.core.seeding import PerSampleRNG, parse_seeds
from neon.data.synthetic import SyntheticDataModule, read_synthetic_set, write_synthetic_set
from neon.families.toy2d import ToyDiffusion, ddim
from tests.process_group import in_process_group

SEEDS = list(range(100, 161))  # 61 samples: blocks and shards do not divide it evenly


@pytest.fixture(scope="module")
def toy() -> ToyDiffusion:
    torch.manual_seed(0)
    return ToyDiffusion().eval()


class ThreadSensitive(ToyDiffusion):
    """The toy with one parallel sum in its sampler: a sum of 2²⁰ numbers, which torch splits among its threads,
    shifts every sample, so a sample's last bits follow the thread count of the process that computes it (the
    toy's own products are too small to be split on some CPUs, large networks' are not)."""

    def generate(self, seeds, sampler, labels=None):
        x, y = super().generate(seeds, sampler, labels)
        return x + (torch.arange(1 << 20, dtype=x.dtype) * 0.37).sin().sum(), y


@pytest.fixture(scope="module")
def sensitive() -> ThreadSensitive:
    torch.manual_seed(0)
    return ThreadSensitive().eval()


@contextmanager
def torch_threads(n: int):
    """This process's torch threads set to n (whatever the suite's runner chose), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sampler():
    return partial(ddim, steps=5, score_scale=1.1)


def by_seed(batches) -> dict[int, torch.Tensor]:
    out = {}
    for batch in batches:
        for seed, x in zip(batch["seed"].tolist(), batch["x"], strict=True):
            assert seed not in out
            out[seed] = x
    return out


def test_noise_of_a_seed_does_not_depend_on_its_batch():
    alone = PerSampleRNG([7]).randn(3)
    among = PerSampleRNG([1, 2, 7, 9]).randn(3)
    assert torch.equal(alone[0], among[2])
    assert not torch.equal(among[0], among[1])


def test_parse_seeds():
    assert parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    assert parse_seeds(5) == [5] and parse_seeds([1, 2]) == [1, 2]
    with pytest.raises(NeonError, match="is not a seed list"):
        parse_seeds("a-b")


def _write_share(rank: int, out: str, shard_size: int) -> None:
    torch.manual_seed(0)
    write_synthetic_set(ToyDiffusion().eval(), sampler(), SEEDS, out, block_size=8, shard_size=shard_size,
                        progress=False)


@pytest.mark.slow
def test_shards_are_identical_across_shard_sizes_and_ranks(tmp_path: Path):
    in_process_group(1, _write_share, str(tmp_path / "one"), 64)
    in_process_group(3, _write_share, str(tmp_path / "three"), 16)  # three processes share the blocks
    a, b = read_synthetic_set(tmp_path / "one").tensors, read_synthetic_set(tmp_path / "three").tensors
    assert torch.equal(a["seed"], torch.tensor(SEEDS)) and torch.equal(a["seed"], b["seed"])
    assert torch.equal(a["x"], b["x"])
    assert sorted(p.name for p in (tmp_path / "three").iterdir()) == [f"shard_0000{i}.pt" for i in range(4)]


def test_the_thread_sensitive_toy_is_sensitive(sensitive):
    # what makes the tests below able to fail: drawn without a fixed thread count, its S follows the threads
    draws = {}
    for n in (1, 2):
        with torch_threads(n):
            draws[n] = sensitive.generate(SEEDS, sampler())[0]
    assert not torch.equal(draws[1], draws[2])


@pytest.mark.parametrize("mode", ["shards", "stream"])
def test_loader_batch_size_and_workers_do_not_change_S(sensitive, tmp_path: Path, mode: str):
    # the main process runs two threads, a DataLoader worker one, whatever threads the test runner gave
    with torch_threads(2):
        write_synthetic_set(sensitive, sampler(), SEEDS, tmp_path / "s", block_size=8, shard_size=64,
                            progress=False)
        reference = by_seed([read_synthetic_set(tmp_path / "s").tensors])
        for batch_size, workers in ((1, 0), (7, 0), (7, 2)):
            if mode == "shards":
                dm = SyntheticDataModule(batch_size, directory=tmp_path / "s", num_workers=workers)
            else:
                dm = SyntheticDataModule(batch_size, module=sensitive, sampler=sampler(), seeds=SEEDS, block_size=8,
                                         num_workers=workers)
            loader = dm.train_dataloader()
            # shards: endless global batches, one epoch is its whole batches; a stream ends after S
            got = by_seed(loader if mode == "stream" else islice(loader, len(SEEDS) // batch_size))
            assert len(got) == (len(SEEDS) if mode == "stream" else len(SEEDS) // batch_size * batch_size)
            assert all(torch.equal(got[s], reference[s]) for s in got), (batch_size, workers)


def test_S_does_not_depend_on_the_thread_count_of_the_process_that_draws_it(sensitive, tmp_path: Path):
    written, streamed = {}, {}
    for n in (1, 2):
        with torch_threads(n):
            write_synthetic_set(sensitive, sampler(), SEEDS, tmp_path / str(n), block_size=8, shard_size=64,
                                progress=False)
            written[n] = read_synthetic_set(tmp_path / str(n)).tensors["x"]
            loader = SyntheticDataModule(7, module=sensitive, sampler=sampler(), seeds=SEEDS, block_size=8).train_dataloader()
            batches = []
            for batch in loader:
                # the draw fixes the threads for its blocks only: between them (the fine-tune's steps) they are n
                assert torch.get_num_threads() == n
                batches.append(batch["x"])
            streamed[n] = torch.cat(batches)
    assert torch.equal(written[1], written[2])
    assert torch.equal(streamed[1], written[1]) and torch.equal(streamed[2], written[1])


def test_interrupted_synthesis_resumes_missing_shards_only(toy, tmp_path: Path):
    paths = write_synthetic_set(toy, sampler(), SEEDS, tmp_path, block_size=8, shard_size=16, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in paths}
    paths[1].unlink()
    write_synthetic_set(toy, sampler(), SEEDS, tmp_path, block_size=8, shard_size=16, progress=False)
    assert paths[1].exists()
    assert all(p.stat().st_mtime_ns == stamps[p] for p in paths if p != paths[1])


def test_shard_size_must_be_a_multiple_of_block_size(toy, tmp_path: Path):
    with pytest.raises(NeonError, match="multiple of block_size"):
        write_synthetic_set(toy, sampler(), SEEDS, tmp_path, block_size=8, shard_size=12, progress=False)


class Conditional(ToyDiffusion):
    """A toy that is class-conditional: the label shifts the sample, and labels are drawn per seed."""

    def __init__(self):
        super().__init__()
        self.num_classes = 3

    def generate(self, seeds, sampler, labels=None):
        from neon.core.seeding import PerSampleRNG

        rng = PerSampleRNG(seeds)
        x = rng.randn(2)
        if labels is None:
            labels = rng.randint(self.num_classes).reshape(-1)
        return x + 10 * labels.reshape(-1, 1).float(), labels


def test_labels_are_kept_and_class_balanced_on_request(tmp_path: Path):
    model = Conditional()
    write_synthetic_set(model, sampler(), SEEDS, tmp_path / "bal", block_size=8, shard_size=16, progress=False)
    data = read_synthetic_set(tmp_path / "bal").tensors
    assert torch.equal(data["label"], torch.arange(len(SEEDS)) % 3)
    assert torch.equal((data["x"][:, 0] / 10).round().long(), data["label"])  # each label stays with its sample
    write_synthetic_set(model, sampler(), SEEDS, tmp_path / "free", block_size=8, shard_size=16,
                        class_balanced=False, progress=False)
    free = read_synthetic_set(tmp_path / "free").tensors
    assert not torch.equal(free["label"], data["label"]) and set(free["label"].tolist()) <= {0, 1, 2}
    batch = next(iter(SyntheticDataModule(5, directory=tmp_path / "bal").train_dataloader()))
    assert set(batch) == {"x", "label", "seed"}
