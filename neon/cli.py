"""The `neon` command (also `python -m neon`): a Hydra application whose `task=` picks the stage."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import tempfile
import warnings
from pathlib import Path

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from neon.errors import NeonError


def config_dir() -> Path:
    """The folder of the YAML configs: $NEON_CONFIG_DIR, the source tree's conf/, or the installed copy."""
    candidates = [
        os.environ.get("NEON_CONFIG_DIR"),
        Path(__file__).resolve().parent.parent / "conf",
        Path(sys.prefix) / "share" / "neon" / "conf",
    ]
    for c in candidates:
        if c and (Path(c) / "config.yaml").is_file():
            return Path(c).resolve()
    return Path(candidates[1])  # reported by check_overrides below


CONF_DIR = config_dir()


def check_overrides(args: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Reject an unknown option of a config group (task=, model=, ...) in one line, before Hydra starts."""
    if not (conf_dir / "config.yaml").is_file():
        raise NeonError(f"configs not found at '{conf_dir}': reinstall with `pip install -e .` or set NEON_CONFIG_DIR")
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        group = conf_dir / key
        if "." in key or "/" in key or not group.is_dir() or value in ("null", ""):
            continue
        choices = sorted(str(p.relative_to(group).with_suffix("")) for p in group.rglob("*.yaml"))
        for option in value.split(","):
            if option not in choices:
                raise NeonError(f"unknown {key} '{option}': choose one of {', '.join(choices)}")


def check_keys(args: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Reject an override of a key that does not exist, in one line with the valid keys, before any work."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    plain = [a for a in args if "=" in a and not a.startswith(("-", "hydra.", "hydra/", "+", "~"))]
    sweep_free = [a.split("=", 1)[0] + "=" + _first_choice(a.split("=", 1)[1]) for a in plain]
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        try:
            compose("config", overrides=sweep_free)
        except ConfigCompositionException as exc:
            bad = next((a for a in sweep_free if f"'{a.split('=', 1)[0]}'" in str(exc)), None)
            if bad is None or "not in struct" not in str(exc.__cause__ or exc):
                raise NeonError(str(exc).splitlines()[0]) from None
            key = bad.split("=", 1)[0]
            parent = key.rpartition(".")[0]
            groups_only = [a for a in sweep_free if "." not in a.split("=", 1)[0]]
            node = OmegaConf.select(compose("config", overrides=groups_only), parent) if parent else None
            valid = sorted(node.keys()) if node is not None and hasattr(node, "keys") else []
            hint = f"; {parent or 'the config'} has: {', '.join(valid)}" if valid else ""
            raise NeonError(f"no config key '{key}' (use +{key}=... to add a new one){hint}") from None


def check_override_syntax(args: list[str]) -> None:
    """Parse every override as Hydra will, and say in one line which one cannot be read and how to write it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as exc:
            reason = str(exc).strip().splitlines()[0]
            raise NeonError(f"cannot read the override {arg!r} ({reason}): {_syntax_hint(arg)}") from None


def _syntax_hint(arg: str) -> str:
    value = arg.split("=", 1)[1]
    if value.startswith("{"):
        return ("write a mapping with unquoted keys, key={a: 1, b: 2}; a regex key may hold letters, digits and "
                ". \\ * _ - / $ but not ^ [ ] or quotes (patterns are searched anywhere in a parameter's name, so ^ "
                "is rarely needed), e.g. 'neon.w={model\\.blocks: 1.9, default: 1.5}'")
    if value.count("[") != value.count("]") or value.count("{") != value.count("}"):
        return "close every bracket, e.g. neon.w=[0,1]"
    return "quote the whole override for the shell and see the override grammar in Hydra's documentation"


def replace_mappings(args: list[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """`key={...}` for a key whose default is a list or a number (neon.w) replaces it: Hydra would try to merge
    the mapping into the list and fail, so `key=null` is put first."""
    mapped = [a for a in args if "=" in a and not a.startswith(("-", "+", "~", "hydra."))
              and a.split("=", 1)[1].startswith("{")]
    if not mapped:
        return args
    from hydra import compose, initialize_config_dir
    from omegaconf import DictConfig, OmegaConf

    groups_only = [a for a in args if "=" in a and not a.startswith(("-", "hydra.", "hydra/", "+", "~"))
                   and "." not in a.split("=", 1)[0] and "," not in a.split("=", 1)[1]]
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose("config", overrides=groups_only)
    out = []
    for arg in args:
        key = arg.split("=", 1)[0]
        if arg in mapped and not isinstance(OmegaConf.select(cfg, key, default={}), DictConfig):
            out.append(f"{key}=null")
        out.append(arg)
    return out


def check_writable(args: list[str]) -> None:
    """The run (or sweep) folder and the cache must be creatable: one line naming the one that is not."""
    overrides = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    multirun = any(a in ("-m", "--multirun") for a in args)
    folders = {
        "hydra.sweep.dir" if multirun else "hydra.run.dir":
            overrides.get("hydra.sweep.dir" if multirun else "hydra.run.dir", "multirun" if multirun else "outputs"),
        "paths.cache_dir": overrides.get("paths.cache_dir", os.environ.get("NEON_CACHE_DIR", ".neon_cache")),
    }
    for key, folder in folders.items():
        literal = Path(folder.split("${", 1)[0] or ".")  # the part before any interpolation
        existing = literal if folder.startswith("${") else literal.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise NeonError(f"{key}='{folder}' cannot be created: '{existing}' is a file, not a folder; choose another path")
        try:
            fd, probe = tempfile.mkstemp(prefix=".neon-write-check-", dir=existing)
        except OSError as exc:
            raise NeonError(f"{key}='{folder}' cannot be written ({exc.strerror} in '{existing}'): choose a writable "
                            "folder") from None
        os.close(fd)
        os.unlink(probe)


def _first_choice(value: str) -> str:
    # only the key is checked here: sweeps ("a,b", "interval(0,2)", "range(...)") stand in as null
    if value.startswith(("[", "{", "'", '"')) or ("," not in value and "(" not in value):
        return value
    return "null"


def finish_loggers() -> None:
    """Close the job's wandb run, if any."""
    # one wandb run per job: close it so the next job of a sweep starts its own
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


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


def quiet_libraries() -> None:
    """Silence library chatter that says nothing about the run."""
    # Lightning's start-up banners (accelerators, tips) and a deprecation inside Lightning itself
    # say nothing about the run; the log keeps what does.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    # frozen parts (VAR's tokenizer) stay in eval mode on purpose
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def user_error(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix, None for a bug (which keeps its traceback)."""
    if isinstance(exc, NeonError):
        return str(exc)
    if isinstance(exc, (MissingMandatoryValue, InterpolationToMissingValueError)):
        # the key that is missing, also when another key refers to it (model.checkpoint: ${model.pretrained})
        named = re.search(r"Missing mandatory value: ([\w.]+)", str(exc))
        key = named.group(1) if named else (getattr(exc, "full_key", "") or str(exc))
        return f"{key} must be set on the command line (e.g. {key}=PATH)"
    return None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _run(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from neon.checks import check_seeds
    from neon.distributed import launch
    from neon.runtime import current_stage
    from neon.threads import apply_threads

    quiet_libraries()
    try:
        if cfg.task.get("samples", True):  # a task that draws no samples need not import the model family
            from neon.module import check_samplers

            check_samplers(cfg, HydraConfig.get().runtime.choices)
        check_seeds(cfg)
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
        args = sys.argv[1:]
        check_override_syntax(args)
        check_overrides(args)
        args = replace_mappings(args)
        check_keys(args)
        check_writable(args)
    except NeonError as exc:
        print(f"neon: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("neon: interrupted before the run started; nothing was written", file=sys.stderr)
        sys.exit(130)
    sys.argv[1:] = args
    try:
        _run()
    except KeyboardInterrupt:  # during Hydra's own start-up or shutdown, outside the task
        print("neon: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
