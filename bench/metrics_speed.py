"""Feature extraction and statistics, as ratios measured within one run.

  extraction: InceptionFeatures.extract (pool + logits, uint8 conversion) vs torch-fidelity's own
              FeatureExtractorInceptionV3 on the same uint8 batch (random weights of the standard
              architecture: the real file cannot be downloaded here; speed does not depend on the values);
  memory:     peak extra memory of feature_statistics on 50K × 2048 float32 features vs the size of a
              float64 copy of them (what np.cov would allocate).

Usage: .venv/bin/python bench/metrics_speed.py [--images 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from timing import best_of  # noqa: E402  (bench/ is on the path when a script here runs)

from neon.metrics.frechet import feature_statistics  # noqa: E402
from neon.metrics.inception import InceptionFeatures  # noqa: E402
from tests.inception_weights import write_random_inception  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_random_inception(Path(tmp) / "w.pth")
        ours = InceptionFeatures(str(weights), batch_size=args.images)
        lib = ours.network()  # the library's extractor itself, as torch-fidelity builds it
        uint8 = (torch.rand(args.images, 3, 32, 32) * 255).to(torch.uint8)
        unit = uint8.float() / 127.5 - 1
        t_ours, t_lib = [], []
        with torch.no_grad():
            for _ in range(3):  # interleaved, so drifts in machine load hit both alike
                t_lib.append(best_of(lambda: lib(uint8), repeats=1))
                t_ours.append(best_of(lambda: ours.extract(unit), repeats=1))
        t_ours, t_lib = min(t_ours), min(t_lib)
    print(f"extraction of {args.images} 32×32 images: ours {args.images / t_ours:.1f} img/s, torch-fidelity "
          f"{args.images / t_lib:.1f} img/s, ratio {t_lib / t_ours:.3f}×")

    feats = np.random.default_rng(0).normal(size=(50000, 2048)).astype(np.float32)
    tracemalloc.start()
    feature_statistics(feats)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"statistics of 50K × 2048 features: peak extra {peak / 2**20:.0f} MiB vs {feats.nbytes * 2 / 2**20:.0f} MiB "
          "for a float64 copy")


if __name__ == "__main__":
    main()
