"""Many points of (budget, w, sampler setting): the reference search protocol (`task=search`), the pipeline's
`neon.w=auto` line search on a proxy FID (`task=report`: neon/tasks/report.py)."""

from __future__ import annotations

import re

from omegaconf import DictConfig

from neon.analysis.auto_w import choose_w
from neon.analysis.heldout import relative_gain
from neon.analysis.run_report import search_table, w_label, write_guidance_curve
from neon.core.collectives import is_main
from neon.core.errors import NeonError
from neon.core.io import StateDict, write_json
from neon.core.release_sampling import ReleaseSampling
from neon.stages.evaluator import Evaluator
from neon.stages.front import Front, build_front, validate
from neon.stages.run import Run, log


def search_auto_w(run: Run, front: Front, budgets: list[int]) -> dict:
    """`neon.w=auto`: the line search of `neon.auto` at every budget on the proxy FID; the best (B, w) and
    every proxy point, with the number of distinct proxy evaluations it cost."""
    a = run.neon.auto
    # the proxy's own seeds: the chosen w is then scored on seeds the search never saw (no selection bias)
    proxy = Evaluator(run, front.module, num_samples=a.num_samples, seed_offset=a.seed_offset)
    groups = a.groups
    # the rest ('default') is searched as one more group only if some parameter matches no group
    rest = bool(groups) and any(not any(re.search(rx, k) for rx in groups.values())
                                for k, t in front.theta_r.items() if t.is_floating_point())
    points: list[dict] = []
    digests: set[str] = set()
    chosen = {}
    for budget in budgets:
        theta_s = front.theta_s(budget)

        def score(w, theta_s: StateDict = theta_s, budget: int = budget) -> float:
            with run.stage("merge"):
                merged = front.merge.merged(theta_s, w)
            with run.stage("evaluate"):
                result = proxy.score(merged)
            digests.add(result["digest"])
            log.info("auto w, B=%d: w = %s → proxy FID %.6g", budget, w_label(w), result["fid"])
            return result["fid"]

        chosen[budget] = choose_w(score, a, points, label=f"B={budget} ", rest=rest)
        log.info("auto w at B=%d: w = %s, proxy FID %.6g", budget, w_label(chosen[budget][0]), chosen[budget][1])
    best = min(budgets, key=lambda b: chosen[b][1])
    return {"w": chosen[best][0], "budget_steps": best, "proxy_fid": chosen[best][1],
            "proxy_num_samples": proxy.num_samples, "proxy_seeds": proxy.trace()["seeds"],
            "evaluations": len(digests), "points": points}


def run_search(cfg: DictConfig) -> dict:
    """The reference search protocol in one process: a coarse grid over (budget snapshot, CFG, w) on a
    small-sample FID, each w-line stopped once FID exceeds its best by more than `task.tolerance`, then
    w ± `task.refine_step` around the best point, then a large-sample FID there. Every score is cached,
    so a killed search restarted with the same config redoes nothing it finished."""
    validate(cfg)
    run = Run.from_config(cfg)
    t = cfg.task
    ws, budgets = sorted(run.neon.numeric_ws("search")), list(run.neon.budgets)
    if any(not isinstance(w, float) for w in ws):
        raise NeonError("task=search sweeps scalar w: give neon.w as a list of numbers")
    cfg_values = list(t.cfg_values or []) if t.get("cfg_key") else [None]
    release = ReleaseSampling.from_config(cfg)  # sample.rng=release: every score seeded as the release seeds it
    front = build_front(run, budgets)
    loaded: dict[int, StateDict] = {}
    points: list[dict] = []

    heldout = run.metrics.heldout_seed_offset
    # the pick's final scores: on the held-out seeds where they are set (the figures to report), else on the
    # search's own seeds at task.final_num_samples
    final_n = t.get("final_num_samples") or (run.metrics.heldout_num_samples if heldout is not None else None)
    final = {"num_samples": final_n, "seed_offset": heldout} if final_n or heldout is not None else None

    def score(budget: int, cfg_value, w: float, num_samples: int | None = None, seed_offset: int | None = None) -> float:
        overrides = {t.cfg_key: cfg_value} if cfg_value is not None else None
        evaluator = Evaluator(run, front.module, num_samples=num_samples, sampler_overrides=overrides, release=release,
                              seed_offset=seed_offset)
        if budget not in loaded:
            loaded[budget] = front.theta_s(budget)
        with run.stage("evaluate"):
            result = evaluator.score(front.merge.merged(loaded[budget], w))
        points.append({"budget_steps": budget, "cfg": cfg_value, "w": w, "fid": result["fid"],
                       "num_samples": evaluator.num_samples, "seeds": f"{evaluator.seeds[0]}-{evaluator.seeds[-1]}"})
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
    fid_final = score(b, c, w, **final) if final else fid_small
    fid_base = score(b, c, 0.0, **final) if final else score(b, c, 0.0)
    summary = {"task": "search", "fid_base": fid_base, "fid_neon": fid_final, "fid_search": fid_small, "w": w,
               "budget_steps": b, "cfg_key": t.get("cfg_key"), "cfg": c, "points": points,
               "tolerance": float(t.tolerance), "theta_r": str(front.base_path),
               "rng": release.key() if release else "per_seed", "seconds": run.seconds}
    if t.get("cfg_key"):
        # the fair base: θ_r tuned over the same guidance values by the same rule (best small-sample FID, then
        # the final size there), so θ_neon's gain is not partly a better guidance scale (w = 0 is θ_r itself:
        # every budget's point is the same cached score)
        base_curve = {value: score(b, value, 0.0) for value in cfg_values}
        c_base = min(cfg_values, key=lambda value: base_curve[value])
        summary.update({
            "fid_base_tuned": score(b, c_base, 0.0, **final) if final else base_curve[c_base],
            "cfg_base_tuned": c_base,
            "base_cfg_curve": [{"cfg": value, "fid": base_curve[value]} for value in cfg_values],
            "neon_cfg_curve": [{"cfg": value, "fid": min(f for (_, cv, _), f in coarse.items() if cv == value)}
                               for value in cfg_values],
        })
    if heldout is not None:  # fid_neon, fid_base and fid_base_tuned above are the held-out figures
        summary.update({"fid_base_heldout": fid_base, "fid_neon_heldout": fid_final,
                        "gain_heldout": relative_gain(fid_base, fid_final), "seeds_heldout": points[-1]["seeds"],
                        "seeds_selection": points[0]["seeds"]})
        if "fid_base_tuned" in summary:
            summary["fid_base_tuned_heldout"] = summary["fid_base_tuned"]
    if is_main():
        write_json(run.out / "search.json", {"points": points, "chosen": {"budget_steps": b, "cfg": c, "w": w}})
        write_json(run.out / "summary.json", summary)
        if t.get("cfg_key"):
            write_guidance_curve(run.out, summary)
        print(search_table(summary), flush=True)
    log.info("search: best B=%d cfg=%s w=%g: FID %.6g (search) / %.6g (final), θ_r %.6g", b, c, w, fid_small,
             fid_final, fid_base)
    return summary
