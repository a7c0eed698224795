"""Gaussian feature statistics and the Fréchet distance."""

from __future__ import annotations

import numpy as np

from neon.core.errors import NeonError

# Fréchet-distance metrics → the named feature they compare (an extractor output, a reference statistic)
FRECHET_METRICS = {"fid": "pool", "sfid": "spatial", "fd_dinov2": "dinov2"}


def statistic_keys(feature: str) -> tuple[str, str]:
    """The .npz keys of a feature's mean and covariance: `mu`/`sigma` (pool), ADM's `mu_s`/`sigma_s`
    (spatial), else `mu_<feature>`/`sigma_<feature>`."""
    suffix = {"pool": "", "spatial": "_s"}.get(feature, f"_{feature}")
    return f"mu{suffix}", f"sigma{suffix}"


def feature_statistics(features: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (N − 1) of features [N, D], in float64.

    Accumulated over row chunks (two passes: mean, then centred products), so 50K × 2048 float32
    features need one chunk in float64 beside them, not a float64 copy of all of them.
    """
    n, d = features.shape
    mu = np.zeros(d, np.float64)
    for i in range(0, n, chunk):
        mu += features[i:i + chunk].sum(axis=0, dtype=np.float64)
    mu /= n
    sigma = np.zeros((d, d), np.float64)
    for i in range(0, n, chunk):
        centred = features[i:i + chunk].astype(np.float64)
        centred -= mu
        sigma += centred.T @ centred
    return mu, sigma / max(n - 1, 1)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + tr(Σ1) + tr(Σ2) − 2·tr((Σ1Σ2)^½).

    tr((Σ1Σ2)^½) is the sum of square roots of the eigenvalues of Σ1Σ2 (as torch-fidelity computes it):
    no matrix square root, so near-singular covariances (fewer samples than features) stay finite.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise NeonError(f"the feature statistics differ in shape ({mu1.shape} vs {mu2.shape}, {sigma1.shape} vs "
                        f"{sigma2.shape}): metrics.reference was computed with another extractor than "
                        "metrics.extractor; use the reference of this extractor")
    if not (np.isfinite(mu1).all() and np.isfinite(sigma1).all()):
        return float("inf")  # a diverged model: no finite distance to report
    diff = mu1 - mu2
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)).real)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
