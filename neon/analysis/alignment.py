"""The anti-alignment diagnostic: the cosine, at θ_r, between the expected gradient of the family's loss on
real data and on the synthetic set S. The paper's theory: Neon helps when they are anti-aligned (cos < 0,
mode-seeking samplers) and cannot when they align (diversity-seeking samplers)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from neon.core.contract import Batch, NeonModule
from neon.core.errors import NeonError
from neon.core.seeding import StepNoise

# the t-quantile for a 95% interval from k block estimates (k − 1 degrees of freedom)
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 15: 2.13,
        20: 2.09, 30: 2.04}


def t95(dof: int) -> float:
    """The two-sided 95% Student-t quantile (table, normal beyond 30 degrees of freedom)."""
    if dof <= 0:
        return float("nan")
    keys = [k for k in sorted(_T95) if k >= dof]
    return _T95[keys[0]] if keys and dof <= 30 else 1.96


def parameter_groups(net: nn.Module, depth: int = 1, patterns: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Parameter names by group: the first `depth` components of the name, or the first matching regex
    of `patterns` ({group: regex}), 'other' for the rest."""
    groups: dict[str, list[str]] = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        if patterns:
            group = next((g for g, rx in patterns.items() if re.search(rx, name)), "other")
        else:
            group = ".".join(name.split(".")[:depth])
        groups.setdefault(group, []).append(name)
    return groups


@dataclass
class _Sums:
    real: dict[str, torch.Tensor]
    synthetic: dict[str, torch.Tensor]

    @classmethod
    def zeros(cls, params: dict[str, nn.Parameter]) -> "_Sums":
        z = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
        return cls(z, {n: t.clone() for n, t in z.items()})


def _cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: list[str],
            scale: dict[str, torch.Tensor] | None = None) -> float:
    dot = na = nb = 0.0
    for n in names:
        x, y = (a[n], b[n]) if scale is None else (a[n] * scale[n], b[n] * scale[n])
        dot += float((x * y).sum())
        na += float((x * x).sum())
        nb += float((y * y).sum())
    return dot / math.sqrt(na * nb) if na > 0 and nb > 0 else float("nan")


BETA2 = 0.999  # Adam's default, as in the paper's toy


def _sqrt_p(ema: dict[str, torch.Tensor], steps: int, eps: float) -> dict[str, torch.Tensor]:
    """√P per coordinate, P = 1/(√v̂ + eps) from the moving average after `steps` updates: scaling both
    gradients by √P turns the plain cosine into the P-weighted one."""
    correction = 1 - BETA2 ** steps
    return {n: (1.0 / ((v / correction).sqrt() + eps)).sqrt() for n, v in ema.items()}


def _grads(module: NeonModule, batch: Batch, noise: StepNoise, params: dict[str, nn.Parameter]
           ) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    module.loss(batch, noise).backward()
    return {n: (p.grad.detach().to(torch.float64) if p.grad is not None else torch.zeros_like(p, dtype=torch.float64))
            for n, p in params.items()}


def gradient_alignment(module: NeonModule, real: Iterator[Batch], synthetic: Iterator[Batch], num_batches: int,
                       blocks: int = 10, seed: int = 0, groups: Mapping[str, list[str]] | None = None,
                       eps: float = 1e-8) -> dict:
    """Estimate cos(E[∇L_real], E[∇L_S]) at the module's current weights from `num_batches` pairs of batches.

    Raw, and P-weighted as the paper's toy measures it: ⟨g_d, P g_s⟩ / (‖g_d‖_P ‖g_s‖_P) with Adam's diagonal
    P = 1/(√v̂ + eps), v̂ the bias-corrected β2 = 0.999 moving average of the squared real-data batch gradients.
    The batches are split into `blocks`; the 95% intervals are Student-t intervals over the blocks' cosines
    (which lean toward 0 when blocks are small: the interval tests the sign; a block's P is v̂ so far), the
    point values use all batches."""
    if num_batches < blocks or blocks < 2:
        raise NeonError(f"task.num_batches ({num_batches}) must be at least task.blocks ({blocks}), and blocks ≥ 2")
    module.train()
    params = {n: p for n, p in module.net.named_parameters() if p.requires_grad}
    groups = dict(groups or {"all": list(params)})
    groups.setdefault("all", list(params))
    total, square = _Sums.zeros(params), {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    block_cos: dict[str, list[float]] = {g: [] for g in groups}
    block_pre: dict[str, list[float]] = {g: [] for g in groups}
    per_block = num_batches // blocks
    for b in range(blocks):
        current = _Sums.zeros(params)
        for i in range(per_block):
            step = b * per_block + i
            xr, xs = next(real), next(synthetic)
            # independent training noise for the two sets: shared draws would correlate their gradient noise
            # and bias the cosine toward +1
            gr = _grads(module, xr, StepNoise.single(len(xr["x"]), seed, 2 * step, module.device), params)
            gs = _grads(module, xs, StepNoise.single(len(xs["x"]), seed, 2 * step + 1, module.device), params)
            for n in params:
                current.real[n] += gr[n]
                current.synthetic[n] += gs[n]
                square[n].mul_(BETA2).add_(gr[n] ** 2, alpha=1 - BETA2)
        for n in params:
            total.real[n] += current.real[n]
            total.synthetic[n] += current.synthetic[n]
        # a block's preconditioned cosine uses v from the batches so far (no block is kept: memory stays 5·|θ|)
        running = _sqrt_p(square, (b + 1) * per_block, eps)
        for g, names in groups.items():
            block_cos[g].append(_cosine(current.real, current.synthetic, names))
            block_pre[g].append(_cosine(current.real, current.synthetic, names, running))
    count = per_block * blocks
    precondition = _sqrt_p(square, count, eps)
    module.zero_grad(set_to_none=True)

    def interval(values: list[float]) -> list[float]:
        vals = [v for v in values if math.isfinite(v)]
        if len(vals) < 2:
            return [float("nan"), float("nan")]
        mean = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        half = t95(len(vals) - 1) * sd / math.sqrt(len(vals))
        return [mean - half, mean + half]

    table = {g: {"cosine": _cosine(total.real, total.synthetic, names),
                 "cosine_ci95": interval(block_cos[g]),
                 "cosine_preconditioned": _cosine(total.real, total.synthetic, names, precondition),
                 "cosine_preconditioned_ci95": interval(block_pre[g]),
                 "parameters": int(sum(params[n].numel() for n in names))}
             for g, names in groups.items()}
    overall = table.pop("all")
    return {**overall, "groups": table, "num_batches": count, "blocks": blocks}


def prediction(result: Mapping) -> str:
    """The plain-language reading of the preconditioned cosine's interval (the raw one when it is missing)."""
    low, high = result.get("cosine_preconditioned_ci95") or result["cosine_ci95"]
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = result["cosine_ci95"]
    if high < 0:
        return "anti-aligned: expect gains at w > 0"
    if low > 0:
        return "aligned: Neon will not help with this sampler (a negative w may; try a more mode-seeking sampler)"
    return "inconclusive: the interval contains 0 (use more batches, or expect a small effect)"
