"""The contexts the harness hands to plugins: what a training step, a pruner and a metric get.

Each is the one argument through which a plugin reads the run (device, seeded generator,
data, models) instead of reaching into the harness; see the plugin kinds in
:mod:`harness.base` (which re-exports these three).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from harness.base import Conditions, Dataset, DiffusionModel, ImageBatch
    from harness.cache import ArtifactCache
    from harness.planner import Cell


@dataclass
class TrainContext:
    """What a model family's training step gets from the harness."""

    device: Any
    generator: Any
    seed: int
    progress: Callable[[str, int], Any] | None = None
    log: Callable[[str], None] | None = None


class PruneContext:
    """What a pruner gets from the harness.

    :ivar calibration: a batch of real images with conditions (model space, [-1, 1]),
        drawn from the dataset's train split on first access: a pruner that never reads
        it (magnitude, random) works on a dataset without a train split.
    :ivar device: the torch device.
    :ivar generator: a seeded ``torch.Generator`` (on CPU) for any randomness.
    :ivar finetune: ``finetune(model, steps) -> model``, denoising-loss fine-tuning.
    :ivar example_inputs: ``(x_t, t, cond)`` tensors that ``model.net`` accepts, for
        dependency-graph tracing (torch-pruning).

    ``calibration`` and ``generator`` may be given as zero-argument callables: each is
    called once, on first access (the harness loads the train split that way).
    """

    def __init__(
        self,
        calibration: ImageBatch | Callable[[], ImageBatch],
        device: Any,
        generator: Any,
        finetune: Callable[[DiffusionModel, int], DiffusionModel],
        example_inputs: tuple[Any, ...] = (),
        seed: int = 0,
    ) -> None:
        self._calibration = calibration
        self._generator = generator
        self.device = device
        self.finetune = finetune
        self.example_inputs = example_inputs
        self.seed = seed

    def __repr__(self) -> str:
        return f"PruneContext(device={self.device!r}, seed={self.seed})"

    @property
    def calibration(self) -> ImageBatch:
        if callable(self._calibration):
            self._calibration = self._calibration()
        return self._calibration

    @property
    def generator(self) -> Any:
        if callable(self._generator):
            self._generator = self._generator()
        return self._generator

    def calibration_batches(self, batch_size: int) -> Iterator[ImageBatch]:
        """The calibration batch in order, in slices of at most ``batch_size`` images."""
        if int(batch_size) < 1:
            raise ValueError(f"calibration_batches: batch_size must be >= 1, got {batch_size!r}")
        from harness.base import ImageBatch

        batch = self.calibration
        for start in range(0, len(batch.images), int(batch_size)):
            stop = start + int(batch_size)
            yield ImageBatch(batch.images[start:stop], batch.conditions.slice(start, stop))

    def loss(self, model: DiffusionModel, batch: ImageBatch) -> torch.Tensor:
        """The denoising loss of ``model`` on ``batch``: epsilon-MSE at random timesteps.

        ``x_0 = model.encode(images)``; ``t`` uniform in ``[0, num_timesteps)`` and the
        noise ``eps ~ N(0, I)`` are drawn from ``self.generator`` (in that order, on CPU,
        so the loss does not depend on the device); returns the scalar
        ``mean((predict_noise(add_noise(x_0, eps, t), t, cond) - eps)^2)`` with its graph,
        ready for ``backward()``.
        """
        import torch
        import torch.nn.functional as F

        device = next(model.net.parameters()).device
        x0 = model.encode(batch.images.to(device=device, dtype=torch.float32))
        t = torch.randint(0, int(model.num_timesteps), (x0.shape[0],), generator=self.generator).to(device)
        noise = torch.randn(x0.shape, generator=self.generator).to(device)
        cond = model.encode_conditions(batch.conditions)
        return F.mse_loss(model.predict_noise(model.add_noise(x0, noise, t), t, cond), noise)


@dataclass
class MetricContext:
    """Everything a metric may read; only the fields in ``Metric.requires`` are filled.

    :ivar samples: float N x C x H x W in [0, 1] (CPU).
    :ivar reference_samples: the reference model's samples for the same noise and
        conditions (same shape).
    :ivar trajectories / reference_trajectories: (K+1) x N x C' x H' x W' states x_K..x_0.
    :ivar timesteps: the K training timesteps of the trajectory (noisy to clean).
    :ivar real_images: real images of the dataset's reference split in [0, 1].
    :ivar conditions: the conditions of the samples.
    :ivar model / reference_model: the :class:`DiffusionModel` of the cell and of the
        reference variant.
    :ivar sampling_stats: ``{"generation_time": s/image, "peak_memory_mb": MB}``.
    :ivar cache: the artifact cache, for metric-side artifacts (feature extractors,
        reference statistics): use ``cache.get_or_create``.
    """

    cell: Cell
    device: Any
    generator: Any
    dataset: Dataset | None = None
    samples: Any = None
    reference_samples: Any = None
    trajectories: Any = None
    reference_trajectories: Any = None
    timesteps: list[int] | None = None
    real_images: Any = None
    conditions: Conditions | None = None
    model: DiffusionModel | None = None
    reference_model: DiffusionModel | None = None
    sampling_stats: dict[str, float] = field(default_factory=dict)
    cache: ArtifactCache | None = None
