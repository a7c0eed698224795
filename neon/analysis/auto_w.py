"""`neon.w=auto`: choose w (and, on request, one w per parameter group) by a bracketing line search on a
proxy score — a small-sample FID by default — instead of a full grid of full-size evaluations."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from neon.merging.extrapolate import WSpec

if TYPE_CHECKING:
    from neon.stages.settings import AutoSettings

Score = Callable[[float], float]


def memoised(score: Score, points: list[dict], label: str) -> Score:
    """`score` evaluated once per w (rounded to 1e-6); every evaluation appended to `points`."""
    seen: dict[float, float] = {}

    def f(w: float) -> float:
        w = round(float(w), 6)
        if w not in seen:
            seen[w] = float(score(w))
            points.append({"search": label, "w": w, "score": seen[w]})
        return seen[w]

    return f


def refine(f: Score, a: float, b: float, c: float, tol: float) -> float:
    """Shrink a bracket a ≤ b ≤ c with f(b) ≤ f(a), f(c) by probing the middle of its larger side, until it is
    narrower than `tol`; returns the best point seen."""
    while c - a > tol:
        x = (a + b) / 2 if b - a >= c - b else (b + c) / 2
        if round(x, 6) in (round(a, 6), round(b, 6), round(c, 6)):
            break  # the bracket is below the 1e-6 grid the scores are memoised on
        if f(x) < f(b):
            a, b, c = (a, x, b) if x < b else (b, x, c)
        elif x < b:
            a = x
        else:
            c = x
    return b


def line_search(f: Score, start: float, step: float, lo: float, hi: float, tol: float) -> float:
    """The w in [lo, hi] at a local minimum of f near `start`: walk downhill from `start` with doubling steps
    until f rises (or a bound is reached), then refine the bracket to `tol`."""
    clamp = lambda w: min(max(w, lo), hi)  # noqa: E731
    b = clamp(start)
    up, down = clamp(b + step), clamp(b - step)
    if up != b and f(up) < f(b):
        direction, c = 1.0, up
    elif down != b and f(down) < f(b):
        direction, c = -1.0, down
    else:  # start is already the lowest of the three: the minimum is within one step of it
        return refine(f, down, b, up, tol)
    while True:  # b is behind c, c is the best so far; double the step until f rises
        nxt = clamp(c + direction * 2 * abs(c - b))
        if nxt == c:  # at a bound: the minimum lies between b and the bound
            return refine(f, b, c, c, tol) if direction > 0 else refine(f, c, c, b, tol)
        if f(nxt) >= f(c):
            a_, c_ = sorted((b, nxt))
            return refine(f, a_, c, c_, tol)
        b, c = c, nxt


def choose_w(score: Callable[[WSpec], float], auto: AutoSettings, points: list[dict], label: str = "",
             rest: bool = True) -> tuple[WSpec, float]:
    """The scalar w minimising `score`, then (with `auto.groups` = {name: regex}) each group's coefficient in
    turn, and the rest's ('default') when `rest`, for `auto.rounds` rounds, the others held; returns
    (w or {regex: w, ..., 'default': w}, its score)."""
    lo, hi, step, tol, groups = auto.w_min, auto.w_max, auto.step, auto.tolerance, auto.groups
    scalar = memoised(score, points, f"{label}scalar")
    w = line_search(scalar, auto.start, step, lo, hi, tol)
    best_score = scalar(w)
    if not groups:
        return w, best_score
    spec = {rx: w for rx in groups.values()}
    spec["default"] = w
    coordinates = {**groups, **({"rest": "default"} if rest else {})}
    for r in range(auto.rounds):
        for name, rx in coordinates.items():
            def with_group(v: float, rx=rx) -> float:
                return score({**spec, rx: v})
            f = memoised(with_group, points, f"{label}{name} (round {r + 1})")
            spec[rx] = line_search(f, spec[rx], step / 2, lo, hi, tol)
            best_score = f(spec[rx])
    return dict(spec), best_score
