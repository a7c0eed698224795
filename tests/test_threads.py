"""CPU threads per process: the cores shared among the processes a job runs on this machine."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf

import neon.threads as threads
from neon.errors import NeonError
from neon.threads import apply_threads, choose_threads


def config(threads_value=None, ddp: bool = True, devices: int = 1, strategy: str | None = None):
    trainer = {"devices": devices, "num_nodes": 1, **({"strategy": strategy} if strategy else {})}
    return OmegaConf.create({"threads": threads_value, "task": {"ddp": ddp}, "trainer": trainer})


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(threads, "machine_cores", lambda: 8)
    for var in ("OMP_NUM_THREADS", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
                "SUBMITIT_LOCAL_NTASKS", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)


def test_one_process_gets_every_core(eight_cores):
    assert choose_threads(config()) == (8, "8 cores / 1 process")


def test_ddp_ranks_spawned_here_share_the_cores(eight_cores):
    assert choose_threads(config(devices=2, strategy="ddp"))[0] == 4
    assert choose_threads(config(devices=2, strategy="ddp", ddp=False))[0] == 8  # a one-process task


def test_ranks_started_by_torchrun_share_the_cores(eight_cores, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "6")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # 3 of the 6 ranks on this node
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert choose_threads(config(devices=3, strategy="ddp")) == (2, "8 cores / 3 processes")


def test_launcher_jobs_and_ranks_multiply_and_never_leave_less_than_one_thread(eight_cores):
    assert choose_threads(config(), ranks=2, jobs=2) == (2, "8 cores / 4 processes: 2 ranks × 2 launcher jobs")
    assert choose_threads(config(), ranks=1, jobs=3) == (2, "8 cores / 3 processes (launcher jobs)")
    assert choose_threads(config(), ranks=4, jobs=5)[0] == 1


def test_explicit_settings_win(eight_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(config(devices=2, strategy="ddp")) == (3, "OMP_NUM_THREADS")
    assert choose_threads(config(threads_value=5)) == (5, "threads=")
    with pytest.raises(NeonError, match="threads must be a positive integer"):
        choose_threads(config(threads_value=0))


def test_the_choice_is_applied_and_logged(eight_cores, caplog):
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="neon"):
            assert apply_threads(config(), ranks=4) == 2
        assert torch.get_num_threads() == 2
        assert "threads: 2 (8 cores / 4 processes)" in caplog.text
    finally:
        torch.set_num_threads(before)
