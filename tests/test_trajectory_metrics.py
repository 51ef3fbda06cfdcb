"""Trajectory and distillation metrics: ideal values, direction, hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from harness.base import Conditions, Dataset, DiffusionModel, ImageBatch, MetricContext
from harness.errors import ConfigError
from plugins.metrics import _trajectory_math as tm
from plugins.metrics.dimensionality import EffectiveDim95, ParticipationRatio, TrajectoryDimensionality
from plugins.metrics.noise_prediction import EpsAgreement, NoisePredictionMSE
from plugins.metrics.trajectory import (
    TRAJECTORY_METRICS,
    DirectionalConsistency,
    DistributionSimilarity,
    PathLengthSimilarity,
    TrajectoryMSE,
)

K, N, SHAPE = 6, 16, (1, 8, 8)
TIMESTEPS = [50, 40, 30, 20, 10, 0]
IDEAL = {
    PathLengthSimilarity: 1.0,
    TrajectoryMSE: 0.0,
    DirectionalConsistency: 1.0,
    DistributionSimilarity: 1.0,
}
PAIRED = list(IDEAL)


def make_ctx(traj=None, ref=None, timesteps=TIMESTEPS, seed=0, **kw) -> MetricContext:
    return MetricContext(
        cell=None,
        device="cpu",
        generator=torch.Generator().manual_seed(seed),
        trajectories=traj,
        reference_trajectories=ref,
        timesteps=timesteps,
        **kw,
    )


def random_walk(seed: int = 0, k: int = K, n: int = N, shape=SHAPE) -> torch.Tensor:
    """(k+1) x n x shape: noise followed by k random steps of length ~1."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    x0 = torch.randn(1, n, *shape, generator=g)
    steps = torch.randn(k, n, *shape, generator=g) / math.sqrt(d)
    return torch.cat([x0, x0 + steps.cumsum(0)])


def overall(rows: list[dict]) -> float:
    (row,) = [r for r in rows if "timestep" not in r]
    return row["value"]


def per_step(rows: list[dict], name: str) -> list[tuple[int, float]]:
    return [(r["timestep"], r["value"]) for r in rows if r["metric"] == name]


# ---------------------------------------------------------------------------- ideal values


@pytest.mark.parametrize("cls", PAIRED, ids=lambda c: c.name)
def test_identical_trajectories_are_ideal(cls):
    traj = random_walk()
    rows = cls().compute(make_ctx(traj, traj.clone()))
    assert rows[0] == {"metric": cls.name, "value": pytest.approx(IDEAL[cls], abs=1e-12)}
    steps = per_step(rows, cls.name + "_t")
    assert [t for t, _ in steps] == TIMESTEPS
    assert [v for _, v in steps] == pytest.approx([IDEAL[cls]] * K, abs=1e-12)
    assert len(rows) == 1 + K


@pytest.mark.parametrize("cls", PAIRED, ids=lambda c: c.name)
def test_per_step_option_keeps_only_the_overall_row(cls):
    traj, ref = random_walk(0), random_walk(1)
    full = cls().compute(make_ctx(traj, ref))
    only = cls(per_step=False).compute(make_ctx(traj, ref))
    assert only == [{"metric": cls.name, "value": pytest.approx(full[0]["value"], rel=1e-12)}]


@pytest.mark.parametrize("cls", PAIRED, ids=lambda c: c.name)
def test_more_perturbation_is_monotonically_worse(cls):
    ref = random_walk(0)
    noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7)) / math.sqrt(math.prod(SHAPE))
    noise[0] = 0  # the initial noise is shared in the paired design
    values = [overall(cls().compute(make_ctx(ref + level * noise, ref))) for level in (0.0, 0.3, 1.0, 3.0)]
    if cls.higher_is_better:
        assert values[0] == pytest.approx(1.0)
        assert values[0] > values[1] > values[2] > values[3]
    else:
        assert values[0] == pytest.approx(0.0)
        assert values[0] < values[1] < values[2] < values[3]


# ---------------------------------------------------------------------------- hand-computed cases


def line(lengths: list[float]) -> torch.Tensor:
    """A 1-pixel straight-line trajectory with the given step lengths: (K+1) x 1 x 1 x 1 x 1."""
    return torch.tensor([0.0] + lengths).cumsum(0).reshape(-1, 1, 1, 1, 1)


def test_path_length_similarity_of_known_lengths():
    student, teacher = line([1.0, 1.0]), line([2.0, 2.0])  # L = 2 and 4
    rows = PathLengthSimilarity().compute(make_ctx(student, teacher, timesteps=[1, 0]))
    assert rows == [
        {"metric": "path_length_similarity", "value": pytest.approx(0.5)},
        {"metric": "path_length_similarity_t", "value": pytest.approx(0.5), "timestep": 1},
        {"metric": "path_length_similarity_t", "value": pytest.approx(0.5), "timestep": 0},
    ]


def test_path_length_similarity_averages_per_sample_ratios():
    # sample 0: L 2 vs 4 (ratio 0.5); sample 1: L 1 vs 1 (ratio 1). Mean of ratios 0.75,
    # not the ratio of mean lengths 1.5 / 2.5 = 0.6.
    student = torch.cat([line([1.0, 1.0]), line([0.5, 0.5])], dim=1)
    teacher = torch.cat([line([2.0, 2.0]), line([0.5, 0.5])], dim=1)
    assert tm.path_length_similarity(student, teacher).overall == pytest.approx(0.75)


def test_trajectory_mse_of_known_offset():
    teacher = random_walk(0)
    student = teacher + 0.5
    student[0] = teacher[0]
    rows = TrajectoryMSE().compute(make_ctx(student, teacher))
    assert overall(rows) == pytest.approx(0.25)
    assert [v for _, v in per_step(rows, "trajectory_mse_t")] == pytest.approx([0.25] * K)


def test_reversed_directions_give_minus_one():
    traj = random_walk(3)
    rows = DirectionalConsistency().compute(make_ctx(-traj, traj))
    assert overall(rows) == pytest.approx(-1.0)
    assert [v for _, v in per_step(rows, "directional_consistency_t")] == pytest.approx([-1.0] * K)


def test_directional_consistency_of_orthogonal_steps_is_zero():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0]]).reshape(2, 1, 2, 1, 1)
    b = torch.tensor([[0.0, 0.0], [0.0, 3.0]]).reshape(2, 1, 2, 1, 1)
    assert tm.directional_consistency(a, b).overall == pytest.approx(0.0)


def test_sliced_wasserstein_identical_sets_is_zero_and_shift_is_exact():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(32, 10, generator=g, dtype=torch.float64)
    directions = tm.random_directions(10, 64, torch.Generator().manual_seed(1))
    assert torch.linalg.vector_norm(directions, dim=0) == pytest.approx(torch.ones(64, dtype=torch.float64))
    assert float(tm.sliced_wasserstein(points, points.clone(), directions)) == 0.0
    shift = torch.randn(10, generator=g, dtype=torch.float64)
    sw = float(tm.sliced_wasserstein(points, points + shift, directions))
    # shifting a set by v shifts every projection by <v, theta>: W1 = |<v, theta>| exactly
    expected = float((shift.double() @ directions).abs().mean())
    assert sw > 0
    assert sw == pytest.approx(expected, rel=1e-9)


def test_wasserstein_1d_matches_scipy_for_unequal_sizes():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(7, generator=g), torch.randn(12, generator=g) + 0.3
    ours = float(tm.wasserstein_1d(u, v))
    assert ours == pytest.approx(scipy_stats.wasserstein_distance(u.numpy(), v.numpy()), rel=1e-9)


def test_distribution_similarity_identical_is_one_and_shift_lowers_it():
    traj = random_walk(0)
    assert overall(DistributionSimilarity().compute(make_ctx(traj, traj.clone()))) == 1.0
    shifted = traj + 0.5
    value = overall(DistributionSimilarity().compute(make_ctx(shifted, traj)))
    assert 0 < value < 1


def test_distribution_similarity_is_seeded_by_the_generator():
    traj, ref = random_walk(0), random_walk(1)
    a = DistributionSimilarity(projections=16).compute(make_ctx(traj, ref, seed=5))
    b = DistributionSimilarity(projections=16).compute(make_ctx(traj, ref, seed=5))
    c = DistributionSimilarity(projections=16).compute(make_ctx(traj, ref, seed=6))
    assert a == b
    assert a != c


def test_distribution_similarity_rejects_bad_projections():
    with pytest.raises(ConfigError, match="projections"):
        DistributionSimilarity(projections=0)


def test_mismatched_trajectories_and_timesteps_are_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        TrajectoryMSE().compute(make_ctx(random_walk(0, k=4), random_walk(1)))
    with pytest.raises(ValueError, match="one timestep per step"):
        TrajectoryMSE().compute(make_ctx(random_walk(0), random_walk(1), timesteps=[1, 0]))


# ---------------------------------------------------------------------------- dimensionality


def subspace_points(n: int, dim: int, k: int, seed: int = 0) -> torch.Tensor:
    """n isotropic points on a random k-dimensional linear subspace of R^dim."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, k, generator=g, dtype=torch.float64))
    return torch.randn(n, k, generator=g, dtype=torch.float64) @ basis.T


def test_pca_of_k_dimensional_data():
    points = subspace_points(4000, 20, 3).float()
    samples = points.reshape(4000, 1, 4, 5)
    ctx = make_ctx(samples=samples)
    assert EffectiveDim95().compute(ctx) <= 3
    assert ParticipationRatio().compute(ctx) == pytest.approx(3.0, rel=0.05)


def test_effective_dim_and_participation_ratio_of_known_spectra():
    spectrum = torch.tensor([[4.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert tm.effective_dim(spectrum).tolist() == [2, 3, 0]
    assert tm.participation_ratio(spectrum).tolist() == pytest.approx([25 / 17, 3.0, 0.0])


def test_trajectory_dimensionality_rows_per_step():
    # state after step k lies on a (k+1)-dimensional subspace
    states = [subspace_points(500, 16, k + 1, seed=k) for k in range(3)]
    traj = torch.stack([torch.randn(500, 16, dtype=torch.float64)] + states).float().reshape(4, 500, 1, 4, 4)
    rows = TrajectoryDimensionality().compute(make_ctx(traj, timesteps=[20, 10, 0]))
    assert {r["metric"] for r in rows} == {"effective_dim_95_t", "participation_ratio_t"}
    dims = per_step(rows, "effective_dim_95_t")
    assert [t for t, _ in dims] == [20, 10, 0]
    assert all(d <= k + 1 for k, (_, d) in enumerate(dims))
    ratios = [v for _, v in per_step(rows, "participation_ratio_t")]
    assert ratios == pytest.approx([1.0, 2.0, 3.0], rel=0.1)


# ---------------------------------------------------------------------------- noise prediction


class FakeDataset(Dataset):
    """Ten random 'real' images labelled 0..9."""

    name = "fake"

    def load(self, split: str) -> ImageBatch:
        g = torch.Generator().manual_seed(123)
        images = torch.rand(10, 1, 4, 4, generator=g) * 2 - 1
        return ImageBatch(images=images, conditions=Conditions(labels=torch.arange(10)))


class TinyModel(DiffusionModel):
    """A 20-step DDPM forward process; predict_noise as given by ``mode``.

    ``oracle`` knows the real images (labels index them) and inverts the forward process,
    so it returns the true noise; ``zeros`` predicts nothing; ``negated`` the oracle's opposite.
    """

    num_timesteps = 20

    def __init__(self, mode: str = "oracle") -> None:
        self.net = torch.nn.Linear(1, 1)
        self.mode = mode
        self.abar = torch.cumprod(1 - torch.linspace(1e-4, 0.2, self.num_timesteps), 0)
        self.x0 = FakeDataset().load("reference").images
        self.seen = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def encode_conditions(self, conditions: Conditions) -> torch.Tensor:
        return conditions.labels

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.abar[t].reshape(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.seen += x_t.shape[0]
        if self.mode == "zeros":
            return torch.zeros_like(x_t)
        a = self.abar[t].reshape(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * self.x0[cond]) / (1 - a).sqrt()
        return -eps if self.mode == "negated" else eps


def noise_ctx(model: DiffusionModel, reference: DiffusionModel | None = None) -> MetricContext:
    return make_ctx(dataset=FakeDataset(), model=model, reference_model=reference)


def test_noise_prediction_mse_of_the_true_noise_is_zero():
    rows = NoisePredictionMSE(timesteps=5).compute(noise_ctx(TinyModel()))
    assert rows[0]["metric"] == "noise_prediction_mse"
    assert rows[0]["value"] == pytest.approx(0.0, abs=1e-8)
    steps = per_step(rows, "noise_prediction_mse_t")
    assert [t for t, _ in steps] == [0, 5, 10, 14, 19]
    assert all(v == pytest.approx(0.0, abs=1e-8) for _, v in steps)


def test_noise_prediction_mse_of_zero_prediction_is_noise_variance():
    value = overall(NoisePredictionMSE(timesteps=4, per_step=False).compute(noise_ctx(TinyModel("zeros"))))
    assert value == pytest.approx(1.0, abs=0.25)  # E[eps^2] = 1 over 4 x 160 draws


def test_noise_prediction_does_not_depend_on_batch_size_and_caps_images():
    big, small = TinyModel("zeros"), TinyModel("zeros")
    a = NoisePredictionMSE(timesteps=3).compute(noise_ctx(big))
    b = NoisePredictionMSE(timesteps=3, batch_size=3).compute(noise_ctx(small))
    assert a == b
    capped = TinyModel("zeros")
    NoisePredictionMSE(timesteps=3, max_images=4).compute(noise_ctx(capped))
    assert capped.seen == 3 * 4


def test_eps_agreement_of_a_model_with_itself_is_one():
    model = TinyModel()
    rows = EpsAgreement(timesteps=3).compute(noise_ctx(model, model))
    assert rows[0] == {"metric": "eps_agreement", "value": pytest.approx(1.0)}
    assert [v for _, v in per_step(rows, "eps_agreement_t")] == pytest.approx([1.0] * 3)
    other = TinyModel()
    EpsAgreement(timesteps=3).compute(noise_ctx(other, TinyModel()))
    assert model.seen == other.seen  # the same model twice is evaluated once per batch


def test_eps_agreement_of_opposite_predictions_is_minus_one():
    rows = EpsAgreement(timesteps=3, per_step=False).compute(noise_ctx(TinyModel("negated"), TinyModel()))
    assert rows == [{"metric": "eps_agreement", "value": pytest.approx(-1.0)}]


def test_noise_metrics_leave_the_train_mode_alone():
    model = TinyModel()
    model.net.train()
    NoisePredictionMSE(timesteps=2).compute(noise_ctx(model))
    assert model.net.training


# ---------------------------------------------------------------------------- registration


def test_registration_tuple_lists_every_class_once_with_valid_requires():
    from harness.base import METRIC_REQUIREMENTS, Metric

    names = [cls.name for cls in TRAJECTORY_METRICS]
    assert len(set(names)) == len(names) == 9
    for cls in TRAJECTORY_METRICS:
        assert issubclass(cls, Metric)
        assert cls.requires <= METRIC_REQUIREMENTS
        assert cls.describe()
