"""FID of a sample file, end to end: `neon task=evaluate samples=S.npz` against torch-fidelity's
`calculate_metrics` on the same uint8 images, the same reference statistics and the same Inception file.

Inputs (written to a temporary folder): `--images` uint8 32×32 RGB images with some structure (blurred noise
plus a per-image colour) in the ADM layout (`arr_0`, NHWC), a reference set of `--reference` such images of
another seed, and a random-weight Inception file of the standard architecture (tests/inception_weights.py: the
real file cannot be downloaded here; the cost does not depend on the values). The reference statistics are
computed once, untimed, by torch-fidelity (its cache of input2); the same mu and sigma go into REF.npz for ours.

  ours:     `python -m neon task=evaluate samples=S.npz metrics=fid10k metrics.reference=REF.npz
             metrics.compute=[fid] metrics.inception_weights=W` (metrics.allow_small=true below 2,048 images);
  fidelity: a script that reads S.npz into a Dataset of uint8 CHW tensors and calls
             `torch_fidelity.calculate_metrics(input1=..., input2=<reference Dataset, its statistics cached>,
             fid=True, cuda=False, feature_extractor_weights_path=W)` with its other defaults.

Each runs in a fresh process (its time is the process's wall time from start to exit: what a user waits for;
the work alone, from the start of scoring to the FID, is reported beside it); rounds interleaved, best of
`--repeats`; every process gets OMP_NUM_THREADS=`--threads`. `--side-by-side` runs the two methods of a round
at the same time (e.g. one thread each on two cores): both see the same machine, and a long size takes half the
wall time of running them one after the other. The FIDs must agree (rel. 1e-4).

Usage: .venv/bin/python bench/eval_speed.py [--images 500,10000] [--repeats 2] [--threads 2] [--side-by-side]
       [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import emit  # noqa: E402  (bench/ holds the scripts' shared helpers)

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("ours", "fidelity")
RTOL = 1e-4


def structured_images(n: int, seed: int, size: int = 32) -> np.ndarray:
    """uint8 NHWC images: bilinear-upsampled noise on a quarter grid plus a per-image colour, squashed by tanh."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.randn(n, 3, size // 4, size // 4, generator=g), size=size,
                                        mode="bilinear", align_corners=False)
    x = x + 0.7 * torch.randn(n, 3, 1, 1, generator=g)
    return (x.tanh() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def uint8_dataset(path: Path):
    """The `arr_0` images of an .npz as a Dataset of uint8 CHW tensors (what torch-fidelity takes)."""
    import torch

    class UInt8Images(torch.utils.data.Dataset):
        def __init__(self, images: np.ndarray):
            self.images = torch.from_numpy(images).permute(0, 3, 1, 2)

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int):
            return self.images[i]

    with np.load(path) as f:
        return UInt8Images(f["arr_0"])


def fidelity_fid(samples: Path, reference: Path, weights: Path, cache: Path) -> float:
    """torch-fidelity's FID of the sample file against the reference images (statistics from its cache)."""
    import torch_fidelity

    out = torch_fidelity.calculate_metrics(
        input1=uint8_dataset(samples), input2=uint8_dataset(reference), input2_cache_name="reference",
        cache_root=str(cache), fid=True, cuda=False, verbose=False, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights))
    return float(out["frechet_inception_distance"])


def write_inputs(folder: Path, images: list[int], reference: int) -> dict[str, Path]:
    """Sample files of each size, the reference images, the Inception file, and REF.npz (mu, sigma) holding
    the reference statistics torch-fidelity computed (and cached) for its input2."""
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.inception_weights import write_random_inception

    paths = {"weights": write_random_inception(folder / "inception.pth"), "reference_images": folder / "real.npz",
             "cache": folder / "fidelity-cache", "reference": folder / "REF.npz"}
    np.savez(paths["reference_images"], arr_0=structured_images(reference, seed=1))
    for n in images:
        paths[f"samples_{n}"] = folder / f"samples_{n}.npz"
        np.savez(paths[f"samples_{n}"], arr_0=structured_images(n, seed=2))
    # input1 = input2 = the reference: fills the cache of input2's statistics (input1's are not cached)
    fidelity_fid(paths["reference_images"], paths["reference_images"], paths["weights"], paths["cache"])
    (stats,) = paths["cache"].glob("reference-*-stat-fid-*.pt")
    ref = torch.load(stats, weights_only=False)
    np.savez(paths["reference"], mu=ref["mu"], sigma=ref["sigma"])
    return paths


def ours_command(paths: dict[str, Path], n: int, run_dir: Path) -> list[str]:
    """The `neon` command line that scores samples_n.npz."""
    return [sys.executable, "-m", "neon", "task=evaluate", f"samples={paths[f'samples_{n}']}", "metrics=fid10k",
            f"metrics.reference={paths['reference']}", "metrics.compute=[fid]",
            f"metrics.inception_weights={paths['weights']}", f"metrics.allow_small={str(n < 2048).lower()}",
            "trainer=cpu", f"hydra.run.dir={run_dir}"]


def fidelity_command(paths: dict[str, Path], n: int) -> list[str]:
    """This script as a child that scores samples_n.npz with torch-fidelity."""
    return [sys.executable, __file__, "--child", str(paths[f"samples_{n}"]), str(paths["reference_images"]),
            str(paths["weights"]), str(paths["cache"])]


def start(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> tuple[subprocess.Popen, float, Path]:
    """One process started, its output going to `log` (a file: two processes side by side never block on a
    full pipe)."""
    with open(log, "w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd), time.perf_counter(), log


def finish(group: dict[str, tuple[subprocess.Popen, float, Path]]) -> dict[str, tuple[float, str]]:
    """Wall seconds of each started process from its start to its own exit (polled, so one that ends while
    another runs is not charged the other's time), and its output."""
    ended: dict[str, float] = {}
    while len(ended) < len(group):
        for name, (proc, _, _) in group.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.perf_counter()
        time.sleep(0.05)
    results = {}
    for name, (proc, begun, log) in group.items():
        output = log.read_text()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, proc.args))} failed ({proc.returncode}):\n{output[-3000:]}")
        results[name] = (ended[name] - begun, output)
    return results


def measure(images: list[int], reference: int, repeats: int, threads: int, side_by_side: bool = False) -> dict:
    """Best-of-`repeats` wall and work seconds and the FID of each method at each size, rounds interleaved
    (or, `side_by_side`, both methods of a round running at the same time: each sees the same machine)."""
    with tempfile.TemporaryDirectory(prefix="neon-eval-speed-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": str(threads), "NEON_CACHE_DIR": str(tmp / "neon-cache")}
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the untimed reference statistics, here
        paths = write_inputs(tmp, images, reference)
        runs: dict[int, dict[str, list[dict]]] = {n: {m: [] for m in METHODS} for n in images}
        for r in range(repeats):
            for n in images:
                run_dir = tmp / f"run-{n}-{r}"
                argv = {"ours": ours_command(paths, n, run_dir), "fidelity": fidelity_command(paths, n)}
                order = METHODS if r % 2 == 0 else METHODS[::-1]  # alternate who goes first
                groups = [order] if side_by_side else [[m] for m in order]
                for group in groups:
                    started = {m: start(argv[m], env, tmp, tmp / f"{m}-{n}-{r}.log") for m in group}
                    for method, (wall, out) in finish(started).items():
                        if method == "ours":
                            summary = json.loads((run_dir / "summary.json").read_text())
                            run = {"wall_s": wall, "work_s": summary["seconds"]["evaluate"],
                                   "fid": summary["fid"][str(paths[f"samples_{n}"])]}
                        else:
                            result_line = next(line for line in reversed(out.splitlines()) if line.startswith("{"))  # after any warnings
                            run = {"wall_s": wall, **json.loads(result_line)}
                        runs[n][method].append(run)
    return summarize(runs, reference, repeats, threads, side_by_side)


def summarize(runs: dict[int, dict[str, list[dict]]], reference: int, repeats: int, threads: int,
              side_by_side: bool) -> dict:
    """The result from each size's runs per method (wall and work seconds, FID): best times, ratios, FID agreement."""
    images = list(runs)
    result = {"settings": {"repeats": repeats, "threads": threads, "reference_images": reference,
                           "side_by_side": side_by_side,
                           "image_size": "32x32 RGB uint8", "python": sys.version.split()[0],
                           "inception": "random weights of torch-fidelity's inception-v3-compat"}, "sizes": {}}
    for n in images:
        row = {}
        for m in METHODS:
            row[m] = {"wall_s": min(r["wall_s"] for r in runs[n][m]), "work_s": min(r["work_s"] for r in runs[n][m]),
                      "fid": runs[n][m][0]["fid"], "all_wall_s": [r["wall_s"] for r in runs[n][m]]}
        fids = [r["fid"] for m in METHODS for r in runs[n][m]]
        row["ratio_wall"] = row["ours"]["wall_s"] / row["fidelity"]["wall_s"]
        row["ratio_work"] = row["ours"]["work_s"] / row["fidelity"]["work_s"]
        row["fid_rel_diff"] = (max(fids) - min(fids)) / abs(row["fidelity"]["fid"])
        if row["fid_rel_diff"] > RTOL:
            raise RuntimeError(f"{n} images: the FIDs disagree beyond {RTOL:g} relative: {fids}")
        result["sizes"][str(n)] = row
    return result


def report(result: dict) -> str:
    """The measurements as a table."""
    s = result["settings"]
    mode = "both methods side by side, " if s.get("side_by_side") else ""
    lines = [f"best of {s['repeats']}, {mode}{s['threads']} thread(s) each, reference {s['reference_images']} images, "
             f"{s['image_size']}; ratio = ours / torch-fidelity",
             f"{'images':>7} {'ours':>8} {'fidelity':>9} {'ratio':>6}   {'work: ours':>10} {'fidelity':>9} "
             f"{'ratio':>6}   {'FID':>12} {'rel. diff':>9}"]
    for n, r in result["sizes"].items():
        o, f = r["ours"], r["fidelity"]
        lines.append(f"{n:>7} {o['wall_s']:>7.1f}s {f['wall_s']:>8.1f}s {r['ratio_wall']:>5.2f}×   "
                     f"{o['work_s']:>9.1f}s {f['work_s']:>8.1f}s {r['ratio_work']:>5.2f}×   "
                     f"{o['fid']:>12.6g} {r['fid_rel_diff']:>9.1e}")
    return "\n".join(lines)


def child(samples: Path, reference: Path, weights: Path, cache: Path) -> dict:
    """torch-fidelity's FID in this process, with the seconds from reading the samples to the result."""
    import torch  # noqa: F401  (imported before the clock starts, as the neon command has it before its stage)

    start = time.perf_counter()
    fid = fidelity_fid(samples, reference, weights, cache)
    return {"work_s": time.perf_counter() - start, "fid": fid}


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default="500,10000", help="comma-separated sample counts")
    p.add_argument("--reference", type=int, default=500, help="reference images (statistics computed untimed)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every process")
    p.add_argument("--side-by-side", action="store_true",
                   help="run both methods of a round at once (give each --threads cores / 2): same machine state")
    p.add_argument("--quick", action="store_true", help="8 images, 8 reference images, one round (a smoke test of the bench)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--child", nargs=4, metavar=("SAMPLES", "REFERENCE", "WEIGHTS", "CACHE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*map(Path, args.child))))
        return None
    images = [int(n) for n in args.images.split(",") if n]
    reference, repeats = args.reference, args.repeats
    if args.quick:
        images, reference, repeats = [8], 8, 1
    result = measure(images, reference, repeats, args.threads, args.side_by_side)
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
