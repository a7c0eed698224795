"""`task=evaluate` and `task=search` with `sample.rng=release`: the samples scored are the family's release-mode
samples (the official script's seeding), `sample.labels=sorted` lays the classes out as the official FID scripts
do, and the mode is part of the score's cache key and trace."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from neon.core.errors import NeonError
from neon.core.release_sampling import ReleaseSampling, label_spec, resolve_labels
from neon.families.var import VARModule
from neon.families.var.sampler import var_sampler
from neon.launch.cli import CONF_DIR
from neon.metrics.reference import Reference
from neon.metrics.scores import compute_scores
from neon.tasks.evaluate import run_evaluate
from tests import test_var

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "paper"


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"paths.output_dir={tmp_path / 'run'}",
                                            f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"])


@pytest.fixture()
def var_eval(tmp_path: Path) -> tuple[list[str], VARModule, Path]:
    var_path, vae_path = test_var.write_release_files(tmp_path / "var")
    arch = [f"model.{group}.{k}={v}".replace(" ", "") for group, d in (("network", test_var.NET),
                                                                     ("vae", test_var.VAE)) for k, v in d.items()]
    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=rng.normal(size=192), sigma=np.eye(192))
    overrides = ["task=evaluate", "model=var_tiny", *arch, f"model.checkpoint={var_path}",
                 f"model.vae_checkpoint={vae_path}", "metrics=pixel_fd", f"metrics.reference={ref}",
                 "metrics.num_samples=6", "metrics.allow_small=true", "sampler.cfg=1.5", "sampler.top_k=0",
                 "sampler.top_p=0.0"]
    module = VARModule(test_var.NET, test_var.VAE, vae_checkpoint=str(vae_path))
    module.load_checkpoint(var_path)
    return overrides, module.eval(), ref


def test_sorted_labels_are_each_class_in_turn():
    assert resolve_labels(label_spec("sorted"), 6, 3) == [0, 0, 1, 1, 2, 2]
    assert resolve_labels("sorted", 50_000, 1000)[49:51] == [0, 1]  # 50 per class, as the FID scripts
    assert resolve_labels("random", 4, 3) == "random"
    with pytest.raises(NeonError, match="sorted needs a class-conditional model"):
        resolve_labels("sorted", 4, 0)


def test_evaluate_release_mode_scores_the_release_samples(tmp_path: Path, var_eval):
    overrides, module, ref = var_eval
    release = _cfg(tmp_path, *overrides, "sample.rng=release", "sample.release_seed=3", "sample.batch_size=4",
                   "sample.labels=sorted")
    summary = run_evaluate(release)
    assert summary["metric"]["rng"] == {"rng": "release", "release_seed": 3, "batch_size": 4, "labels": "sorted"}
    # what the release draws: batch i is autoregressive_infer_cfg(label_B, g_seed=3 + i), labels i·10 // 6
    labels, images = [0, 1, 3, 5, 6, 8], []
    sampler = partial(var_sampler, cfg=1.5, top_k=0, top_p=0.0)
    for i, (start, size) in enumerate(((0, 4), (4, 2))):
        g = torch.Generator().manual_seed(3 + i)
        images.append(sampler(module.net, module.vae, torch.tensor(labels[start:start + size]), g))
    feats = module.finish_images(torch.cat(images), quantize=True)  # the 8-bit grid the release writes
    [features] = list((tmp_path / "cache").glob("eval/*/features.npz"))
    with np.load(features) as f:
        np.testing.assert_allclose(f["pool"], feats.reshape(6, -1).numpy(), rtol=0, atol=1e-5)
        with np.load(ref) as r:
            want = compute_scores({"pool": f["pool"]}, Reference(r["mu"], r["sigma"]), ["fid"], allow_small=True)
    [fid] = summary["fid"].values()
    assert fid == pytest.approx(want["fid"], rel=1e-9)

    per_seed = run_evaluate(_cfg(tmp_path, *overrides))  # another mode: another cache entry and another score
    assert per_seed["metric"]["rng"] == "per_seed" and list(per_seed["fid"].values()) != [fid]
    assert len(list((tmp_path / "cache").glob("eval/*/features.npz"))) == 2


def test_release_mode_needs_one_process_and_matching_labels(tmp_path: Path, var_eval, monkeypatch):
    overrides, _, _ = var_eval
    with pytest.raises(NeonError, match=r"sample.labels lists 2 classes for 6 images"):
        run_evaluate(_cfg(tmp_path, *overrides, "sample.rng=release", "sample.labels=[1,2]"))
    monkeypatch.setattr("neon.metrics.evaluate.rank_world", lambda: (0, 2))
    with pytest.raises(NeonError, match="evaluate in one process"):
        run_evaluate(_cfg(tmp_path, *overrides, "sample.rng=release", "sample.labels=sorted"))
    with pytest.raises(NeonError, match=r"sample.rng must be one of \['per_seed', 'release'\], got 'official'"):
        run_evaluate(_cfg(tmp_path, *overrides, "sample.rng=official"))


def test_release_sampling_reads_the_sample_group(tmp_path: Path):
    assert ReleaseSampling.from_config(_cfg(tmp_path)) is None
    got = ReleaseSampling.from_config(_cfg(tmp_path, "sample.rng=release", "sample.release_seed=7",
                                           "sample.batch_size=16", "sample.labels=[1,2]"))
    assert got == ReleaseSampling(7, [1, 2], 16)
    with pytest.raises(NeonError, match="sample.batch_size must be a positive integer, got 0"):
        ReleaseSampling.from_config(_cfg(tmp_path, "sample.rng=release", "sample.batch_size=0"))


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_configs_state_the_sampling_mode_of_their_numbers(path: Path):
    text = path.read_text()
    assert OmegaConf.load(path).sample.rng in ("per_seed", "release")
    assert "sample.rng=release" in text  # the comment says how to score θ_r as the release does


def test_search_scores_in_release_mode(tmp_path: Path, var_eval):
    from neon.tasks.search import run_search

    overrides, _, _ = var_eval
    release = ["sample.rng=release", "sample.release_seed=3", "sample.batch_size=4", "sample.labels=sorted"]
    search = [o for o in overrides if o != "task=evaluate"] + [
        "task=search", "data=none", "neon.n_synthetic=8", "neon.budget_steps=[2]", "neon.batch_size=4",
        "neon.w=[0.0,0.5]", "task.tolerance=1e9", "task.refine_step=0.25", *release]
    summary = run_search(_cfg(tmp_path, *search))
    assert summary["rng"]["rng"] == "release" and summary["rng"]["labels"] == "sorted"
    # θ_r's score is the release-mode evaluation of θ_r (the same cache entry)
    evaluated = run_evaluate(_cfg(tmp_path, *overrides, *release))
    assert list(evaluated["fid"].values()) == [summary["fid_base"]]
    per_seed = run_evaluate(_cfg(tmp_path, *overrides))
    assert list(per_seed["fid"].values()) != [summary["fid_base"]]
