"""Several processes in one job (DDP): who runs them and how they find each other. Every stage runs on every
rank; the collective operations the stages use once the processes run are neon.core.collectives."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf

from neon.core.collectives import broadcast
from neon.core.errors import NeonError
from neon.launch.layout import external_launch, processes_wanted

log = logging.getLogger("neon")


# ------------------------------------------------------------------ who starts the processes, and how they meet


def free_port() -> int:
    """A TCP port free on this machine now (for a local process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(layout: dict[str, Any], accelerator: str) -> None:
    """Join the job's process group (gloo on CPUs, NCCL on GPUs) and export torchrun's variables."""
    os.environ.update({
        "MASTER_ADDR": str(layout["addr"]), "MASTER_PORT": str(layout["port"]), "RANK": str(layout["rank"]),
        "WORLD_SIZE": str(layout["world"]), "LOCAL_RANK": str(layout["local_rank"]),
        "LOCAL_WORLD_SIZE": str(layout["local_world"]), "GROUP_RANK": str(layout["node"]),
        "NODE_RANK": str(layout["node"]),
    })
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(layout["local_rank"])
    dist.init_process_group("nccl" if gpu else "gloo", rank=layout["rank"], world_size=layout["world"],
                            timeout=timedelta(minutes=int(os.environ.get("NEON_DIST_TIMEOUT_MIN", "60"))))


def launch(entry: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a task in the processes the trainer config asks for. One process: call it. An outside launcher
    (torchrun, submitit, srun) started them: join its group. Otherwise spawn them here, one per device, each
    running the whole task; rank 0's result is returned. Tasks without `task.ddp` run as they are."""
    if not cfg.task.get("ddp", False):
        return entry(cfg)
    wanted = processes_wanted(cfg.trainer)
    layout = external_launch()
    if layout is not None:
        if layout["world"] != wanted:
            raise NeonError(
                f"the launcher started {layout['world']} processes but the trainer asks for {wanted} "
                f"(trainer.devices × trainer.num_nodes with a DDP strategy): make them agree, e.g. "
                f"hydra.launcher.tasks_per_node=trainer.devices")
        return _run_rank(entry, cfg, layout)
    if wanted == 1:
        return entry(cfg)
    if int(cfg.trainer.get("num_nodes", 1) or 1) > 1:
        raise NeonError("trainer.num_nodes > 1 needs a launcher that starts every process: "
                        "hydra/launcher=submitit_slurm (tasks_per_node = GPUs per node), srun or torchrun")
    return _spawn(entry, cfg, wanted)


def _spawn(entry: Callable[[DictConfig], Any], cfg: DictConfig, world: int) -> Any:
    # the children have no Hydra context: give them the config with every interpolation resolved
    resolved = OmegaConf.to_container(cfg, resolve=True)
    log_files = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    queue = mp.get_context("spawn").SimpleQueue()
    from neon.launch.threads import launcher_jobs

    jobs = launcher_jobs()[0]  # the children have no Hydra context to find it in
    context = mp.start_processes(_spawned_rank, args=(entry, resolved, world, jobs, free_port(), log_files, queue),
                                 nprocs=world, start_method="spawn", join=False)
    messages: list[tuple[str, Any]] = []
    try:
        while not context.join(timeout=0.2):
            while not queue.empty():  # drained while running: a large result must not block its sender
                messages.append(queue.get())
    except mp.ProcessExitedException:
        pass  # a rank stopped on a user error: its message is in the queue (the others were terminated)
    while not queue.empty():
        messages.append(queue.get())
    errors = [value for kind, value in messages if kind == "error"]
    if errors:
        raise NeonError(errors[0])
    results = [value for kind, value in messages if kind == "result"]
    if not results:
        raise NeonError(f"a rank of the {world}-process job stopped without a result: see its output above")
    return results[0]


def _run_rank(entry: Callable[[DictConfig], Any], cfg: DictConfig, layout: dict[str, Any]) -> Any:
    if layout["rank"] != 0:
        log.setLevel(logging.WARNING)  # one account of the job: rank 0's
    init_process_group(layout, str(cfg.trainer.get("accelerator", "auto")))
    # ranks started apart (torchrun) each got a Hydra run folder of their own: all use rank 0's
    cfg.paths.output_dir = broadcast(str(cfg.paths.output_dir))
    try:
        return entry(cfg)
    finally:
        dist.destroy_process_group()


def _spawned_rank(rank: int, entry, resolved: dict, world: int, jobs: int, port: int, log_files: list[str],
                  queue) -> None:
    from neon.core.errors import user_error
    from neon.launch.loggers import finish_loggers, quiet_libraries
    from neon.launch.threads import apply_threads

    # a fresh interpreter: set up logging and threads as the parent job did
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if rank == 0:
        handlers += [logging.FileHandler(f) for f in log_files]
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, handlers=handlers,
                        format=f"[%(asctime)s][%(name)s][%(levelname)s][rank {rank}] - %(message)s")
    quiet_libraries()
    cfg = OmegaConf.create(resolved)
    apply_threads(cfg, ranks=world, jobs=jobs)
    layout = {"rank": rank, "world": world, "local_rank": rank, "local_world": world, "node": 0,
              "addr": "127.0.0.1", "port": port}
    try:
        result = _run_rank(entry, cfg, layout)
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        queue.put(("error", f"rank {rank}: {message}"))
        raise SystemExit(2) from None
    finally:
        finish_loggers()
    if rank == 0:
        queue.put(("result", result))
