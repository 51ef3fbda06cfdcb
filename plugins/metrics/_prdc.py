"""Precision, recall, density and coverage of generated features (no plugin classes here).

k-nearest-neighbour estimates of how much of each distribution's support the other
covers (Kynkaanniemi et al. 2019, "Improved precision and recall metric"; Naeem et al.
2020, "Reliable fidelity and diversity metrics for generative models"). With real
features X (N rows), fake features Y (M rows), Euclidean distances d, and r_k(x) the
distance from a point to its k-th nearest neighbour within its own set (itself
excluded)::

    precision = 1/M sum_j [exists i: d(x_i, y_j) < r_k(x_i)]   fake inside the real manifold
    recall    = 1/N sum_i [exists j: d(x_i, y_j) < r_k(y_j)]   real inside the fake manifold
    density   = 1/(k M) sum_j sum_i [d(x_i, y_j) < r_k(x_i)]   how many real balls hold each fake
    coverage  = 1/N sum_i [min_j d(x_i, y_j) < r_k(x_i)]       real balls holding a fake

The comparisons are strict, as in the ``prdc`` package by Naeem et al., whose
``compute_prdc`` this follows (tests/test_feature_metrics_math.py checks agreement).
Precision, recall and coverage lie in [0, 1]; density can exceed 1. Distances are exact
(``scipy.spatial.distance.cdist``) and dense: memory grows as N x M.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from plugins.metrics._kernels import check_feature_pair

__all__ = ["kth_neighbour_radii", "prdc"]


def kth_neighbour_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row to its ``k``-th nearest other row (the point itself excluded)."""
    distances = cdist(features, features)
    # Column 0 of the sorted rows is the point itself (distance 0), so index k is the k-th neighbour.
    return np.partition(distances, k, axis=1)[:, k]


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """``precision``, ``recall``, ``density`` and ``coverage`` of ``fake`` against ``real`` (see the module doc).

    :raises ValueError: for malformed features, ``k`` < 1, or a set with k rows or fewer
        (a k-th neighbour other than the point itself is needed).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    real, fake = check_feature_pair(real, fake, min_rows=k + 1)
    real_radii = kth_neighbour_radii(real, k)
    fake_radii = kth_neighbour_radii(fake, k)
    distances = cdist(real, fake)  # N x M
    in_real_ball = distances < real_radii[:, None]
    return {
        "precision": float(in_real_ball.any(axis=0).mean()),
        "recall": float((distances < fake_radii[None, :]).any(axis=1).mean()),
        "density": float(in_real_ball.sum(axis=0).mean() / k),
        "coverage": float((distances.min(axis=1) < real_radii).mean()),
    }
