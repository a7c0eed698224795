"""The checks `neon` makes before any work, in one place. `preflight` reads the overrides, composes the config
once and checks it; the command (neon.launch.cli.main) runs that composition, and the tests call the same function, so
a bad command line stops in one line before any network is built or any file written."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from neon.core.errors import NeonError

HYDRA_TASK_NAME = "cli"  # Hydra's job name, as `@hydra.main` in neon/launch/cli.py names it: the log is cli.log
MULTIRUN_FLAGS = ("-m", "--multirun")
# Hydra's flags that print something and run no job: the job's checks (which import the model and data
# classes, and with them Lightning) would only slow them down
INFO_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--resolve", "--version",
              "-sc", "--shell-completion")


def config_dir() -> Path:
    """The folder of the YAML configs: $NEON_CONFIG_DIR, the source tree's conf/, or the installed copy."""
    candidates = [
        os.environ.get("NEON_CONFIG_DIR"),
        Path(__file__).resolve().parents[2] / "conf",  # neon/launch/preflight.py: the checkout's conf/
        Path(sys.prefix) / "share" / "neon" / "conf",
    ]
    for c in candidates:
        if c and (Path(c) / "config.yaml").is_file():
            return Path(c).resolve()
    return Path(candidates[1])  # reported by check_overrides below


CONF_DIR = config_dir()


@dataclass
class Checked:
    """What the pre-flight hands the run: the overrides as Hydra takes them, and the config composed from them
    (None where Hydra itself must compose: a multirun composes each job, and --help, --cfg, ... are Hydra's)."""

    args: list[str]
    cfg: DictConfig | None


def preflight(args: list[str], conf_dir: Path = CONF_DIR, app: Any = None) -> Checked:
    """Every check `neon ARGS` makes before any work, in the command's order; a NeonError names what to fix.
    A sweep is checked as its first job (its other jobs check themselves as they start). `app`: the Hydra
    composer to use (the command's own; by default one over `conf_dir`)."""
    check_override_syntax(args)
    check_overrides(args, conf_dir)
    firsts = {a: _first_choice(a) for a in _overrides(args)}
    with contextlib.nullcontext(app) if app is not None else hydra_context(conf_dir) as hydra:
        args, cfg = compose_checked(hydra, args, firsts)
    check_writable(args)
    info = any(a.split("=", 1)[0] in INFO_FLAGS for a in args)
    if None not in firsts.values() and not info:  # an interval's value is the sweeper's to choose: checked then
        check_job(cfg, cfg.hydra.runtime.choices)
    single = not any(a.startswith("-") for a in args) and cfg.hydra.mode is None
    return Checked(args, cfg if single else None)


def check_job(cfg: DictConfig, choices: Any) -> None:
    """The checks of one job's composed config: samplers that fit the model, seeds, and the task's own
    settings (`task.checks`: e.g. the pipeline's w, budgets and counts)."""
    from hydra.utils import get_method

    from neon.core.config_checks import check_seeds
    from neon.stages.settings import RunSettings

    RunSettings.of(cfg)  # the job's top-level keys (device, previews, progress, resume)
    if cfg.task.get("samples", True):  # a task that draws no samples need not import the model family
        from neon.core.contract import check_samplers

        check_samplers(cfg, choices)
    check_seeds(cfg)
    if cfg.task.get("checks"):
        get_method(cfg.task.checks)(cfg)


@contextlib.contextmanager
def hydra_context(conf_dir: Path = CONF_DIR) -> Iterator[Any]:
    """Hydra's composer over `conf_dir`, set up as `@hydra.main` sets it up; cleared on leaving."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        yield Hydra.create_main_hydra2(task_name=HYDRA_TASK_NAME,
                                       config_search_path=create_config_search_path(str(conf_dir)))
    finally:
        GlobalHydra.instance().clear()


def compose_checked(hydra: Any, args: list[str], firsts: dict[str, str | None]) -> tuple[list[str], DictConfig]:
    """(the overrides, the config) composed once in run mode with Hydra's own settings, each sweep standing in
    by `firsts` (its first value). A key that does not exist is one line naming the valid keys."""
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode

    def compose(overrides: list[str]) -> DictConfig:
        return hydra.compose_config("config", overrides, run_mode=RunMode.RUN)

    def standing_in(overrides: list[str]) -> list[str]:
        return [firsts.get(a) or _unknown(a) for a in _overrides(overrides)]

    try:
        return args, compose(standing_in(args))
    except ConfigCompositionException as exc:
        if not any(_is_mapping(a) for a in args):
            raise key_error(exc, standing_in(args), compose) from None
    # a mapping for a key whose default is a list or a number (neon.w={...}) replaces it: only then composed again
    args = replace_mappings(args, compose)
    firsts.update((a, a) for a in _overrides(args) if a not in firsts)
    try:
        return args, compose(standing_in(args))
    except ConfigCompositionException as exc:
        raise key_error(exc, standing_in(args), compose) from None


def key_error(exc: Exception, overrides: list[str], compose) -> NeonError:
    """The one-line error for a composition that failed: an unknown key with the keys its parent has."""
    from omegaconf import OmegaConf

    bad = next((a for a in overrides if "=" in a and f"'{a.split('=', 1)[0].lstrip('+~')}'" in str(exc)), None)
    if bad is None or "not in struct" not in str(exc.__cause__ or exc):
        return NeonError(str(exc).splitlines()[0])
    key = bad.split("=", 1)[0]
    parent = key.rpartition(".")[0]
    groups_only = [a for a in overrides if "=" in a and "." not in a.split("=", 1)[0] and not a.startswith("+")]
    node = OmegaConf.select(compose(groups_only), parent) if parent else None
    valid = sorted(k for k in node.keys()) if node is not None and hasattr(node, "keys") else []
    hint = f"; {parent or 'the config'} has: {', '.join(valid)}" if valid else ""
    return NeonError(f"no config key '{key}' (use +{key}=... to add a new one){hint}")


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


def check_override_syntax(args: list[str]) -> None:
    """Parse every override as Hydra will, and say in one line which one cannot be read and how to write it."""
    from hydra.errors import OverrideParseException

    parser = _parser()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as exc:
            reason = str(exc).strip().splitlines()[0]
            raise NeonError(f"cannot read the override {arg!r} ({reason}): {_syntax_hint(arg)}") from None


@functools.cache
def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()  # building the grammar's parser is the costly part: once per process


def _syntax_hint(arg: str) -> str:
    value = arg.split("=", 1)[1]
    if value.startswith("{"):
        return ("write a mapping with unquoted keys, key={a: 1, b: 2}; a regex key may hold letters, digits and "
                ". \\ * _ - / $ but not ^ [ ] or quotes (patterns are searched anywhere in a parameter's name, so ^ "
                "is rarely needed), e.g. 'neon.w={model\\.blocks: 1.9, default: 1.5}'")
    if value.count("[") != value.count("]") or value.count("{") != value.count("}"):
        return "close every bracket, e.g. neon.w=[0,1]"
    return "quote the whole override for the shell and see the override grammar in Hydra's documentation"


def _is_mapping(arg: str) -> bool:
    return "=" in arg and not arg.startswith(("-", "+", "~", "hydra.")) and arg.split("=", 1)[1].startswith("{")


def replace_mappings(args: list[str], compose) -> list[str]:
    """`key={...}` for a key whose default is a list or a number (neon.w) replaces it: Hydra would try to merge
    the mapping into the list and fail, so `key=null` is put first. `compose(overrides)` composes a config."""
    from omegaconf import DictConfig, OmegaConf

    groups_only = [a for a in args if "=" in a and not a.startswith(("-", "hydra.", "hydra/", "+", "~"))
                   and "." not in a.split("=", 1)[0] and "," not in a.split("=", 1)[1]]
    cfg = compose(groups_only)
    out = []
    for arg in args:
        key = arg.split("=", 1)[0]
        if _is_mapping(arg) and not isinstance(OmegaConf.select(cfg, key, default={}), DictConfig):
            out.append(f"{key}=null")
        out.append(arg)
    return out


def check_writable(args: list[str]) -> None:
    """The run (or sweep) folder and the cache must be creatable: one line naming the one that is not."""
    overrides = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    multirun = any(a in MULTIRUN_FLAGS for a in args)
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


def _first_choice(arg: str) -> str | None:
    """`key=a,b` (a sweep) as `key=a`, its first job; None where the sweeper picks the values (an interval)."""
    override = _parser().parse_override(arg)
    if not override.is_sweep_override():
        return arg
    try:
        return f"{override.get_key_element()}={next(override.sweep_string_iterator())}"
    except Exception:  # an interval or a glob over a group's options: the sweeper knows its values
        return None


def _overrides(args: list[str]) -> list[str]:
    return [a for a in args if "=" in a and not a.startswith("-")]  # not Hydra's flags (--cfg job, -m, ...)


def _unknown(arg: str) -> str:
    return arg.split("=", 1)[0] + "=null"  # the key is still checked
