"""IMM's training loss (Inductive Moment Matching): for groups of M samples sharing times s ≤ r < t, the
Laplace-kernel MMD² between the student's jumps x_t → s and the stop-gradient target's jumps x_r → s,
weighted per group. Written from the reference fine-tune's settings (a = 2, b = 4, k = 12, M = 4)."""

from __future__ import annotations

import math

import torch

from neon.core.seeding import StepNoise
from neon.families.imm.network import IMMPrecond


def log_snr(t: torch.Tensor) -> torch.Tensor:
    """log SNR of the interpolant x_t = (1 − t)·x + t·ε: 2·(log(1 − t) − log t), in float64."""
    t = t.to(torch.float64)
    return 2 * ((1 - t).log() - t.log())


def eta(t: torch.Tensor) -> torch.Tensor:
    """η_t = σ_t/α_t = t/(1 − t), as exp(−½·logSNR) (the reference's way: its rounding)."""
    return (-0.5 * log_snr(t)).exp()


def eta_to_t(n: torch.Tensor) -> torch.Tensor:
    """t = η/(1 + η), with η = ∞ mapped to t = 1."""
    return torch.nan_to_num(n / (1 + n), nan=1.0)


def time_triples(u_t: torch.Tensor, u_s: torch.Tensor, T: float, eps: float, k: int,
                 min_gap: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, r, s) per group from two uniform draws: t ~ U(eps, T), s ~ U(eps, t), and r one 2^−k step of the
    η range below t (at most t − min_gap), never below s."""
    hi = float(eta(torch.tensor(T, dtype=torch.float64)))
    lo = float(eta(torch.tensor(eps, dtype=torch.float64)))
    lo_t = eta_to_t(torch.tensor(lo, dtype=torch.float64))
    t_draw = u_t * (eta_to_t(torch.tensor(hi, dtype=torch.float64)) - lo_t) + lo_t
    n_t = eta(t_draw)
    n_s = eta(u_s * (eta_to_t(n_t) - lo_t) + lo_t)
    n_s = torch.minimum(n_s, n_t).clamp(min=lo)
    n_r = (n_t - (hi - lo) * (1 / 2) ** k).clamp(min=lo, max=hi)
    t, r, s = eta_to_t(n_t), eta_to_t(n_r), eta_to_t(n_s)
    if min_gap is not None:
        r = torch.minimum(r, (t - min_gap).clamp(min=lo))
    return t, torch.maximum(r, s).clamp(min=eps), s


def group_weights(t: torch.Tensor, s: torch.Tensor, sigma_data: float, a: float, b: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel weight 1/(|t − s|·σ_d), group weight (1−t)^a/((1−t)² + t²) · ½·(−dlogSNR/dt) · sigmoid(b − logSNR))."""
    w = 1 / (t - s).abs() / sigma_data
    alpha = 1 - t
    neg_dlogsnr = -(-2 * (1 / (1 - t) / t))
    return w, alpha ** a / (alpha ** 2 + t ** 2) * 0.5 * neg_dlogsnr * (b - log_snr(t)).sigmoid()


def laplace_kernel(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """exp(−w·‖x_i − y_j‖/D/bandwidth) for every pair (i, j) inside each group: x, y [G, M, ...] → [G, M, M]."""
    sq = ((x.unsqueeze(2) - y.unsqueeze(1)) ** 2).flatten(3).sum(-1)
    dist = sq.clamp_min(1e-8).sqrt() / math.prod(y.shape[2:]) / bandwidth
    return torch.exp(-dist * w[:, None, None])


def mmd(student: torch.Tensor, target: torch.Tensor, w: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """The biased (V-statistic) MMD² per group, self-pairs included: [G, M, ...] → [G]."""
    same = laplace_kernel(student, student, w, bandwidth).mean((1, 2))
    target_same = laplace_kernel(target, target, w, bandwidth).mean((1, 2))
    cross = laplace_kernel(student, target, w, bandwidth).mean((1, 2))
    return same + target_same - 2 * cross


def imm_loss(net: IMMPrecond, y: torch.Tensor, labels: torch.Tensor, noise: StepNoise, group_size: int = 4,
             label_dropout: float = 0.1, a: float = 2.0, b: float = 4.0, k: int = 12,
             min_gap: float | None = 1e-4, bandwidth: float = 1.0) -> torch.Tensor:
    """The mean over groups of consecutive `group_size` rows of the weighted MMD² (batch: a multiple of
    group_size). Draws in the reference's order: t and s per group, label dropout, noise."""
    m = group_size
    # one draw per row; a group uses its first row's (groups never straddle processes: their batches are
    # multiples of the group size)
    u_t = noise.rand(dtype=torch.float64)[::m].to(y.device).view(-1, 1, 1, 1)
    u_s = noise.rand(dtype=torch.float64)[::m].to(y.device).view(-1, 1, 1, 1)
    t, r, s = (v.repeat_interleave(m, dim=0) for v in time_triples(u_t, u_s, net.T, net.eps, k, min_gap))
    dropped = torch.where(noise.rand().to(y.device) < label_dropout, net.num_classes, labels)
    eps = noise.randn(*y.shape[1:]).to(y) * net.sigma_data
    y_t, y_r = (1 - t) * y + t * eps, (1 - r) * y + r * eps  # float64, one ε for both
    student = net(y_t, t, s, dropped).view(-1, m, *y.shape[1:])
    with torch.no_grad():  # the target: the same weights, un-dropped labels
        target = net(y_r, r, s, labels).view(-1, m, *y.shape[1:])
    w, w_out = group_weights(t[::m].flatten(), s[::m].flatten(), net.sigma_data, a, b)
    loss = w_out * mmd(student, target, w, bandwidth)
    return torch.nan_to_num(loss).mean()
