"""Dimensionality of generated samples: how many directions their variation spans.

PCA of the samples flattened to vectors (N points in R^D), eigenvalues lambda_1 >= ... of
the sample covariance. Descriptive rather than good or bad: a student that collapses
onto fewer modes than the teacher shows a lower value, a noisy one a higher value, so
compare with the reference row (``delta``). ``higher_is_better`` is True only because the
contract needs a direction. Formulas: ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from harness import Metric, MetricContext
from plugins.metrics import _trajectory_math as tm

__all__ = ["EffectiveDim95", "ParticipationRatio", "TrajectoryDimensionality"]

THRESHOLD = 0.95


def _sample_spectrum(ctx: MetricContext, name: str) -> torch.Tensor:
    if ctx.samples is None:
        raise ValueError(f"metric '{name}': the runner gave no samples")
    x = torch.as_tensor(ctx.samples)
    return tm.pca_spectrum(x.reshape(x.shape[0], -1))


class EffectiveDim95(Metric):
    """Number of principal components that explain 95% of the samples' variance.

    min { k : sum_{i<=k} lambda_i / sum_i lambda_i >= 0.95 } for the PCA eigenvalues of the
    final samples (images in [0, 1], flattened). Descriptive (see the module docstring).
    """

    name = "effective_dim_95"
    higher_is_better = True
    requires: ClassVar[frozenset[str]] = frozenset({"samples"})

    def compute(self, ctx: MetricContext) -> float:
        return float(tm.effective_dim(_sample_spectrum(ctx, self.name), THRESHOLD))


class ParticipationRatio(Metric):
    """Participation ratio (sum lambda)^2 / sum lambda^2 of the samples' PCA spectrum.

    A smooth count of the directions that carry variance: 1 when one direction holds all
    of it, k for isotropic variance in k dimensions. Descriptive (see the module docstring).
    """

    name = "participation_ratio"
    higher_is_better = True
    requires: ClassVar[frozenset[str]] = frozenset({"samples"})

    def compute(self, ctx: MetricContext) -> float:
        return float(tm.participation_ratio(_sample_spectrum(ctx, self.name)))


class TrajectoryDimensionality(Metric):
    """Effective dimension and participation ratio of the sampler states x_t, per step.

    For each step k (timestep t_k) the N states the step produced (model space, flattened)
    give one PCA spectrum; rows ``effective_dim_95_t`` and ``participation_ratio_t`` with
    ``timestep`` = t_k (the last row is the final samples, in model space). No overall
    rows: those are ``effective_dim_95`` / ``participation_ratio``. Descriptive.
    """

    name = "trajectory_dimensionality"
    higher_is_better = True
    requires: ClassVar[frozenset[str]] = frozenset({"trajectories"})

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        if ctx.trajectories is None:
            raise ValueError(f"metric '{self.name}': the runner gave no trajectories")
        states = tm.flatten_states(torch.as_tensor(ctx.trajectories))[1:]
        spectra = tm.pca_spectrum(states)
        dims = tm.effective_dim(spectra, THRESHOLD)
        ratios = tm.participation_ratio(spectra)
        rows: list[dict[str, Any]] = []
        for metric, values in (("effective_dim_95", dims), ("participation_ratio", ratios)):
            rows.extend(tm.step_rows(metric, values, ctx.timesteps))
        return rows
