"""FID (and the other Fréchet distances: sFID, FD-DINOv2), Inception Score, KID and precision/recall (and,
for text, MAUVE, distinct-n and self-BLEU: neon.metrics.text) from one pass of features. The IS, KID and
precision/recall arithmetic is torch-fidelity's own (called, not re-implemented), so the numbers are the
library's."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import torch

from neon.core.config_checks import check_sample_count
from neon.core.errors import NeonError
from neon.metrics.frechet import FRECHET_METRICS, feature_statistics, frechet_distance
from neon.metrics.reference import Reference
from neon.metrics.text import distinct_n, mauve, self_bleu


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Mean and std of IS over `splits` (torch-fidelity: shuffled with its fixed seed)."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    out = isc_features_to_metric(torch.from_numpy(np.asarray(logits, np.float32)), splits=splits)
    return float(out["inception_score_mean"]), float(out["inception_score_std"])


def precision_recall(generated: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al. improved precision and recall with k-NN radii (torch-fidelity's definition)."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    out = prc_features_to_metric(torch.from_numpy(np.asarray(generated, np.float32)),
                                 torch.from_numpy(np.asarray(real, np.float32)),
                                 prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=True, verbose=False)
    return float(out["precision"]), float(out["recall"])


def kernel_distance(generated: np.ndarray, real: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                    allow_small: bool = False) -> tuple[float, float]:
    """Mean and std of KID (torch-fidelity: polynomial-kernel MMD² over random subsets, its fixed seed); fewer
    samples than `subset_size` is an error unless `allow_small` (then the subsets shrink to fit)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    fewest = min(len(generated), len(real))
    if fewest < subset_size:
        if not allow_small:
            raise NeonError(f"KID draws subsets of metrics.kid_subset_size={subset_size} samples, but there are "
                            f"{len(generated)} generated and {len(real)} real: lower metrics.kid_subset_size or "
                            "score more samples")
        warnings.warn(f"KID subsets shrunk from {subset_size} to {fewest} samples to fit (metrics.allow_small)",
                      stacklevel=2)
        subset_size = fewest
    out = kid_features_to_metric(torch.from_numpy(np.asarray(generated, np.float32)),
                                 torch.from_numpy(np.asarray(real, np.float32)),
                                 kid_subsets=subsets, kid_subset_size=subset_size, verbose=False)
    return float(out["kernel_inception_distance_mean"]), float(out["kernel_inception_distance_std"])


def compute_scores(features: dict[str, np.ndarray], reference: Reference, metrics: Iterable[str] = ("fid",),
                   isc_splits: int = 10, pr_k: int = 3, allow_small: bool = False, kid_subsets: int = 100,
                   kid_subset_size: int = 1000) -> dict[str, float | None]:
    """The requested metrics ('fid', 'sfid', 'fd_dinov2', 'isc', 'kid', 'pr'; for text also 'mauve', 'distinct'
    giving distinct_1 … distinct_4, and 'self_bleu', the last two from the samples' tokens) of generated features
    against a reference; a Fréchet distance from fewer samples than feature dimensions is an error unless
    `allow_small` (then a warning)."""
    pool = features["pool"]
    out: dict[str, float | None] = {"num_samples": int(len(pool))}
    for name in metrics:
        if name in FRECHET_METRICS:
            feature = FRECHET_METRICS[name]
            if feature not in features:
                raise NeonError(f"metrics.compute asks for {name}, but the extractor gave no '{feature}' features: "
                                "set metrics.extractor (and metrics.extra_extractors) as metrics=fid50k does")
            values = features[feature]
            check_sample_count(len(values), values.shape[1], "the number of samples scored", allow_small)
            if len(values) < values.shape[1]:
                warnings.warn(f"{name} from {len(values)} samples of {values.shape[1]}-d features: the covariance is "
                              "singular and the score unreliable; use more samples than feature dimensions",
                              stacklevel=2)
            out[name] = frechet_distance(*feature_statistics(values), *reference.statistics(feature, name))
        elif name == "isc":
            if "logits" not in features:
                raise NeonError("metrics.compute asks for isc, but the Inception Score needs an extractor with class "
                                "logits: set metrics.extractor to the Inception extractor or drop isc")
            out["isc_mean"], out["isc_std"] = inception_score(features["logits"], isc_splits)
        elif name in ("pr", "kid"):
            keys = ("precision", "recall") if name == "pr" else ("kid_mean", "kid_std")
            if reference.features is None:
                warnings.warn(f"{name} needs real features; reference '{reference.source}' has only statistics",
                              stacklevel=2)
                out.update(dict.fromkeys(keys))
            elif name == "pr":
                out["precision"], out["recall"] = precision_recall(pool, reference.features, pr_k)
            else:
                out["kid_mean"], out["kid_std"] = kernel_distance(pool, reference.features, kid_subsets,
                                                                  kid_subset_size, allow_small)
        elif name == "mauve":
            if reference.features is None:
                warnings.warn(f"mauve needs real features; reference '{reference.source}' has only statistics",
                              stacklevel=2)
                out["mauve"] = None
            else:
                out["mauve"] = mauve(reference.features, pool)
        elif name in ("distinct", "self_bleu"):
            if "tokens" not in features:
                raise NeonError(f"metrics.compute asks for {name}, which reads the samples' tokens, but the extractor "
                                "gave none: it needs a text extractor (metrics=text)")
            tokens = np.rint(features["tokens"]).astype(np.int64)
            if name == "self_bleu":
                out["self_bleu"] = self_bleu(tokens) if len(tokens) > 1 else None
            else:
                for n in range(1, 5):  # None where the samples are shorter than n
                    out[f"distinct_{n}"] = distinct_n(tokens, n) if tokens.shape[1] >= n and len(tokens) else None
        else:
            raise NeonError(f"metrics.compute: unknown metric '{name}': use fid, sfid, fd_dinov2, isc, kid or pr "
                            "(or, for text: mauve, distinct, self_bleu)")
    return out


def summarize_seed_sets(results: list[dict]) -> dict:
    """One score from several seed sets' (metrics.seed_sets): every numeric metric as the mean over the sets,
    with its sample standard deviation (`<name>_sd`) and minimum (`<name>_min`, EDM's reporting
    convention); the sets' own scores and seeds under `seed_sets`."""
    out = dict(results[0])
    numeric = [k for k, v in results[0].items() if k != "num_samples" and k != "seed_sets"
               and isinstance(v, (int, float)) and not isinstance(v, bool)
               and all(isinstance(r.get(k), (int, float)) for r in results)]
    for name in numeric:
        values = np.array([float(r[name]) for r in results])
        out[name] = float(values.mean())
        out[f"{name}_sd"] = float(values.std(ddof=1))
        out[f"{name}_min"] = float(values.min())
    out["seeds"] = f"{results[0]['seeds'].split('-')[0]}-{results[-1]['seeds'].split('-')[-1]}"
    out["seed_sets"] = [{"seeds": r["seeds"], **{k: r[k] for k in numeric}} for r in results]
    return out
