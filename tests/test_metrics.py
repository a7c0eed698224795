"""Metrics match torch-fidelity on the same network file; references of every kind; sharded features."""

from __future__ import annotations

import os
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp_mp

from neon.core.errors import NeonError
from neon.families.toy2d import ToyDiffusion, ddim
from neon.metrics.evaluate import features_of_images, sample_features
from neon.metrics.extractors import IdentityFeatures
from neon.metrics.frechet import feature_statistics, frechet_distance
from neon.metrics.reference import Reference, images_for, load_reference, uint8_images_to_unit
from neon.metrics.scores import compute_scores, precision_recall
from tests.helpers import run_task, summary_of
from tests.inception_weights import write_random_inception


def smooth_images(n: int, seed: int, size: int = 32) -> np.ndarray:
    """uint8 NHWC images with some structure (blurred noise plus a per-image colour)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = x + torch.randn(n, 3, 1, 1, generator=g)
    return ((x.tanh() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)).numpy()


class UInt8Set(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> Path:
    return write_random_inception(tmp_path_factory.mktemp("inception") / "weights.pth")


@pytest.mark.slow
def test_fid_isc_pr_match_torch_fidelity(inception: Path, tmp_path: Path):
    import torch_fidelity

    from neon.metrics.inception import InceptionFeatures

    gen, real = smooth_images(20, 1), smooth_images(20, 2)  # enough for k-NN precision/recall and KID subsets
    np.savez(tmp_path / "real.npz", arr_0=real)
    extractor = InceptionFeatures(str(inception), batch_size=16)
    ref = load_reference(tmp_path / "real.npz", extractor)  # an ADM-style batch of real images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = compute_scores(features_of_images(uint8_images_to_unit(gen, "gen"), extractor), ref,
                              ["fid", "isc", "pr", "kid"], allow_small=True, kid_subsets=20, kid_subset_size=15)
        lib = torch_fidelity.calculate_metrics(
            input1=UInt8Set(gen), input2=UInt8Set(real), fid=True, isc=True, prc=True, kid=True, cuda=False,
            verbose=False, cache=False, feature_extractor="inception-v3-compat", feature_layer_prc="2048",
            feature_extractor_weights_path=str(inception), batch_size=16, kid_subsets=20, kid_subset_size=15)
    assert ours["fid"] == pytest.approx(lib["frechet_inception_distance"], rel=1e-4)
    assert ours["isc_mean"] == pytest.approx(lib["inception_score_mean"], rel=1e-4)
    assert ours["isc_std"] == pytest.approx(lib["inception_score_std"], rel=1e-4, abs=1e-6)
    assert ours["precision"] == pytest.approx(lib["precision"], abs=1e-6)
    assert ours["recall"] == pytest.approx(lib["recall"], abs=1e-6)
    assert ours["kid_mean"] == pytest.approx(lib["kernel_inception_distance_mean"], rel=1e-4, abs=1e-9)
    assert ours["kid_std"] == pytest.approx(lib["kernel_inception_distance_std"], rel=1e-4, abs=1e-9)


def test_inception_reads_a_sample_files_uint8_pixels_as_it_reads_their_floats(inception: Path):
    from neon.metrics.inception import InceptionFeatures

    images = smooth_images(3, 5, size=16)
    extractor = InceptionFeatures(str(inception), batch_size=2)
    pixels = images_for(extractor, images, "samples")
    assert pixels.dtype == torch.uint8 and pixels.data_ptr() == torch.from_numpy(images).data_ptr()  # a view
    unit = uint8_images_to_unit(images, "samples")
    assert torch.equal(((unit * 127.5 + 128).clip(0, 255).to(torch.uint8)), pixels)  # the floats round back
    ours, via_floats = extractor.extract(pixels), extractor.extract(unit)
    assert torch.equal(ours["pool"], via_floats["pool"]) and torch.equal(ours["logits"], via_floats["logits"])
    # extractors that compare raw values keep reading floats in [-1, 1]
    assert torch.equal(images_for(IdentityFeatures(), images, "samples"), unit)


def test_missing_inception_weights_name_the_file(tmp_path: Path):
    np.savez(tmp_path / "samples.npz", arr_0=smooth_images(4, 3))
    with pytest.raises(NeonError, match="weights-inception-2015-12-05-6726825d.pth"):
        run_task(["task=evaluate", f"samples={tmp_path / 'samples.npz'}", "metrics=fid50k",
                  "metrics.inception_weights=/nowhere/w.pth", "metrics.reference=x.npz"], tmp_path)


def brute_force_pr(gen: np.ndarray, real: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # k-th neighbour, the point itself being the 0-th

    d_gr = np.linalg.norm(gen[:, None] - real[None], axis=-1)
    precision = np.mean((d_gr <= radii(real)[None]).any(axis=1))
    recall = np.mean((d_gr.T <= radii(gen)[None]).any(axis=1))
    return float(precision), float(recall)


def test_precision_recall_against_brute_force():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(80, 5))
    gen = rng.normal(size=(70, 5)) * 0.6 + 0.3  # narrower and shifted: high precision, low recall
    p, r = precision_recall(gen, real, k=3)
    assert (p, r) == pytest.approx(brute_force_pr(gen, real, 3), abs=1e-6)
    assert p > r


def test_frechet_is_stable_for_near_singular_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 200)), rng.normal(size=(50, 200)) + 0.1  # 50 samples, 200 dimensions
    fd = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert np.isfinite(fd) and fd > 0
    assert abs(frechet_distance(*feature_statistics(a), *feature_statistics(a))) < 1e-6 * np.trace(np.cov(a.T)) * 100


def test_reference_files_of_every_kind(tmp_path: Path):
    np.savez(tmp_path / "edm.npz", mu=np.zeros(4), sigma=np.eye(4))
    ref = load_reference(tmp_path / "edm.npz")
    assert ref.features is None and ref.sigma.shape == (4, 4)
    feats = np.random.default_rng(0).normal(size=(100, 4))
    np.savez(tmp_path / "acts.npz", pool=feats)
    ref = load_reference(tmp_path / "acts.npz")
    assert np.allclose(ref.mu, feats.mean(0)) and ref.features.shape == (100, 4)
    images = smooth_images(6, 0, size=4)
    np.savez(tmp_path / "adm.npz", arr_0=images, mu=np.ones(48), sigma=np.eye(48))
    ref = load_reference(tmp_path / "adm.npz", IdentityFeatures())
    assert np.allclose(ref.mu, 1.0) and ref.features.shape == (6, 48)  # stats as stored, features computed
    np.savez(tmp_path / "wrong.npz", logits=np.zeros((3, 10)))
    with pytest.raises(NeonError, match=r"holds \['logits'\]: expected mu and sigma"):
        load_reference(tmp_path / "wrong.npz")
    with pytest.raises(NeonError, match="must be uint8.*found float64 with range"):
        uint8_images_to_unit(np.random.default_rng(0).random((2, 4, 4, 3)), "samples")


def test_fewer_samples_than_dimensions_is_an_error_unless_allowed():
    feats = {"pool": np.random.default_rng(0).normal(size=(10, 20))}
    from neon.metrics.reference import Reference

    with pytest.raises(NeonError, match="= 10 is below the 20 feature dimensions.*metrics.allow_small=true"):
        compute_scores(feats, Reference(np.zeros(20), np.eye(20)), ["fid"])
    with pytest.warns(UserWarning, match="10 samples of 20-d features"):
        compute_scores(feats, Reference(np.zeros(20), np.eye(20)), ["fid"], allow_small=True)


def _sharded_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = ToyDiffusion().eval()
    feats = sample_features(model, partial(ddim, steps=4), list(range(100, 123)), IdentityFeatures(), block_size=5)
    if rank == 0:
        np.save(out, feats["pool"])
    dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process(tmp_path: Path):
    port = 29500 + os.getpid() % 1000
    tmp_mp.spawn(_sharded_worker, args=(2, port, str(tmp_path / "two.npy")), nprocs=2, join=True)
    torch.manual_seed(0)
    model = ToyDiffusion().eval()
    one = sample_features(model, partial(ddim, steps=4), list(range(100, 123)), IdentityFeatures(), block_size=5)
    assert np.allclose(np.load(tmp_path / "two.npy"), one["pool"], atol=1e-6)


@pytest.mark.slow
def test_reference_task_on_digits_and_an_image_folder(tmp_path: Path):
    from PIL import Image

    run_task(["task=reference", "experiment=digits"], tmp_path)
    with np.load(tmp_path / "run" / "reference.npz") as f:
        assert f["mu"].shape == (64,) and f["pool"].shape == (1797, 64)
    assert summary_of(tmp_path)["num_images"] == 1797
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(smooth_images(5, 9, size=8)):
        Image.fromarray(img).save(folder / f"{i}.png")
    run_task(["task=reference", "metrics=pixel_fd", "metrics.reference=null", f"task.source={folder}"],
             tmp_path, run_dir="folder")
    with np.load(tmp_path / "folder" / "reference.npz") as f:
        assert f["pool"].shape == (5, 192)


def test_kid_separates_shifted_features_and_checks_the_subset_size():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 16))
    ref = Reference(*feature_statistics(real), real, "real")
    same = compute_scores({"pool": rng.normal(size=(200, 16))}, ref, ["kid"], kid_subsets=10, kid_subset_size=100)
    shifted = compute_scores({"pool": rng.normal(size=(200, 16)) + 0.5}, ref, ["kid"], kid_subsets=10,
                             kid_subset_size=100)
    assert abs(same["kid_mean"]) < 0.1 * shifted["kid_mean"] and shifted["kid_std"] >= 0
    with pytest.raises(NeonError, match="metrics.kid_subset_size=1000"):
        compute_scores({"pool": real}, ref, ["kid"])
    with pytest.warns(UserWarning, match="KID subsets shrunk"):
        small = compute_scores({"pool": real + 0.5}, ref, ["kid"], kid_subsets=10, allow_small=True)
    assert small["kid_mean"] > 0
    with pytest.warns(UserWarning, match="kid needs real features"):
        stats_only = compute_scores({"pool": real}, Reference(ref.mu, ref.sigma, None, "stats"), ["kid"])
    assert stats_only["kid_mean"] is None
