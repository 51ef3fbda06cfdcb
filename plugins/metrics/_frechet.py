"""Frechet distance between two feature sets, each summarised as a Gaussian.

For features X_1 ~ N(mu_1, C_1) and X_2 ~ N(mu_2, C_2)::

    d^2 = ||mu_1 - mu_2||^2 + Tr(C_1 + C_2 - 2 (C_1 C_2)^(1/2))

``mu`` is the mean of the N x D feature matrix and ``C`` its unbiased covariance
(``np.cov(features, rowvar=False)``, divisor N - 1), as in clean-fid. The matrix square
root and its numerical safeguards (a 1e-6 ridge when the product is singular, dropping
a negligible imaginary part) are clean-fid's :func:`cleanfid.fid.frechet_distance`;
this module only computes the statistics and calls it, so every FID-like metric of the
project (``fid``, ``fid_digits``) shares one implementation.
"""

from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D) and unbiased covariance (D x D) of an N x D feature matrix, in float64.

    :raises ValueError: if ``features`` is not 2-D or has fewer than 2 rows (a
        covariance needs at least two samples).
    """
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"features must be an N x D matrix, got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"the Frechet distance needs at least 2 samples, got {feats.shape[0]}")
    mu = feats.mean(axis=0)
    sigma = np.cov(feats, rowvar=False)
    return mu, np.atleast_2d(sigma)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Frechet distance between N(mu1, s1) and N(mu2, s2) (clean-fid's implementation).

    Rounding can make the distance of two identical Gaussians a tiny negative number;
    it is clamped at 0 so that the value is a distance.
    """
    from cleanfid.fid import frechet_distance as _cleanfid_frechet_distance

    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    s1, s2 = np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(
            f"feature statistics differ in size: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}"
        )
    value = float(_cleanfid_frechet_distance(mu1, s1, mu2, s2))
    return max(value, 0.0)
