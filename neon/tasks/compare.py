"""`neon.compare=output`: the output-space twin of Neon scored beside weight-space Neon, on the same cached
θ_r and θ_s, the same w grid, sampler and seeds, with network evaluations and seconds per image of both."""

from __future__ import annotations

import math
from typing import Any

from hydra.utils import instantiate
from tqdm.auto import tqdm

from neon.analysis.output_twin import CountedNet, timed_generate
from neon.analysis.run_report import w_label
from neon.core.collectives import is_main
from neon.core.io import StateDict
from neon.merging.extrapolate import WSpec
from neon.stages.evaluator import Evaluator
from neon.stages.run import Run, log

TIMING_REPEATS = 3  # interleaved; the fastest of each is kept (the machine's load only ever adds time)


def timing(run: Run, evaluator: Evaluator, theta_neon: StateDict, theta_r: StateDict, theta_s: StateDict,
           w: float) -> dict[str, Any]:
    """Seconds and network evaluations per image of weight-space Neon (θ_neon) and of the twin at w, on one
    evaluation block of the metric's seeds, interleaved, fastest of TIMING_REPEATS each."""
    module = evaluator.module
    seeds = evaluator.seeds[:min(evaluator.num_samples, run.metrics.block_size)]
    sampler = instantiate(evaluator.sampler_cfg)
    twin = evaluator.twin(theta_r, theta_s, w)
    module.load_neon_weights(theta_neon, source="θ_neon")
    module.to(run.device).eval()
    single = CountedNet(module.own_sampling_net, module.twin_outputs)
    weight, output = [], []
    for _ in range(TIMING_REPEATS):
        weight.append(timed_generate(module, sampler, seeds, single))
        output.append(timed_generate(module, sampler, seeds, twin))
    return {"weight_space": {"seconds_per_image": min(s for s, _ in weight), "nfe_per_image": weight[0][1]},
            "output_space": {"seconds_per_image": min(s for s, _ in output), "nfe_per_image": output[0][1]},
            "images": len(seeds), "repeats": TIMING_REPEATS, "w": w, "device": str(run.device)}


def compare_output_space(run: Run, evaluator: Evaluator, theta_r: StateDict, theta_s: StateDict, ws: list[WSpec],
                         weight_fids: list[float], budget: int, merged, heldout: Evaluator | None = None,
                         weight_heldout: float | None = None) -> dict[str, Any]:
    """summary.json's `output_space`: the twin's FID at every w beside weight-space Neon's (`weight_fids`, same
    w), and both methods' network evaluations and seconds per image; `merged(w)` is θ_neon at w. With a
    `heldout` evaluator, the twin at its own pick is scored on the held-out seeds too, beside weight-space
    Neon's held-out figure `weight_heldout`: both picks were made on the selection seeds."""
    fids = []
    for w in tqdm(ws, desc="output-space twin", unit="w", disable=not is_main()):
        with run.stage("evaluate_output_space"):
            fids.append(evaluator.score_twin(theta_r, theta_s, float(w))["fid"])
        log.info("output-space twin w = %s: FID %.6g (weight space %.6g)", w_label(w), fids[-1],
                 weight_fids[len(fids) - 1])
    best = min(range(len(ws)), key=lambda i: fids[i])
    best_weight = min(range(len(ws)), key=lambda i: weight_fids[i])
    w_timed = float(ws[best_weight]) if ws[best_weight] != 0.0 else float(ws[best])
    with run.stage("evaluate_output_space"):
        times = timing(run, evaluator, merged(w_timed), theta_r, theta_s, w_timed)
    weight_best, output_best = weight_fids[best_weight], fids[best]
    return {
        "budget_steps": budget,
        "w_curve": [{"w": w_label(w), "fid": f, "fid_weight_space": g}
                    for w, f, g in zip(ws, fids, weight_fids, strict=True)],
        "fid_best": output_best,
        "w": ws[best],
        **times["output_space"],
        "weight_space": {"fid_best": weight_best, "w": ws[best_weight], **times["weight_space"]},
        "winner": "tie" if output_best == weight_best else ("output" if output_best < weight_best else "weight"),
        "relative_difference": (output_best - weight_best) / weight_best
        if weight_best and math.isfinite(weight_best) else None,
        "timing": {k: times[k] for k in ("images", "repeats", "w", "device")},
        **(twin_heldout(run, heldout, theta_r, theta_s, float(ws[best]), weight_heldout) if heldout else {}),
    }


def twin_heldout(run: Run, heldout: Evaluator, theta_r: StateDict, theta_s: StateDict, w: float,
                 weight_heldout: float | None) -> dict[str, Any]:
    """The twin at the w it picked on the selection seeds, scored on the held-out seeds, and its relative
    difference from weight-space Neon's held-out figure (negative: the twin is better)."""
    with run.stage("evaluate_output_space"):
        fid = heldout.score_twin(theta_r, theta_s, w)["fid"]
    log.info("output-space twin on the held-out seeds: FID %.6g at w = %s (weight space %s)", fid, w_label(w),
             "—" if weight_heldout is None else f"{weight_heldout:.6g}")
    return {"fid_heldout": fid,
            "relative_difference_heldout": (fid - weight_heldout) / weight_heldout
            if weight_heldout and math.isfinite(weight_heldout) else None}
