"""`neon-merge` against the floor and the naive script, measured in one run (rounds interleaved, best of
`--repeats`), on two synthetic safetensors files of `--gib` GiB each (float32 tensors of mixed sizes and one
integer buffer, as a network's state dict):

  floor:      read both files and write one file of the same size, as raw bytes in 16 MiB chunks (no
              parsing, no arithmetic): what any merge must at least do;
  neon-merge: `neon.merging.extrapolate.merge_files` (what `neon-merge BASE AUX --w 1 --out OUT` runs), safetensors out;
  naive:      the authors' kind of script: torch.load both (.pt copies of the same tensors), (1+w)·θ_r − w·θ_s
              on every float tensor, torch.save.

Each measurement runs in its own process (the files stay in the page cache, so reads are memory copies);
the time excludes the interpreter's start-up and imports. Peak private memory: the largest anonymous resident
memory (RssAnon, sampled every 2 ms) above the process's level before the work. Files are deleted at the end.

Usage: .venv/bin/python bench/merge_speed.py [--gib 1.5] [--repeats 3] [--quick] [--json OUT] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import emit  # noqa: E402  (bench/ holds the scripts' shared helpers)

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("floor", "neon-merge", "naive")
CHUNK = 16 * 2**20
W = 1.0


def synthetic_state(total_bytes: int, seed: int):
    """Float32 tensors of mixed sizes (a few large, many small) adding up to about `total_bytes`, plus an int buffer."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sizes = [4 * 2**20, 2**20, 256 * 1024, 16 * 1024, 1024]  # elements, cycled: large to small
    state, used, i = {}, 0, 0
    while used < total_bytes:
        n = min(sizes[i % len(sizes)], max(1, (total_bytes - used) // 4))
        state[f"blocks.{i}.weight"] = torch.randn(n, generator=g) * 0.05
        used += 4 * n
        i += 1
    state["steps"] = torch.tensor([i], dtype=torch.int64)
    return state


def write_inputs(folder: Path, gib: float) -> dict[str, Path]:
    """θ_r and θ_s as safetensors (for the floor and neon-merge) and as .pt (for the naive script)."""
    import torch
    from safetensors.torch import save_file

    paths = {}
    for name, seed in (("theta_r", 0), ("theta_s", 1)):
        state = synthetic_state(int(gib * 2**30), seed)
        paths[name] = folder / f"{name}.safetensors"
        save_file(state, paths[name])
        paths[f"{name}_pt"] = folder / f"{name}.pt"
        torch.save(state, paths[f"{name}_pt"])
        del state
    return paths


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """The peak of RssAnon above its level at the start, sampled in a thread."""

    def __enter__(self) -> "PeakMemory":
        self.start = self.peak = _rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_anon())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon())

    @property
    def extra(self) -> int:
        return self.peak - self.start


def floor(base: Path, aux: Path, out: Path) -> None:
    """Read both files and write one of base's size, raw bytes."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(base, "rb", buffering=0) as fb, open(aux, "rb", buffering=0) as fa, open(out, "wb", buffering=0) as fo:
        while True:
            n = fb.readinto(view)
            if not n:
                break
            fa.readinto(view)
            fo.write(view[:n])


def naive(base: Path, aux: Path, out: Path) -> None:
    """torch.load both, merge every float tensor, torch.save."""
    import torch

    theta_r, theta_s = torch.load(base), torch.load(aux)
    merged = {k: (1 + W) * v - W * theta_s[k] if v.is_floating_point() else v for k, v in theta_r.items()}
    torch.save(merged, out)


def child(method: str, base: Path, aux: Path, out: Path) -> dict:
    """Run one method once in this process: its seconds and peak private memory."""
    import torch  # noqa: F401  (imported before the clock starts, as in every method)

    sys.path.insert(0, str(ROOT))
    from neon.merging.extrapolate import merge_files

    run = {"floor": floor, "naive": naive,
           "neon-merge": lambda b, a, o: merge_files(b, a, W, o)}[method]
    with PeakMemory() as mem:
        start = time.perf_counter()
        run(base, aux, out)
        seconds = time.perf_counter() - start
    out.unlink()
    return {"seconds": seconds, "peak_private_bytes": mem.extra}


def measure(gib: float, repeats: int, folder: Path | None, threads: int) -> dict:
    """Best-of-`repeats` seconds and the peak private memory of each method, rounds interleaved."""
    with tempfile.TemporaryDirectory(prefix="neon-merge-speed-", dir=folder) as tmp:
        tmp = Path(tmp)
        paths = write_inputs(tmp, gib)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        args = {"floor": (paths["theta_r"], paths["theta_s"], tmp / "floor.bin"),
                "neon-merge": (paths["theta_r"], paths["theta_s"], tmp / "merged.safetensors"),
                "naive": (paths["theta_r_pt"], paths["theta_s_pt"], tmp / "merged.pt")}
        runs: dict[str, list[dict]] = {m: [] for m in METHODS}
        for _ in range(repeats):
            for method in METHODS:
                proc = subprocess.run([sys.executable, __file__, "--child", method, *map(str, args[method])],
                                      capture_output=True, text=True, env=env, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
                runs[method].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        file_bytes = paths["theta_r"].stat().st_size
    return summarize(runs, file_bytes, repeats, threads)


def summarize(runs: dict[str, list[dict]], file_bytes: int, repeats: int, threads: int) -> dict:
    """The result from each method's runs (as `child` returns them): best seconds, ratio to the floor, peak memory."""
    best = {m: min(r["seconds"] for r in v) for m, v in runs.items()}
    result = {"settings": {"gib_per_file": file_bytes / 2**30, "repeats": repeats, "threads": threads, "w": W,
                           "floor": "raw byte copy: read both files, write one, 16 MiB chunks"},
              "methods": {}}
    for m in METHODS:
        result["methods"][m] = {"seconds": best[m], "ratio_to_floor": best[m] / best["floor"],
                                "peak_private_gib": max(r["peak_private_bytes"] for r in runs[m]) / 2**30,
                                "all_seconds": [r["seconds"] for r in runs[m]]}
    return result


def report(result: dict) -> str:
    """The measurements as a table."""
    s = result["settings"]
    lines = [f"two files of {s['gib_per_file']:.3f} GiB, best of {s['repeats']}, {s['threads']} thread(s); "
             f"floor = {s['floor']}",
             f"{'method':<11} {'seconds':>8} {'× floor':>8} {'peak private':>13}"]
    for m, r in result["methods"].items():
        lines.append(f"{m:<11} {r['seconds']:>8.2f} {r['ratio_to_floor']:>7.2f}× {r['peak_private_gib']:>9.3f} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=1.5, help="size of each input file")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the measured processes")
    p.add_argument("--dir", type=Path, help="where the temporary files go (default: the system's temp folder)")
    p.add_argument("--quick", action="store_true", help="8 MiB files, one round (a smoke test of the bench)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--child", nargs=4, metavar=("METHOD", "BASE", "AUX", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        method, *files = args.child
        print(json.dumps(child(method, *map(Path, files))))
        return None
    gib, repeats = (8 / 1024, 1) if args.quick else (args.gib, args.repeats)
    result = measure(gib, repeats, args.dir, args.threads)
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
