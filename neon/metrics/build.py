"""The extractor a metrics config asks for: `metrics.extractor`, with the optional outputs and the extra
networks (`metrics.extra_extractors`) that the metrics in `metrics.compute` need, and the cache key naming them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hydra.utils import instantiate

from neon.core.errors import NeonError
from neon.core.values import plain
from neon.metrics.extractors import FeatureExtractor, StackedFeatures
from neon.metrics.frechet import FRECHET_METRICS


def extra_features(compute: Iterable[str]) -> list[str]:
    """The features besides 'pool' that the Fréchet metrics in `compute` compare (sfid: spatial, ...)."""
    return sorted({FRECHET_METRICS[m] for m in compute if m in FRECHET_METRICS} - {"pool"})


def used_extra_extractors(extra_extractors: Mapping[str, Any] | None, compute: Iterable[str]) -> dict[str, Any]:
    """The entries of metrics.extra_extractors that `compute` needs, by feature name (the others never run)."""
    extras = extra_extractors or {}
    return {name: extras[name] for name in extra_features(compute) if name in extras}


def build_extractor(extractor: Any, extra_extractors: Mapping[str, Any] | None,
                    compute: Iterable[str]) -> FeatureExtractor:
    """metrics.extractor with the outputs `compute` needs switched on, stacked with the extra networks it needs
    (from metrics.extra_extractors)."""
    compute = list(compute)
    primary: FeatureExtractor = instantiate(extractor)
    needed = extra_features(compute)
    primary.want_outputs(set(needed))
    extras = {name: instantiate(cfg) for name, cfg in used_extra_extractors(extra_extractors, compute).items()}
    for feature in needed:
        if feature not in primary.extra_outputs() and feature not in extras:
            metric = next(m for m in compute if FRECHET_METRICS.get(m) == feature)
            raise NeonError(f"metrics.compute asks for {metric}, which needs '{feature}' features, but metrics.extractor "
                            f"({primary.name}) gives none and metrics.extra_extractors has no '{feature}': use "
                            "metrics=fid50k (Inception for sfid, a DINOv2 entry for fd_dinov2) or drop it")
    return StackedFeatures(primary, extras) if extras else primary


def extractor_key(extractor: Any, extra_extractors: Mapping[str, Any] | None, compute: Iterable[str]) -> dict[str, Any]:
    """What the features depend on, for cache keys and traces: the extractor, and (only when used) the extra
    outputs and networks, so that plain-FID keys stay as they were."""
    compute = list(compute)
    key: dict[str, Any] = {"extractor": plain(extractor)}
    needed = extra_features(compute)
    if needed:
        key["outputs"] = needed
        extras = {name: plain(cfg) for name, cfg in used_extra_extractors(extra_extractors, compute).items()}
        if extras:
            key["extra_extractors"] = extras
    return key
