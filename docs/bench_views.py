"""Views of the bench scripts' recorded results (docs/results/NAME.json from `python docs/record.py NAME OUT
--command "python bench/NAME.py ... --json OUT"`): one function per script, each a short table and at most two
sentences whose settings are read from the result. docs/build_tables.py merges `VIEWS` into its own."""

from __future__ import annotations

from collections.abc import Callable

# the column heads of a framework-against-bare-loop comparison (overhead: the framework's extra time, in %)
VERSUS = ("what", "framework", "bare loop", "framework's extra time")


def table(rows: list[tuple]) -> str:
    """A markdown table; the first row is the header."""
    lines = ["| " + " | ".join(map(str, rows[0])) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows[1:]])


def rate(x: float) -> str:
    """A throughput to about three significant figures, thousands separated (6,936; 49.6; 2.38)."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def seconds(x: float) -> str:
    """Seconds to two decimals."""
    return f"{x:.2f}"


def long_seconds(x: float) -> str:
    """Seconds of a long run to one decimal, thousands separated (2,298.0)."""
    return f"{x:,.1f}"


def plural(n: int, word: str) -> str:
    """`n` and `word`, with an s unless n is 1 (1 thread, 2 threads)."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def change(x: float) -> str:
    """A relative change (0.117 → +11.7%)."""
    return f"{100 * x:+.1f}%"


def times(x: float, digits: int = 2) -> str:
    """A ratio (1.7 → 1.70×)."""
    return f"{x:.{digits}f}×"


def versus(label: str, framework: float, bare: float, unit: str, overhead: float) -> tuple[str, str, str, str]:
    """One row of a framework-against-bare-loop table (see VERSUS)."""
    return label, f"{rate(framework)} {unit}", f"{rate(bare)} {unit}", change(overhead)


def threads_and_rounds(s: dict) -> str:
    """The threads and rounds of a result's settings, as in: 2 threads, best of 3 interleaved rounds."""
    rounds = s["rounds"]
    return f"{plural(s['threads'], 'thread')}, " + (f"best of {rounds} interleaved rounds" if rounds > 1
                                                     else "one run of each side")


def startup(r: dict) -> str:
    """bench/startup.py: each task's time to its first work and to its exit, against `import torch` in the same run."""
    s, a = r["settings"], r["anchors"]
    rows = [("command", "first work (s)", "− `import torch` (s)", "− `import torch` + load (s)", "× `import torch`",
             "exit (s)", "first work is")]
    for name, t in r["tasks"].items():
        rows.append(("`neon --help`" if name == "help" else f"`neon task={name}`", seconds(t["first_work_s"]),
                     f"{t['first_work_over_torch_s']:+.2f}", f"{t['first_work_over_torch_and_load_s']:+.2f}",
                     times(t["first_work_ratio_to_torch"]), seconds(t["exit_s"]),
                     "the exit" if t["marker"] == "exit" else f"`{t['marker']}`"))
    return (table(rows) + f"\n\n`python -c \"import torch\"` took {seconds(a['import_torch_s'])} s and `import torch` "
            f"with the network's weights read {seconds(a['import_torch_and_load_s'])} s; every command a fresh process "
            f"at {plural(s['threads'], 'thread')}, best of {plural(s['repeats'], 'interleaved round')}, {s['images']} images, the "
            f"{s['network']}.")


def merge_speed(r: dict) -> str:
    """bench/merge_speed.py: neon-merge and the naive torch.load/torch.save script against the floor (a byte copy)."""
    s = r["settings"]
    rows = [("method", "seconds", "× floor", "peak private memory (GiB)")]
    for name, m in r["methods"].items():
        rows.append((f"`{name}`", seconds(m["seconds"]), times(m["ratio_to_floor"]), f"{m['peak_private_gib']:.3f}"))
    return (table(rows) + f"\n\nTwo safetensors files of {s['gib_per_file']:.3f} GiB each, w = {s['w']}, each method "
            f"in its own process at {plural(s['threads'], 'thread')}, best of {plural(s['repeats'], 'interleaved round')}; the "
            f"floor is a {s['floor']}.")


def edm_overhead(r: dict) -> str:
    """bench/edm_overhead.py: EDMModule's sampling and Lightning fine-tune against bare loops, per network."""
    rows = [VERSUS]
    for name, n in r["networks"].items():
        sa, ft = n["sampling"], n["finetune"]
        rows.append(versus(f"{name} ({n['parameters']:,} parameters): sampling {sa['images']:,} images, "
                           f"{sa['num_steps']} Heun steps", sa["framework_images_per_s"], sa["bare_images_per_s"],
                           "img/s", sa["overhead"]))
        rows.append(versus(f"{name}: fine-tune, batch {ft['batch']} × {plural(ft['steps'], 'step')}",
                           ft["framework_steps_per_s"], ft["bare_steps_per_s"], "steps/s", ft["overhead"]))
    s = r["settings"]
    return table(rows) + f"\n\n{s['compared']}; {threads_and_rounds(s)}."


def metrics_speed(r: dict) -> str:
    """bench/metrics_speed.py: Inception extraction against torch-fidelity's extractor, and the statistics' memory."""
    s, e, st = r["settings"], r["extraction"], r["statistics"]
    rows = [("what", "ours", "reference", "ratio"),
            (f"Inception extraction (pool + logits) of {e['images']} {e['image_size']}×{e['image_size']} images",
             f"{rate(e['ours_images_per_s'])} img/s", f"torch-fidelity: {rate(e['fidelity_images_per_s'])} img/s",
             f"{times(e['ratio'], 3)} (its time / ours)"),
            (f"statistics of {st['rows']:,} × {st['dim']} float32 features", f"{st['peak_extra_mib']:.0f} MiB peak extra",
             f"a float64 copy: {st['float64_copy_mib']:.0f} MiB", times(st["peak_extra_mib"] / st["float64_copy_mib"]))]
    return table(rows) + f"\n\n{s['compared']}; {threads_and_rounds(s)}, {s['inception']}."


def eval_speed(r: dict) -> str:
    """bench/eval_speed.py: `neon task=evaluate` against torch-fidelity, end to end, per sample count."""
    s = r["settings"]
    rows = [("images", "ours (s)", "torch-fidelity (s)", "ratio", "work: ours (s)", "work: torch-fidelity (s)", "ratio",
             "FID", "FIDs' relative difference")]
    for n, row in r["sizes"].items():
        o, f = row["ours"], row["fidelity"]
        rows.append((f"{int(n):,}", long_seconds(o["wall_s"]), long_seconds(f["wall_s"]), times(row["ratio_wall"]),
                     long_seconds(o["work_s"]), long_seconds(f["work_s"]), times(row["ratio_work"]), f"{o['fid']:.6g}",
                     f"{row['fid_rel_diff']:.1e}"))
    mode = "both methods of a round side by side, " if s["side_by_side"] else "one after the other, "
    return (table(rows) + f"\n\nEach method a fresh process, {mode}{plural(s['threads'], 'thread')} each, best of "
            f"{s['repeats']}; the same {s['image_size']} images and reference statistics of {s['reference_images']:,} "
            f"images, Inception with {s['inception']}; ratio = ours / torch-fidelity's.")


def parallel_jobs(r: dict) -> str:
    """bench/parallel_jobs.py: one sweep run side by side by submitit_local against one job after another."""
    s = r["settings"]
    rows = [("mode", "seconds", "× serial", "threads per job")]
    for mode, m in r["modes"].items():
        rows.append((mode, long_seconds(m["seconds"]), times(m["ratio_to_serial"]),
                     f"{', '.join(map(str, m['threads_per_job']))}, from {m['threads_why']}"))
    return (table(rows) + f"\n\n{plural(s['jobs'], 'job')} (`{s['job_args']}` with seed=0..{s['jobs'] - 1}) on "
            f"{s['cores']} cores, best of {s['repeats']}, OMP_NUM_THREADS {s['omp_num_threads']}; a job's FID differs across modes "
            f"by at most {r['fid_max_abs_diff_across_modes']:.3g}.")


def sweep_cost(r: dict) -> str:
    """bench/sweep_cost.py: a sweep with the shared artifact cache against a private cache per job."""
    s, c, n = r["settings"], r["sides"]["cached"], r["sides"]["naive"]
    rows = [("sweep", "wall time (s)", "fine-tune steps run", "threads per job"),
            ("shared cache", f"{c['seconds']:,.0f}", f"{c['finetune_steps']:,}", c["threads"]),
            ("a private cache per job (naive)", f"{n['seconds']:,.0f}", f"{n['finetune_steps']:,}", n["threads"]),
            ("naive / shared", times(r["wall_ratio"], 1), times(r["steps_ratio"], 1), "")]
    return (table(rows) + f"\n\n{s['jobs']} jobs of `experiment={s['experiment']}`: budgets "
            f"{', '.join(map(str, s['budgets']))} × w {', '.join(map(str, s['ws']))} × `{s['sampler_key']}` "
            f"{', '.join(map(str, s['sampler_values']))}, {' '.join(f'`{a}`' for a in s['metric_args'])}; θ_r: "
            f"{s['theta_r']}, {s['pretrain_steps'] or 'the experiment’s'} pretraining steps.")


def ddp_synthesis(r: dict) -> str:
    """bench/ddp_synthesis.py: S drawn by two gloo processes against one process on the same cores."""
    s = r["settings"]
    rows = [("processes", "threads each", "samples/s", "seconds drawing S", "seconds with process start-up")]
    for side in r["sides"].values():
        rows.append((side["processes"], side["threads_per_process"], rate(side["samples_per_s"]),
                     seconds(side["seconds"]), f"{side['seconds_with_startup']:.1f}"))
    return (table(rows) + f"\n\nS of {s['n']:,} digits (Heun-{s['heun_steps']}, blocks of {s['block']}) on "
            f"{s['cores']} cores ({s['backend']}), best of {plural(s['rounds'], 'interleaved round')}: two processes draw it "
            f"{times(r['speedup'])} as fast as one.")


def toy_overhead(r: dict) -> str:
    """bench/toy_overhead.py: the toy's Lightning fine-tune and per-seed sampling against bare loops."""
    s, f, sa = r["settings"], r["finetune"], r["sampling"]
    rows = [("what", "framework", "bare loop", "framework / bare time"),
            (f"fine-tune, batch {f['batch']:,} × {plural(f['steps'], 'step')}", f"{rate(f['framework_steps_per_s'])} steps/s",
             f"{rate(f['bare_steps_per_s'])} steps/s", times(f["ratio"])),
            (f"sampling {sa['samples']:,} points, {sa['ddim_steps']} DDIM steps", f"{sa['seconds']['framework']:.3f} s",
             f"{sa['seconds']['bare']:.3f} s", times(sa["ratio"]))]
    return table(rows) + f"\n\nThe toy's {r['parameters']:,}-parameter network; {s['compared']}; {threads_and_rounds(s)}."


def xar_overhead(r: dict) -> str:
    """bench/xar_overhead.py: xAR's sampling (with and without the KV cache) and fine-tune against bare loops."""
    s, sa, f = r["settings"], r["sampling"], r["finetune"]
    m, ips, sps = s["model"], sa["images_per_s"], f["steps_per_s"]
    rows = [VERSUS,
            versus(f"sampling, batch {sa['batch']}, {sa['num_steps']} steps × {sa['clusters']} clusters, cfg "
                   f"{sa['cfg']} (KV cache)", ips["framework"], ips["bare"], "img/s", sa["overhead"]),
            (f"the same steps without the KV cache (max difference {sa['max_difference_no_cache']:.1e})",
             f"{rate(ips['no_cache'])} img/s", "", f"the cache: {times(sa['cache_speedup'])} faster"),
            versus(f"fine-tune, batch {f['batch']} × {plural(f['steps'], 'step')}, dropout off", sps["framework"], sps["bare"],
                   "steps/s", f["overhead"]),
            (f"fine-tune with dropout {f['dropout']} (masks seeded per sample)", f"{rate(sps['dropout'])} steps/s", "",
             f"{change(f['dropout_cost'])} against dropout off")]
    return (table(rows) + f"\n\nA random xAR (width {m['embed_dim']}, {m['depth']} encoder + {m['depth']} decoder blocks, "
            f"{m['grid']}×{m['grid']} latents of {m['channels']} channels in {m['cluster_grid']}×{m['cluster_grid']} "
            f"clusters); {threads_and_rounds(s)}.")


def imm_overhead(r: dict) -> str:
    """bench/imm_overhead.py: IMM's sampling and fine-tune against bare loops."""
    s, sa, f = r["settings"], r["sampling"], r["finetune"]
    m = s["model"]
    rows = [VERSUS,
            versus(f"sampling, batch {sa['batch']}, {sa['num_steps']} steps, cfg {sa['cfg']}",
                   sa["framework_images_per_s"], sa["bare_images_per_s"], "img/s", sa["overhead"]),
            versus(f"fine-tune, batch {f['batch']} × {plural(f['steps'], 'step')}", f["framework_steps_per_s"],
                   f["bare_steps_per_s"], "steps/s", f["overhead"])]
    res = f"{m['img_resolution']}×{m['img_resolution']}×{m['img_channels']}"
    return (table(rows) + f"\n\nA random IMM (DiT width {m['hidden_size']}, depth {m['depth']}, patch "
            f"{m['patch_size']}, {res} latents); {plural(s['threads'], 'thread')}, interleaved rounds, best of {sa['rounds']} "
            f"(sampling) and {f['rounds']} (fine-tune).")


def var_sampling(r: dict) -> str:
    """bench/var_sampling.py: VAR's sampler (KV cache) against a bare loop and against the network without the cache."""
    s, ips = r["settings"], r["images_per_s"]
    m = s["model"]
    rows = [VERSUS,
            versus(f"sampling, batch {s['batch']}, {s['tokens']} tokens (KV cache)", ips["framework"], ips["bare"],
                   "img/s", r["overhead"]),
            ("without the KV cache", f"{rate(ips['no_cache'])} img/s", "",
             f"the cache: {times(r['cache_speedup'])} faster")]
    sampler = ", ".join(f"{k} {v}" for k, v in s["sampler"].items())
    return (table(rows) + f"\n\nA random VAR (depth {m['depth']}, width {m['embed_dim']}, scales "
            f"{'/'.join(map(str, m['patch_nums']))}) drawing {'×'.join(map(str, s['image_shape']))} images ({sampler}); "
            f"{plural(s['threads'], 'thread')}, best of {plural(s['rounds'], 'interleaved round')} of "
            f"{plural(s['repeats'], 'call')}; the framework's "
            f"images {'are' if r['deterministic'] else 'are not'} the same on a second call.")


# keyed by record name, except startup's: build_tables.py's own `startup` view renders startup_vs_edm
VIEWS: dict[str, Callable[[dict], str]] = {
    "startup_tasks": startup, "merge_speed": merge_speed, "edm_overhead": edm_overhead,
    "metrics_speed": metrics_speed, "eval_speed": eval_speed, "parallel_jobs": parallel_jobs,
    "sweep_cost": sweep_cost, "ddp_synthesis": ddp_synthesis, "toy_overhead": toy_overhead,
    "xar_overhead": xar_overhead, "imm_overhead": imm_overhead, "var_sampling": var_sampling,
}
