"""Sweep-level results: one table over every job of a multirun, and the report plots."""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from neon.core.errors import NeonError
from neon.core.io import atomic_path, read_json, write_text

log = logging.getLogger("neon")

# (column, where the summary holds it): the headline numbers of a job on its selection seeds (where w and B were
# picked), the picks on its held-out seeds (the figures to report), the control's best, the seed noise and the
# anti-alignment diagnostic's cosine at θ_r on the job's S (neon.diagnose)
COLUMNS = (("fid_base", "fid_base"), ("fid_base_tuned", "fid_base_tuned"), ("fid_neon", "fid_neon"), ("w", "w"),
           ("budget_steps", "budget_steps"), ("n_synthetic", "n_synthetic"), ("fid_control", "control.fid_best"),
           ("fid_base_heldout", "fid_base_heldout"), ("fid_neon_heldout", "fid_neon_heldout"),
           ("gain_heldout", "gain_heldout"), ("fid_control_heldout", "fid_control_heldout"),
           ("seed_noise", "fid_noise.relative"), ("cosine", "diagnosis.cosine"))
LEGEND = ("fid_base, fid_neon, fid_control: selection seeds, where w and B were picked; *_heldout: those picks "
          "scored on disjoint held-out seeds — the figures to report (gain_heldout: 1 − θ_neon / θ_r).")


def collect_jobs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished job under a sweep folder: its overrides and summary.json."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise NeonError(f"sweep folder '{sweep_dir}' does not exist: give the folder a multirun wrote (multirun/...)")
    jobs = []
    for summary in sorted(sweep_dir.glob("*/summary.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        overrides_file = summary.parent / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        jobs.append({"dir": summary.parent, "overrides": dict(o.split("=", 1) for o in overrides if "=" in o),
                     "summary": read_json(summary)})
    return jobs


def swept_keys(jobs: list[dict[str, Any]]) -> list[str]:
    """The overrides that differ between jobs (with one job, all of its overrides): what tells rows apart."""
    keys = sorted({k for j in jobs for k in j["overrides"]})
    if len(jobs) > 1:  # overrides every job shares say nothing about the rows
        keys = [k for k in keys if len({j["overrides"].get(k) for j in jobs}) > 1]
    return keys


def write_sweep_table(sweep_dir: str | Path) -> list[Path]:
    """`sweep.csv` and `sweep.md`: one row per job (task=neon or task=search), its overrides then its headline
    numbers (`fid_base_tuned`: θ_r at its own best guidance, where a search tuned it)."""
    sweep_dir = Path(sweep_dir)
    jobs = [j for j in collect_jobs(sweep_dir) if j["summary"].get("task") in ("neon", "search")]
    keys = swept_keys(jobs)
    header = ["job", *keys, *(name for name, _ in COLUMNS), "seconds"]
    rows = []  # full precision for the CSV; the markdown table rounds
    for j in jobs:
        s = j["summary"]
        rows.append([j["dir"].name, *(j["overrides"].get(k, "") for k in keys),
                     *(_lookup(s, where) for _, where in COLUMNS), round(sum(s.get("seconds", {}).values()), 3)])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *[["" if c is None else c for c in r] for r in rows]])
    write_text(sweep_dir / "sweep.csv", buf.getvalue())
    md = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    md += ["", LEGEND]
    for line in (best_job_line(jobs, keys), fair_base_line(jobs, keys)):
        if line:
            log.info(line)
            md += ["", line]
    write_text(sweep_dir / "sweep.md", "\n".join(md) + "\n")
    return [sweep_dir / "sweep.csv", sweep_dir / "sweep.md"]


def _where(j: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={j['overrides'][k]}" for k in keys if k in j["overrides"]) or f"job {j['dir'].name}"


def best_job_line(jobs: list[dict[str, Any]], keys: list[str]) -> str | None:
    """The sweep's best job, picked on its selection figure (fid_neon), with its held-out figures: what to
    report for the sweep."""
    scored = [j for j in jobs if isinstance(j["summary"].get("fid_neon"), (int, float))]
    if len(scored) < 2:
        return None
    best = min(scored, key=lambda j: j["summary"]["fid_neon"])
    s = best["summary"]
    line = f"Best job on the selection seeds: {_where(best, keys)} (w = {s.get('w')}, B = {s.get('budget_steps')})"
    if isinstance(s.get("fid_neon_heldout"), (int, float)):
        gain = s.get("gain_heldout")
        line += (f"; on its held-out seeds θ_r {s['fid_base_heldout']:.6g} → θ_neon {s['fid_neon_heldout']:.6g}"
                 + (f" ({100 * gain:+.1f}%)" if isinstance(gain, (int, float)) else ""))
    return line + "."


def fair_base_line(jobs: list[dict[str, Any]], keys: list[str]) -> str | None:
    """Where a sweep's jobs score θ_r differently (they differ in guidance or other evaluation settings), the best
    θ_r over the sweep beside the best θ_neon: the base tuned over the same settings as θ_neon (the fair base)."""
    scored = [j for j in jobs if isinstance(j["summary"].get("fid_base"), (int, float))
              and isinstance(j["summary"].get("fid_neon"), (int, float))]
    if len({j["summary"]["fid_base"] for j in scored}) < 2:
        return None
    base = min(scored, key=lambda j: j["summary"]["fid_base"])
    neon = min(scored, key=lambda j: j["summary"]["fid_neon"])

    b, n = base["summary"]["fid_base"], neon["summary"]["fid_neon"]
    line = (f"Fair base over this sweep: θ_r at its best {b:.6g} ({_where(base, keys)}); "
            f"best θ_neon {n:.6g} ({_where(neon, keys)}, w = {neon['summary'].get('w')}): {(n - b) / b:+.1%} against it.")
    bh, nh = base["summary"].get("fid_base_heldout"), neon["summary"].get("fid_neon_heldout")
    if isinstance(bh, (int, float)) and isinstance(nh, (int, float)):
        line += f" Both picked on the selection seeds; on their held-out seeds {bh:.6g} → {nh:.6g}, {(nh - bh) / bh:+.1%}."
    return line


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else "" if value is None else str(value)


class SweepTable(Callback):
    """Hydra callback: when a multirun ends, gather every job's results into sweep.csv and sweep.md; with a
    `heat_key` (a study's swept setting), also the report's plots (`write_report`)."""

    def __init__(self, heat_key: str | None = None):
        self.heat_key = heat_key

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if self.heat_key:
                for path in write_report(config.hydra.sweep.dir, heat_key=self.heat_key):
                    log.info("wrote %s", path)
            else:
                write_sweep_table(config.hydra.sweep.dir)
        except NeonError as exc:  # e.g. a sweep of other tasks has no Neon results to tabulate
            log.warning("no sweep table: %s", exc)


def _lookup(summary: dict, dotted: str) -> Any:
    node: Any = summary
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _as_number(value: Any) -> tuple:
    # swept overrides arrive as text ("1e-5"): order them as numbers where they are
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_report(sweep_dir: str | Path, heat_key: str = "sampler.cfg") -> list[Path]:
    """The sweep table plus PNGs: w-curves per budget, the U-curve over budget, and a w × `heat_key` heatmap
    (`heat_key`: a summary key such as `sampler.cfg`, or a swept override such as `neon.optimizer.lr`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sweep_dir = Path(sweep_dir)
    jobs = [j for j in collect_jobs(sweep_dir) if j["summary"].get("task") == "neon"]
    if not jobs:
        raise NeonError(f"no finished neon jobs (*/summary.json) under '{sweep_dir}'")
    out = write_sweep_table(sweep_dir)
    points = []  # (setting label without budget, budget, w, fid, heat value)
    label_keys = [k for k in swept_keys(jobs) if k not in ("neon.budget_steps", "neon.w")]
    for j in jobs:
        s = j["summary"]
        label = ", ".join(f"{k}={j['overrides'].get(k, '')}" for k in label_keys) or "default"
        for g in s.get("grid") or [{"budget_steps": s["budget_steps"], **p} for p in s["w_curve"]]:
            try:
                w = float(g["w"])
            except ValueError:
                continue  # block-wise w have no place on a w axis
            heat = _lookup(s, heat_key)
            heat = j["overrides"].get(heat_key) if heat is None else heat
            points.append((label, int(g["budget_steps"]), w, float(g["fid"]), heat))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = defaultdict(list)
    for label, budget, w, fid, _ in points:
        curves[(label, budget)].append((w, fid))
    for (label, budget), pts in sorted(curves.items()):
        xs, ys = zip(*sorted(set(pts)), strict=True)
        ax.plot(xs, ys, marker="o", markersize=3, label=f"B={budget} {label}"[:60])
    ax.set_xlabel("w"), ax.set_ylabel("FID"), ax.set_title("w-curve per budget"), ax.legend(fontsize=6)
    _save(fig, sweep_dir / "report_w_curves.png")
    out.append(sweep_dir / "report_w_curves.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    best = defaultdict(dict)
    for label, budget, _, fid, _ in points:
        best[label][budget] = min(fid, best[label].get(budget, float("inf")))
    for label, by_budget in sorted(best.items()):
        xs = sorted(by_budget)
        ax.plot(xs, [by_budget[b] for b in xs], marker="o", label=label[:60])
    ax.set_xlabel("fine-tune budget (steps)"), ax.set_ylabel("best FID over w"), ax.set_title("U-curve over budget")
    ax.legend(fontsize=6)
    _save(fig, sweep_dir / "report_u_curve.png")
    out.append(sweep_dir / "report_u_curve.png")

    heat = [(h, w, fid) for _, _, w, fid, h in points if h is not None]
    if heat:
        hs, ws = sorted({h for h, _, _ in heat}, key=_as_number), sorted({w for _, w, _ in heat})
        grid = np.full((len(hs), len(ws)), np.nan)
        for h, w, fid in heat:
            i, k = hs.index(h), ws.index(w)
            grid[i, k] = fid if np.isnan(grid[i, k]) else min(grid[i, k], fid)
        fig, ax = plt.subplots(figsize=(7, 4))
        # a log scale: the w-curves of a sweep span from the best FID to many times it
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis_r",
                       norm=matplotlib.colors.LogNorm() if np.nanmin(grid) > 0 else None)
        ax.set_xticks(range(len(ws)), [f"{w:g}" for w in ws], fontsize=7)
        ax.set_yticks(range(len(hs)), [str(h) for h in hs])
        ax.set_xlabel("w"), ax.set_ylabel(heat_key), ax.set_title(f"best FID over budgets: w × {heat_key}")
        fig.colorbar(im)
        name = f"report_heatmap_w_{heat_key.replace('.', '_')}.png"
        _save(fig, sweep_dir / name)
        out.append(sweep_dir / name)
    return out
