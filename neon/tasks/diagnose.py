"""`task=diagnose`, and `neon.diagnose` inside `task=neon`: the anti-alignment diagnostic at θ_r (the estimator
is `neon.analysis.alignment`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from neon.analysis.alignment import gradient_alignment, parameter_groups, prediction
from neon.core.collectives import is_main
from neon.core.contract import NeonModule
from neon.core.errors import NeonError
from neon.core.io import read_json, write_json
from neon.core.values import plain, positive_int
from neon.stages.base import load_base
from neon.stages.front import cached_synthetic
from neon.stages.run import Run
from neon.stages.synthesize import synthetic_data


def endless(loader: Iterable[dict]) -> Iterator[dict]:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def alignment(run: Run, module: NeonModule, s_dir: Path | None, settings: Mapping[str, Any], prefix: str) -> dict:
    """cos(E∇L_real, E∇L_S) at the module's weights, raw and Adam-preconditioned, overall and per parameter group,
    with 95% intervals and a plain prediction; `settings` holds num_batches, blocks, group_depth, groups and
    real_data (`prefix` names where they came from, for errors)."""
    cfg = run.cfg
    # held-out real data estimates the population gradient (on θ_r's own training set it is ≈ 0 by training)
    real_cfg = OmegaConf.merge(cfg.data, settings["real_data"]) if settings.get("real_data") else cfg.data
    real = instantiate(real_cfg)
    if not hasattr(real, "train_dataloader"):
        raise NeonError(f"data={cfg.data._target_} has no real training data: the diagnostic compares real and "
                        "synthetic gradients (use data=digits, or a data module with train_dataloader)")
    groups = parameter_groups(module.net, depth=int(settings.get("group_depth", 1)),
                              patterns=plain(settings.get("groups")))
    result = gradient_alignment(module.to(run.device), endless(real.train_dataloader()),
                                endless(synthetic_data(run, module, s_dir).train_dataloader()),
                                positive_int(settings.get("num_batches"), f"{prefix}.num_batches"),
                                blocks=positive_int(settings.get("blocks"), f"{prefix}.blocks"), seed=run.settings.seed, groups=groups)
    result.update(prediction=prediction(result), synthetic=str(s_dir) if s_dir else "streamed",
                  sampler=plain(cfg.sampler))
    return result


def cached_alignment(run: Run, module: NeonModule, theta_r: dict, base_digest: str, s_key: Any,
                     s_dir: Path | None) -> dict:
    """`neon.diagnose` inside `task=neon`: the diagnostic at θ_r on this run's S, computed once per (θ_r, S,
    real data, settings, seed) and kept in the artifact cache, so the jobs of a sweep that share S share it."""
    settings = run.neon.diagnose
    key = {"theta_r": base_digest, "synthetic": s_key, "data": plain(run.cfg.data), "settings": settings,
           "seed": run.settings.seed}

    def build(work: Path) -> None:
        module.load_neon_weights(theta_r, source="θ_r")
        write_json(work / "diagnosis.json", alignment(run, module, s_dir, settings, "neon.diagnose"))

    with run.stage("diagnose"):
        folder, _ = run.cache.get_or_build("diagnosis", key, build)
    return read_json(folder / "diagnosis.json")


def describe(result: dict) -> str:
    """The diagnostic's one-line verdict."""
    return (f"gradient cosine real vs S at θ_r: {result['cosine']:+.3f} (95% {result['cosine_ci95'][0]:+.3f} … "
            f"{result['cosine_ci95'][1]:+.3f}), Adam-preconditioned {result['cosine_preconditioned']:+.3f} (95% "
            f"{result['cosine_preconditioned_ci95'][0]:+.3f} … {result['cosine_preconditioned_ci95'][1]:+.3f}) → "
            f"{result['prediction']}")


def run_diagnose(cfg: DictConfig) -> dict:
    """The anti-alignment diagnostic at θ_r: cos(E∇L_real, E∇L_S), raw and Adam-preconditioned, overall and
    per parameter group, with 95% intervals and a plain prediction → diagnosis.json."""
    run = Run.from_config(cfg)
    n_synthetic = run.neon.n_synthetic  # the neon group checked before θ_r is loaded
    with run.stage("pretrain"):
        module, base_digest, base_path = load_base(run)
    _, s_dir = cached_synthetic(run, module, base_digest)
    with run.stage("diagnose"):
        result = alignment(run, module, s_dir, cfg.task, "task")
    result.update(theta_r=str(base_path), n_synthetic=n_synthetic, seconds=run.seconds)
    if is_main():
        write_json(run.out / "diagnosis.json", result)
        write_json(run.out / "summary.json", {"task": "diagnose", **result})
    print(describe(result))
    return result
