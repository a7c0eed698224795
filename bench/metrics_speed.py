"""Feature extraction and statistics, as ratios measured within one run.

  extraction: InceptionFeatures.extract (pool + logits, uint8 conversion) vs torch-fidelity's own
              FeatureExtractorInceptionV3 on the same uint8 batch (random weights of the standard
              architecture: the real file cannot be downloaded here; speed does not depend on the values);
  memory:     peak extra memory of feature_statistics on 50K × 2048 float32 features vs the size of a
              float64 copy of them (what np.cov would allocate).

Usage: .venv/bin/python bench/metrics_speed.py [--images 64] [--threads 2] [--rows 50000] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from output import emit  # noqa: E402  (bench/ holds the scripts' shared helpers)
from timing import best_of  # noqa: E402

from neon.metrics.frechet import feature_statistics  # noqa: E402
from neon.metrics.inception import InceptionFeatures  # noqa: E402
from tests.inception_weights import write_random_inception  # noqa: E402


def extraction(images: int, rounds: int) -> dict:
    """Images/s of our extraction and of torch-fidelity's extractor on one batch, interleaved, best of `rounds`."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_random_inception(Path(tmp) / "w.pth")
        ours = InceptionFeatures(str(weights), batch_size=images)
        lib = ours.network()  # the library's extractor itself, as torch-fidelity builds it
        uint8 = (torch.rand(images, 3, 32, 32) * 255).to(torch.uint8)
        unit = uint8.float() / 127.5 - 1
        t_ours, t_lib = [], []
        with torch.no_grad():
            for _ in range(rounds):  # interleaved, so drifts in machine load hit both alike
                t_lib.append(best_of(lambda: lib(uint8), repeats=1))
                t_ours.append(best_of(lambda: ours.extract(unit), repeats=1))
        t_ours, t_lib = min(t_ours), min(t_lib)
    return {"images": images, "image_size": 32, "seconds": {"ours": t_ours, "torch_fidelity": t_lib},
            "ours_images_per_s": images / t_ours, "fidelity_images_per_s": images / t_lib, "ratio": t_lib / t_ours}


def statistics(rows: int, dim: int) -> dict:
    """Peak extra memory of feature_statistics on rows × dim float32 features, beside a float64 copy's size."""
    feats = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    tracemalloc.start()
    feature_statistics(feats)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rows": rows, "dim": dim, "peak_extra_mib": peak / 2**20, "float64_copy_mib": feats.nbytes * 2 / 2**20}


def report(result: dict) -> str:
    """The measurements as two lines."""
    e, s = result["extraction"], result["statistics"]
    rows = f"{s['rows'] // 1000}K" if s["rows"] % 1000 == 0 else str(s["rows"])
    return (f"extraction of {e['images']} 32×32 images: ours {e['ours_images_per_s']:.1f} img/s, torch-fidelity "
            f"{e['fidelity_images_per_s']:.1f} img/s, ratio {e['ratio']:.3f}×\n"
            f"statistics of {rows} × {s['dim']} features: peak extra {s['peak_extra_mib']:.0f} MiB vs "
            f"{s['float64_copy_mib']:.0f} MiB for a float64 copy")


def main(argv: list[str] | None = None) -> dict:
    """Measure extraction and statistics; print the lines and write the JSON where asked."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rows", type=int, default=50000, help="feature rows of the statistics")
    p.add_argument("--dim", type=int, default=2048, help="feature width of the statistics")
    p.add_argument("--quick", action="store_true", help="one image, one round, 64 × 16 features (a smoke test)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    images, rounds, rows, dim = (1, 1, 64, 16) if args.quick else (args.images, args.rounds, args.rows, args.dim)
    torch.set_num_threads(args.threads)
    result = {"settings": {"threads": torch.get_num_threads(), "rounds": rounds,
                           "inception": "random weights of torch-fidelity's inception-v3-compat",
                           "compared": "InceptionFeatures.extract against torch-fidelity's FeatureExtractorInceptionV3; "
                                       "feature_statistics against a float64 copy"},
              "extraction": extraction(images, rounds), "statistics": statistics(rows, dim)}
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
