"""Noise-prediction metrics on real held-out data: the denoiser itself, without a sampler.

For a fixed grid of training timesteps t, real images x_0 of the dataset's reference
split (at most ``max_images``, the first ones, so every cell sees the same images) are
noised with the forward process, x_t = model.add_noise(x_0, eps, t), eps ~ N(0, I) from
the cell's seeded generator (one draw per timestep). The networks are evaluated
conditionally on the images' own labels/prompts, without classifier-free guidance.
Each plugin returns an overall row (the mean over the timesteps) and, with ``per_step =
true``, one ``<name>_t`` row per timestep. Formulas: ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from harness import DiffusionModel, ImageBatch, Metric, MetricContext
from plugins.metrics import _trajectory_math as tm

__all__ = ["EpsAgreement", "NoiseOptions", "NoisePredictionMSE", "evaluation_timesteps"]


@dataclass
class NoiseOptions:
    """Options of the noise-prediction metrics."""

    timesteps: int = field(default=10, metadata={"help": "number of evenly spaced training timesteps in [0, T-1]"})
    max_images: int = field(default=512, metadata={"help": "at most this many real images (the first ones)"})
    batch_size: int = field(default=256, metadata={"help": "images per forward pass"})
    per_step: bool = field(default=True, metadata={"help": "also store one '<name>_t' row per timestep"})

    def __post_init__(self) -> None:
        for key in ("timesteps", "max_images", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


def evaluation_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``count`` evenly spaced training timesteps from 0 to T-1 (rounded, without repeats)."""
    if num_timesteps < 1:
        raise ValueError(f"the model has no timesteps (num_timesteps={num_timesteps})")
    grid = torch.linspace(0, num_timesteps - 1, count, dtype=torch.float64).round().long()
    return sorted({int(t) for t in grid})


def real_batch(ctx: MetricContext, max_images: int, name: str) -> ImageBatch:
    """The first ``max_images`` images of the reference split, with their conditions."""
    if ctx.dataset is None:
        raise ValueError(f"metric '{name}': the context has no dataset to load real images from")
    batch = ctx.dataset.load("reference")
    n = min(int(batch.images.shape[0]), max_images)
    if n == 0:
        raise ValueError(f"metric '{name}': the dataset's reference split is empty")
    return ImageBatch(images=batch.images[:n], conditions=batch.conditions.slice(0, n))


@contextmanager
def _eval_mode(models: list[DiffusionModel]) -> Iterator[None]:
    """Evaluate in eval mode (no dropout), restoring the previous mode afterwards."""
    nets = [m.net for m in models if isinstance(getattr(m, "net", None), torch.nn.Module)]
    was_training = [net.training for net in nets]
    for net in nets:
        net.eval()
    try:
        yield
    finally:
        for net, mode in zip(nets, was_training):
            net.train(mode)


# per-sample statistic of a batch: (true noise, one prediction per model) -> float64 N
Statistic = Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]


def per_timestep_means(
    ctx: MetricContext, models: list[DiffusionModel], options: NoiseOptions, statistic: Statistic, name: str
) -> tuple[list[int], list[float]]:
    """Mean over images of ``statistic`` at each evaluation timestep.

    x_0 = models[0].encode(images); for each t: eps ~ N(0, I) from ``ctx.generator`` (on
    the CPU, all images at once, so batching does not change the draw), x_t =
    models[0].add_noise(x_0, eps, t); every model predicts the noise of the same x_t.
    """
    batch = real_batch(ctx, options.max_images, name)
    main = models[0]
    device = ctx.device
    n, bs = int(batch.images.shape[0]), options.batch_size
    spans = [(a, min(a + bs, n)) for a in range(0, n, bs)]
    timesteps = evaluation_timesteps(int(main.num_timesteps), options.timesteps)
    with torch.no_grad(), _eval_mode(models):
        x0 = torch.cat([main.encode(batch.images[a:b].to(device)).cpu() for a, b in spans])
        conds = [[m.encode_conditions(batch.conditions.slice(a, b)) for a, b in spans] for m in models]
        means: list[float] = []
        for t in timesteps:
            eps = torch.randn(x0.shape, generator=ctx.generator, dtype=x0.dtype)
            values = []
            for j, (a, b) in enumerate(spans):
                e = eps[a:b].to(device)
                tt = torch.full((b - a,), t, dtype=torch.long, device=device)
                x_t = main.add_noise(x0[a:b].to(device), e, tt)
                preds: list[torch.Tensor] = []
                for i, m in enumerate(models):
                    # the same model twice (the teacher's cell compares it with itself): one pass
                    first = next((k for k in range(i) if models[k] is m), None)
                    preds.append(preds[first] if first is not None else m.predict_noise(x_t, tt, conds[i][j]))
                values.append(statistic(e, preds).cpu())
            means.append(float(torch.cat(values).mean()))
    return timesteps, means


class _NoiseMetric(Metric):
    """Base of the metrics evaluated on noised real images at fixed timesteps."""

    requires: ClassVar[frozenset[str]] = frozenset({"model", "real_images"})
    Options: ClassVar[Any] = NoiseOptions

    def models(self, ctx: MetricContext) -> list[DiffusionModel]:
        raise NotImplementedError

    def statistic(self, eps: torch.Tensor, preds: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        timesteps, means = per_timestep_means(ctx, self.models(ctx), self.options, self.statistic, self.name)
        overall = sum(means) / len(means)
        return tm.stepwise_rows(self.name, overall, means if self.options.per_step else None, timesteps)


class NoisePredictionMSE(_NoiseMetric):
    """How well the cell's model predicts the noise of noised real images: MSE(eps_hat, eps).

    Per timestep t (``noise_prediction_mse_t``): mean over images and pixels of
    (eps_theta(x_t, t, c) - eps)^2, conditional on the images' own labels (no CFG);
    overall: the mean over the ``timesteps`` evenly spaced timesteps. 0 = perfect.
    """

    name = "noise_prediction_mse"
    higher_is_better = False

    def models(self, ctx: MetricContext) -> list[DiffusionModel]:
        if ctx.model is None:
            raise ValueError(f"metric '{self.name}': the context has no model")
        return [ctx.model]

    def statistic(self, eps: torch.Tensor, preds: list[torch.Tensor]) -> torch.Tensor:
        return tm.prediction_mse(preds[0], eps)


class EpsAgreement(_NoiseMetric):
    """Whether the cell's model predicts the teacher's noise: cos(eps_student, eps_teacher).

    Both models predict the noise of the same x_t (same images, noise and conditions);
    per timestep t (``eps_agreement_t``): mean over images of the cosine of the two
    flattened predictions; overall: the mean over timesteps. In [-1, 1]; 1 = same direction.
    The forward process (``encode``, ``add_noise``) is the cell's model's.
    """

    name = "eps_agreement"
    higher_is_better = True

    def models(self, ctx: MetricContext) -> list[DiffusionModel]:
        if ctx.model is None or ctx.reference_model is None:
            raise ValueError(f"metric '{self.name}': the context needs both model and reference_model")
        return [ctx.model, ctx.reference_model]

    def statistic(self, eps: torch.Tensor, preds: list[torch.Tensor]) -> torch.Tensor:
        return tm.prediction_cosine(preds[0], preds[1])
