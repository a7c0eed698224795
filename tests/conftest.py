"""Fixtures shared by the test modules (helpers that are plain functions live in tests/helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import TINY_TOY, run_cli


def pytest_configure(config) -> None:
    """Share the cores among xdist's workers: each worker, and every `neon` process a test starts, gets
    cores / workers torch threads (through OMP_NUM_THREADS, which the command obeys). Left alone, every process
    takes one thread per core and the oversubscribed CPU runs some tests many times slower.

    Only a matter of speed: no test may need it to pass. Serial runs keep torch's default (a thread per core)
    and must pass too; results that would follow the thread count are made not to (S is drawn on a fixed
    count, neon.data.synthetic.draw_block) or say so (θ_r and θ_s trained on the CPU keep it in their cache
    keys)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and not os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        import torch

        from neon.launch.threads import machine_cores

        threads = max(1, machine_cores() // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One artifact cache for the whole session (and every xdist worker): runs with the same θ_r config pretrain
    it once. Safe to share because the cache is content-addressed and builds under a lock; tests that count or
    corrupt cache entries keep a private cache instead."""
    root = tmp_path_factory.getbasetemp()
    if root.name.startswith("popen-gw"):  # an xdist worker: share with the other workers of this session
        root = root.parent
    cache = root / "shared_cache"
    cache.mkdir(exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def tiny_toy_run(tmp_path_factory) -> Path:
    """One tiny end-to-end toy run shared by several tests; returns its tmp folder (its cache is private)."""
    tmp = tmp_path_factory.mktemp("toy")
    proc = run_cli(TINY_TOY, tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp
