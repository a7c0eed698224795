"""Fréchet distance against closed forms; the artifact cache builds once and is safe to share."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from neon.cache import ArtifactCache
from neon.metrics.frechet import feature_statistics, frechet_distance


def test_frechet_distance_closed_forms():
    # diagonal covariances: ‖Δμ‖² + Σ (√a − √b)²
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 3.0])
    s1, s2 = np.diag([4.0, 1.0]), np.diag([1.0, 9.0])
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(5.0 + 1.0 + 4.0)
    full = np.array([[2.0, 1.0], [1.0, 2.0]])
    assert frechet_distance(mu1, full, mu1, full) == pytest.approx(0.0, abs=1e-9)
    # scaling a covariance by c² gives tr(Σ)(1 − c)²
    assert frechet_distance(mu1, full, mu1, 0.25 * full) == pytest.approx(4.0 * 0.25)


def test_feature_statistics_are_unbiased():
    x = np.random.default_rng(0).normal(size=(5000, 3)) @ np.diag([1.0, 2.0, 3.0])
    mu, sigma = feature_statistics(x)
    assert np.allclose(sigma, np.cov(x, rowvar=False)) and np.allclose(mu, x.mean(0))
    assert frechet_distance(mu, sigma, np.zeros(3), np.diag([1.0, 4.0, 9.0])) < 0.05


def test_diverged_model_scores_infinity():
    assert frechet_distance(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1)) == float("inf")


def _build_slowly(root: str, marker: str) -> None:
    def build(work: Path) -> None:
        with open(marker, "a") as f:
            f.write("built\n")
        time.sleep(0.5)
        (work / "out.txt").write_text("ok")

    ArtifactCache(root).get_or_build("thing", {"k": 1}, build)


def test_cache_builds_once_even_for_concurrent_jobs(tmp_path: Path):
    marker = tmp_path / "builds.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_build_slowly, args=(str(tmp_path / "c"), str(marker))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert marker.read_text().count("built") == 1
    folder, built = ArtifactCache(tmp_path / "c").get_or_build("thing", {"k": 1}, lambda w: 1 / 0)
    assert not built and (folder / "out.txt").read_text() == "ok" and (folder / "key.json").exists()


def test_failed_build_leaves_no_artifact_and_keeps_partial_work(tmp_path: Path):
    cache = ArtifactCache(tmp_path)

    def fail(work: Path) -> None:
        (work / "half.txt").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.get_or_build("thing", {"k": 2}, fail)
    final = cache.path("thing", {"k": 2})
    assert not final.exists()
    seen = []
    cache.get_or_build("thing", {"k": 2}, lambda work: seen.append(sorted(p.name for p in work.iterdir())))
    assert seen == [["half.txt"]] and final.is_dir()


def test_corrupt_artifact_is_detected_and_rebuilt(tmp_path: Path):
    cache = ArtifactCache(tmp_path)
    folder, _ = cache.get_or_build("thing", {"k": 3}, lambda work: (work / "data.bin").write_bytes(b"good"))
    (folder / "data.bin").write_bytes(b"evil")  # bit rot, or a half-copied file
    rebuilt = []
    with pytest.warns(UserWarning, match="fails its checksums"):
        folder2, built = ArtifactCache(tmp_path).get_or_build(
            "thing", {"k": 3}, lambda work: rebuilt.append((work / "data.bin").write_bytes(b"good")))
    assert built and rebuilt and (folder2 / "data.bin").read_bytes() == b"good"
    assert list(tmp_path.glob("thing/*.corrupt-*"))


def _hold_lock_and_die(lock_path: str, ready: str) -> None:
    import os

    from filelock import FileLock

    lock = FileLock(lock_path)
    lock.acquire()
    Path(ready).write_text("held")
    time.sleep(60)
    os._exit(0)


def test_lock_of_a_killed_job_does_not_block(tmp_path: Path):
    cache = ArtifactCache(tmp_path / "c")
    final = cache.path("thing", {"k": 4})
    final.parent.mkdir(parents=True)
    ready = tmp_path / "ready"
    proc = mp.get_context("spawn").Process(target=_hold_lock_and_die, args=(str(final) + ".lock", str(ready)))
    proc.start()
    for _ in range(600):
        if ready.exists():
            break
        time.sleep(0.05)
    proc.kill()  # SIGKILL: the holder never releases the lock itself
    proc.join()
    start = time.monotonic()
    folder, built = cache.get_or_build("thing", {"k": 4}, lambda work: (work / "x").write_text("1"))
    assert built and time.monotonic() - start < 5
