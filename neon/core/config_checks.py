"""Counts and sizes of a config checked before any work, so a bad value fails in one line at once, not
after θ_r is loaded and S drawn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from neon.core.errors import NeonError
from neon.core.seeding import check_seed, parse_seeds
from neon.core.values import positive_int


def check_sample_count(n: int, dim: int, what: str, allow_small: bool) -> None:
    """A Fréchet distance needs at least as many samples as feature dimensions (else its covariance is
    singular and the number meaningless): an error unless `metrics.allow_small=true`."""
    if n < dim and not allow_small:
        raise NeonError(f"{what} = {n} is below the {dim} feature dimensions of the FID: its covariance would be "
                        f"singular and the score meaningless; use at least {dim} samples (or "
                        "metrics.allow_small=true for a smoke test)")


def feature_dim_of(extractor_cfg: Any) -> int | None:
    """The extractor's fixed feature size, read from its class without building it (None: data-sized)."""
    target = extractor_cfg.get("_target_") if extractor_cfg is not None else None
    if not target:
        return None
    try:
        cls = get_class(target)
    except Exception:  # an unimportable target is reported where it is instantiated, with Hydra's message
        return None
    return getattr(cls, "feature_dim", None)


def check_counts(cfg: DictConfig, metrics: Any, auto_num_samples: int | None = None,
                 final_num_samples: int | None = None) -> None:
    """The counts the settings do not check alone: pretraining steps, and enough evaluation samples for the
    metric (`metrics`: the checked metrics group) at every size a score is taken (also `auto_num_samples`,
    neon.w=auto's proxy, and `final_num_samples`, task=search's final score)."""
    if cfg.model.get("pretrain") is not None and not cfg.model.get("checkpoint"):
        positive_int(cfg.model.pretrain.steps, "model.pretrain.steps")
    counts = {"metrics.num_samples": metrics.num_samples, "neon.auto.num_samples": auto_num_samples,
              "task.final_num_samples": final_num_samples}
    dim = feature_dim_of(metrics.extractor)
    if dim is not None and "fid" in metrics.compute:
        for key, value in counts.items():
            if value is not None:
                check_sample_count(value, dim, key, metrics.allow_small)


def _seed_keys(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    # every `seed` and `*seed_offset` leaf (values read one by one: other leaves may interpolate run-time values)
    if not isinstance(node, DictConfig):
        return
    for key in node.keys():
        path = f"{prefix}{key}"
        if key == "seed" or str(key).endswith("seed_offset"):
            yield path, node[key]
        elif OmegaConf.is_dict(node._get_node(key)):
            yield from _seed_keys(node[key], path + ".")


def check_seeds(cfg: DictConfig) -> None:
    """Every seed and seed offset of the config, and task=sample's seed list, before any work."""
    for key, value in _seed_keys(cfg):
        if value is not None:
            check_seed(value, key)
    if cfg.get("task") is not None and cfg.task.get("name") == "sample":
        parse_seeds(cfg.sample.seeds, "sample.seeds")
