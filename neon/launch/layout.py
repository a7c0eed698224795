"""How many processes a job runs and who starts them: the count the trainer config asks for, and the layout an
outside launcher (torchrun, submitit, srun) set. Both the launcher (`distributed`) and the thread split
(`threads`) read them."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from neon.core.errors import NeonError


def processes_wanted(trainer: DictConfig) -> int:
    """Processes the trainer config asks for: devices × nodes under a DDP strategy, else 1."""
    if "ddp" not in str(trainer.get("strategy") or ""):
        return 1
    devices, nodes = trainer.get("devices", 1), int(trainer.get("num_nodes", 1) or 1)
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or devices < 1:
        raise NeonError(f"trainer.devices must be a number of devices per node with a DDP strategy, got {devices!r}")
    return devices * nodes


def external_launch() -> dict[str, Any] | None:
    """The process layout set by an outside launcher (torchrun, submitit with tasks_per_node > 1, srun),
    or None when this is a lone process."""
    env = os.environ
    if {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} <= env.keys() and int(env["WORLD_SIZE"]) > 1:
        world = int(env["WORLD_SIZE"])
        return {"rank": int(env["RANK"]), "world": world, "local_rank": int(env.get("LOCAL_RANK", env["RANK"])),
                "local_world": int(env.get("LOCAL_WORLD_SIZE", world)), "node": int(env.get("GROUP_RANK", 0)),
                "addr": env["MASTER_ADDR"], "port": int(env["MASTER_PORT"])}
    if int(env.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1 or int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment

        job = JobEnvironment()
        # submitit knows the hosts of both its local and its SLURM jobs; the port is derived from the job id
        te = TorchDistributedEnvironment()
        return {"rank": te.rank, "world": te.world_size, "local_rank": te.local_rank,
                "local_world": te.local_world_size, "node": job.node, "addr": te.master_addr, "port": te.master_port}
    return None
