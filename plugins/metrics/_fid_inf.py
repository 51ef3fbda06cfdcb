"""FID-infinity: the Frechet distance extrapolated to infinitely many samples (no plugin classes here).

FID computed from n generated samples is biased upwards, and to first order the bias is
linear in 1/n: E[FID_n] ~ FID_inf + b / n (Chong and Forsyth 2020, "Effectively Unbiased
FID and Inception Score and where to find them"). Following the paper's code
(github.com/mchong6/FID_IS_infinity, ``calculate_FID_infinity``), :func:`fid_infinity`

1. takes ``num_points`` subset sizes evenly spaced in n (``np.linspace(min_size, N,
   num_points)`` cast to int; repeated sizes are kept, each with its own subset),
2. for each size draws a random subset of the N generated features without
   replacement and computes its FID against the fixed real statistics with
   :func:`plugins.metrics._frechet.frechet_distance` (statistics by
   :func:`~plugins.metrics._frechet.feature_stats`),
3. fits FID = a + b / n by ordinary least squares (:func:`fit_inverse_n`) and reports the
   intercept a with its OLS standard error.

Defaults chosen here (the paper's code has 50,000 samples and starts at 5,000, N/10, or
at 50 in its path variant): ``min_size = max(2, N // 2)``. The 1/n expansion holds only
for n well above the feature dimension D, and diffbench's sample counts (64 to a few
thousand) are often a small multiple of D, so the smallest subsets must stay large. On
Gaussian features with a known FID (30 seeds each; mean signed error of FID-infinity,
then of FID at N): starting at N/2 gave -0.40 vs +4.9 at D = 64, N = 256, where N/5
gave -2.1 and N/10 -1.9; -0.03 vs +1.33 at D = 32, N = 256 (N/5: -0.13, N/10: -0.63);
at N = 2000, D = 16 or 32, every start from N/10 to N/2 did equally well. When N is not
several times D no choice rescues the extrapolation: expect it to overshoot below the
true FID. Each point costs one Frechet distance (O(D^3); ~4 s at D = 2048).

With the real statistics fixed, only the fake side's bias is removed: the reference
statistics should come from many samples. The value is not clamped: an extrapolated FID
near 0 can be negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plugins.metrics._frechet import feature_stats, frechet_distance

__all__ = ["FIDInfinity", "default_sizes", "fid_infinity", "fit_inverse_n"]


@dataclass
class FIDInfinity:
    """The extrapolated FID, its standard error, and the (size, FID) points of the fit."""

    value: float
    stderr: float
    sizes: list[int]
    fids: list[float]


def fit_inverse_n(sizes: np.ndarray, fids: np.ndarray) -> tuple[float, float, float]:
    """``(a, b, stderr of a)`` of the ordinary least-squares fit ``fid = a + b / n``.

    The standard error is the textbook one, ``s * sqrt(1/k + mean(x)^2 / Sxx)`` with
    x = 1/n, k points and residual variance s^2 = RSS / (k - 2).

    :raises ValueError: with fewer than 3 points or fewer than 2 distinct sizes.
    """
    x = 1.0 / np.asarray(sizes, dtype=np.float64)
    y = np.asarray(fids, dtype=np.float64)
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"the 1/n fit needs at least 3 (size, FID) points, got {len(x)} sizes and {len(y)} FIDs")
    if len(np.unique(x)) < 2:
        raise ValueError("the 1/n fit needs at least 2 distinct subset sizes")
    sxx = ((x - x.mean()) ** 2).sum()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * x.mean())
    residual_var = ((y - intercept - slope * x) ** 2).sum() / (len(x) - 2)
    stderr = float(np.sqrt(residual_var * (1.0 / len(x) + x.mean() ** 2 / sxx)))
    return intercept, slope, stderr


def default_sizes(n: int, num_points: int = 15, min_size: int | None = None) -> list[int]:
    """Subset sizes ``np.linspace(min_size, n, num_points)`` cast to int (``min_size``: ``max(2, n // 2)``)."""
    if min_size is None:
        min_size = max(2, n // 2)
    if not 2 <= min_size < n:
        raise ValueError(f"min_size must be at least 2 and below the {n} samples, got {min_size}")
    return [int(s) for s in np.linspace(min_size, n, num_points).astype(np.int64)]


def fid_infinity(
    fake: np.ndarray,
    mu_real: np.ndarray,
    sigma_real: np.ndarray,
    sizes: list[int] | None = None,
    num_points: int = 15,
    min_size: int | None = None,
    seed: int = 0,
) -> FIDInfinity:
    """FID of ``fake`` against N(mu_real, sigma_real), extrapolated to n -> infinity (see the module doc).

    ``sizes`` overrides the evenly spaced default (:func:`default_sizes`); each size must
    lie in [2, N]. Subsets come from ``numpy.random.default_rng(seed)``.

    :raises ValueError: for a fake matrix that is not 2-D or has fewer than 4 rows,
        real statistics of another dimension, sizes out of range, or too few points.
    """
    fake = np.asarray(fake, dtype=np.float64)
    if fake.ndim != 2:
        raise ValueError(f"fake features must be an N x D matrix, got shape {fake.shape}")
    n = len(fake)
    if n < 4:
        raise ValueError(f"FID-infinity needs at least 4 generated samples, got {n}")
    if np.shape(mu_real) != (fake.shape[1],) or np.shape(sigma_real) != (fake.shape[1],) * 2:
        shapes = f"{np.shape(mu_real)} and {np.shape(sigma_real)}"
        raise ValueError(f"real statistics have shapes {shapes}, features have D = {fake.shape[1]}")
    if num_points < 3:
        raise ValueError(f"num_points must be at least 3, got {num_points}")
    sizes = default_sizes(n, num_points, min_size) if sizes is None else [int(s) for s in sizes]
    if any(not 2 <= s <= n for s in sizes):
        raise ValueError(f"subset sizes must lie in [2, {n}], got {sizes}")
    rng = np.random.default_rng(seed)
    fids = []
    for size in sizes:
        mu, sigma = feature_stats(fake[rng.choice(n, size, replace=False)])
        fids.append(frechet_distance(mu, sigma, mu_real, sigma_real))
    value, _, stderr = fit_inverse_n(np.array(sizes), np.array(fids))
    return FIDInfinity(value=value, stderr=stderr, sizes=sizes, fids=fids)
