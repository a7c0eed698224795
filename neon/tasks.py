"""Task entry points, one per `task=` option. The default, `neon`, chains every stage through the
artifact cache; the others run one stage alone on paths the user gives, writing into the run folder."""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from neon.auto_w import check_auto, choose_w
from neon.callbacks import NeonMerge, merged_name
from neon.checks import check_counts
from neon.diagnose import gradient_alignment, parameter_groups, prediction
from neon.distributed import is_main
from neon.errors import NeonError
from neon.io import atomic_path, load_state_dict, save_state_dict, write_json, write_text
from neon.merge import extrapolate, merge_files
from neon.module import diversity_warning
from neon.metrics.evaluate import features_of_images, interleave
from neon.metrics.images import digest_source, read_image_source
from neon.metrics.reference import reference_from_features, uint8_images_to_unit
from neon.report import w_label, write_sample_grid, write_w_curve
from neon.runtime import Run, is_auto_w, log, merge_ws, plain, positive_int
from neon.seeding import parse_seeds
from neon.stages import (
    THETA_R,
    Evaluator,
    budgets_of,
    copy_weights,
    finetune_module,
    finetuned_weights,
    load_base,
    log_merge_plan,
    pretrain_into,
    save_checkpoint_pair,
    synthesize_into,
    synthetic_data,
    synthetic_key,
)
from neon.sweep import write_report
from neon.synthetic_source import check_fits, folder_key, source_config, source_folder, source_label, source_run


def validate(cfg: DictConfig) -> None:
    """Fail early, with one clear line, on the settings users type every day; warn before fine-tuning on a
    diversity-seeking S."""
    if is_auto_w(cfg):
        check_auto(plain(cfg.neon.auto))
    else:
        merge_ws(cfg)
    budgets_of(cfg)
    check_counts(cfg)
    drawer = source_config(cfg) or cfg  # the sampler that draws S
    warning = diversity_warning(drawer.model, plain(drawer.sampler))
    if warning:
        log.warning(warning)


def cached_synthetic(run: Run, module, base_digest: str) -> tuple[dict, Path | None]:
    """S's cache key and folder: drawn once into the artifact cache (None when S is streamed) by θ_r, or
    taken from `neon.synthetic.source` / drawn by `neon.synthetic.source_model` (cross-architecture S)."""
    s = run.cfg.neon.synthetic
    src = source_run(run)
    if src is None and s.get("source"):
        s_dir = source_folder(s.source)
        check_fits(module, s_dir, f"'{s.source}'")
        log.info("S: from %s", s_dir)
        return folder_key(s_dir), s_dir
    drawer, drawer_module, drawer_digest = run, module, base_digest
    if src is not None:
        with run.stage("pretrain"):
            drawer_module, drawer_digest, _ = load_base(src)
        drawer = src
    with run.stage("synthesize"):
        s_key = synthetic_key(drawer, drawer_digest)
        if s.mode == "stream":
            if src is not None:
                raise NeonError("neon.synthetic.source_model needs neon.synthetic.mode=cached (S is written once)")
            return s_key, None
        s_dir, built = run.cache.get_or_build(
            "synthetic", s_key, lambda work: synthesize_into(drawer, drawer_module, work), collective=True)
        origin = "" if src is None else f" (drawn by {source_label(run)})"
        log.info("S%s: %s %s", origin, "wrote" if built else "reusing", s_dir)
    if src is not None:
        check_fits(module, s_dir, source_label(run))
    return s_key, s_dir


def theta_r_and_theta_s(run: Run, budgets: list[int]) -> tuple:
    """The cached front of the pipeline: θ_r (loaded or pretrained), S, and θ_s at every budget.
    Returns (module holding θ_r, θ_r's digest, θ_r's file, a copy of θ_r, S's folder or None, θ_s files)."""
    with run.stage("pretrain"):
        module, base_digest, base_path = load_base(run)
    theta_r = copy_weights(module.neon_weights())
    log_merge_plan(run, theta_r)
    s_key, s_dir = cached_synthetic(run, module, base_digest)
    with run.stage("finetune"):
        theta_s_paths = finetuned_weights(run, module, synthetic_data(run, module, s_dir), base_digest, s_key, budgets)
    return module, base_digest, base_path, theta_r, s_dir, theta_s_paths


def run_neon(cfg: DictConfig) -> dict:
    """synthesize → fine-tune → merge → evaluate (pretraining first when no model.checkpoint is given)."""
    validate(cfg)
    run = Run.from_config(cfg)
    budgets = budgets_of(cfg)
    ws = None if is_auto_w(cfg) else merge_ws(cfg)

    module, base_digest, base_path, theta_r, s_dir, theta_s_paths = theta_r_and_theta_s(run, budgets)

    evaluator = Evaluator(run, module)
    auto = None
    if ws is None:  # the line search picks w and B on the proxy; the grid below scores θ_r and that point
        auto = search_w(run, module, theta_r, theta_s_paths, budgets)
        ws, budgets = [0.0] + ([auto["w"]] if auto["w"] != 0.0 else []), [auto["budget_steps"]]
    grid = {}  # budget → scores per w
    for budget in budgets:
        grid[budget] = sweep_w(run, evaluator, theta_r, load_state_dict(theta_s_paths[budget]), ws, f"B={budget}")
    best_b, best = min(((b, i) for b in budgets for i in range(len(ws))), key=lambda bi: grid[bi[0]][bi[1]]["fid"])
    fids = [r["fid"] for r in grid[best_b]]
    with run.stage("evaluate"):
        fid_base = next((f for w, f in zip(ws, fids) if w == 0.0), None)
        if fid_base is None:
            fid_base = evaluator.score(theta_r)["fid"]
        if not math.isfinite(fid_base):  # no gain can be measured against it: not a result to report
            raise NeonError(f"θ_r '{base_path}' scores FID {fid_base}: its samples are not finite; check θ_r and the "
                            "sampler settings (metrics.sampler)")
        noise = None
        if cfg.metrics.get("noise_seed_offset") is not None:
            reseeded = Evaluator(run, module, seed_offset=cfg.metrics.noise_seed_offset).score(theta_r)["fid"]
            noise = {"fid_base_reseeded": reseeded, "relative": abs(reseeded - fid_base) / max(fid_base, 1e-12)}

    control = None
    if cfg.neon.get("control"):
        # the same fine-tune on the real data instead of S: shows the gain comes from self-generated data
        with run.stage("finetune"):
            real = instantiate(cfg.data, batch_size=positive_int(cfg.neon.batch_size, "neon.batch_size"))
            c_path = finetuned_weights(run, module, real, base_digest, {"real_data": plain(cfg.data)}, [best_b])[best_b]
        control = [r["fid"] for r in sweep_w(run, evaluator, theta_r, load_state_dict(c_path), ws, "control")]

    summary = {
        "task": "neon",
        "family": cfg.model._target_,
        "fid_base": fid_base,
        "fid_neon": fids[best],
        "w": ws[best],
        "budget_steps": best_b,
        "w_curve": [{"w": w_label(w), "fid": f} for w, f in zip(ws, fids)],
        "grid": [{"budget_steps": b, "w": w_label(w), "fid": r["fid"]} for b in budgets for w, r in zip(ws, grid[b])],
        "fid_noise": noise,
        "control": None if control is None else {
            "w_curve": [{"w": w_label(w), "fid": f} for w, f in zip(ws, control)],
            "fid_best": min(control), "w": ws[control.index(min(control))]},
        "auto_w": auto,
        "n_synthetic": cfg.neon.n_synthetic,
        "synthetic_source": source_label(run),
        "sampler": plain((source_config(cfg) or cfg).sampler),
        "eval_sampler": plain(evaluator.sampler_cfg),
        "metric": evaluator.trace(),
        "scores_neon": {k: v for k, v in grid[best_b][best].items() if k not in ("digest",)},
        "artifacts": {"theta_r": str(base_path), "synthetic": str(s_dir) if s_dir else "streamed",
                      "theta_s": {str(b): str(p) for b, p in theta_s_paths.items()},
                      "theta_neon": str(run.out / "theta_neon.safetensors")},
        "seed": cfg.seed,
    }
    if not is_main():  # under DDP, rank 0 writes the results
        return summary
    with run.stage("merge"):
        module.load_neon_weights(extrapolate(theta_r, load_state_dict(theta_s_paths[best_b]), ws[best]))
        save_checkpoint_pair(module, run.out / "theta_neon", cfg.model)
    write_w_curve(run.out, ws, fids, control, grid={b: [r["fid"] for r in grid[b]] for b in budgets})
    grids = write_previews(run, evaluator, module, theta_r, f"w = {w_label(ws[best])}, B = {best_b}")
    summary["seconds"] = {k: round(v, 3) for k, v in run.seconds.items()}
    write_json(run.out / "summary.json", summary)
    run.log_results(
        [{"w": w, "fid": f} for w, f in zip(ws, fids) if isinstance(w, float)],
        {"fid_base": fid_base, "fid_neon": fids[best], "budget_steps": best_b,
         **({"w": ws[best]} if isinstance(ws[best], float) else {})},
        images={"neon/w_curve": run.out / "w_curve.png", **grids},
    )
    print_table(summary)
    log.info("FID base %.6g → neon %.6g at w = %s, B = %d (%s)", fid_base, fids[best], w_label(ws[best]), best_b, run.out)
    return summary


def search_w(run: Run, module, theta_r: dict, theta_s_paths: dict, budgets: list[int]) -> dict:
    """`neon.w=auto`: the line search of `neon.auto` at every budget on the proxy FID; the best (B, w) and
    every proxy point, with the number of distinct proxy evaluations it cost."""
    a = plain(run.cfg.neon.auto)
    # the proxy's own seeds: the chosen w is then scored on seeds the search never saw (no selection bias)
    proxy = Evaluator(run, module, num_samples=a.get("num_samples"), seed_offset=a.get("seed_offset"))
    groups = a.get("groups") or None
    # the rest ('default') is searched as one more group only if some parameter matches no group
    rest = bool(groups) and any(not any(re.search(rx, k) for rx in groups.values())
                                for k, t in theta_r.items() if t.is_floating_point())
    points: list[dict] = []
    digests: set[str] = set()
    chosen = {}
    for budget in budgets:
        theta_s = load_state_dict(theta_s_paths[budget])

        def score(w, theta_s=theta_s, budget=budget) -> float:
            with run.stage("merge"):
                merged = extrapolate(theta_r, theta_s, w)
            with run.stage("evaluate"):
                result = proxy.score(merged)
            digests.add(result["digest"])
            log.info("auto w, B=%d: w = %s → proxy FID %.6g", budget, w_label(w), result["fid"])
            return result["fid"]

        chosen[budget] = choose_w(score, a, groups, points, label=f"B={budget} ", rest=rest)
        log.info("auto w at B=%d: w = %s, proxy FID %.6g", budget, w_label(chosen[budget][0]), chosen[budget][1])
    best = min(budgets, key=lambda b: chosen[b][1])
    return {"w": chosen[best][0], "budget_steps": best, "proxy_fid": chosen[best][1],
            "proxy_num_samples": proxy.num_samples, "proxy_seeds": proxy.trace()["seeds"],
            "evaluations": len(digests), "points": points}


def write_previews(run: Run, evaluator: Evaluator, module, theta_r: dict, neon_label: str) -> dict[str, Path]:
    """Sample grids of θ_r and θ_neon (the module holds θ_neon) from the same seeds, with the evaluation
    sampler: `samples_theta_r.png`, `samples_theta_neon.png`."""
    n = int(run.cfg.get("preview_samples") or 0)
    if n <= 0:
        return {}
    seeds, sampler = list(range(n)), instantiate(evaluator.sampler_cfg)
    module.to(run.device).eval()
    neon_x, _ = module.generate(seeds, sampler)
    theta_neon = copy_weights(module.neon_weights())
    module.load_neon_weights(theta_r)
    base_x, _ = module.generate(seeds, sampler)
    module.load_neon_weights(theta_neon)
    return {"samples/theta_r": write_sample_grid(run.out / "samples_theta_r.png", base_x, "θ_r"),
            "samples/theta_neon": write_sample_grid(run.out / "samples_theta_neon.png", neon_x, f"θ_neon ({neon_label})")}


def sweep_w(run: Run, evaluator: Evaluator, theta_r: dict, theta_s: dict, ws: list, label: str) -> list[dict]:
    """Scores of (1 + w)·θ_r − w·θ_s for every w."""
    results = []
    for w in tqdm(ws, desc=f"merge + evaluate ({label})", unit="w", disable=not is_main()):
        with run.stage("merge"):
            merged = extrapolate(theta_r, theta_s, w)
        with run.stage("evaluate"):
            results.append(evaluator.score(merged))
        log.info("%s w = %s: FID %.6g", label, w_label(w), results[-1]["fid"])
    return results


def print_table(summary: dict) -> None:
    """The w-curve (and the real-data control) as a table on stdout."""
    control = summary.get("control")
    rows = [("w", "FID θ_neon", "gain vs θ_r", *(("FID control",) if control else ()))]
    for i, point in enumerate(summary["w_curve"]):
        gain = 1 - point["fid"] / summary["fid_base"] if summary["fid_base"] else 0.0
        row = (point["w"], f"{point['fid']:.4g}", f"{100 * gain:+.1f}%" if math.isfinite(gain) else "n/a")
        if control:
            row += (f"{control['w_curve'][i]['fid']:.4g}",)
        rows.append(row)
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.rjust(wd) for cell, wd in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (wd + 2) for wd in widths) + "|")
    noise = summary.get("fid_noise")
    tail = [f"FID θ_r = {summary['fid_base']:.4g}"]
    if noise:
        tail.append(f"(with other sample seeds {noise['fid_base_reseeded']:.4g}: seed noise {100 * noise['relative']:.1f}%)")
    tail.append(f"→ best θ_neon {summary['fid_neon']:.4g} at w = {summary['w']}")
    if control:
        tail.append(f"| control (fine-tuned on real data) best {control['fid_best']:.4g} at w = {control['w']}")
    print("\n".join(lines) + "\n" + " ".join(tail), flush=True)


def run_pretrain(cfg: DictConfig) -> dict:
    """Train θ_r from scratch into the run folder."""
    run = Run.from_config(cfg)
    with run.stage("pretrain"):
        pretrain_into(run, run.out)
    summary = {"task": "pretrain", "theta_r": str(run.out / THETA_R), "seconds": run.seconds}
    if not is_main():
        return summary
    module = run.build_module()
    module.load_neon_weights(load_state_dict(run.out / THETA_R))
    save_checkpoint_pair(module, run.out / "theta_r", cfg.model)
    write_json(run.out / "summary.json", summary)
    return summary


def run_synthesize(cfg: DictConfig) -> dict:
    """Draw S from θ_r (model.checkpoint, else pretrained) into `task.out` or the run folder."""
    positive_int(cfg.neon.n_synthetic, "neon.n_synthetic")
    run = Run.from_config(cfg)
    with run.stage("pretrain"):
        module, digest, base_path = load_base(run)
    out = Path(cfg.task.out) if cfg.task.get("out") else run.out / "synthetic"
    with run.stage("synthesize"):
        synthesize_into(run, module, out)
    summary = {"task": "synthesize", "synthetic": str(out), "theta_r": str(base_path),
               "n_synthetic": cfg.neon.n_synthetic, "sampler": plain(cfg.sampler), "seconds": run.seconds}
    if is_main():
        write_json(out / "key.json", synthetic_key(run, digest))
        write_json(run.out / "summary.json", summary)
    return summary


def run_finetune(cfg: DictConfig) -> dict:
    """Fine-tune θ_r on S (`task.synthetic`, else drawn now); a NeonMerge callback writes θ_neon per w."""
    validate(cfg)
    run = Run.from_config(cfg)
    ws = merge_ws(cfg)
    with run.stage("pretrain"):
        module, _, base_path = load_base(run)
    s_dir = Path(cfg.task.synthetic) if cfg.task.get("synthetic") else None
    if s_dir is None and cfg.neon.synthetic.mode != "stream":
        s_dir = run.out / "synthetic"
        with run.stage("synthesize"):
            synthesize_into(run, module, s_dir)
    merge_cb = NeonMerge(ws, run.out)
    with run.stage("finetune"):
        budget = max(budgets_of(cfg))
        tuned = finetune_module(run, module, synthetic_data(run, module, s_dir), budget, callbacks=[merge_cb])
    summary = {"task": "finetune", "theta_r": str(base_path), "theta_s": str(run.out / "theta_s.safetensors"),
               "theta_neon": {k: str(v) for k, v in merge_cb.paths.items()}, "budget_steps": budget,
               "seconds": run.seconds}
    if is_main():
        save_state_dict(tuned.neon_weights(), run.out / "theta_s.safetensors")
        write_json(run.out / "summary.json", summary)
    return summary


def run_merge(cfg: DictConfig) -> dict:
    """Stream θ_neon for each w from `task.base` (default model.checkpoint) and `task.aux`."""
    ws = merge_ws(cfg)
    base, aux = cfg.task.get("base") or cfg.model.get("checkpoint"), cfg.task.get("aux")
    if not base or not aux:
        raise NeonError("task=merge needs task.base=θ_r (or model.checkpoint) and task.aux=θ_s checkpoint paths")
    run = Run.from_config(cfg)
    paths = {}
    with run.stage("merge"):
        for w in ws:
            name = Path(merged_name(w)).with_suffix(f".{cfg.task.format}").name
            paths[w_label(w)] = str(merge_files(base, aux, w, run.out / name))
    summary = {"task": "merge", "base": str(base), "aux": str(aux), "theta_neon": paths, "seconds": run.seconds}
    write_json(run.out / "summary.json", summary)
    return summary


def run_evaluate(cfg: DictConfig) -> dict:
    """Score each of `task.checkpoints` (default model.checkpoint), or an ADM-layout sample file
    (`samples=PATH.npz`, uint8 NHWC `arr_0`) from any project."""

    samples = cfg.get("samples")
    paths = list(cfg.task.get("checkpoints") or []) or ([cfg.model.checkpoint] if cfg.model.get("checkpoint") else [])
    if not paths and not samples:
        raise NeonError("task=evaluate needs samples=PATH.npz, model.checkpoint=PATH or task.checkpoints=[PATH,...]")
    run = Run.from_config(cfg)
    module = run.build_module()
    evaluator = Evaluator(run, module)
    results = {}
    with run.stage("evaluate"):
        if samples:
            if not Path(samples).is_file():
                raise NeonError(f"samples '{samples}' do not exist: give an .npz with uint8 NHWC images in arr_0")
            with np.load(samples) as f:
                if "arr_0" not in f.files:
                    raise NeonError(f"samples '{samples}' hold {sorted(f.files)}: expected uint8 NHWC images in arr_0")
                images = uint8_images_to_unit(f["arr_0"], f"samples '{samples}'")
            feats = features_of_images(images, evaluator.extractor, int(cfg.metrics.block_size))
            results[str(samples)] = evaluator.score_features(feats)
        for path in paths:
            module.load_checkpoint(path)
            results[str(path)] = evaluator.score(copy_weights(module.neon_weights()))
    for name, r in results.items():
        log.info("%s: %s", name, ", ".join(f"{k} {v:.6g}" for k, v in r.items() if isinstance(v, float)))
    summary = {"task": "evaluate", "scores": results, "fid": {k: r["fid"] for k, r in results.items()},
               "eval_sampler": plain(evaluator.sampler_cfg), "metric": evaluator.trace(), "seconds": run.seconds}
    if samples:
        summary["metric"]["num_samples"] = {str(samples): len(images)}
    if is_main():
        write_json(run.out / "summary.json", summary)
    return summary


def run_sample(cfg: DictConfig) -> dict:
    """One image per seed (`sample.seeds`) into an .npz in the ADM evaluation suite's layout
    (`arr_0` samples, `arr_1` labels for conditional models)."""

    run = Run.from_config(cfg)
    seeds = parse_seeds(cfg.sample.seeds)
    batch = positive_int(cfg.sample.batch_size, "sample.batch_size")
    with run.stage("pretrain"):
        module, _, base_path = load_base(run)
    module = module.to(run.device).eval()
    sampler = run.sampler()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not cfg.sample.get("out"):
        raise NeonError("several processes are sampling (WORLD_SIZE > 1): give them one sample.out=PATH.npz")
    mine = seeds[rank::world]  # ranks take strided shares of the seed list, as EDM's generate.py
    images, labels = [], []
    with run.stage("sample"):
        for start in tqdm(range(0, len(mine), batch), desc="sample", unit="batch"):
            x, y = module.generate(mine[start:start + batch], sampler)
            images.append(module.export_samples(x))
            if y is not None:
                labels.append(y.cpu().numpy())
    out = Path(cfg.sample.out) if cfg.sample.get("out") else run.out / "samples.npz"
    arrays = {"arr_0": np.concatenate(images)}
    if labels:
        arrays["arr_1"] = np.concatenate(labels)
    if world == 1:
        write_npz(out, arrays)
    else:
        # each rank writes its share; rank 0 waits for all of them and interleaves them back into seed order
        write_npz(rank_part(out, rank, world), arrays)
        if rank == 0:
            merge_rank_parts(out, world, timeout_s=float(cfg.sample.get("merge_timeout_s", 3600)))
    summary = {"task": "sample", "out": str(out), "n": len(mine), "rank": rank, "world_size": world,
               "seeds": str(cfg.sample.seeds), "theta": str(base_path), "sampler": plain(cfg.sampler),
               "seconds": run.seconds}
    write_json(run.out / "summary.json", summary)
    log.info("wrote %d samples to %s", len(mine), out)
    return summary


def run_export(cfg: DictConfig) -> dict:
    """Write the loaded θ (e.g. from an official snapshot) as safetensors plus a YAML model config."""

    run = Run.from_config(cfg)
    module, digest, base_path = load_base(run)
    weights = save_state_dict(module.neon_weights(), run.out / "model.safetensors")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.update(module.config_overrides())
    model_cfg["checkpoint"] = str(weights.resolve())
    write_text(run.out / "model.yaml", OmegaConf.to_yaml(model_cfg))
    summary = {"task": "export", "source": str(base_path), "weights": str(weights), "config": str(run.out / "model.yaml"),
               "digest": digest}
    write_json(run.out / "summary.json", summary)
    log.info("exported %s → %s", base_path, weights)
    return summary


def write_npz(path: Path, arrays: dict) -> None:
    """Write arrays to an .npz atomically."""

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def rank_part(out: Path, rank: int, world: int) -> Path:
    """The file one rank writes its share of samples to."""
    return out.with_name(f"{out.stem}.rank{rank:03d}-of-{world:03d}.npz")


def merge_rank_parts(out: Path, world: int, timeout_s: float = 3600.0) -> None:
    """Interleave the ranks' shares (rank r holds seeds r, r + W, ...) into one file in seed order."""

    parts = [rank_part(out, r, world) for r in range(world)]
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in parts):
        if time.monotonic() > deadline:
            missing = [str(p) for p in parts if not p.exists()]
            raise NeonError(f"sample shares never appeared: {', '.join(missing)} (did every rank finish?)")
        time.sleep(1.0)

    merged = interleave([dict(np.load(p)) for p in parts])
    write_npz(out, merged)
    for p in parts:
        p.unlink()


def run_reference(cfg: DictConfig) -> dict:
    """Compute (and cache) reference statistics and features for an image folder, an .npz of uint8
    images (`task.source`), or the `data` group's real data; write them as an .npz (mu, sigma, pool)."""

    run = Run.from_config(cfg)
    extractor = instantiate(cfg.metrics.extractor)
    source = cfg.task.get("source")
    key = {"extractor": plain(cfg.metrics.extractor),
           "source": digest_source(source) if source else plain(cfg.data)}

    def build(work: Path) -> None:
        if source:
            images = uint8_images_to_unit(read_image_source(source), f"image source '{source}'")
            ref = reference_from_features(features_of_images(images, extractor, int(cfg.metrics.block_size))["pool"],
                                          str(source))
        else:
            ref = instantiate(cfg.data).reference(extractor)
        arrays = {"mu": ref.mu, "sigma": ref.sigma}
        if ref.features is not None:
            arrays["pool"] = ref.features.astype(np.float32)
        np.savez(work / "reference.npz", **arrays)

    with run.stage("reference"):
        folder, built = run.cache.get_or_build("reference", key, build)
    out = Path(cfg.task.out) if cfg.task.get("out") else run.out / "reference.npz"

    with atomic_path(out) as tmp:
        shutil.copyfile(folder / "reference.npz", tmp)
    with np.load(out) as f:
        n = len(f["pool"]) if "pool" in f.files else None
        dim = len(f["mu"])
    summary = {"task": "reference", "out": str(out), "source": str(source) if source else plain(cfg.data),
               "extractor": plain(cfg.metrics.extractor), "num_images": n, "feature_dim": dim,
               "cached": not built, "seconds": run.seconds}
    write_json(run.out / "summary.json", summary)
    log.info("reference statistics (%s images, %d-d) → %s", n, dim, out)
    return summary


def run_report(cfg: DictConfig) -> dict:
    """Tables and plots of a finished sweep folder (`dir=`)."""
    folder = cfg.get("dir") or cfg.task.get("dir")
    if not folder:
        raise NeonError("task=report needs dir=<sweep folder>, e.g. dir=multirun/2026-11-26_10-00-00_000000")

    paths = write_report(folder, heat_key=cfg.task.heat_key)
    for p in paths:
        log.info("wrote %s", p)
    return {"task": "report", "files": [str(p) for p in paths]}


def run_search(cfg: DictConfig) -> dict:
    """The reference search protocol in one process: a coarse grid over (budget snapshot, CFG, w) on a
    small-sample FID, each w-line stopped once FID exceeds its best by more than `task.tolerance`, then
    w ± `task.refine_step` around the best point, then a large-sample FID there. Every score is cached,
    so a killed search restarted with the same config redoes nothing it finished."""
    validate(cfg)
    run = Run.from_config(cfg)
    t = cfg.task
    ws, budgets = sorted(merge_ws(cfg)), budgets_of(cfg)
    if any(not isinstance(w, float) for w in ws):
        raise NeonError("task=search sweeps scalar w: give neon.w as a list of numbers")
    cfg_values = list(t.cfg_values or []) if t.get("cfg_key") else [None]
    module, _, base_path, theta_r, _, thetas = theta_r_and_theta_s(run, budgets)
    loaded: dict[int, dict] = {}
    points: list[dict] = []

    def score(budget: int, cfg_value, w: float, num_samples: int | None = None) -> float:
        overrides = {t.cfg_key: cfg_value} if cfg_value is not None else None
        evaluator = Evaluator(run, module, num_samples=num_samples, sampler_overrides=overrides)
        if budget not in loaded:
            loaded[budget] = load_state_dict(thetas[budget])
        with run.stage("evaluate"):
            result = evaluator.score(extrapolate(theta_r, loaded[budget], w))
        points.append({"budget_steps": budget, "cfg": cfg_value, "w": w, "fid": result["fid"],
                       "num_samples": evaluator.num_samples})
        if is_main():
            write_json(run.out / "search.json", {"points": points})  # progress, readable while it runs
        return result["fid"]

    coarse = {}
    for cfg_value in cfg_values:
        for budget in budgets:
            best_line = float("inf")
            for w in ws:
                fid = coarse[(budget, cfg_value, w)] = score(budget, cfg_value, w)
                best_line = min(best_line, fid)
                if fid > best_line + float(t.tolerance):
                    log.info("B=%d cfg=%s: stop at w=%g (FID %.4g > best %.4g + %g)", budget, cfg_value, w, fid,
                             best_line, t.tolerance)
                    break
    (b, c, w), fid = min(coarse.items(), key=lambda kv: kv[1])
    refined = {(b, c, w): fid}
    for dw in (-float(t.refine_step), float(t.refine_step)):
        refined[(b, c, round(w + dw, 6))] = score(b, c, round(w + dw, 6))
    (b, c, w), fid_small = min(refined.items(), key=lambda kv: kv[1])
    final_n = t.get("final_num_samples")
    fid_final = score(b, c, w, num_samples=final_n) if final_n else fid_small
    fid_base = score(b, c, 0.0, num_samples=final_n) if final_n else score(b, c, 0.0)
    summary = {"task": "search", "fid_base": fid_base, "fid_neon": fid_final, "fid_search": fid_small, "w": w,
               "budget_steps": b, "cfg_key": t.get("cfg_key"), "cfg": c, "points": points,
               "tolerance": float(t.tolerance), "theta_r": str(base_path), "seconds": run.seconds}
    if is_main():
        write_json(run.out / "search.json", {"points": points, "chosen": {"budget_steps": b, "cfg": c, "w": w}})
        write_json(run.out / "summary.json", summary)
    log.info("search: best B=%d cfg=%s w=%g: FID %.6g (search) / %.6g (final), θ_r %.6g", b, c, w, fid_small,
             fid_final, fid_base)
    return summary


def _endless(loader) -> Iterator[dict]:
    while True:
        yield from loader


def run_diagnose(cfg: DictConfig) -> dict:
    """The anti-alignment diagnostic at θ_r: cos(E∇L_real, E∇L_S), raw and Adam-preconditioned, overall and
    per parameter group, with 95% intervals and a plain prediction → diagnosis.json."""
    positive_int(cfg.neon.n_synthetic, "neon.n_synthetic")
    run = Run.from_config(cfg)
    with run.stage("pretrain"):
        module, base_digest, base_path = load_base(run)
    _, s_dir = cached_synthetic(run, module, base_digest)
    # held-out real data estimates the population gradient (on θ_r's own training set it is ≈ 0 by training)
    real_cfg = OmegaConf.merge(cfg.data, cfg.task.real_data) if cfg.task.get("real_data") else cfg.data
    real = instantiate(real_cfg)
    if not hasattr(real, "train_dataloader"):
        raise NeonError(f"data={cfg.data._target_} has no real training data: the diagnostic compares real and "
                        "synthetic gradients (use data=digits, or a data module with train_dataloader)")
    t = cfg.task
    groups = parameter_groups(module.net, depth=int(t.group_depth), patterns=plain(t.groups))
    with run.stage("diagnose"):
        result = gradient_alignment(module.to(run.device), _endless(real.train_dataloader()),
                                    _endless(synthetic_data(run, module, s_dir).train_dataloader()),
                                    positive_int(t.num_batches, "task.num_batches"),
                                    blocks=positive_int(t.blocks, "task.blocks"), seed=cfg.seed, groups=groups)
    result.update(prediction=prediction(result), theta_r=str(base_path), synthetic=str(s_dir) if s_dir else "streamed",
                  sampler=plain(cfg.sampler), seconds=run.seconds)
    if is_main():
        write_json(run.out / "diagnosis.json", result)
        write_json(run.out / "summary.json", {"task": "diagnose", **result})
    print(f"gradient cosine real vs S at θ_r: {result['cosine']:+.3f} (95% {result['cosine_ci95'][0]:+.3f} … "
          f"{result['cosine_ci95'][1]:+.3f}), Adam-preconditioned {result['cosine_preconditioned']:+.3f} (95% "
          f"{result['cosine_preconditioned_ci95'][0]:+.3f} … {result['cosine_preconditioned_ci95'][1]:+.3f}) → "
          f"{result['prediction']}")
    return result
