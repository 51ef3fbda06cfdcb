"""The maths of KID, CMMD, PRDC and FID-infinity on feature matrices, against independent implementations.

KID is checked against clean-fid's ``kernel_distance`` and torch-fidelity's KID,
precision/recall/density/coverage against the ``prdc`` package by Naeem et al., CMMD
against the paper's formula written out with explicit loops, FID-infinity against the
analytic FID of Gaussian features. The peers draw their subsets with their own random
generators; with subsets as large as both sets every subset is a permutation of the
whole set, and the estimators are permutation-invariant, so all must agree exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cleanfid.fid import kernel_distance
from prdc import compute_prdc
from scipy.stats import linregress
from sklearn.metrics.pairwise import polynomial_kernel as sklearn_polynomial_kernel
from torch_fidelity.metric_kid import kernel_mmd, kid_features_to_metric

from plugins.metrics._fid_inf import default_sizes, fid_infinity, fit_inverse_n
from plugins.metrics._frechet import feature_stats, frechet_distance
from plugins.metrics._kernels import kid, polynomial_kernel, rbf_mmd, subset_indices
from plugins.metrics._prdc import prdc


def gaussian(n: int, d: int, shift: float = 0.0, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    return shift + scale * np.random.default_rng(seed).standard_normal((n, d))


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# --- KID -----------------------------------------------------------------------------


def test_polynomial_kernel_matches_sklearn() -> None:
    x, y = gaussian(7, 5, seed=1), gaussian(4, 5, seed=2)
    np.testing.assert_allclose(polynomial_kernel(x, y), sklearn_polynomial_kernel(x, y, degree=3, coef0=1), rtol=1e-12)
    np.testing.assert_allclose(
        polynomial_kernel(x, y, degree=2, gamma=0.3, coef0=0.5),
        sklearn_polynomial_kernel(x, y, degree=2, gamma=0.3, coef0=0.5),
        rtol=1e-12,
    )


def test_kid_on_whole_sets_equals_cleanfid_and_torch_fidelity() -> None:
    fake, real = gaussian(150, 32, shift=0.4, seed=1), gaussian(150, 32, seed=2)
    mean, std = kid(fake, real, num_subsets=3, subset_size=1000, seed=5)
    cleanfid_value = kernel_distance(fake, real, num_subsets=3, max_subset_size=1000)
    tf = kid_features_to_metric(
        torch.from_numpy(fake), torch.from_numpy(real), kid_subsets=3, kid_subset_size=150, verbose=False, rng_seed=0
    )
    assert mean > 0.1  # far from 0, so the relative check means something
    assert rel_err(mean, cleanfid_value) < 1e-6
    assert rel_err(mean, tf["kernel_inception_distance_mean"]) < 1e-6
    # Every subset is the whole set: both s.d.s are 0 up to rounding.
    assert std < 1e-9 * mean and tf["kernel_inception_distance_std"] < 1e-9 * mean


def test_kid_subset_values_and_std_equal_torch_fidelitys_mmd_on_the_same_subsets() -> None:
    fake, real = gaussian(120, 16, shift=0.3, seed=3), gaussian(150, 16, seed=4)
    mean, std = kid(fake, real, num_subsets=20, subset_size=40, seed=7)
    values = [kernel_mmd(fake[f], real[r]) for f, r in subset_indices(120, 150, 40, 20, seed=7)]
    assert std > 0.05 * abs(mean)  # the subsets differ, so the s.d. is a real check
    assert rel_err(mean, float(np.mean(values))) < 1e-6
    assert rel_err(std, float(np.std(values))) < 1e-6


def test_kid_of_two_draws_of_one_gaussian_is_within_three_sd_of_zero() -> None:
    fake, real = gaussian(600, 16, seed=10), gaussian(600, 16, seed=11)
    mean, std = kid(fake, real, num_subsets=50, subset_size=200)
    assert std > 0
    assert abs(mean) < 3 * std


def test_kid_of_identical_sets_is_the_diagonal_correction_not_zero() -> None:
    x = gaussian(80, 8, seed=12)
    m = len(x)
    k = (x @ x.T / x.shape[1] + 1.0) ** 3
    mean_diag = np.trace(k) / m
    mean_off = (k.sum() - np.trace(k)) / (m * (m - 1))
    expected = -(2.0 / m) * (mean_diag - mean_off)
    mean, _ = kid(x, x.copy(), num_subsets=2, subset_size=m)
    assert expected < 0
    assert rel_err(mean, expected) < 1e-9


def test_kid_of_very_different_sets_is_clearly_positive() -> None:
    mean, std = kid(gaussian(300, 16, shift=2.0, seed=13), gaussian(300, 16, seed=14), num_subsets=20, subset_size=100)
    assert mean > 1.0
    assert mean > 20 * std


# --- precision / recall / density / coverage ---------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_prdc_equals_the_prdc_package(k: int) -> None:
    real, fake = gaussian(200, 8, seed=20), gaussian(150, 8, shift=0.5, scale=1.3, seed=21)
    ours = prdc(real, fake, k=k)
    theirs = compute_prdc(real, fake, nearest_k=k)
    assert 0 < ours["precision"] < 1 and 0 < ours["recall"] < 1 and 0 < ours["coverage"] < 1
    for key in ("precision", "recall", "density", "coverage"):
        assert abs(ours[key] - float(theirs[key])) < 1e-6, key


def test_prdc_of_identical_sets_is_one() -> None:
    # Density too: each real ball strictly holds its centre and k - 1 neighbours, k points in all.
    x = gaussian(100, 6, seed=22)
    values = prdc(x, x.copy(), k=5)
    assert values == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}


def test_prdc_of_far_apart_sets_is_zero() -> None:
    values = prdc(gaussian(60, 6, seed=23), gaussian(50, 6, shift=100.0, seed=24), k=5)
    assert values == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


# --- CMMD ----------------------------------------------------------------------------------


def cmmd_by_loops(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """The paper's estimator written out: means of exp(-||a-b||^2 / (2 sigma^2)) over all pairs."""

    def mean_kernel(a: np.ndarray, b: np.ndarray) -> float:
        terms = [math.exp(-sum((p - q) ** 2 for p, q in zip(u, v)) / (2 * sigma**2)) for u in a for v in b]
        return math.fsum(terms) / len(terms)

    return scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y))


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "x, y",
    [
        (gaussian(40, 8, scale=5.0, seed=30), gaussian(30, 8, shift=1.0, scale=5.0, seed=31)),
        # CLIP embeddings are unit vectors: every kernel value is near 1 and the MMD is small.
        (unit_rows(gaussian(40, 16, seed=32)), unit_rows(gaussian(30, 16, shift=0.3, seed=33))),
    ],
    ids=["wide", "unit-norm"],
)
def test_cmmd_equals_the_formula_by_loops(x: np.ndarray, y: np.ndarray) -> None:
    expected = cmmd_by_loops(x, y)
    assert expected > 1e-3
    assert rel_err(rbf_mmd(x, y), expected) < 1e-9
    assert rel_err(rbf_mmd(x, y, sigma=3.0, scale=1.0), cmmd_by_loops(x, y, sigma=3.0, scale=1.0)) < 1e-9


def test_cmmd_of_identical_sets_is_zero_and_cmmd_is_symmetric() -> None:
    x, y = gaussian(50, 8, scale=4.0, seed=34), gaussian(60, 8, shift=0.5, scale=4.0, seed=35)
    assert abs(rbf_mmd(x, x.copy())) < 1e-9
    assert rel_err(rbf_mmd(y, x), rbf_mmd(x, y)) < 1e-12


# --- FID-infinity ----------------------------------------------------------------------------


def test_fit_inverse_n_recovers_an_exact_line_and_matches_scipy() -> None:
    sizes = np.array(default_sizes(500))
    a, b, stderr = fit_inverse_n(sizes, 3.0 + 40.0 / sizes)
    assert abs(a - 3.0) < 1e-9 and abs(b - 40.0) < 1e-6 and stderr < 1e-9
    noisy = 3.0 + 40.0 / sizes + np.random.default_rng(40).normal(0.0, 0.05, len(sizes))
    a, b, stderr = fit_inverse_n(sizes, noisy)
    reference = linregress(1.0 / sizes, noisy)
    assert rel_err(a, reference.intercept) < 1e-9 and rel_err(b, reference.slope) < 1e-9
    assert rel_err(stderr, reference.intercept_stderr) < 1e-9


def test_default_sizes_run_evenly_from_half_to_all() -> None:
    assert default_sizes(2000) == [int(s) for s in np.linspace(1000, 2000, 15)]
    assert default_sizes(4, num_points=3) == [2, 3, 4]
    assert default_sizes(100, num_points=5, min_size=10) == [10, 32, 55, 77, 100]


def test_fid_infinity_lands_closer_to_the_analytic_fid_than_fid_at_n() -> None:
    dim, n = 32, 2000
    variances, shift = np.linspace(0.5, 2.0, dim), np.full(dim, 0.05)
    analytic = shift @ shift + np.sum(1.0 + variances - 2.0 * np.sqrt(variances))  # vs N(0, I)
    mu_real, sigma_real = np.zeros(dim), np.eye(dim)
    errors_inf, errors_n = [], []
    for seed in range(5):
        fake = shift + np.sqrt(variances) * np.random.default_rng(seed).standard_normal((n, dim))
        result = fid_infinity(fake, mu_real, sigma_real, seed=seed)
        fid_n = frechet_distance(*feature_stats(fake), mu_real, sigma_real)
        assert result.stderr > 0
        assert result.sizes[-1] == n and len(result.fids) == 15
        assert rel_err(result.fids[-1], fid_n) < 1e-9  # the largest subset is the whole set
        errors_inf.append(abs(result.value - analytic))
        errors_n.append(abs(fid_n - analytic))
    assert sum(e_inf < e_n for e_inf, e_n in zip(errors_inf, errors_n)) >= 4
    assert np.mean(errors_inf) < 0.5 * np.mean(errors_n)


def test_fid_infinity_with_explicit_sizes_and_seed_is_reproducible() -> None:
    fake = gaussian(50, 4, shift=0.5, seed=41)
    first = fid_infinity(fake, np.zeros(4), np.eye(4), sizes=[10, 20, 30, 40, 50], seed=3)
    again = fid_infinity(fake, np.zeros(4), np.eye(4), sizes=[10, 20, 30, 40, 50], seed=3)
    other = fid_infinity(fake, np.zeros(4), np.eye(4), sizes=[10, 20, 30, 40, 50], seed=4)
    assert first == again and first.sizes == [10, 20, 30, 40, 50]
    assert first.fids[:-1] != other.fids[:-1]


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: kid(np.zeros(5), np.zeros((5, 2))), "N x D matrices"),
        (lambda: kid(np.zeros((5, 3)), np.zeros((5, 2))), "differ in dimension: 3 vs 2"),
        (lambda: kid(np.zeros((1, 2)), np.zeros((5, 2))), "at least 2 rows"),
        (lambda: kid(np.zeros((5, 2)), np.zeros((5, 2)), num_subsets=0), "num_subsets must be at least 1"),
        (lambda: rbf_mmd(np.zeros((3, 2)), np.zeros((3, 2)), sigma=0.0), "sigma must be positive"),
        (lambda: prdc(np.zeros((5, 2)), np.zeros((9, 2)), k=5), "at least 6 rows"),
        (lambda: prdc(np.zeros((9, 2)), np.zeros((9, 2)), k=0), "k must be at least 1"),
        (lambda: fid_infinity(np.zeros((3, 2)), np.zeros(2), np.eye(2)), "at least 4 generated samples"),
        (lambda: fid_infinity(np.zeros((8, 2)), np.zeros(3), np.eye(3)), "features have D = 2"),
        (lambda: fid_infinity(np.zeros((8, 2)), np.zeros(2), np.eye(2), sizes=[2, 4, 9]), r"lie in \[2, 8\]"),
        (lambda: fid_infinity(np.zeros((8, 2)), np.zeros(2), np.eye(2), min_size=8), "min_size must be"),
        (lambda: fit_inverse_n(np.array([5, 5, 5]), np.array([1.0, 2.0, 3.0])), "2 distinct subset sizes"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(call, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
