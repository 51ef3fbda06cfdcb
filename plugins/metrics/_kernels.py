"""Kernel two-sample distances between feature sets: KID and CMMD (no plugin classes here).

Both compare an N x D matrix of generated features with an M x D matrix of real ones
through the maximum mean discrepancy (MMD) of a kernel k::

    MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y)

- **KID** (Binkowski et al. 2018, "Demystifying MMD GANs"): the cubic polynomial kernel
  ``k(a, b) = (a.b / D + 1)^3`` and the *unbiased* estimate of MMD^2 on m x m subsets,
  averaged over random subsets. :func:`kid` is the estimator of clean-fid's
  ``kernel_distance`` and torch-fidelity's ``kid_features_to_metric`` (both from
  Binkowski's MMD-GAN code): the within-set sums drop the diagonal (divisor m(m - 1)),
  the cross-set sum keeps it (divisor m^2). Its value can be negative. For two
  identical sets it is not 0 but ``-(2/m) (mean_i k(x_i, x_i) - mean_{i!=j} k(x_i, x_j))``
  (the cross sum keeps the diagonal the within sums drop), a small negative number.
- **CMMD** (Jayasumana et al. 2024, "Rethinking FID"): the Gaussian RBF kernel
  ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``, sigma = 10, and 1000 x the *biased*
  (V-statistic) estimate that google-research/cmmd's ``distance.py`` computes: plain
  means over all pairs, diagonal terms k(x_i, x_i) = 1 included. It is >= 0, and 0 for
  identical sets.

All arithmetic is float64. The kernel matrices are dense: memory grows as the square of
the subset size (KID) or of the set sizes (CMMD).
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_feature_pair", "kid", "mmd2_unbiased", "polynomial_kernel", "rbf_mmd", "subset_indices"]


def check_feature_pair(x: np.ndarray, y: np.ndarray, min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as float64 matrices, checked to be 2-D, of one width, with ``min_rows`` rows each.

    :raises ValueError: naming the first check that fails.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"features must be N x D matrices, got shapes {x.shape} and {y.shape}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    if min(len(x), len(y)) < min_rows:
        raise ValueError(f"need at least {min_rows} rows in each feature set, got {len(x)} and {len(y)}")
    return x, y


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> np.ndarray:
    """Kernel matrix ``(x y^T * gamma + coef0)^degree`` (N x M); ``gamma`` defaults to 1 / D."""
    x, y = check_feature_pair(x, y)
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two m x D sets with the cubic polynomial kernel (one KID subset).

    Within-set kernel sums exclude the diagonal and divide by m(m - 1); the cross sum
    keeps it and divides by m^2, as torch-fidelity's ``mmd2(..., mmd_est="unbiased")``.
    """
    x, y = check_feature_pair(x, y, min_rows=2)
    if len(x) != len(y):
        raise ValueError(f"the KID subsets must have equal sizes, got {len(x)} and {len(y)}")
    m = len(x)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
    return float(within / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def subset_indices(
    n_fake: int, n_real: int, size: int, num_subsets: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``(fake rows, real rows)`` index pairs :func:`kid` averages over.

    Each pair draws ``size`` rows without replacement from each set, fake first, from one
    ``numpy.random.default_rng(seed)``; the same arguments give the same subsets.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(num_subsets):
        fake_rows = rng.choice(n_fake, size, replace=False)
        pairs.append((fake_rows, rng.choice(n_real, size, replace=False)))
    return pairs


def kid(
    fake: np.ndarray, real: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel inception distance of two feature sets: ``(mean, standard deviation)`` over subsets.

    Averages :func:`mmd2_unbiased` over ``num_subsets`` pairs of random subsets of
    ``m = min(subset_size, len(fake), len(real))`` rows each (see :func:`subset_indices`).
    The standard deviation is the population one (``np.std``, divisor ``num_subsets``), as
    torch-fidelity reports it. With ``m`` equal to both set sizes every subset is a
    permutation of the whole set, so every subset gives the same value and the s.d. is 0.

    :raises ValueError: for malformed features, fewer than 2 rows in a set, or
        ``num_subsets`` < 1.
    """
    fake, real = check_feature_pair(fake, real, min_rows=2)
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be at least 1, got {num_subsets}")
    if subset_size < 2:
        raise ValueError(f"subset_size must be at least 2, got {subset_size}")
    m = min(subset_size, len(fake), len(real))
    values = np.array(
        [mmd2_unbiased(fake[f], real[r]) for f, r in subset_indices(len(fake), len(real), m, num_subsets, seed)]
    )
    return float(values.mean()), float(values.std())


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``||x_i - y_j||^2`` (N x M) through the Gram matrix, rounding below 0 clipped."""
    sq = (x * x).sum(axis=1)[:, None] + (y * y).sum(axis=1)[None, :] - 2.0 * (x @ y.T)
    return np.clip(sq, 0.0, None)


def rbf_mmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD: ``scale * (mean k(x, x') + mean k(y, y') - 2 mean k(x, y))`` with the Gaussian RBF kernel.

    The means run over all pairs, the diagonal terms included, as in
    google-research/cmmd ``distance.mmd`` (the biased, minimum-variance estimator);
    the two sets may differ in size. Unlike KID it is never negative beyond rounding.

    :raises ValueError: for malformed features or ``sigma`` <= 0.
    """
    x, y = check_feature_pair(x, y)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    gamma = 1.0 / (2.0 * sigma**2)
    k_xx = np.exp(-gamma * _squared_distances(x, x)).mean()
    k_yy = np.exp(-gamma * _squared_distances(y, y)).mean()
    k_xy = np.exp(-gamma * _squared_distances(x, y)).mean()
    return float(scale * (k_xx + k_yy - 2.0 * k_xy))
