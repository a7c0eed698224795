"""Scores and reference statistics: `task=evaluate` (checkpoints, or any ADM-layout sample file) and
`task=reference` (statistics and features of real images, cached by content)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from neon.core.collectives import is_main
from neon.core.config_checks import check_sample_count
from neon.core.errors import NeonError
from neon.core.io import atomic_path, write_json
from neon.core.release_sampling import ReleaseSampling
from neon.core.values import plain
from neon.metrics.build import build_extractor, extractor_key
from neon.metrics.evaluate import features_of_images
from neon.metrics.extractors import FeatureExtractor
from neon.metrics.images import digest_source, npz_array_shape, read_image_source
from neon.metrics.reference import images_for, reference_arrays, reference_from_outputs
from neon.stages.base import copy_weights
from neon.stages.evaluator import Evaluator
from neon.stages.run import Run, log
from neon.stages.settings import MetricSettings


def check_sample_file(samples: str | Path, extractor: FeatureExtractor, metrics: MetricSettings) -> int:
    """The number of images in a sample file, from its header: enough for the FID (unless metrics.allow_small) and
    an extractor ready to run, checked before any pixel is read or feature extracted (50K images take minutes)."""
    shape = npz_array_shape(samples)
    if shape is None:
        with np.load(samples) as f:  # only the member names are read
            found = sorted(f.files)
        raise NeonError(f"samples '{samples}' hold {found}: expected uint8 NHWC images in arr_0")
    if len(shape) != 4:
        raise NeonError(f"samples '{samples}': arr_0 has shape {shape}; expected uint8 NHWC images [N, H, W, C]")
    extractor.check_ready()
    n, dim = shape[0], extractor.feature_dim
    if dim is not None and "fid" in metrics.compute:
        check_sample_count(n, dim, f"the number of images in samples '{samples}'", metrics.allow_small)
    return n


def run_evaluate(cfg: DictConfig) -> dict:
    """Score each of `task.checkpoints` (default model.checkpoint), or an ADM-layout sample file
    (`samples=PATH.npz`, uint8 NHWC `arr_0`) from any project; `sample.rng=release` samples as the family's
    official script does (its FID protocol), else one generator per image."""
    samples = cfg.get("samples")
    paths = list(cfg.task.get("checkpoints") or []) or ([cfg.model.checkpoint] if cfg.model.get("checkpoint") else [])
    if not paths and not samples:
        raise NeonError("task=evaluate needs samples=PATH.npz, model.checkpoint=PATH or task.checkpoints=[PATH,...]")
    if samples and not Path(samples).is_file():
        raise NeonError(f"samples '{samples}' do not exist: give an .npz with uint8 NHWC images in arr_0")
    run = Run.from_config(cfg)
    module = run.build_module()
    evaluator = Evaluator(run, module, release=ReleaseSampling.from_config(cfg))
    if samples:
        check_sample_file(samples, evaluator.extractor, run.metrics)
    results = {}
    with run.stage("evaluate"):
        if samples:
            with np.load(samples) as f:
                images = images_for(evaluator.extractor, f["arr_0"], f"samples '{samples}'")
            feats = features_of_images(images, evaluator.extractor, run.metrics.block_size)
            results[str(samples)] = evaluator.score_features(feats)
        for path in paths:
            # scored against reference statistics, never the training data: the file's data shape is taken
            module.load_checkpoint(path, shape_from_checkpoint=True)
            results[str(path)] = evaluator.score(copy_weights(module.neon_weights()))
    for name, r in results.items():
        log.info("%s: %s", name, ", ".join(f"{k} {v:.6g}" for k, v in r.items() if isinstance(v, float)))
    summary = {"task": "evaluate", "scores": results, "fid": {k: r["fid"] for k, r in results.items()},
               "eval_sampler": plain(evaluator.sampler_cfg), "metric": evaluator.trace(), "seconds": run.seconds}
    if samples:
        summary["metric"]["num_samples"] = {str(samples): len(images)}
    if is_main():
        write_json(run.out / "summary.json", summary)
    return summary


def run_reference(cfg: DictConfig) -> dict:
    """Compute (and cache) reference statistics and features for an image folder, an .npz of uint8
    images (`task.source`), or the `data` group's real data; write them as an .npz (mu, sigma, pool, and
    mu_s/sigma_s or mu_dinov2/sigma_dinov2 when metrics.compute has sfid or fd_dinov2)."""
    run = Run.from_config(cfg)
    m = run.metrics
    compute = list(m.compute)
    # also sFID's and FD-DINOv2's statistics when compute has them
    extractor = build_extractor(m.extractor, m.extra_extractors, compute)
    source = cfg.task.get("source")
    key = {**extractor_key(m.extractor, m.extra_extractors, compute), "source": digest_source(source) if source else plain(cfg.data)}

    def build(work: Path) -> None:
        if source:
            images = images_for(extractor, read_image_source(source), f"image source '{source}'")
            ref = reference_from_outputs(features_of_images(images, extractor, m.block_size), str(source))
        else:
            ref = instantiate(cfg.data).reference(extractor)
        np.savez(work / "reference.npz", **reference_arrays(ref))

    with run.stage("reference"):
        folder, built = run.cache.get_or_build("reference", key, build)
    out = Path(cfg.task.out) if cfg.task.get("out") else run.out / "reference.npz"

    with atomic_path(out) as tmp:
        shutil.copyfile(folder / "reference.npz", tmp)
    with np.load(out) as f:
        n = len(f["pool"]) if "pool" in f.files else None
        dim = len(f["mu"])
    summary = {"task": "reference", "out": str(out), "source": str(source) if source else plain(cfg.data),
               "extractor": m.extractor, "num_images": n, "feature_dim": dim,
               "cached": not built, "seconds": run.seconds}
    write_json(run.out / "summary.json", summary)
    log.info("reference statistics (%s images, %d-d) → %s", n, dim, out)
    return summary
