"""Tensor maths of the trajectory and distillation metrics (no plugin classes here).

Conventions shared by every function:

- A trajectory is a tensor ``(K+1) x N x ...`` of sampler states x_K .. x_0 for N
  samples (index 0 is the initial noise, index K the final sample). Step k (k = 0 ..
  K-1) goes from state k to state k+1; its displacement is d_k = x[k+1] - x[k].
- "Per step" values have length K. Step-based quantities (lengths, directions) use the
  displacement d_k; state-based quantities (MSE, distributions, PCA) use the state the
  step *produced*, x[k+1]. So the last per-step value is always about the final
  samples, and the shared initial noise (identical by the paired design) never enters.
- States are flattened per sample (``N x D``); sums and means accumulate in float64.
- Everything is batched over samples and steps (no Python loops over either).

The plugins in :mod:`plugins.metrics.trajectory`, :mod:`plugins.metrics.noise_prediction`
and :mod:`plugins.metrics.dimensionality` turn these into result rows; the definitions
are also written out in ``docs/metrics.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Stepwise",
    "check_pair",
    "directional_consistency",
    "distribution_similarity",
    "effective_dim",
    "flatten_states",
    "participation_ratio",
    "path_length_similarity",
    "pca_spectrum",
    "prediction_cosine",
    "prediction_mse",
    "random_directions",
    "sliced_wasserstein",
    "step_lengths",
    "step_rows",
    "stepwise_rows",
    "trajectory_mse",
    "wasserstein_1d",
]


@dataclass(frozen=True)
class Stepwise:
    """A metric's overall value and its per-step values (float64, length K)."""

    overall: float
    per_step: torch.Tensor


# ---------------------------------------------------------------------------- helpers


def flatten_states(traj: torch.Tensor) -> torch.Tensor:
    """``(K+1) x N x C x H x W`` -> ``(K+1) x N x D`` (a view where possible)."""
    if traj.dim() < 3:
        raise ValueError(f"a trajectory needs at least 3 dims ((K+1) x N x ...), got shape {tuple(traj.shape)}")
    return traj.reshape(traj.shape[0], traj.shape[1], -1)


def check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Raise ``ValueError`` unless the two trajectories can be compared state by state."""
    if tuple(student.shape) != tuple(teacher.shape):
        raise ValueError(
            f"trajectories differ in shape: {tuple(student.shape)} (model) vs {tuple(teacher.shape)} (reference); "
            "trajectory metrics need the same sampler, steps and number of samples"
        )
    if student.shape[0] < 2:
        raise ValueError(f"a trajectory needs at least 2 states (1 step), got {student.shape[0]}")


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0 / 0 := 1 (two equal zero quantities are identical)."""
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.ones_like(num))


def step_lengths(traj: torch.Tensor) -> torch.Tensor:
    """Euclidean lengths of the steps, ``K x N`` (float64).

    l_k(n) = || x_{k+1}(n) - x_k(n) ||_2 over the flattened sample.
    """
    x = flatten_states(traj)
    return torch.linalg.vector_norm((x[1:] - x[:-1]).double(), dim=-1)


# ---------------------------------------------------------------------------- trajectory pair


def path_length_similarity(student: torch.Tensor, teacher: torch.Tensor) -> Stepwise:
    """Ratio of the student's and teacher's path lengths, in [0, 1].

    L(n) = sum_k l_k(n) with l_k(n) = ||x_{k+1}(n) - x_k(n)||.
    overall = mean_n  min(L_s(n), L_t(n)) / max(L_s(n), L_t(n))   (mean of per-sample ratios)
    per_step[k] = mean_n  min(l^s_k(n), l^t_k(n)) / max(l^s_k(n), l^t_k(n))
    with 0 / 0 := 1. 1 means equal lengths, 0 that exactly one path has length 0; the direction is ignored.
    """
    check_pair(student, teacher)
    ls, lt = step_lengths(student), step_lengths(teacher)
    per_step = _safe_ratio(torch.minimum(ls, lt), torch.maximum(ls, lt)).mean(dim=1)
    big_s, big_t = ls.sum(dim=0), lt.sum(dim=0)
    overall = _safe_ratio(torch.minimum(big_s, big_t), torch.maximum(big_s, big_t)).mean()
    return Stepwise(float(overall), per_step)


def trajectory_mse(student: torch.Tensor, teacher: torch.Tensor) -> Stepwise:
    """Mean squared difference of the states the two samplers produce, >= 0.

    per_step[k] = mean_{n, pixels} (x^s_{k+1} - x^t_{k+1})^2   (the state step k produced)
    overall = mean_k per_step[k] = mean over steps and pixels.
    The initial state x_K (the shared noise) is excluded: it is identical by design.
    """
    check_pair(student, teacher)
    s, t = flatten_states(student)[1:], flatten_states(teacher)[1:]
    per_step = (s.double() - t.double()).square().mean(dim=(1, 2))
    return Stepwise(float(per_step.mean()), per_step)


def directional_consistency(student: torch.Tensor, teacher: torch.Tensor) -> Stepwise:
    """Mean cosine between the student's and teacher's step directions, in [-1, 1].

    c_k(n) = <d^s_k(n), d^t_k(n)> / (||d^s_k(n)|| ||d^t_k(n)||), d_k = x_{k+1} - x_k flattened;
    c := 1 when both steps are zero and 0 when exactly one is.
    per_step[k] = mean_n c_k(n); overall = mean_{k, n} c_k(n).
    """
    check_pair(student, teacher)
    s, t = flatten_states(student).double(), flatten_states(teacher).double()
    ds, dt = s[1:] - s[:-1], t[1:] - t[:-1]
    dot = (ds * dt).sum(dim=-1)
    ns, nt = torch.linalg.vector_norm(ds, dim=-1), torch.linalg.vector_norm(dt, dim=-1)
    den = ns * nt
    cos = torch.where(den > 0, dot / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(dot))
    cos = torch.where((ns == 0) & (nt == 0), torch.ones_like(cos), cos).clamp(-1.0, 1.0)
    per_step = cos.mean(dim=1)
    return Stepwise(float(cos.mean()), per_step)


# ---------------------------------------------------------------------------- distributions


def random_directions(dim: int, num: int, generator: torch.Generator | None) -> torch.Tensor:
    """``num`` random unit vectors in R^dim, as the columns of a ``dim x num`` float64 matrix.

    Gaussian vectors normalised to unit length are uniform on the sphere. Drawn on the CPU
    from ``generator``, so the same seed gives the same directions on any device.
    """
    if num < 1:
        raise ValueError(f"need at least one projection, got {num}")
    g = torch.randn(dim, num, generator=generator, dtype=torch.float64)
    return g / torch.linalg.vector_norm(g, dim=0, keepdim=True).clamp_min(1e-300)


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact Wasserstein-1 distance between 1-D empirical distributions, batched.

    ``u``: ``... x N_u``, ``v``: ``... x N_v`` (equal leading dims; sizes may differ).
    W1 = integral |F_u(z) - F_v(z)| dz, evaluated exactly on the merged sorted support
    (for N_u = N_v this equals mean_i |u_(i) - v_(i)| of the sorted values).
    """
    u, v = u.double(), v.double()
    su, _ = torch.sort(u, dim=-1)
    sv, _ = torch.sort(v, dim=-1)
    allv, _ = torch.sort(torch.cat([su, sv], dim=-1), dim=-1)
    left = allv[..., :-1].contiguous()
    widths = allv[..., 1:] - allv[..., :-1]
    cdf_u = torch.searchsorted(su.contiguous(), left, right=True).double() / u.shape[-1]
    cdf_v = torch.searchsorted(sv.contiguous(), left, right=True).double() / v.shape[-1]
    return ((cdf_u - cdf_v).abs() * widths).sum(dim=-1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Sliced Wasserstein-1 distance between two point sets, batched over leading dims.

    ``a``: ``... x N_a x D``, ``b``: ``... x N_b x D``, ``directions``: ``D x P`` unit columns.
    SW_1(a, b) = (1 / P) sum_p W1(<a, theta_p>, <b, theta_p>), a Monte-Carlo estimate of
    the average over the unit sphere. Returns a float64 tensor of shape ``...``.
    """
    if a.shape[-1] != directions.shape[0] or b.shape[-1] != directions.shape[0]:
        raise ValueError(
            f"dimension mismatch: points have D={a.shape[-1]} and {b.shape[-1]}, directions {directions.shape[0]}"
        )
    pa = (a.double() @ directions).transpose(-1, -2)  # ... x P x N_a
    pb = (b.double() @ directions).transpose(-1, -2)
    return wasserstein_1d(pa, pb).mean(dim=-1)


def distribution_similarity(
    student: torch.Tensor, teacher: torch.Tensor, projections: int, generator: torch.Generator | None
) -> Stepwise:
    """exp(-SW_1) between the student's and the teacher's sets of states, in (0, 1].

    per_step[k] = exp(-SW_1({x^s_{k+1}(n)}_n, {x^t_{k+1}(n)}_n)), one set of ``projections``
    random unit directions (from ``generator``) shared by all steps;
    overall = per_step[K-1], the final samples x_0. Unpaired: it compares the two sets as
    distributions, so it ignores which student sample goes with which teacher sample.
    """
    if student.shape[0] < 2 or teacher.shape[0] != student.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            f"trajectories not comparable: {tuple(student.shape)} (model) vs {tuple(teacher.shape)} (reference)"
        )
    s, t = flatten_states(student)[1:], flatten_states(teacher)[1:]
    directions = random_directions(s.shape[-1], projections, generator)
    per_step = torch.exp(-sliced_wasserstein(s, t, directions))
    return Stepwise(float(per_step[-1]), per_step)


# ---------------------------------------------------------------------------- noise prediction


def prediction_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error, ``N`` (float64): mean_pixels (pred - target)^2."""
    return (pred.double() - target.double()).reshape(pred.shape[0], -1).square().mean(dim=1)


def prediction_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine of two flattened predictions, ``N`` (float64), in [-1, 1].

    cos(n) = <a(n), b(n)> / (||a(n)|| ||b(n)||); 1 when both are zero, 0 when one is.
    """
    a2, b2 = a.double().reshape(a.shape[0], -1), b.double().reshape(b.shape[0], -1)
    na, nb = torch.linalg.vector_norm(a2, dim=1), torch.linalg.vector_norm(b2, dim=1)
    den = na * nb
    cos = torch.where(den > 0, (a2 * b2).sum(dim=1) / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(na))
    return torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos).clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------- dimensionality


def pca_spectrum(x: torch.Tensor) -> torch.Tensor:
    """PCA eigenvalues (descending, float64) of the rows of ``x``, batched.

    ``x``: ``... x N x D`` (N points in R^D). lambda_i are the eigenvalues of the sample
    covariance X_c^T X_c / (N - 1), X_c the centred data; computed from the smaller of the
    two Gram matrices (X_c X_c^T when N <= D), which have the same non-zero eigenvalues
    and are much cheaper to diagonalise than an SVD of X_c. Returns ``... x min(N, D)``.
    """
    n, d = x.shape[-2], x.shape[-1]
    if n < 2:
        raise ValueError(f"PCA needs at least 2 points, got {n}")
    xc = x.double() - x.double().mean(dim=-2, keepdim=True)
    gram = xc @ xc.transpose(-1, -2) if n <= d else xc.transpose(-1, -2) @ xc
    # rounding can leave tiny negative eigenvalues of a PSD matrix
    return torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0) / (n - 1)


def effective_dim(spectrum: torch.Tensor, threshold: float = 0.95) -> torch.Tensor:
    """Number of leading principal components that explain ``threshold`` of the variance.

    effective_dim = min { k : sum_{i<=k} lambda_i / sum_i lambda_i >= threshold }
    (eigenvalues descending); 0 for a spectrum with no variance. Long tensor of shape ``...``.
    """
    total = spectrum.sum(dim=-1, keepdim=True)
    frac = spectrum.cumsum(dim=-1) / total.clamp_min(torch.finfo(spectrum.dtype).tiny)
    # tolerance so that exactly-k-dimensional data gives k despite rounding
    k = (frac < threshold - 1e-9).sum(dim=-1) + 1
    return torch.where(total.squeeze(-1) > 0, k, torch.zeros_like(k))


def participation_ratio(spectrum: torch.Tensor) -> torch.Tensor:
    """(sum_i lambda_i)^2 / sum_i lambda_i^2, float64 of shape ``...``; 0 with no variance.

    Between 1 (one direction holds all variance) and the number of dimensions (isotropic).
    """
    s = spectrum.double()
    den = s.square().sum(dim=-1)
    ratio = s.sum(dim=-1).square() / den.clamp_min(torch.finfo(s.dtype).tiny)
    return torch.where(den > 0, ratio, torch.zeros_like(den))


# ---------------------------------------------------------------------------- result rows


def step_rows(name: str, per_step: torch.Tensor | list[float], timesteps: list[int] | None) -> list[dict[str, Any]]:
    """One ``{"metric": name + "_t", "value": v_k, "timestep": t_k}`` row per step.

    ``timesteps`` are training timesteps, one per step, in the order of ``per_step``.
    """
    values = [float(v) for v in per_step]
    if timesteps is None or len(timesteps) != len(values):
        got = "none" if timesteps is None else str(len(timesteps))
        raise ValueError(f"{name}: need one timestep per step ({len(values)} steps), got {got}")
    return [{"metric": f"{name}_t", "value": v, "timestep": int(t)} for v, t in zip(values, timesteps)]


def stepwise_rows(
    name: str, overall: float, per_step: torch.Tensor | list[float] | None, timesteps: list[int] | None
) -> list[dict[str, Any]]:
    """The overall row ``{"metric": name, "value": overall}``, then :func:`step_rows` unless
    ``per_step`` is None."""
    rows: list[dict[str, Any]] = [{"metric": name, "value": float(overall)}]
    if per_step is not None:
        rows.extend(step_rows(name, per_step, timesteps))
    return rows
