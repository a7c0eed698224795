"""Held-out reporting: every pick (w, budget, the control's w) is made on the selection seeds
(`metrics.seed_offset`); the picked θ_r, θ_neon and control are then scored again on a disjoint seed set
(`metrics.heldout_seed_offset`, `metrics.heldout_num_samples`), the figures a run reports. Picking the best of
several noisy scores on the seeds that then report it would flatter the gain."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from neon.core.errors import NeonError

if TYPE_CHECKING:
    from neon.stages.settings import MetricSettings


def seed_span(offset: int, num_samples: int, sets: int) -> tuple[int, int]:
    """[first, end) of the seeds `sets` consecutive sets of `num_samples` seeds from `offset` take."""
    return int(offset), int(offset) + int(num_samples) * int(sets)


def heldout_spans(metrics: MetricSettings, final_num_samples: int | None = None,
                  auto_proxy: tuple[int, int | None] | None = None) -> dict[str, tuple[int, int]] | None:
    """The seed spans of the selection, of neon.w=auto's proxy (`auto_proxy`: its seed offset and samples, where
    the search runs) and of the held-out set (task=search scores its pick at `final_num_samples`); None when
    held-out reporting is off (metrics.heldout_seed_offset null)."""
    m = metrics
    if m.heldout_seed_offset is None:
        return None
    sets, n = m.seed_sets, m.num_samples
    heldout_n = final_num_samples or m.heldout_num_samples or n
    spans = {"metrics.seed_offset": seed_span(m.seed_offset, n, sets)}
    if auto_proxy is not None:
        offset, samples = auto_proxy
        spans["neon.auto.seed_offset"] = seed_span(offset, samples or n, 1)
    spans["metrics.heldout_seed_offset"] = seed_span(m.heldout_seed_offset, heldout_n, sets)
    return spans


def check_heldout(metrics: MetricSettings, final_num_samples: int | None = None,
                  auto_proxy: tuple[int, int | None] | None = None) -> None:
    """The held-out seeds must not overlap the seeds any pick is made on (the selection's, and `auto_proxy`'s,
    as in `heldout_spans`): one line naming both, before any work."""
    spans = heldout_spans(metrics, final_num_samples, auto_proxy)
    if spans is None:
        return
    first, end = spans.pop("metrics.heldout_seed_offset")
    for key, (a, b) in spans.items():
        if a < end and first < b:
            raise NeonError(f"metrics.heldout_seed_offset={first} makes the held-out seeds {first}-{end - 1} overlap "
                            f"the seeds {key} picks on ({a}-{b - 1}): choose an offset of at least {b} or below "
                            f"{a - (end - first)}, so that no figure is reported on the seeds it was chosen on")


def heldout_figures(base: dict[str, Any], neon: dict[str, Any], control: dict[str, Any] | None) -> dict[str, Any]:
    """The held-out figures of θ_r, θ_neon and the control (scores as `Evaluator.score` returns them): FIDs, the
    relative gain θ_r → θ_neon and, over several seed sets, their standard deviations and the gain's 95%
    interval from the paired per-set gains."""
    out: dict[str, Any] = {
        "fid_base_heldout": base["fid"], "fid_neon_heldout": neon["fid"],
        "gain_heldout": relative_gain(base["fid"], neon["fid"]),
        "fid_control_heldout": None if control is None else control["fid"],
        "seeds_heldout": base["seeds"],
    }
    if "nll" in base:  # metrics.compute [nll]: θ's likelihood of the report half of the real held-out data
        out.update({"nll_base_heldout": base["nll"], "nll_neon_heldout": neon["nll"],
                    "nll_control_heldout": None if control is None else control["nll"],
                    "bpb_base_heldout": base["bpb"], "bpb_neon_heldout": neon["bpb"]})
    if "seed_sets" in base:  # metrics.seed_sets > 1: the spread over sets, and the gain's interval
        for name, score in (("base", base), ("neon", neon), ("control", control)):
            if score is not None:
                out[f"fid_{name}_heldout_sd"] = score["fid_sd"]
        gains = [relative_gain(b["fid"], n["fid"]) for b, n in zip(base["seed_sets"], neon["seed_sets"], strict=True)]
        out["gain_heldout_sets"] = gains
        out["gain_heldout_interval"] = mean_interval(gains)
    return out


def relative_gain(base: float, neon: float) -> float | None:
    """1 − neon / base: the fraction of θ_r's FID that θ_neon removes (None where base is 0 or not finite)."""
    if not (math.isfinite(base) and math.isfinite(neon)) or base == 0:
        return None
    return 1.0 - neon / base


def mean_interval(values: list[float | None]) -> list[float] | None:
    """The 95% Student-t interval of the mean of `values` (None with fewer than two finite values)."""
    from scipy.stats import t

    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return None
    n = len(finite)
    mean = sum(finite) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return [mean - half, mean + half]
