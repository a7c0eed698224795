"""Start-up cost of each `neon` task, against a bare `python -c "import torch"` measured in the same run.

Every command runs as a fresh process, rounds interleaved (so drifts in machine load hit all alike), best of
`--repeats`. For each task two times are taken from the moment the process is started:

  first work: the task's working stage starts, read from its log line "stage <name>: start": `sample` after
              the network is built and its weights read, `evaluate` after the network and the feature
              extractor are built (the weights are read next); the other tasks: the process's exit;
  exit:       the process has finished (tiny work: a few images with a few sampler steps).

Anchors: `import torch` alone, and `import torch` + reading the network's weights file (the floor of "import
torch plus loading the network"). The network is the embedded default (EDM, 8×8 digits) with fresh weights.

Usage: .venv/bin/python bench/startup.py [--repeats 5] [--quick] [--json OUT] [--tasks sample,evaluate,...]
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
TASKS = ("help", "sample", "evaluate", "merge", "export", "report")
MARKERS = {"sample": "stage sample: start", "evaluate": "stage evaluate: start"}  # the rest: the exit


def write_inputs(folder: Path) -> dict[str, Path]:
    """θ_r and θ_s of the default network (fresh weights), pixel reference statistics and a two-job sweep."""
    import torch
    from hydra import compose, initialize_config_dir

    sys.path.insert(0, str(ROOT))
    from neon.core.io import save_state_dict
    from neon.stages.run import model_spec

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.cache_dir={folder / 'cache'}"])
    from hydra.utils import instantiate

    torch.manual_seed(0)
    module = instantiate(model_spec(cfg))
    theta_r = module.neon_weights()
    theta_s = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in theta_r.items()}
    paths = {"theta_r": folder / "theta_r.safetensors", "theta_s": folder / "theta_s.safetensors",
             "reference": folder / "reference.npz", "sweep": folder / "sweep"}
    save_state_dict(theta_r, paths["theta_r"])
    save_state_dict(theta_s, paths["theta_s"])
    dim = int(np.prod(module.image_shape))
    np.savez(paths["reference"], mu=np.zeros(dim), sigma=np.eye(dim))
    for job, b in (("0", 2), ("1", 4)):
        (paths["sweep"] / job / ".hydra").mkdir(parents=True)
        (paths["sweep"] / job / ".hydra" / "overrides.yaml").write_text(f"- neon.budget_steps={b}\n")
        curve = [{"w": w, "fid": 10.0 - w * b} for w in (0.0, 0.5, 1.0)]
        (paths["sweep"] / job / "summary.json").write_text(json.dumps(
            {"task": "neon", "budget_steps": b, "w_curve": curve, "fid_base": 10.0, "fid_neon": 9.0, "w": 1.0,
             "n_synthetic": 10, "seconds": {"merge": 0.1}}))
    return paths


def commands(paths: dict[str, Path], work: Path, images: int) -> dict[str, list[str]]:
    """The command line of each anchor and task (tasks write their run folders under `work`)."""
    py, neon = sys.executable, [sys.executable, "-m", "neon"]
    common = ["hydra.verbose=neon", "trainer.enable_progress_bar=false"]
    net = f"model.checkpoint={paths['theta_r']}"
    return {
        "import torch": [py, "-c", "import torch"],
        "import torch + load": [py, "-c", "import torch; from safetensors.torch import load_file; "
                                f"load_file({str(paths['theta_r'])!r})"],
        "help": [*neon, "--help"],
        "sample": [*neon, "task=sample", net, f"sample.seeds=0-{images - 1}", f"sample.batch_size={images}",
                   "sampler.num_steps=2", f"hydra.run.dir={work / 'sample'}", *common],
        "evaluate": [*neon, "task=evaluate", net, "metrics=pixel_fd", f"metrics.reference={paths['reference']}",
                     f"metrics.num_samples={images}", f"metrics.block_size={images}", "metrics.allow_small=true",
                     "sampler.num_steps=2", f"hydra.run.dir={work / 'evaluate'}", *common],
        "merge": [*neon, "task=merge", f"task.base={paths['theta_r']}", f"task.aux={paths['theta_s']}", "neon.w=1.0",
                  f"hydra.run.dir={work / 'merge'}", *common],
        "export": [*neon, "task=export", net, f"hydra.run.dir={work / 'export'}", *common],
        "report": [*neon, "task=report", f"dir={paths['sweep']}", f"hydra.run.dir={work / 'report'}", *common],
    }


def timed_run(argv: list[str], marker: str | None, env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(seconds to `marker` in the output, or to the exit where there is none; seconds to the exit)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    first, lines = None, []
    for line in proc.stdout:  # read as it comes: the marker's arrival time is the first work's start
        lines.append(line)
        if first is None and marker is not None and marker in line:
            first = time.perf_counter() - start
    proc.wait()
    end = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{''.join(lines[-20:])}")
    if marker is not None and first is None:
        raise RuntimeError(f"{' '.join(argv)}: no line '{marker}' in its output:\n{''.join(lines[-20:])}")
    return (end if first is None else first), end


def measure(tasks: list[str], repeats: int, images: int, threads: int) -> dict:
    """Best-of-`repeats` first-work and exit times of each task and anchor, rounds interleaved."""
    with tempfile.TemporaryDirectory(prefix="neon-startup-") as tmp:
        tmp = Path(tmp)
        paths = write_inputs(tmp)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": str(threads), "NEON_CACHE_DIR": str(tmp / "cache")}
        cmds = {k: v for k, v in commands(paths, tmp / "runs", images).items() if k.startswith("import") or k in tasks}
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
        for _ in range(repeats):
            for name, argv in cmds.items():
                times[name].append(timed_run(argv, MARKERS.get(name), env, tmp))
    best = {k: (min(t[0] for t in v), min(t[1] for t in v)) for k, v in times.items()}
    return summarize(best, tasks, repeats, images, threads)


def summarize(best: dict[str, tuple[float, float]], tasks: list[str], repeats: int, images: int, threads: int) -> dict:
    """The result from each command's best (first work, exit) seconds: the anchors, and each task against them."""
    torch_s, load_s = best["import torch"][1], best["import torch + load"][1]
    result = {"settings": {"repeats": repeats, "images": images, "threads": threads, "python": sys.version.split()[0],
                           "network": "embedded default (EDM, 8×8 digits), fresh weights"},
              "anchors": {"import_torch_s": torch_s, "import_torch_and_load_s": load_s}, "tasks": {}}
    for name in tasks:
        first, end = best[name]
        result["tasks"][name] = {"first_work_s": first, "exit_s": end, "first_work_over_torch_s": first - torch_s,
                                 "first_work_over_torch_and_load_s": first - load_s,
                                 "first_work_ratio_to_torch": first / torch_s,
                                 "marker": MARKERS.get(name, "exit")}
    return result


def report(result: dict) -> str:
    """The measurements as a table."""
    a = result["anchors"]
    lines = [f"anchors: import torch {a['import_torch_s']:.2f} s, import torch + load the weights "
             f"{a['import_torch_and_load_s']:.2f} s (best of {result['settings']['repeats']})",
             f"{'task':<10} {'first work':>10} {'exit':>7} {'- torch':>8} {'- torch+load':>12} {'× torch':>8}  first work ="]
    for name, t in result["tasks"].items():
        lines.append(f"{name:<10} {t['first_work_s']:>9.2f}s {t['exit_s']:>6.2f}s {t['first_work_over_torch_s']:>+7.2f}s "
                     f"{t['first_work_over_torch_and_load_s']:>+11.2f}s {t['first_work_ratio_to_torch']:>7.2f}×  "
                     f"{t['marker']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--images", type=int, default=8, help="images sampled / evaluated (tiny: start-up dominates)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--quick", action="store_true", help="one round, two images (a smoke test of the bench)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        p.error(f"unknown task(s) {unknown}: choose from {', '.join(TASKS)}")
    repeats, images = (1, 2) if args.quick else (args.repeats, args.images)
    result = measure(tasks, repeats, images, args.threads)
    return emit(result, report(result), args.json)


if __name__ == "__main__":
    main()
