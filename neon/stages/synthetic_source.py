"""S from somewhere other than θ_r: a finished run's S or an S folder, or another model — possibly of another
family — that draws it: a run's model (`neon.synthetic.source=RUN`) or a model config (`neon.synthetic.source_model`).
This is cross-architecture S."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from neon.core.errors import NeonError
from neon.stages.run import Run
from neon.stages.settings import SyntheticSettings


def compose_model(name: str, overrides: list[str]) -> DictConfig:
    """The config that `model=NAME` plus `overrides` composes (inside the running app or on its own)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from neon.launch.preflight import CONF_DIR  # the config folder, found as the command finds it

    args = [f"model={name}", *overrides]
    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=args)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=args)


# the weights a finished run folder holds, in order of preference: θ_r (task=pretrain), an export, θ_neon
RUN_WEIGHTS = ("theta_r.safetensors", "model.safetensors", "theta_neon.safetensors")


def run_model(folder: Path) -> tuple[DictConfig, Path] | None:
    """The config (model, sampler) and weights of a finished run folder that keeps no S, or None."""
    config = folder / ".hydra" / "config.yaml"
    weights = next((folder / name for name in RUN_WEIGHTS if (folder / name).is_file()), None)
    if not folder.is_dir() or not config.is_file() or weights is None or kept_s(folder) is not None:
        return None
    return OmegaConf.load(config), weights


def kept_s(folder: Path) -> Path | None:
    """The S folder a folder is (shards) or a run's summary names, None if it keeps no S."""
    if list(folder.glob("shard_*.pt")):
        return folder
    summary = folder / "summary.json"
    if not summary.is_file():
        return None
    data = json.loads(summary.read_text())
    inner = data.get("synthetic") or (data.get("artifacts") or {}).get("synthetic")
    return Path(inner) if inner and inner != "streamed" else None


def source_config(cfg: DictConfig, s: SyntheticSettings) -> DictConfig | None:
    """The config that draws S when another model does: `neon.synthetic.source_model` names a model config
    (its checkpoint `neon.synthetic.source`, else pretrained here on `data`), or `neon.synthetic.source` is a
    finished run that keeps a model but no S (its model, sampler and weights). Data, seeds and S settings
    are this config's (`s`: its neon.synthetic). None when S is θ_r's own or read from a folder."""
    name, source = s.source_model, s.source
    if name:
        from hydra.errors import HydraException

        try:
            drawer = compose_model(str(name), [str(o) for o in s.source_overrides])
        except HydraException as exc:
            raise NeonError(f"neon.synthetic.source_model={name}: {str(exc).splitlines()[0]}") from None
        checkpoint = source
    elif source and (found := run_model(Path(source))) is not None:
        drawer, checkpoint = found
    else:
        return None
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.model = drawer.model
        cfg.sampler = drawer.sampler
        if checkpoint:
            cfg.model.checkpoint = str(checkpoint)
    return cfg


def source_run(run: Run) -> Run | None:
    """`source_config` as a run sharing this run's folder, cache and stage timings."""
    cfg = source_config(run.cfg, run.neon.synthetic)
    return None if cfg is None else Run(cfg=cfg, out=run.out, cache=run.cache, seconds=run.seconds)


def source_folder(path: str | Path) -> Path:
    """The S folder that `path` names: an S folder (shards) or a run folder whose summary.json points to one."""
    path = Path(path)
    if path.is_file():
        raise NeonError(f"neon.synthetic.source '{path}' is a file: a checkpoint needs the model that reads it, "
                        "neon.synthetic.source_model=<model config> (e.g. var_tiny), or give the run folder that "
                        "wrote it")
    if not path.is_dir():
        raise NeonError(f"neon.synthetic.source '{path}' does not exist: give a run folder (task=synthesize, neon, "
                        "diagnose, pretrain or export) or a folder of S shards")
    if not list(path.glob("shard_*.pt")) and (path / "summary.json").is_file():
        inner = kept_s(path)
        if inner is None:
            raise NeonError(f"run '{path}' kept neither S nor a model (theta_neon/theta_r/model.safetensors with "
                            ".hydra/config.yaml): give a run of task=synthesize, neon, pretrain or export")
        path = inner
    shards = sorted(path.glob("shard_*.pt"))
    if not shards or list(path.glob("block_*.pt")):
        raise NeonError(f"'{path}' holds no finished S (shard_*.pt, and no block_*.pt left over): finish the "
                        "task=synthesize run that writes it")
    return path


def folder_key(folder: Path) -> dict[str, Any]:
    """What S in a folder is: its recorded key (θ_r, sampler, seeds) if it has one, else its shards' hash."""
    for name in ("key.json", "checksums.json"):
        if (folder / name).is_file():
            return {"source": json.loads((folder / name).read_text())}
    h = hashlib.sha256()
    for shard in sorted(folder.glob("shard_*.pt")):
        h.update(shard.name.encode())
        h.update(shard.read_bytes())
    return {"source": {"shards_sha256": h.hexdigest()}}


def check_fits(module, folder: Path, origin: str) -> None:
    """S's images and labels fit the model to fine-tune, or one line says what differs."""
    first = torch.load(sorted(folder.glob("shard_*.pt"))[0], map_location="cpu", weights_only=True)
    x, labels = first["x"], first.get("label")
    shape = module.image_shape
    if tuple(x.shape[1:]) != tuple(shape):
        raise NeonError(f"S from {origin} holds images of shape {tuple(x.shape[1:])}, but the model to fine-tune "
                        f"takes {tuple(shape)}: draw S at the same resolution and channels")
    classes = module.num_classes
    if classes and labels is None:
        raise NeonError(f"S from {origin} has no labels, but the model to fine-tune is class-conditional")
    if classes and labels is not None and int(labels.max()) >= classes:
        raise NeonError(f"S from {origin} has class {int(labels.max())}, but the model to fine-tune has {classes} "
                        "classes")


def source_label(run: Run) -> str:
    """Where S comes from, in words for logs and summaries."""
    s = run.neon.synthetic
    if s.source_model:
        return f"model={s.source_model}" + (f" ({s.source})" if s.source else " (pretrained here)")
    if s.source:
        return f"the model of run {s.source}" if run_model(Path(s.source)) else str(s.source)
    return "θ_r"

