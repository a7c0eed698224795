"""CPU threads per process: the cores shared among the processes a job runs on this machine."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf

import neon.launch.threads as threads
from neon.core.errors import NeonError
from neon.core.seeding import fixed_threads
from neon.launch.threads import apply_threads, choose_threads


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
    assert choose_threads(config(threads_value=5)) == (5, "threads=5")
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


def test_fixed_threads_hold_inside_and_restore_the_process_count_even_on_error():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with fixed_threads() as n:
            assert n == torch.get_num_threads() == 1  # S's draws: the count a DataLoader worker has
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), fixed_threads(3):
            assert torch.get_num_threads() == 3
            raise RuntimeError
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep(task: list[str], max_batch_size=None, params=None, target=BASIC):
    return OmegaConf.create({"sweeper": {"_target_": target, "max_batch_size": max_batch_size, "params": params},
                             "overrides": {"task": task}})


def test_sweep_width_counts_what_the_basic_sweeper_launches_at_once():
    assert threads.sweep_width(sweep(["seed=0,1,2", "neon.budget_steps=range(1,5)", "hydra/launcher=submitit_local"])) == 12
    assert threads.sweep_width(sweep(["seed=0,1,2"], params={"sampler.num_steps": "12,18"})) == 6
    assert threads.sweep_width(sweep(["seed=0,1", "seed=3,4,5"])) == 3  # the last override of a key wins
    assert threads.sweep_width(sweep(["seed=0,1,2,3,4,5,6,7,8,9"], max_batch_size=4)) == 4
    assert threads.sweep_width(sweep(["neon.w=[0,1]"])) == 1  # a list value, not a sweep
    assert threads.sweep_width(sweep(["seed=0,1"], target="hydra_plugins.optuna.OptunaSweeper")) is None
    assert threads.sweep_width(sweep(["x=interval(0,1)"])) is None


def multirun_config(args: list[str], sweep_dir):
    """The config of one job of a multirun with these overrides, set as Hydra's current one."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from tests.helpers import compose_config

    cfg = compose_config(args)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(sweep_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_submitit_local_jobs_share_the_cores_by_their_sweeps_width(eight_cores, tmp_path):
    from hydra.core.hydra_config import HydraConfig

    try:
        cfg = multirun_config(["seed=0", "hydra/launcher=submitit_local"], tmp_path)
        # no multirun.yaml (the sweep's overrides are unknown): one job, as before
        assert choose_threads(cfg) == (8, "8 cores / 1 process")
        parent = OmegaConf.create({"hydra": OmegaConf.to_container(cfg.hydra)})
        parent.hydra.overrides.task = ["seed=0,1,2,3", "hydra/launcher=submitit_local"]  # written before launching
        OmegaConf.save(parent, tmp_path / "multirun.yaml")
        assert choose_threads(cfg) == (2, "8 cores / 4 processes (submitit_local jobs)")
        assert choose_threads(cfg, ranks=2)[0] == 1  # two ranks in each of four jobs
        # the basic launcher runs the same sweep one job at a time
        cfg = multirun_config(["seed=0"], tmp_path)
        assert choose_threads(cfg) == (8, "8 cores / 1 process")
    finally:
        HydraConfig.instance().cfg = None
