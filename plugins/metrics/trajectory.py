"""Trajectory metrics: how closely a student's sampling path follows the teacher's.

Both trajectories come from the same initial noise, conditions, sampler, steps and CFG
scale (the paired design), so they can be compared state by state. Each plugin returns
one overall row ``{"metric": name, "value": v}`` and, with ``per_step = true`` (the
default), one row per sampler step ``{"metric": name + "_t", "value": v_k,
"timestep": t_k}`` where t_k is the training timestep the step starts from (from
``ctx.timesteps``, noisy to clean). Step-based values (lengths, directions) describe the
step's displacement, state-based ones (MSE, distributions) the state the step produced,
so the last ``_t`` row is about the final samples. Formulas: ``docs/metrics.md`` and
:mod:`plugins.metrics._trajectory_math`.

All four compare states in model space (what the sampler iterates on, before
``decode``), which is why :class:`DistributionSimilarity` reads the final state of the
trajectories rather than ``ctx.samples``: the overall value and the last per-step value
are then the same number, computed in one space.

``TRAJECTORY_METRICS`` lists every trajectory and distillation metric class (also those
of :mod:`plugins.metrics.noise_prediction` and :mod:`plugins.metrics.dimensionality`)
for registration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from harness import Metric, MetricContext
from plugins.metrics import _trajectory_math as tm
from plugins.metrics.dimensionality import EffectiveDim95, ParticipationRatio, TrajectoryDimensionality
from plugins.metrics.noise_prediction import EpsAgreement, NoisePredictionMSE

__all__ = [
    "TRAJECTORY_METRICS",
    "DirectionalConsistency",
    "DistributionSimilarity",
    "PathLengthSimilarity",
    "TrajectoryMSE",
]


@dataclass
class StepOptions:
    """Options shared by the trajectory metrics."""

    per_step: bool = field(
        default=True, metadata={"help": "also store one '<name>_t' row per sampler step, with its timestep"}
    )


def trajectory_pair(ctx: MetricContext, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell's and the reference's trajectories, checked to be comparable."""
    if ctx.trajectories is None or ctx.reference_trajectories is None:
        raise ValueError(f"metric '{name}': the context lacks trajectories or reference_trajectories")
    s, t = torch.as_tensor(ctx.trajectories), torch.as_tensor(ctx.reference_trajectories)
    tm.check_pair(s, t)
    return s, t


class _PairedTrajectoryMetric(Metric):
    """Base of the metrics that compare the cell's trajectories with the reference's."""

    requires: ClassVar[frozenset[str]] = frozenset({"trajectories", "reference_trajectories"})
    Options: ClassVar[Any] = StepOptions

    def measure(self, student: torch.Tensor, teacher: torch.Tensor, ctx: MetricContext) -> tm.Stepwise:
        raise NotImplementedError

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        s, t = trajectory_pair(ctx, self.name)
        result = self.measure(s, t, ctx)
        per_step = result.per_step if self.options.per_step else None
        return tm.stepwise_rows(self.name, result.overall, per_step, ctx.timesteps)


class PathLengthSimilarity(_PairedTrajectoryMetric):
    """How alike the student's and teacher's path lengths are: min(L_s, L_t) / max(L_s, L_t).

    L = sum_k ||x_{k+1} - x_k|| per sample; the ratio is taken per sample and then
    averaged over samples (not the ratio of mean lengths). In [0, 1]; 1 = same length, 0 = a stalled student.
    Per step (``path_length_similarity_t``): the same ratio of the single step's lengths.
    """

    name = "path_length_similarity"
    higher_is_better = True

    def measure(self, student: torch.Tensor, teacher: torch.Tensor, ctx: MetricContext) -> tm.Stepwise:
        return tm.path_length_similarity(student, teacher)


class TrajectoryMSE(_PairedTrajectoryMetric):
    """How far the student's states are from the teacher's: mean (x^s_k - x^t_k)^2.

    Mean over the K states the sampler produces (the shared initial noise excluded),
    samples and pixels, in model space. 0 = identical trajectories.
    Per step (``trajectory_mse_t``): the mean over samples and pixels of that state.
    """

    name = "trajectory_mse"
    higher_is_better = False

    def measure(self, student: torch.Tensor, teacher: torch.Tensor, ctx: MetricContext) -> tm.Stepwise:
        return tm.trajectory_mse(student, teacher)


class DirectionalConsistency(_PairedTrajectoryMetric):
    """Whether the student steps in the teacher's direction: mean cos(d^s_k, d^t_k).

    d_k = x_{k+1} - x_k flattened per sample; the cosine is averaged over steps and
    samples. In [-1, 1]; 1 = every step points the same way.
    Per step (``directional_consistency_t``): the mean over samples of that step's cosine.
    """

    name = "directional_consistency"
    higher_is_better = True

    def measure(self, student: torch.Tensor, teacher: torch.Tensor, ctx: MetricContext) -> tm.Stepwise:
        return tm.directional_consistency(student, teacher)


@dataclass
class DistributionOptions(StepOptions):
    """Options of :class:`DistributionSimilarity`."""

    projections: int = field(
        default=128, metadata={"help": "number of random unit directions of the sliced Wasserstein distance"}
    )

    def __post_init__(self) -> None:
        if self.projections < 1:
            raise ValueError(f"projections must be >= 1, got {self.projections}")


class DistributionSimilarity(_PairedTrajectoryMetric):
    """How alike the sets of final samples are: exp(-SW_1) of student vs teacher x_0.

    SW_1 is the sliced Wasserstein-1 distance over ``projections`` random unit directions
    drawn from the cell's seeded generator (one set for all steps), on model-space states
    flattened per sample. Unpaired (compares distributions, not sample i with sample i).
    In (0, 1]; 1 = identical sets. Per step (``distribution_similarity_t``): the same on
    the states the step produced. Reads the trajectories (not ``ctx.samples``) so that
    overall and per-step values live in one space; see the module docstring.
    """

    name = "distribution_similarity"
    higher_is_better = True
    Options: ClassVar[Any] = DistributionOptions

    def measure(self, student: torch.Tensor, teacher: torch.Tensor, ctx: MetricContext) -> tm.Stepwise:
        if not self.options.per_step:
            # only the final state is needed; same directions as the full computation
            student, teacher = student[-2:], teacher[-2:]
        return tm.distribution_similarity(student, teacher, self.options.projections, ctx.generator)


TRAJECTORY_METRICS: tuple[type[Metric], ...] = (
    PathLengthSimilarity,
    TrajectoryMSE,
    DirectionalConsistency,
    DistributionSimilarity,
    NoisePredictionMSE,
    EpsAgreement,
    EffectiveDim95,
    ParticipationRatio,
    TrajectoryDimensionality,
)
