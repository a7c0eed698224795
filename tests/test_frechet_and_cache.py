"""Fréchet distance against closed forms; the artifact cache builds once and is safe to share."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from neon.core.cache import ArtifactCache
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


class _ProbedLock:
    """The cache's own lock (`cls`: neon.core.cache.FileLock) in the children below: one attempt first, which records
    whether another process held the lock at that moment (`contended`), then the ordinary blocking wait."""

    def __init__(self, cls, path: str, probed, contended):
        self.lock, self.probed, self.contended = cls(path), probed, contended

    def __enter__(self):
        from filelock import Timeout

        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            self.contended.value = 1
            self.probed.set()
            self.lock.acquire()
        else:
            self.probed.set()
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


def _build_under_probe(root: str, marker: str, result: str, probed, contended, building, release) -> None:
    import json

    import neon.core.cache

    cls = neon.core.cache.FileLock
    neon.core.cache.FileLock = lambda path: _ProbedLock(cls, path, probed, contended)

    def build(work: Path) -> None:
        with open(marker, "a") as f:
            f.write("built\n")
        building.set()
        release.wait()  # a builder holds on until the test lets it finish
        (work / "out.txt").write_text("ok")

    folder, built = ArtifactCache(root).get_or_build("thing", {"k": 1}, build)
    Path(result).write_text(json.dumps({"built": built, "out": (folder / "out.txt").read_text()}))


def _wait_for(proc, *events) -> None:
    """Until one of `events` is set; fails as soon as `proc` has died without setting one (no time limit)."""
    while not any(e.wait(0.05 / len(events)) for e in events):
        assert proc.is_alive() or any(e.is_set() for e in events), f"process exited ({proc.exitcode}) first"


def test_cache_builds_once_even_for_concurrent_jobs(tmp_path: Path):
    import json

    ctx = mp.get_context("spawn")
    marker, release = tmp_path / "builds.txt", ctx.Event()
    # per job: its lock probe (done, contended) and its build started
    jobs = [(ctx.Event(), ctx.Value("i", 0), ctx.Event()) for _ in range(3)]
    procs = [ctx.Process(target=_build_under_probe, args=(str(tmp_path / "c"), str(marker), str(tmp_path / f"r{i}"),
                                                          *jobs[i], release)) for i in range(3)]
    try:
        procs[0].start()
        _wait_for(procs[0], jobs[0][2])  # the first job holds the lock, in its build
        for p in procs[1:]:
            p.start()
        for p, (probed, _, building) in zip(procs[1:], jobs[1:], strict=True):
            _wait_for(p, probed, building)  # (a job that got past no lock would be building)
        # the first took the lock at once; the others found it held, and wait on it: none of them builds (the
        # first cannot finish: it waits for `release`)
        assert [contended.value for _, contended, _ in jobs] == [0, 1, 1]
        assert [building.is_set() for _, _, building in jobs] == [True, False, False]
    finally:
        release.set()
        for p in procs:
            if p.pid is not None:
                p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert marker.read_text().count("built") == 1
    # the waiting jobs found the finished artifact when the lock came to them
    results = [json.loads((tmp_path / f"r{i}").read_text()) for i in range(3)]
    assert results == [{"built": True, "out": "ok"}, {"built": False, "out": "ok"}, {"built": False, "out": "ok"}]
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


def _hold_lock_until_killed(lock_path: str, held) -> None:
    import threading

    import neon.core.cache

    lock = neon.core.cache.FileLock(lock_path)  # the cache's lock; kept referenced: a collected one is released
    lock.acquire()
    held.set()
    threading.Event().wait()  # never returns: the test kills this process


def test_lock_of_a_killed_job_does_not_block(tmp_path: Path, monkeypatch):
    from filelock import Timeout

    import neon.core.cache

    cache = ArtifactCache(tmp_path / "c")
    final = cache.path("thing", {"k": 4})
    final.parent.mkdir(parents=True)
    lock, cls = str(final) + ".lock", neon.core.cache.FileLock
    ctx = mp.get_context("spawn")
    held = ctx.Event()
    proc = ctx.Process(target=_hold_lock_until_killed, args=(lock, held))
    proc.start()
    try:
        _wait_for(proc, held)
        with pytest.raises(Timeout):  # the holder has it: one attempt fails
            cls(lock).acquire(timeout=0)
    finally:
        proc.kill()  # SIGKILL: the holder never releases the lock itself
        proc.join()
    # the cache's lock now makes one attempt only: it raises if the dead job's lock is still in the way
    monkeypatch.setattr(neon.core.cache, "FileLock", lambda path: cls(path, timeout=0))
    folder, built = cache.get_or_build("thing", {"k": 4}, lambda work: (work / "x").write_text("1"))
    assert built and (folder / "x").read_text() == "1"
