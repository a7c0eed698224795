"""The `neon` command (also `python -m neon`): a Hydra application whose `task=` picks the stage."""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from neon.core.errors import NeonError, user_error
from neon.launch.loggers import finish_loggers, quiet_libraries
from neon.launch.preflight import CONF_DIR, check_job, hydra_context, preflight


def _sweep_group() -> str | None:
    # one wandb group per sweep: the sweep folder's name; single runs have no group
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None


def _wandb_offline() -> bool:
    # without credentials wandb cannot reach its server: log offline instead of failing the job
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return False
    netrc = Path.home() / ".netrc"
    return not (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


def readme_path() -> str:
    """Where the README is (`neon --help` names it): beside the configs in a source checkout."""
    readme = CONF_DIR.parent / "README.md"
    return str(readme) if readme.is_file() else "README.md of the neon project (not installed with the package)"


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("neon_readme", readme_path, replace=True)
    OmegaConf.register_new_resolver("neon_sweep_group", _sweep_group, replace=True)
    OmegaConf.register_new_resolver("neon_wandb_offline", _wandb_offline, replace=True)


def _job(cfg: DictConfig, checked: bool = False) -> float | None:
    """One job: its checks (unless the pre-flight made them on this very config), threads, then the task."""
    from hydra.core.hydra_config import HydraConfig

    from neon.launch.distributed import launch
    from neon.launch.threads import apply_threads
    from neon.stages.run import current_stage

    quiet_libraries()
    try:
        if not checked:  # a sweep's job, composed by Hydra
            check_job(cfg, HydraConfig.get().runtime.choices)
        apply_threads(cfg)
        summary = launch(get_method(cfg.task.entry), cfg)
    except (NeonError, MissingMandatoryValue, InterpolationToMissingValueError) as exc:
        print(f"neon: error: {user_error(exc)}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit) as exc:
        # Lightning turns Ctrl-C during fit into exit(1) after its own shutdown: the flag tells it apart
        if not (isinstance(exc, KeyboardInterrupt) or _interrupted):
            raise
        print(f"neon: interrupted during {current_stage()}; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    finally:
        finish_loggers()
    # The value a Hydra sweeper (e.g. Optuna) minimises.
    return summary.get("fid_neon") if isinstance(summary, dict) else None


# Hydra's own entry: multiruns (each job composed by the sweeper) and Hydra's flags (--help, --cfg, ...)
_run = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_job)


def run_composed(cfg: DictConfig, app) -> None:
    """A single run on the config the pre-flight composed and checked (with the Hydra composer `app`), as
    Hydra's run mode runs it (run folder, saved configs, job logging, callbacks), without composing it again."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext, RunMode
    from omegaconf import open_dict

    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    with open_dict(cfg):  # as Hydra records a run whose mode no config set
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.overrides.hydra.append("hydra.mode=RUN")
    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name="config")
    ret = run_job(hydra_context=HydraContext(config_loader=app.config_loader, callbacks=callbacks),
                  task_function=functools.partial(_job, checked=True), config=cfg, job_dir_key="hydra.run.dir",
                  job_subdir_key=None, configure_logging=True)
    callbacks.on_run_end(config=cfg, config_name="config", job_return=ret)
    _ = ret.return_value  # the job's exception, if it raised one


_interrupted = False


def _on_interrupt(signum: int, frame) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def main() -> None:
    """Entry point of the `neon` command."""
    signal.signal(signal.SIGINT, _on_interrupt)
    _register_resolvers()
    try:
        with hydra_context(CONF_DIR) as app:  # one composer: the pre-flight's composition is the run's
            try:
                checked = preflight(sys.argv[1:], app=app)
            except (NeonError, MissingMandatoryValue, InterpolationToMissingValueError) as exc:
                print(f"neon: error: {user_error(exc)}", file=sys.stderr)
                sys.exit(2)
            except KeyboardInterrupt:
                print("neon: interrupted before the run started; nothing was written", file=sys.stderr)
                sys.exit(130)
            if checked.cfg is not None:
                run_composed(checked.cfg, app)
                return
        sys.argv[1:] = checked.args  # a sweep (Hydra composes each job) or one of Hydra's own flags
        _run()
    except KeyboardInterrupt:  # during Hydra's own start-up or shutdown, outside the task
        print("neon: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
