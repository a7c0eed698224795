"""What every process of a job does with its loggers and the libraries' chatter, the command's own process as
much as a DDP rank spawned from it: library banners silenced at the start, the wandb run closed at the end."""

from __future__ import annotations

import logging
import sys
import warnings


def quiet_libraries() -> None:
    """Silence library chatter that says nothing about the run."""
    # Lightning's start-up banners (accelerators, tips) and a deprecation inside Lightning itself
    # say nothing about the run; the log keeps what does.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # MAUVE's k-means library: which CPU build it loads
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    # frozen parts (VAR's tokenizer) stay in eval mode on purpose
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def finish_loggers() -> None:
    """Close the job's wandb run, if any."""
    # one wandb run per job: close it so the next job of a sweep starts its own
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
