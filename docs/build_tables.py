"""Generate the figures in README.md and docs/ from the recorded results in docs/results/.

A generated block sits between markers, `<!-- results:NAME VIEW -->` … `<!-- /results -->`: NAME is
docs/results/NAME.json (written by `python docs/record.py`), VIEW one of VIEWS below; a table over several
records names them all, NAME1+NAME2+…, with a view of TABLES. Each block ends with a provenance note per record
(commit, CPU, threads, torch, date, command). Only marked blocks are touched.

    python docs/build_tables.py          # rewrite the pages
    python docs/build_tables.py --check  # exit 1 and show the difference when a page differs"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- results:([\w.+-]+) (\w+) -->\n)(.*?)(<!-- /results -->)", re.S)


def pages(root: Path) -> list[Path]:
    """README.md and every page under docs/ (docs/upstream holds facts about other projects, not results)."""
    return [root / "README.md", *sorted(p for p in (root / "docs").rglob("*.md") if "upstream" not in p.parts)]


STAGES = ["pretrain", "synthesize", "finetune", "merge", "evaluate"]  # the pipeline's order


def fid(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def gain(base: float | None, other: float | None) -> float | None:
    return None if base in (None, 0) or other is None else 1 - other / base


def table(rows: list[tuple]) -> str:
    """Rows of cells (the first the header) as a markdown table; a '|' inside a cell (a regex) is escaped."""
    def line(row: tuple) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |"

    return "\n".join([line(rows[0]), "|" + "---|" * len(rows[0]), *map(line, rows[1:])])


def headline(r: dict) -> str:
    """One sentence: the held-out gain beside the metric's seed noise and the control's held-out gain."""
    noise, control = r.get("fid_noise"), r.get("fid_control_heldout")
    text = (f"θ_neon at w = {r['w']} (B = {r['budget_steps']}) scores FID **{fid(r['fid_neon_heldout'])}** against "
            f"θ_r's {fid(r['fid_base_heldout'])} over {r['metric']['num_samples']:,} samples on held-out seeds "
            f"({r['seeds_heldout']}, not those w was picked on): a gain of **{pct(r['gain_heldout'])}**")
    if noise:
        text += f", where the metric's own seed noise (θ_r scored on other seeds) is {pct(noise['relative'])}"
    if control is not None:
        text += (f"; the control, the same fine-tune on real data, gains {pct(gain(r['fid_base_heldout'], control))}"
                 f" (w = {r['control']['w']})")
    return text + "."


def heldout(r: dict) -> str:
    """θ_r, θ_neon and the control on the seeds the picks were made on and on the held-out seeds."""
    control = r.get("control")
    rows = [("sample seeds", "FID θ_r", f"FID θ_neon (w = {r['w']}, B = {r['budget_steps']})", "gain",
             *((f"FID control (w = {control['w']})", "control gain") if control else ()))]
    for label, base, neon, ctl in (
            (f"{r['seeds_selection']} (picks made here)", r["fid_base"], r["fid_neon"],
             control and control["fid_best"]),
            (f"{r['seeds_heldout']} (held out: reported)", r["fid_base_heldout"], r["fid_neon_heldout"],
             r.get("fid_control_heldout"))):
        rows.append((label, fid(base), fid(neon), pct(gain(base, neon)),
                     *((fid(ctl), pct(gain(base, ctl))) if control else ())))
    text = table(rows)
    if r.get("fid_noise"):
        noise = r["fid_noise"]
        text += (f"\n\nThe metric's seed noise: θ_r scores {fid(noise['fid_base_reseeded'])} on another seed set "
                 f"(`metrics.noise_seed_offset`), {pct(noise['relative'])} from {fid(r['fid_base'])}.")
    if r.get("seconds"):
        order = sorted(r["seconds"], key=lambda k: STAGES.index(k) if k in STAGES else len(STAGES))
        stages = ", ".join(f"{stage} {r['seconds'][stage]:.1f} s" for stage in order)
        text += (f"\n\nSeconds per stage (the run's `seconds`; a stage the artifact cache served takes next to none): "
                 f"{stages}.")
    return text


def w_curve(r: dict) -> str:
    """FID for every w on the selection seeds (and the control's), as the run prints it."""
    control = r.get("control")
    rows = [("w", "FID θ_neon", "gain vs θ_r", *(("FID control",) if control else ()))]
    for i, point in enumerate(r["w_curve"]):
        rows.append((point["w"], fid(point["fid"]), f"{100 * gain(r['fid_base'], point['fid']):+.1f}%",
                     *((fid(control["w_curve"][i]["fid"]),) if control else ())))
    return table(rows)


def startup(r: dict) -> str:
    """bench/startup_vs_edm.py: the two whole processes side by side, best and median of the rounds."""
    import statistics

    s = r["settings"]
    rows = [("process", f"best of {s['repeats']} (s)", "median (s)")]
    for name, times in r["seconds"].items():
        rows.append((f"`{name}`", f"{min(times):.2f}", f"{statistics.median(times):.2f}"))
    medians = {k: statistics.median(v) for k, v in r["seconds"].items()}
    return (table(rows) + f"\n\n`neon task=sample` takes {r['neon_minus_generate_s']:+.2f} s over `generate.py` "
            f"(best against best; medians {medians['neon task=sample'] - medians['generate.py']:+.2f} s), "
            f"{r['neon_over_generate']:.3f}× its time, for {s['images']} images of an {s['snapshot']} snapshot with "
            f"{s['sampler']}, {s['threads']} thread per process; the images differ by at most "
            f"{r['max_uint8_difference']} (uint8).")


def suite(r: dict) -> str:
    """bench/suite_time.py: each pytest run's counts and wall time against its budget."""
    rows = [("run", "passed", "failed", "skipped", "wall time", "budget")]
    for run in r["runs"].values():
        rows.append((f"`{run['command']}`", run["passed"], run["failures"] + run["errors"], run["skipped"],
                     f"{run['wall_s']:.0f} s", f"{run['budget_s']} s"))
    return table(rows)


def suite_line(r: dict) -> str:
    """The whole suite in one sentence."""
    whole = r["runs"]["whole"]
    return (f"The suite: {whole['passed']} tests passed ({whole['skipped']} skipped without a GPU) in "
            f"{whole['wall_s'] / 60:.1f} min on {r['settings']['cores']} CPU cores.")


def varying(jobs: list[dict]) -> tuple[list[dict[str, str]], list[str]]:
    """Each job's overrides as {key: value}, and the keys whose value differs between jobs (a sweep's axes)."""
    keyed = [dict(o.split("=", 1) for o in j["overrides"] if "=" in o) for j in jobs]
    return keyed, [k for k in sorted({k for o in keyed for k in o}) if len({o.get(k) for o in keyed}) > 1]


def sweep(r: dict) -> str:
    """A recorded multirun: one row per job (the settings that differ between jobs), its picks and figures on the
    selection seeds and on the held-out seeds, the seed noise and the diagnostic's cosine; then the best job,
    picked on the selection seeds, with its held-out figures."""
    jobs = r["sweep"]
    keyed, keys = varying(jobs)
    rows = [(*keys, "w (B)", "θ_r sel.", "θ_neon sel.", "θ_r held-out", "θ_neon held-out", "gain held-out",
             "control held-out", "seed noise", "cosine")]
    for job, over in zip(jobs, keyed, strict=True):
        s = job["summary"]
        noise, diag = s.get("fid_noise") or {}, s.get("diagnosis") or {}
        rows.append((*(over.get(k, "") for k in keys), f"{s['w']} ({s['budget_steps']})", fid(s["fid_base"]),
                     fid(s["fid_neon"]), fid(s.get("fid_base_heldout")), fid(s.get("fid_neon_heldout")),
                     pct(s.get("gain_heldout")), fid(s.get("fid_control_heldout")), pct(noise.get("relative")),
                     "—" if diag.get("cosine") is None else f"{diag['cosine']:+.3f}"))
    best = min(zip(jobs, keyed, strict=True), key=lambda jk: jk[0]["summary"]["fid_neon"])
    s = best[0]["summary"]
    where = ", ".join(f"{k}={best[1].get(k, '')}" for k in keys) or f"job {best[0]['job']}"
    return (table(rows) + f"\n\nBest job on the selection seeds: {where} (w = {s['w']}, B = {s['budget_steps']}); "
            f"on its held-out seeds ({s.get('seeds_heldout')}) θ_r {fid(s.get('fid_base_heldout'))} → θ_neon "
            f"{fid(s.get('fid_neon_heldout'))}, a gain of {pct(s.get('gain_heldout'))}.")


def nll(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def nats(base: float | None, other: float | None) -> str:
    """The change θ_r → other in nats per token (negative: θ_neon is the likelier model of real text)."""
    return "—" if base is None or other is None else f"{other - base:+.4f}"


def text_heldout(r: dict) -> str:
    """A text run: θ_r, θ_neon and the control on the half of the held-out text the picks were made on and on the
    half that reports them: NLL (nats per token), bits per byte, and the Fréchet distance of samples at τ = 1."""
    control = r.get("control")
    ctl_sel = control and next(p for p in control["w_curve"] if float(p["w"]) == float(control["w"]))
    rows = [("held-out text (sample seeds)", "NLL θ_r", f"NLL θ_neon (w = {r['w']}, B = {r['budget_steps']})", "Δ nats",
             *((f"NLL control (w = {control['w']})", "Δ nats") if control else ()), "FD θ_r", "FD θ_neon")]
    rows.append((f"selection half ({r['seeds_selection']}): picks made here", nll(r["nll_base"]), nll(r["nll_neon"]),
                 nats(r["nll_base"], r["nll_neon"]),
                 *((nll(ctl_sel["nll"]), nats(r["nll_base"], ctl_sel["nll"])) if control else ()),
                 fid(r["fid_base"]), fid(r["fid_neon"])))
    rows.append((f"report half ({r['seeds_heldout']}): reported", nll(r["nll_base_heldout"]),
                 nll(r["nll_neon_heldout"]), nats(r["nll_base_heldout"], r["nll_neon_heldout"]),
                 *((nll(r["nll_control_heldout"]), nats(r["nll_base_heldout"], r["nll_control_heldout"]))
                   if control else ()), fid(r["fid_base_heldout"]), fid(r["fid_neon_heldout"])))
    text = table(rows)
    text += (f"\n\nBits per byte on the report half: θ_r {r['bpb_base_heldout']:.4f}, θ_neon {r['bpb_neon_heldout']:.4f}. "
             f"FD: the Fréchet distance between {r['metric']['num_samples']:,} samples at τ = 1 and the real held-out "
             "text in the text encoder's features.")
    if r.get("fid_noise"):
        text += f" The FD's own seed noise: {pct(r['fid_noise']['relative'])}."
    if r.get("seconds"):
        order = sorted(r["seconds"], key=lambda k: STAGES.index(k) if k in STAGES else len(STAGES))
        text += "\n\nSeconds per stage (the run's `seconds`): " + ", ".join(
            f"{stage} {r['seconds'][stage]:.1f} s" for stage in order) + f"; {sum(r['seconds'].values()):.0f} s in all."
    return text


def text_w_curve(r: dict) -> str:
    """A text run's w-curve on the selection half: NLL and FD for every w (and the control's)."""
    control = r.get("control")
    rows = [("w", "NLL θ_neon", "Δ nats vs θ_r", "FD θ_neon", *(("NLL control",) if control else ()))]
    for i, point in enumerate(r["w_curve"]):
        rows.append((point["w"], nll(point["nll"]), nats(r["nll_base"], point["nll"]), fid(point["fid"]),
                     *((nll(control["w_curve"][i]["nll"]),) if control else ())))
    return table(rows)


def text_sweep(r: dict) -> str:
    """A recorded text multirun: per job (the settings that differ), the diagnostic's cosine at θ_r on its S, the w
    picked on the selection half and the held-out NLL of θ_r and θ_neon at that w; and the NLL-best w on the
    selection half with both signs in the grid."""
    jobs = r["sweep"]
    keyed, keys = varying(jobs)
    rows = [(*keys, "cosine at θ_r", "predicts", "picked w (B)", "NLL θ_r held-out", "NLL θ_neon held-out", "Δ nats",
             "FD θ_r held-out", "FD θ_neon held-out")]
    for job, over in zip(jobs, keyed, strict=True):
        s = job["summary"]
        cosine = (s.get("diagnosis") or {}).get("cosine")
        rows.append((*(over.get(k, "") for k in keys), "—" if cosine is None else f"{cosine:+.3f}",
                     "—" if cosine is None else ("w > 0" if cosine < 0 else "w ≤ 0"),
                     f"{s['w']} ({s['budget_steps']})", nll(s.get("nll_base_heldout")), nll(s.get("nll_neon_heldout")),
                     nats(s.get("nll_base_heldout"), s.get("nll_neon_heldout")), fid(s.get("fid_base_heldout")),
                     fid(s.get("fid_neon_heldout"))))
    return table(rows)


def rounds(r: dict) -> str:
    """neon.rounds: each round's picked w and its held-out figures, each round starting from the last θ_neon."""
    text_run = r["rounds"][0].get("nll_base_heldout") is not None
    rows = [("round", "w (B)", "FID θ_r held-out", "FID θ_neon held-out", "gain",
             *(("NLL θ_r held-out", "NLL θ_neon held-out") if text_run else ()))]
    for k in r["rounds"]:
        rows.append((k["round"], f"{k['w']} ({k['budget_steps']})", fid(k.get("fid_base_heldout")),
                     fid(k.get("fid_neon_heldout")), pct(k.get("gain_heldout")),
                     *((nll(k.get("nll_base_heldout")), nll(k.get("nll_neon_heldout"))) if text_run else ())))
    first, last = r["rounds"][0], r["rounds"][-1]
    text = (table(rows) + f"\n\nAfter {len(r['rounds'])} rounds, held out: FID of the original θ_r "
            f"{fid(first.get('fid_base_heldout'))} → {fid(last.get('fid_neon_heldout'))} "
            f"(gain {pct(r.get('gain_rounds_heldout'))})")
    if text_run:
        text += (f"; NLL {nll(first['nll_base_heldout'])} → {nll(last['nll_neon_heldout'])} "
                 f"({nats(first['nll_base_heldout'], last['nll_neon_heldout'])} nats per token)")
    return text + ". (FID: for text, the Fréchet distance in the text encoder's features.)" if text_run else text + "."


def lm_sampling(r: dict) -> str:
    """bench/lm_sampling.py: Neon's per-seed KV-cached sampling against `generate`, and the fine-tune against a bare
    loop, on one Hugging Face GPT-2, as ratios within one run."""
    m = r["model"]
    rows = [("what", "neon", "reference", "ratio (neon / reference)")]
    for key in ("sampling", "sampling_filtered"):
        s = r[key]
        settings = ", ".join(f"{k} {v}" for k, v in s["settings"].items())
        rows.append((f"sampling ({settings})", f"{s['ours_tokens_per_s']:.0f} tokens/s",
                     f"`generate`: {s['generate_tokens_per_s']:.0f} tokens/s", f"{s['ratio']:.2f}×"))
    f = r["finetune"]
    rows.append((f"fine-tune, per step (batch {f['batch']} × {f['length']})", f"{f['ours_steps_per_s']:.2f} steps/s",
                 f"bare loop: {f['bare_steps_per_s']:.2f} steps/s", f"{f['ratio']:.3f}×"))
    rows.append((f"fine-tune, a whole fit of {f['steps']} steps with the Trainer's set-up", "", "", f"{f['fit_ratio']:.3f}×"))
    return (table(rows) + f"\n\nA random GPT-2 ({m['depth']} layers, width {m['width']}, vocabulary {m['vocab']:,}), batch "
            f"{r['batch']} × {r['tokens']} tokens, {r['threads']} threads, best of {r['rounds']} interleaved rounds.")


def sweep_budgets(r: dict) -> str:
    """A recorded multirun's budget axis: per job (the settings that differ) and budget B, the best w and θ_neon's
    FID there on the selection seeds (where the picks are made), against θ_r's."""
    jobs = r["sweep"]
    keyed, keys = varying(jobs)
    rows = [(*keys, "B", "best w at B", "θ_neon sel.", "gain vs θ_r sel.")]
    for job, over in zip(jobs, keyed, strict=True):
        s = job["summary"]
        for budget in sorted({p["budget_steps"] for p in s["grid"]}):
            best = min((p for p in s["grid"] if p["budget_steps"] == budget), key=lambda p: p["fid"])
            rows.append((*(over.get(k, "") for k in keys), budget, best["w"], fid(best["fid"]),
                         pct(gain(s["fid_base"], best["fid"]))))
    return table(rows)


def ci(value: float | None, interval: list | None) -> str:
    """A cosine with its 95% interval."""
    if value is None:
        return "—"
    return f"{value:+.3f}" + (f" ({interval[0]:+.3f} … {interval[1]:+.3f})" if interval else "")


def diagnostic_sweep(r: dict) -> str:
    """A multirun with `neon.diagnose`: per job (the settings that differ), the gradient cosine at θ_r between
    real held-out data and S, raw and Adam-preconditioned with their 95% intervals, what it predicts, and what
    the pipeline then picked on the selection seeds and gained on the held-out seeds."""
    jobs = r["sweep"]
    keyed, keys = varying(jobs)
    rows = [(*keys, "cosine at θ_r (95%)", "Adam-preconditioned (95%)", "predicts", "picked w (B)",
             "θ_r held-out", "θ_neon held-out", "gain held-out")]
    for job, over in zip(jobs, keyed, strict=True):
        s, d = job["summary"], job["summary"]["diagnosis"]
        rows.append((*(over.get(k, "") for k in keys), ci(d["cosine"], d.get("cosine_ci95")),
                     ci(d.get("cosine_preconditioned"), d.get("cosine_preconditioned_ci95")),
                     "w > 0" if d["cosine"] < 0 else "w ≤ 0", f"{s['w']} ({s['budget_steps']})",
                     fid(s.get("fid_base_heldout")), fid(s.get("fid_neon_heldout")), pct(s.get("gain_heldout"))))
    return table(rows) + "".join(rank_lines(jobs, keyed, [k for k in keys if k != "seed"]))


def ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties given their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation."""
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else float("nan")


def rank_lines(jobs: list[dict], keyed: list[dict], group_keys: list[str]) -> list[str]:
    """For every setting of `group_keys` with at least four jobs (e.g. several θ_r at one sampler setting): the
    Spearman correlation between the cosine at θ_r and the held-out gain."""
    groups: dict[tuple, list[dict]] = {}
    for job, over in zip(jobs, keyed, strict=True):
        groups.setdefault(tuple(over.get(k, "") for k in group_keys), []).append(job["summary"])
    lines = []
    for setting, summaries in groups.items():
        if len(summaries) < 4:
            continue
        rho = spearman([s["diagnosis"]["cosine"] for s in summaries], [s["gain_heldout"] for s in summaries])
        where = ", ".join(f"{k}={v}" for k, v in zip(group_keys, setting, strict=True)) or "all jobs"
        lines.append(f"\n\nSpearman correlation between the cosine at θ_r and the held-out gain over the "
                     f"{len(summaries)} jobs with {where}: {rho:+.2f}.")
    return lines


def short_family(record: dict) -> str:
    """The record's family in a word (`neon.families.var.VARModule` → VAR), from its summary or its config."""
    target = record["result"].get("family") or record["provenance"]["config"]["model"]["_target_"]
    name = target.rsplit(".", 1)[-1]
    return {"EDMModule": "EDM", "VARModule": "VAR", "XARModule": "xAR", "IMMModule": "IMM"}.get(name, name)


def command_of(record: dict) -> str:
    return f"`{record['provenance']['command']}`"


def families(records: list[dict]) -> str:
    """task=neon runs with neon.compare=output and neon.diagnose, one per family: θ_r, θ_neon, the control and the
    output-space twin at their own picks (made on the selection seeds) scored on the held-out seeds, the network
    calls and time per image of both methods, the seed noise and the cosine at θ_r."""
    rows = [("family", "θ_r", "θ_neon (w)", "gain", "control (w)", "output-space twin (w): against θ_neon",
             "calls per image, Neon / twin", "ms per image, Neon / twin", "seed noise", "cosine at θ_r, raw / Adam")]
    for rec in records:
        r = rec["result"]
        out, d, ctl = r["output_space"], r.get("diagnosis") or {}, r.get("control")
        rows.append((short_family(rec), fid(r["fid_base_heldout"]), f"{fid(r['fid_neon_heldout'])} ({r['w']})",
                     pct(r["gain_heldout"]),
                     "—" if ctl is None else f"{fid(r['fid_control_heldout'])} ({ctl['w']})",
                     f"{fid(out.get('fid_heldout'))} ({out['w']}): "
                     f"{100 * out['relative_difference_heldout']:+.1f}%" if out.get("relative_difference_heldout")
                     is not None else f"{fid(out.get('fid_heldout'))} ({out['w']})",
                     f"{out['weight_space']['nfe_per_image']} / {out['nfe_per_image']}",
                     f"{1e3 * out['weight_space']['seconds_per_image']:.3g} / {1e3 * out['seconds_per_image']:.3g}",
                     pct((r.get("fid_noise") or {}).get("relative")),
                     "—" if d.get("cosine") is None else f"{d['cosine']:+.3f} / {d['cosine_preconditioned']:+.3f}"))
    seeds = {rec["result"]["seeds_heldout"] for rec in records}
    return table(rows) + (f"\n\nAll figures on the held-out seeds ({', '.join(sorted(seeds))}); every w was picked on "
                          "the selection seeds. Commands: " + "; ".join(command_of(rec) for rec in records) + ".")


def fair_base(records: list[dict]) -> str:
    """task=search over a guidance key: θ_r at θ_neon's guidance, θ_r at its own best guidance (the fair base) and
    θ_neon with w and guidance tuned jointly, all picked on the search's seeds and scored on the held-out seeds."""
    rows = [("family", "guidance values", "θ_r at its own best guidance", "θ_neon, w and guidance tuned jointly",
             "gain against the tuned θ_r", "θ_r at θ_neon's guidance")]
    for rec in records:
        r = rec["result"]
        values = ", ".join(f"{p['cfg']:g}" for p in r["base_cfg_curve"])
        rows.append((short_family(rec), values, f"{fid(r['fid_base_tuned_heldout'])} (cfg {r['cfg_base_tuned']:g})",
                     f"{fid(r['fid_neon_heldout'])} (cfg {r['cfg']:g}, w {r['w']:g})",
                     pct(gain(r["fid_base_tuned_heldout"], r["fid_neon_heldout"])), fid(r["fid_base_heldout"])))
    return table(rows) + ("\n\nPicks on the search's seeds, figures on the held-out seeds. Commands: "
                          + "; ".join(command_of(rec) for rec in records) + ".")


def auto_w(records: list[dict]) -> str:
    """neon.w=auto runs: the w (and B) the line search chose on its proxy seeds, what it cost, and θ_r → θ_neon at
    that w on the held-out seeds."""
    rows = [("command", "chosen w (B)", "proxy evaluations × samples", "θ_r held-out", "θ_neon held-out",
             "gain held-out")]
    for rec in records:
        r = rec["result"]
        a = r["auto_w"]
        w = a["w"] if not isinstance(a["w"], dict) else ", ".join(f"{k} {v:g}" for k, v in a["w"].items())
        rows.append((command_of(rec), f"{w} ({a['budget_steps']})", f"{a['evaluations']} × {a['proxy_num_samples']:,}",
                     fid(r["fid_base_heldout"]), fid(r["fid_neon_heldout"]), pct(r["gain_heldout"])))
    return table(rows)


VIEWS: dict[str, Callable[[dict], str]] = {"sweep": sweep, "headline": headline, "heldout": heldout, "w_curve": w_curve,
                                           "startup": startup, "suite": suite, "suite_line": suite_line,
                                           "text_heldout": text_heldout, "text_w_curve": text_w_curve,
                                           "text_sweep": text_sweep, "rounds": rounds, "lm_sampling": lm_sampling,
                                           "diagnostic_sweep": diagnostic_sweep, "sweep_budgets": sweep_budgets}



def sibling_views(name: str) -> dict[str, Callable[[dict], str]]:
    """The VIEWS of a module beside this file (docs/bench_views.py: the bench scripts' records)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"docs_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VIEWS


VIEWS.update(sibling_views("bench_views"))
# views of a table over several records (NAME1+NAME2+…): each gets the records, result and provenance
TABLES: dict[str, Callable[[list[dict]], str]] = {"families": families, "fair_base": fair_base, "auto_w": auto_w}


def provenance(name: str, p: dict) -> str:
    cpu = p["cpu"]["model"] + (f" ({', '.join(p['cpu']['flags'])})" if p["cpu"].get("flags") else "")
    commit = p["commit"][:10] + (" with uncommitted changes" if p["dirty"] else "")
    return (f"<sub>docs/results/{name}.json: `{p['command']}` at commit {commit}; {cpu}, {p['cores']} cores, "
            f"{p['threads']} threads, load {' / '.join(f'{x:g}' for x in p['load_average'])} (1 / 5 / 15 min), torch {p['torch']}, "
            f"{p['finished'][:10]}.</sub>")


PAPER_ROW = re.compile(r"^# Paper row: (?P<title>.+?), FID (?P<base>\d+(?:\.\d+)?) → (?P<neon>\d+(?:\.\d+)?)")
FILES = re.compile(r"(model\.checkpoint|model\.vae_checkpoint|metrics\.reference|metrics\.inception_weights)=(\S+)")


def paper_rows(root: Path) -> str:
    """The paper's table from experiments/paper/*.yaml: each file's header names its row, the paper's FIDs and
    the command with the files it needs; its settings give S, the fine-tune's budget and the evaluation."""
    import yaml

    rows = [("paper row", "experiment", "files it needs", "paper FID θ_r → θ_neon", "S", "fine-tune budgets (steps × batch)",
             "task")]
    for path in sorted((root / "experiments" / "paper").glob("*.yaml")):
        text = path.read_text()
        head = PAPER_ROW.search(text.split("\n", 1)[1])
        if head is None:
            raise SystemExit(f"build_tables: {path} has no '# Paper row: TITLE, FID A → B' header line")
        cfg = yaml.safe_load(text) or {}
        neon = cfg.get("neon", {})
        budgets = neon.get("budget_steps")
        budgets = budgets if isinstance(budgets, list) else [budgets]
        files = ", ".join(f"`{f}`" for _, f in FILES.findall(text.split("\ndefaults:", 1)[0]))
        rows.append((head["title"], f"`paper/{path.stem}`", files, f"{head['base']} → {head['neon']}",
                     f"{neon.get('n_synthetic', '—'):,}", f"{', '.join(map(str, budgets))} × {neon.get('batch_size', '—')}",
                     "`task=search`" if "override /task: search" in text else "`task=neon`"))
    return table(rows)


# blocks generated from the repository's own files rather than from a recorded run: (name, view) → text
FROM_FILES: dict[tuple[str, str], Callable[[], str]] = {
    ("paper", "rows"): lambda: (paper_rows(ROOT) + "\n\n<sub>From experiments/paper/*.yaml (the paper's FIDs as "
                                "the paper states them).</sub>\n"),
}


def render(name: str, view: str, results: Path) -> str:
    if (name, view) in FROM_FILES:
        return FROM_FILES[(name, view)]()
    names = name.split("+")
    if view not in (TABLES if len(names) > 1 else VIEWS):
        raise SystemExit(f"build_tables: unknown view {view!r} for {name}: one of "
                         f"{', '.join(TABLES if len(names) > 1 else VIEWS)}")
    records = []
    for one in names:
        path = results / f"{one}.json"
        if not path.is_file():
            raise SystemExit(f"build_tables: no recorded result {path} (python docs/record.py {one} RUN_DIR)")
        records.append(json.loads(path.read_text()))
    text = TABLES[view](records) if len(names) > 1 else VIEWS[view](records[0]["result"])
    notes = "<br>\n".join(provenance(one, rec["provenance"]) for one, rec in zip(names, records, strict=True))
    return f"{text}\n\n{notes}\n"


def build(text: str, results: Path) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group(2), m.group(3), results) + m.group(5), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page differs")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stale = []
    for page in pages(args.root):
        if not page.is_file():
            continue
        text = page.read_text()
        new = build(text, args.root / "docs" / "results")
        if new == text:
            continue
        rel = page.relative_to(args.root).as_posix()
        stale.append(rel)
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                       f"{rel} (as written)", f"{rel} (from docs/results)"))
        else:
            page.write_text(new)
            print(f"wrote {rel}")
    if args.check and stale:
        print(f"\n{', '.join(stale)} differ from docs/results: run python docs/build_tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
