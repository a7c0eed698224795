"""What a run shows and leaves behind: the w-curve as a printed table, CSV and PNG, and sample grids."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neon.core.contract import HasTextSamples
from neon.core.io import StateDict, atomic_path, write_text
from neon.merging.extrapolate import WSpec


def w_label(w: WSpec) -> str:
    """A w as it appears in tables: the number, or the block-wise mapping as JSON."""
    return f"{w:g}" if isinstance(w, float) else json.dumps(w, sort_keys=True)


def write_w_curve(out: Path, ws: Sequence[WSpec], fids: Sequence[float], control: Sequence[float] | None = None,
                  grid: dict[int, Sequence[float]] | None = None, output: Sequence[float] | None = None) -> None:
    """`w_curve.csv` (columns w,fid[,fid_control][,fid_output] at the best budget, `fid_output` the output-space
    twin's; with several budgets also `w_grid.csv`, columns budget_steps,w,fid) and `w_curve.png` (one line
    per budget)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["w", "fid", *(["fid_control"] if control else []), *(["fid_output"] if output else [])])
    for i, (w, fid) in enumerate(zip(ws, fids, strict=True)):
        writer.writerow([w_label(w), repr(float(fid)), *([repr(float(control[i]))] if control else []),
                         *([repr(float(output[i]))] if output else [])])
    write_text(out / "w_curve.csv", buf.getvalue())
    if grid and len(grid) > 1:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["budget_steps", "w", "fid"])
        for budget, curve in grid.items():
            for w, fid in zip(ws, curve, strict=True):
                writer.writerow([budget, w_label(w), repr(float(fid))])
        write_text(out / "w_grid.csv", buf.getvalue())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalar = [(w, f) for w, f in zip(ws, fids, strict=True) if isinstance(w, float)]
    fig, ax = plt.subplots(figsize=(6, 4))
    if scalar:
        for budget, curve in (grid or {}).items() if grid and len(grid) > 1 else []:
            pts = sorted((w, f) for w, f in zip(ws, curve, strict=True) if isinstance(w, float))
            ax.plot(*zip(*pts, strict=True), marker=".", markersize=2, alpha=0.6, label=f"B = {budget}")
        xs, ys = zip(*sorted(scalar), strict=True)
        ax.plot(xs, ys, marker="o", markersize=3, color="C0" if not grid or len(grid) == 1 else "k", label="best budget")
        if all(y > 0 for y in ys):
            ax.set_yscale("log")
        ax.axvline(0.0, color="k", linestyle=":", linewidth=1, label="θ_r (w = 0)")
        best_w, best_f = min(scalar, key=lambda p: p[1])
        ax.scatter([best_w], [best_f], color="red", zorder=3, label=f"best w = {best_w:g}")
        if control:
            cx, cy = zip(*sorted((w, c) for w, c in zip(ws, control, strict=True) if isinstance(w, float)), strict=True)
            ax.plot(cx, cy, marker="x", markersize=3, color="gray", label="control: fine-tuned on real data")
        if output:
            ox, oy = zip(*sorted((w, o) for w, o in zip(ws, output, strict=True) if isinstance(w, float)), strict=True)
            ax.plot(ox, oy, marker="s", markersize=3, color="C1", label="output-space twin")
        ax.legend()
    ax.set_xlabel("merge weight w")
    ax.set_ylabel("FID")
    ax.set_title("θ_neon = (1 + w)·θ_r − w·θ_s")
    ax.grid(True, linestyle="--", alpha=0.5)
    fig.tight_layout()
    with atomic_path(out / "w_curve.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_sample_grid(path: Path, x: Any, title: str) -> Path:
    """A PNG of samples: images [N, C, H, W] in [-1, 1] tiled in a square grid, points [N, D] scattered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.asarray(x.detach().cpu().float() if hasattr(x, "detach") else x)
    fig, ax = plt.subplots(figsize=(5, 5))
    if x.ndim == 4:
        n, c, h, w = x.shape
        side = int(np.ceil(np.sqrt(n)))
        canvas = np.ones((side * (h + 1) + 1, side * (w + 1) + 1, c), dtype=np.float32)
        for i in range(n):
            r, col = divmod(i, side)
            canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = \
                np.clip((x[i].transpose(1, 2, 0) + 1) / 2, 0, 1)
        ax.imshow(canvas[..., 0] if c == 1 else canvas[..., :3], cmap="gray" if c == 1 else None,
                  interpolation="nearest", vmin=0, vmax=1)
        ax.axis("off")
    else:
        ax.scatter(x[:, 0], x[:, 1] if x.shape[1] > 1 else np.zeros(len(x)), s=4, alpha=0.6)
        ax.set_aspect("equal")
        ax.grid(True, linestyle="--", alpha=0.5)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells (the first the header) as a right-aligned markdown table."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.rjust(wd) for cell, wd in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (wd + 2) for wd in widths) + "|")
    return "\n".join(lines)


def w_table(summary: dict) -> str:
    """The w-curve (and the real-data control, the output-space twin) of a task=neon summary as a table, with
    its headline lines."""
    control = summary.get("control")
    output = summary.get("output_space")
    nll = "nll" in summary["w_curve"][0]  # metrics.compute [nll]: θ's held-out likelihood beside the FID
    rows = [("w", "FID θ_neon", "gain vs θ_r", *(("NLL θ_neon",) if nll else ()), *(("FID control",) if control else ()),
             *(("FID output-space",) if output else ()))]
    for i, point in enumerate(summary["w_curve"]):
        gain = 1 - point["fid"] / summary["fid_base"] if summary["fid_base"] else 0.0
        row = (point["w"], f"{point['fid']:.4g}", f"{100 * gain:+.1f}%" if math.isfinite(gain) else "n/a",
               *((f"{point['nll']:.4f}",) if nll else ()))
        if control:
            row += (f"{control['w_curve'][i]['fid']:.4g}",)
        if output:
            row += (f"{output['w_curve'][i]['fid']:.4g}",)
        rows.append(row)
    lines = [markdown_table(rows)]
    noise = summary.get("fid_noise")
    by = "" if summary.get("select", "fid") == "fid" else f" by {summary['select'].upper()}"
    tail = [f"selection seeds {summary['seeds_selection']} (w and B picked here{by}):"
            if summary.get("seeds_selection") else "", f"FID θ_r = {summary['fid_base']:.4g}"]
    if noise:
        tail.append(f"(with other sample seeds {noise['fid_base_reseeded']:.4g}: seed noise {100 * noise['relative']:.1f}%)")
    tail.append(f"→ best θ_neon {summary['fid_neon']:.4g} at w = {summary['w']}")
    if control:
        tail.append(f"| control (fine-tuned on real data) best {control['fid_best']:.4g} at w = {control['w']}")
    lines.append(" ".join(t for t in tail if t))
    if summary.get("fid_base_heldout") is not None:
        lines.append(heldout_line(summary))
    if output:
        ws = output["weight_space"]
        lines.append(f"output-space twin best {output['fid_best']:.4g} at w = {output['w']}, "
                     f"{output['nfe_per_image']} NFE and {1e3 * output['seconds_per_image']:.3g} ms per image; "
                     f"weight-space {ws['fid_best']:.4g} at w = {ws['w']}, {ws['nfe_per_image']} NFE and "
                     f"{1e3 * ws['seconds_per_image']:.3g} ms per image")
        if output.get("fid_heldout") is not None:
            lines.append(f"output-space twin on the held-out seeds (reported): {output['fid_heldout']:.4g} at "
                         f"w = {output['w']} against θ_neon's {summary['fid_neon_heldout']:.4g}")
    return "\n".join(lines)


def heldout_line(summary: dict) -> str:
    """The reported figures of a task=neon summary: the picks scored on the held-out seeds."""
    def fid(key: str) -> str:
        sd = summary.get(f"{key}_sd")
        return f"{summary[key]:.4g}" + (f" ± {sd:.2g}" if sd is not None else "")

    gain = summary.get("gain_heldout")
    interval = summary.get("gain_heldout_interval")
    text = (f"held-out seeds {summary['seeds_heldout']} (reported): FID θ_r {fid('fid_base_heldout')} → θ_neon "
            f"{fid('fid_neon_heldout')} at w = {summary['w']}, B = {summary['budget_steps']}")
    if gain is not None:
        text += f", gain {100 * gain:+.1f}%"
        if interval:
            text += f" (95% interval {100 * interval[0]:+.1f}% … {100 * interval[1]:+.1f}%)"
    if summary.get("fid_control_heldout") is not None:
        text += f" | control {fid('fid_control_heldout')} at w = {summary['control']['w']}"
    if summary.get("nll_base_heldout") is not None:
        text += (f" | held-out text NLL θ_r {summary['nll_base_heldout']:.4f} → θ_neon "
                 f"{summary['nll_neon_heldout']:.4f} nats/token")
    return text


def write_previews(out: Path, module: Any, sampler: Any, theta_r: StateDict, theta_neon: StateDict, n: int,
                   neon_label: str) -> dict[str, Path]:
    """Sample grids of θ_r and θ_neon from the same seeds 0 … n − 1 (`samples_theta_r.png`,
    `samples_theta_neon.png`); the module is left holding θ_neon."""
    if n <= 0:
        return {}
    seeds = list(range(n))
    module.load_neon_weights(theta_r, source="θ_r")
    base_x, _ = module.generate(seeds, sampler)
    module.load_neon_weights(theta_neon, source="θ_neon")
    neon_x, _ = module.generate(seeds, sampler)
    if isinstance(module, HasTextSamples):  # token sequences: their text, one sample per seed
        def write(path: Path, x: Any, title: str) -> Path:
            texts = module.decode_samples(x)
            write_text(path, f"# {title}\n\n" + "".join(f"--- seed {i}\n{t}\n" for i, t in enumerate(texts)))
            return path

        return {"samples/theta_r": write(out / "samples_theta_r.txt", base_x, "θ_r"),
                "samples/theta_neon": write(out / "samples_theta_neon.txt", neon_x, f"θ_neon ({neon_label})")}
    return {"samples/theta_r": write_sample_grid(out / "samples_theta_r.png", base_x, "θ_r"),
            "samples/theta_neon": write_sample_grid(out / "samples_theta_neon.png", neon_x,
                                                    f"θ_neon ({neon_label})")}


def search_table(summary: dict) -> str:
    """A task=search summary as a table: θ_r at θ_neon's guidance, θ_r at its own tuned guidance (the fair
    base, when guidance was searched) and θ_neon, each with its gain against the first."""
    key = summary.get("cfg_key") or "guidance"
    rows = [("model", key, "w", "FID", "vs θ_r")]

    def row(name: str, cfg: Any, w: float, fid: float) -> tuple[str, ...]:
        gain = fid / summary["fid_base"] - 1 if summary["fid_base"] else math.nan
        return (name, "-" if cfg is None else f"{cfg:g}" if isinstance(cfg, float) else str(cfg), f"{w:g}",
                f"{fid:.4g}", f"{100 * gain:+.1f}%" if math.isfinite(gain) else "n/a")

    rows.append(row("θ_r at θ_neon's guidance", summary.get("cfg"), 0.0, summary["fid_base"]))
    if "fid_base_tuned" in summary:
        rows.append(row("θ_r at its tuned guidance", summary["cfg_base_tuned"], 0.0, summary["fid_base_tuned"]))
    rows.append(row(f"θ_neon (B = {summary['budget_steps']})", summary.get("cfg"), summary["w"], summary["fid_neon"]))
    where = (f"picked on seeds {summary['seeds_selection']}; these scores on the held-out seeds "
             f"{summary['seeds_heldout']}" if summary.get("seeds_heldout") else "picked and scored on the same seeds")
    return markdown_table(rows) + f"\n({where})"


def write_guidance_curve(out: Path, summary: dict) -> list[Path]:
    """`guidance_curve.csv` (columns cfg,fid_base,fid_neon: θ_r and the best θ_neon of the coarse grid at every
    guidance value, small-sample FID) and `guidance_curve.png`, with the final fid_base, fid_base_tuned and
    fid_neon as marked points."""
    base = {p["cfg"]: p["fid"] for p in summary["base_cfg_curve"]}
    neon = {p["cfg"]: p["fid"] for p in summary["neon_cfg_curve"]}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["cfg", "fid_base", "fid_neon"])
    for value in base:
        writer.writerow([value, repr(float(base[value])), repr(float(neon[value]))])
    write_text(out / "guidance_curve.csv", buf.getvalue())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(base)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [base[x] for x in xs], marker="o", markersize=3, color="gray", label="θ_r (search size)")
    ax.plot(xs, [neon[x] for x in xs], marker="o", markersize=3, color="C0", label="best θ_neon over w (search size)")
    ax.scatter([summary["cfg"]], [summary["fid_base"]], marker="x", color="k", zorder=3,
               label=f"fid_base {summary['fid_base']:.4g}")
    ax.scatter([summary["cfg_base_tuned"]], [summary["fid_base_tuned"]], marker="D", color="gray", zorder=3,
               label=f"fid_base_tuned {summary['fid_base_tuned']:.4g}")
    ax.scatter([summary["cfg"]], [summary["fid_neon"]], marker="*", s=80, color="red", zorder=3,
               label=f"fid_neon {summary['fid_neon']:.4g} (w = {summary['w']:g})")
    ax.set_xlabel(summary.get("cfg_key") or "guidance")
    ax.set_ylabel("FID")
    ax.set_title("θ_r and θ_neon, each at its own best guidance")
    ax.grid(True, linestyle="--", alpha=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out / "guidance_curve.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return [out / "guidance_curve.csv", out / "guidance_curve.png"]
