"""`task=evaluate samples=S.npz` checks the file's image count against the FID's feature dimensions from the
.npz header, before a pixel is read or a feature extracted (Inception over a big file takes minutes)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from neon.core.errors import NeonError
from neon.metrics.images import npz_array_shape
from neon.metrics.inception import InceptionFeatures
from tests.helpers import run_task


class Extracted(Exception):
    """Raised by the stand-in extractor: feature extraction was reached."""


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    # stands in for Inception: counts the images it is asked for, then stops the task (no real network here)
    calls: list[int] = []

    def extract(self, x):
        calls.append(len(x))
        raise Extracted

    monkeypatch.setattr(InceptionFeatures, "extract", extract)
    return calls


def _args(tmp_path: Path, samples: Path, *extra: str) -> list[str]:
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"never read: no feature is extracted")
    return ["task=evaluate", f"samples={samples}", "metrics=fid50k", f"metrics.inception_weights={weights}",
            f"metrics.reference={tmp_path / 'ref.npz'}", *extra]


@pytest.mark.parametrize("compressed", [False, True])
def test_too_few_samples_fail_before_any_feature_is_extracted(tmp_path: Path, counted: list[int], compressed: bool):
    samples = tmp_path / "S.npz"
    images = np.random.default_rng(0).integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
    (np.savez_compressed if compressed else np.savez)(samples, arr_0=images)
    assert npz_array_shape(samples) == (200, 8, 8, 3)
    with pytest.raises(NeonError) as info:
        run_task(_args(tmp_path, samples), tmp_path)
    message = str(info.value)
    assert f"samples '{samples}'" in message and "= 200 is below the 2048" in message and "at least 2048" in message
    assert "\n" not in message and counted == []
    # the same file with metrics.allow_small goes on to extraction: the check, not something else, stopped it
    with warnings.catch_warnings(), pytest.raises(Extracted):
        warnings.simplefilter("ignore")
        run_task(_args(tmp_path, samples, "metrics.allow_small=true"), tmp_path)
    assert sum(counted) > 0


def test_sample_file_without_images_is_named_before_reading(tmp_path: Path, counted: list[int]):
    np.savez(tmp_path / "other.npz", pool=np.zeros((3, 4), np.float32))
    assert npz_array_shape(tmp_path / "other.npz") is None
    with pytest.raises(NeonError, match=r"samples '.*other.npz' hold \['pool'\]: expected uint8 NHWC images in arr_0"):
        run_task(_args(tmp_path, tmp_path / "other.npz"), tmp_path)
    (tmp_path / "flat.npz").write_bytes(b"not a zip at all")
    with pytest.raises(NeonError, match=r"'.*flat.npz' is not a readable .npz"):
        run_task(_args(tmp_path, tmp_path / "flat.npz"), tmp_path)
    assert counted == []
