"""`task=neon`, the default: synthesize → fine-tune → merge → evaluate through the artifact cache
(pretraining θ_r first when no model.checkpoint is given)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from tqdm.auto import tqdm

from neon.analysis.heldout import heldout_figures, relative_gain
from neon.analysis.run_report import w_label, w_table, write_previews, write_w_curve
from neon.core.collectives import is_main
from neon.core.contract import HasNativeExport
from neon.core.errors import NeonError
from neon.core.io import StateDict, digest_state_dict, load_state_dict, write_json
from neon.core.values import plain
from neon.merging.extrapolate import WSpec
from neon.merging.merger import NeonMerger
from neon.stages.base import copy_weights
from neon.stages.evaluator import Evaluator
from neon.stages.finetune import finetuned_weights
from neon.stages.front import build_front, validate
from neon.stages.run import Run, log, write_resolved_config
from neon.stages.settings import NeonSettings
from neon.stages.synthetic_source import source_config, source_label
from neon.tasks.compare import compare_output_space
from neon.tasks.diagnose import cached_alignment, describe
from neon.tasks.search import search_auto_w
from neon.weights.release_export import neon_run_card


def score_ws(run: Run, evaluator: Evaluator, merge: NeonMerger, theta_s: StateDict, ws: list[WSpec],
             label: str) -> list[dict]:
    """Scores of θ_neon = (1 + w)·θ_r − w·θ_s for every w."""
    results = []
    for w in tqdm(ws, desc=f"merge + evaluate ({label})", unit="w", disable=not is_main()):
        with run.stage("merge"):
            merged = merge.merged(theta_s, w)
        with run.stage("evaluate"):
            results.append(evaluator.score(merged))
        log.info("%s w = %s: FID %.6g%s", label, w_label(w), results[-1]["fid"],
                 f", NLL {results[-1]['nll']:.6g}" if "nll" in results[-1] else "")
    return results


def curve_point(w: WSpec, score: dict) -> dict:
    """One point of a w-curve: w, FID and, where scored, the held-out NLL (metrics.compute [nll])."""
    return {"w": w_label(w), "fid": score["fid"], **({"nll": score["nll"]} if "nll" in score else {})}


def heldout_evaluator(run: Run, module) -> Evaluator:
    """The evaluator of the held-out seeds (metrics.heldout_seed_offset; for text, the report half)."""
    m = run.metrics
    return Evaluator(run, module, seed_offset=m.heldout_seed_offset, num_samples=m.heldout_num_samples,
                     nll_part="report")


def score_heldout(run: Run, module, front, merge: NeonMerger, theta_s: StateDict, w: WSpec,
                  control_s: StateDict | None, control_w: WSpec | None) -> dict:
    """θ_r, θ_neon at the picked (w, B) and the control at its own picked w, scored on the held-out seeds."""
    heldout = heldout_evaluator(run, module)
    with run.stage("evaluate"):
        base = heldout.score(front.theta_r)
        neon = heldout.score(merge.merged(theta_s, w))
        control = None if control_s is None else heldout.score(merge.merged(control_s, control_w))
    figures = heldout_figures(base, neon, control)
    log.info("held-out seeds %s: θ_r %.6g → θ_neon %.6g (w = %s)%s", figures["seeds_heldout"],
             figures["fid_base_heldout"], figures["fid_neon_heldout"], w_label(w),
             "" if control is None else f", control {figures['fid_control_heldout']:.6g}")
    return figures


def selection_seeds(evaluator: Evaluator) -> str:
    """The seeds every pick was made on: 'first-last' over all of metrics.seed_sets' sets."""
    sets = evaluator.seed_sets()
    return f"{sets[0][0]}-{sets[-1][-1]}"


def run_neon(cfg: DictConfig) -> dict:
    """synthesize → fine-tune → merge → evaluate (pretraining first when no model.checkpoint is given);
    neon.rounds > 1: again from each round's θ_neon."""
    rounds = NeonSettings.of(cfg).rounds
    if rounds > 1:
        return run_rounds(cfg, rounds)
    validate(cfg)
    run = Run.from_config(cfg)
    neon = run.neon
    budgets = list(neon.budgets)
    ws = None if neon.auto_w else list(neon.ws)

    front = build_front(run, budgets)
    module, merge = front.module, front.merge
    diagnosis = None
    if neon.diagnose:  # at θ_r on this S, before any score: what the theory predicts for w > 0
        diagnosis = cached_alignment(run, module, front.theta_r, front.base_digest, front.s_key, front.s_dir)
        log.info(describe(diagnosis))
    evaluator = Evaluator(run, module)
    auto = None
    if ws is None:  # the line search picks w and B on the proxy; the grid below scores θ_r and that point
        auto = search_auto_w(run, front, budgets)
        ws, budgets = [0.0] + ([auto["w"]] if auto["w"] != 0.0 else []), [auto["budget_steps"]]
    grid = {b: score_ws(run, evaluator, merge, front.theta_s(b), ws, f"B={b}") for b in budgets}  # budget → per w
    select = run.metrics.select
    best_b, best = min(((b, i) for b in budgets for i in range(len(ws))), key=lambda bi: grid[bi[0]][bi[1]][select])
    fids = [r["fid"] for r in grid[best_b]]
    with run.stage("evaluate"):
        base = next((r for w, r in zip(ws, grid[best_b], strict=True) if w == 0.0), None)
        if base is None:
            base = evaluator.score(front.theta_r)
        fid_base = base["fid"]
        if not math.isfinite(fid_base):  # no gain can be measured against it: not a result to report
            raise NeonError(f"θ_r '{front.base_path}' scores FID {fid_base}: its samples are not finite; check θ_r and "
                            "the sampler settings (metrics.sampler)")
        noise = None
        if run.metrics.noise_seed_offset is not None:
            reseeded = Evaluator(run, module, seed_offset=run.metrics.noise_seed_offset).score(front.theta_r)["fid"]
            noise = {"fid_base_reseeded": reseeded, "relative": abs(reseeded - fid_base) / max(fid_base, 1e-12)}

    control, control_s = None, None
    if neon.control:
        # the same fine-tune on the real data instead of S: shows the gain comes from self-generated data
        with run.stage("finetune"):
            batch = neon.batch_size
            # from θ_r, not from the θ_neon the evaluations above left in the module
            c_path = finetuned_weights(run, module, lambda: instantiate(cfg.data, batch_size=batch), front.theta_r,
                                       front.base_digest,
                                       {"real_data": plain(cfg.data), "start": "theta_r"}, [best_b])[best_b]
        control_s = load_state_dict(c_path)
        control_scores = score_ws(run, evaluator, merge, control_s, ws, "control")
        control = [r["fid"] for r in control_scores]
        control_best = min(range(len(ws)), key=lambda i: control_scores[i][select])

    heldout = None
    if run.metrics.heldout_seed_offset is not None:  # the picks above, scored on seeds they were not chosen on
        control_w = None if control is None else ws[control_best]
        heldout = score_heldout(run, module, front, merge, front.theta_s(best_b), ws[best], control_s, control_w)

    output_space = None
    if neon.compare == "output":  # the twin on the same θ_r, θ_s (best budget), w grid, sampler and seeds
        theta_s = front.theta_s(best_b)
        output_space = compare_output_space(run, evaluator, front.theta_r, theta_s, ws, fids, best_b,
                                            lambda w: merge.merged(theta_s, w),
                                            heldout_evaluator(run, module) if heldout else None,
                                            heldout and heldout["fid_neon_heldout"])

    summary = {
        "task": "neon",
        "family": cfg.model._target_,
        "fid_base": fid_base,
        "fid_neon": fids[best],
        "w": ws[best],
        "budget_steps": best_b,
        "select": select,
        **({"nll_base": base["nll"], "nll_neon": grid[best_b][best]["nll"]} if "nll" in base else {}),
        "w_curve": [curve_point(w, r) for w, r in zip(ws, grid[best_b], strict=True)],
        "grid": [{"budget_steps": b, "w": w_label(w), "fid": r["fid"]} for b in budgets for w, r in zip(ws, grid[b], strict=True)],
        **(heldout or {}),
        "seeds_selection": selection_seeds(evaluator),
        "fid_noise": noise,
        "control": None if control is None else {
            "w_curve": [curve_point(w, r) for w, r in zip(ws, control_scores, strict=True)],
            "fid_best": control[control_best], "w": ws[control_best]},
        "auto_w": auto,
        "output_space": output_space,
        "diagnosis": diagnosis,
        "n_synthetic": neon.n_synthetic,
        "synthetic_source": source_label(run),
        "sampler": plain((source_config(cfg, neon.synthetic) or cfg).sampler),
        "eval_sampler": plain(evaluator.sampler_cfg),
        "metric": evaluator.trace(),
        "scores_neon": {k: v for k, v in grid[best_b][best].items() if k not in ("digest",)},
        "artifacts": {"theta_r": str(front.base_path), "synthetic": str(front.s_dir) if front.s_dir else "streamed",
                      "theta_s": {str(b): str(p) for b, p in front.theta_s_paths.items()},
                      "theta_neon": str(run.out / "theta_neon.safetensors")},
        "seed": run.settings.seed,
    }
    if not is_main():  # under DDP, rank 0 writes the results
        return summary
    with run.stage("merge"):
        merge.write(front.theta_s(best_b), ws[best], run.out / "theta_neon.safetensors", module=module,
                    model_cfg=cfg.model)
        native = (module.write_native(module.neon_weights(), run.out / f"theta_neon_{module.native_folder}")
                  if isinstance(module, HasNativeExport) else None)
        if native is not None:  # the family's own layout too (diffusers: a pipeline folder), with its card
            summary["artifacts"][f"theta_neon_{module.native_folder}"] = str(native)
            summary["artifacts"]["theta_neon_card"] = str(neon_run_card(
                native, run.out, cfg, summary, type(module), digest_state_dict(module.neon_weights())))
    write_w_curve(run.out, ws, fids, control, grid={b: [r["fid"] for r in grid[b]] for b in budgets},
                  output=None if output_space is None else [p["fid"] for p in output_space["w_curve"]])
    theta_neon = copy_weights(module.neon_weights())  # write() left θ_neon in the module
    module.to(run.device).eval()
    grids = write_previews(run.out, module, instantiate(evaluator.sampler_cfg), front.theta_r, theta_neon,
                           run.settings.preview_samples, f"w = {w_label(ws[best])}, B = {best_b}")
    summary["seconds"] = {k: round(v, 3) for k, v in run.seconds.items()}
    write_json(run.out / "summary.json", summary)
    run.log_results(
        [{"w": w, "fid": f} for w, f in zip(ws, fids, strict=True) if isinstance(w, float)],
        {"fid_base": fid_base, "fid_neon": fids[best], "budget_steps": best_b,
         **{k: v for k, v in (heldout or {}).items() if isinstance(v, float)},
         **({"w": ws[best]} if isinstance(ws[best], float) else {})},
        images={"neon/w_curve": run.out / "w_curve.png", **grids},
    )
    print(w_table(summary), flush=True)
    log.info("FID base %.6g → neon %.6g at w = %s, B = %d (%s)", fid_base, fids[best], w_label(ws[best]), best_b,
             run.out)
    return summary


def run_rounds(cfg: DictConfig, rounds: int) -> dict:
    """Neon applied `rounds` times, each round's θ_neon the next round's θ_r (in <run>/round_<k>/): does a second
    self-training correction still help, or is Neon a one-time correction? The run's summary is the last round's,
    with every round's headline under `rounds`."""
    out = Path(cfg.paths.output_dir)
    if is_main():  # the rounds' own folders hold theirs; this one says what the whole command ran
        out.mkdir(parents=True, exist_ok=True)
        write_resolved_config(cfg, out)
    headlines: list[dict] = []
    summary: dict = {}
    for k in range(1, rounds + 1):
        round_cfg = copy.deepcopy(cfg)
        with open_dict(round_cfg):
            round_cfg.neon.rounds = 1
            round_cfg.paths.output_dir = str(out / f"round_{k}")
            if k > 1:
                round_cfg.model.checkpoint = summary["artifacts"]["theta_neon"]
        log.info("Neon round %d of %d (θ_r: %s)", k, rounds, round_cfg.model.get("checkpoint") or "pretrained")
        summary = run_neon(round_cfg)
        headlines.append({"round": k, "w": summary["w"], "budget_steps": summary["budget_steps"],
                          **{key: summary.get(key) for key in ROUND_FIGURES if key in summary}})
    summary = {**summary, "rounds": headlines}
    first, last = headlines[0], headlines[-1]
    if first.get("fid_base_heldout") is not None:  # the original θ_r against the last θ_neon, held out
        summary["gain_rounds_heldout"] = relative_gain(first["fid_base_heldout"], last["fid_neon_heldout"])
    if is_main():
        write_json(out / "summary.json", summary)
    return summary


# what `neon.rounds` keeps of each round: the held-out figures (FID and, for text, NLL) and the selection's
ROUND_FIGURES = ("fid_base", "fid_neon", "fid_base_heldout", "fid_neon_heldout", "gain_heldout", "nll_base_heldout",
                 "nll_neon_heldout")
