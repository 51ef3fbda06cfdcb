"""Base classes: the contract of each plugin kind.

A plugin class has a class attribute ``name`` (unique within its kind) and may declare
its options as a dataclass or pydantic model ``Options``; the harness instantiates
``cls(**options)`` with the options from the matrix file, and :class:`Plugin` validates
them into ``self.options``. Nothing here imports torch at module import time, so
``bench list`` stays fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

# the contexts handed to plugins live in their own module; importable from here too
from harness.contexts import MetricContext, PruneContext, TrainContext
from harness.options import options_dict, stage_options, validate_options

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

PLUGIN_KINDS = ("datasets", "models", "pruners", "metrics", "features", "executors", "plots")

#: what a metric may name in ``requires`` (see :class:`MetricContext`)
METRIC_REQUIREMENTS = frozenset(
    {"samples", "reference_samples", "trajectories", "reference_trajectories", "real_images", "conditions", "model"})


class Plugin:
    """Common base of every plugin class: a ``name`` and validated ``options``."""

    name: ClassVar[str] = ""
    Options: ClassVar[Any] = None

    def __init__(self, **options: Any) -> None:
        self.options = validate_options(type(self), options, f"{self.kind_name()}.{self.name}")

    @classmethod
    def kind_name(cls) -> str:
        return "plugin"

    @classmethod
    def describe(cls) -> str:
        """First line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


# ---------------------------------------------------------------------------- data


@dataclass
class Conditions:
    """The conditions of N samples: class labels (long tensor, N) and/or prompts.

    For class-conditional models ``labels`` is set; text models use ``prompts``. Both
    may be set (digits have prompts "a handwritten digit 3" next to labels).
    """

    labels: torch.Tensor | None = None
    prompts: list[str] | None = None

    def __len__(self) -> int:
        if self.labels is not None:
            return int(self.labels.shape[0])
        return len(self.prompts or [])

    def slice(self, start: int, stop: int) -> Conditions:
        return Conditions(
            labels=None if self.labels is None else self.labels[start:stop],
            prompts=None if self.prompts is None else self.prompts[start:stop],
        )


@dataclass
class ImageBatch:
    """Images (float N x C x H x W in [-1, 1]) with their conditions."""

    images: torch.Tensor
    conditions: Conditions


@dataclass
class SampleOutput:
    """What sampling returns.

    :ivar images: decoded samples, float N x C x H x W in [0, 1], on CPU.
    :ivar trajectory: if recorded, the sampler states x_K .. x_0 in model space,
        float (K+1) x N x C' x H' x W', on CPU (``None`` otherwise).
    :ivar timesteps: the K training timesteps visited (int list, from noisy to clean).
    """

    images: torch.Tensor
    trajectory: torch.Tensor | None = None
    timesteps: list[int] | None = None


# ---------------------------------------------------------------------------- kinds


class Dataset(Plugin):
    """A dataset of real images with class labels and/or prompts.

    Contract: ``load(split)`` returns an :class:`ImageBatch` of float images
    N x C x H x W in [-1, 1] (``channels`` x ``image_size`` x ``image_size``), for
    ``split`` in ``{"train", "reference"}``; the split is fixed (deterministic).
    ``sample_conditions(n, generator)`` returns the conditions of n samples as a pure
    function of the generator (paired design: same seed, same conditions).
    ``conditions_version``: bump it when ``sample_conditions`` draws other conditions for
    the same seed; it enters the sample sets' cache keys (not the models': the training
    data did not change), so no stale sample set or metric value is reused.
    ``default_features``: the feature extractor (``bench list features``) that the
    distribution metrics (``fid``, ``kid``, ``prdc``, ``fid_inf``) use on this dataset
    unless their ``features`` option names another.
    """

    image_size: int = 16
    channels: int = 1
    num_classes: int | None = None
    conditions_version: ClassVar[int] = 1
    default_features: ClassVar[str] = "inception"

    @classmethod
    def kind_name(cls) -> str:
        return "dataset"

    def load(self, split: str) -> ImageBatch:
        raise NotImplementedError

    def sample_conditions(self, n: int, generator: torch.Generator) -> Conditions:
        raise NotImplementedError

    def config_key(self) -> dict[str, Any]:
        """What identifies this dataset's content for caching (name + options)."""
        return {"name": self.name, "options": options_dict(self.options)}


class DiffusionModel:
    """A denoiser with everything the harness needs to train, prune and sample it.

    Contract:
    - ``net``: the ``torch.nn.Module`` denoiser (what pruners modify).
    - ``predict_noise(x_t, t, cond)``: epsilon prediction; ``x_t`` float N x C x H x W in
      model space, ``t`` long N (training timesteps in [0, T)), ``cond`` as returned by
      ``encode_conditions`` / ``null_condition``.
    - ``encode_conditions(conditions)`` / ``null_condition(n)``: the condition tensors
      (the null condition drives classifier-free guidance).
    - ``decode(x0)``: model space -> images in [0, 1].
    - ``sample(...)``: runs a sampler; must be deterministic given ``noise``.
    - ``make_student(size_factor)``: an untrained network holding about that fraction
      of the parameters (families that support sizes).
    - ``encode(images)`` / ``add_noise(x0, noise, t)`` / ``num_timesteps``: the forward
      process, for metrics that evaluate noise prediction on real data.
    """

    net: Any
    sample_shape: tuple[int, int, int]
    #: module paths (``net.named_modules()`` names) that pruners leave alone by default
    #: (embeddings, output layer); the measured ``sparsity`` column counts no weight inside them.
    protected_modules: tuple[str, ...] = ()

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        raise NotImplementedError

    def null_condition(self, n: int) -> Any:
        raise NotImplementedError

    def encode_conditions(self, conditions: Conditions) -> Any:
        raise NotImplementedError

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (dataset space) -> model space x_0 (identity for pixel models)."""
        raise NotImplementedError

    #: number of training timesteps T (``t`` takes values 0 .. T-1)
    num_timesteps: int = 0

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        raise NotImplementedError

    def sample(
        self,
        noise: torch.Tensor,
        conditions: Conditions,
        *,
        cfg_scale: float,
        sampler: str,
        steps: int,
        cfg_batching: str = "auto",
        batch_size: int | None = None,
        record_trajectory: bool = False,
        generator: torch.Generator | None = None,
    ) -> SampleOutput:
        """Sample ``len(noise)`` images from ``noise`` (model space) for ``conditions``.

        ``batch_size`` caps the images per forward pass (``None``: all at once); samples
        must not depend on it. ``cfg_batching``: ``concat`` (one batch with the
        unconditional half), ``split`` (two passes) or ``auto`` (by device).
        ``record_trajectory``: also return x_K .. x_0 in ``SampleOutput.trajectory``.
        ``generator`` drives stochastic samplers (DDPM) on the CPU.
        """
        raise NotImplementedError

    def make_student(self, size_factor: float) -> DiffusionModel:
        raise NotImplementedError(f"{type(self).__name__} does not support size factors")

    def example_inputs(self, n: int = 1) -> tuple[Any, ...]:
        """Inputs ``net(*inputs)`` accepts for n samples (tracing, MAC counting)."""
        import torch

        device = self.device
        x = torch.zeros(n, *self.sample_shape, device=device)
        t = torch.zeros(n, dtype=torch.long, device=device)
        return (x, t, self.null_condition(n))

    def to(self, device: Any) -> DiffusionModel:
        self.net.to(device)
        return self

    @contextlib.contextmanager
    def compiled(self, mode: str) -> Iterator[None]:
        """Sample with ``torch.compile(self.net, mode=...)`` inside the block (``[sampling]
        compile``); the eager module is back afterwards. ``mode = "default"`` is
        torch.compile's default mode. Families whose sampler calls another module
        (e.g. a pipeline's denoiser) override this."""
        import torch

        eager = self.net
        self.net = torch.compile(eager, mode=None if mode == "default" else mode)
        try:
            yield
        finally:
            self.net = eager

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device


class ModelFamily(Plugin):
    """A model architecture family: builds, trains, distils and (de)serialises models.

    ``samplers`` lists the values the ``sampler`` axis may take for this family.

    Contract:
    - ``build(dataset)`` -> untrained reference :class:`DiffusionModel` for the dataset's
      image shape and conditions.
    - ``train_teacher(model, dataset, train, ctx)`` and ``distill_student(student,
      teacher, dataset, train, ctx)`` train in place and return the model (families of
      pretrained models, e.g. diffusers, return the model unchanged: ``trainable=False``).
      ``train`` is what ``train_config`` / ``distill_config`` return.
    - ``train_options`` / ``distill_options``: the dataclass (or pydantic model) of the
      ``[model.train]`` / ``[model.distill]`` table, or None when the family has no such
      stage (a matrix that gives the table is then an error). Each family declares its
      own: the DDPM loop's options are the ``unet``'s, not every family's.
    - ``state(model)`` -> ``(tensors, meta)`` and ``restore(model_or_none, tensors, meta,
      dataset)`` round-trip a model through the artifact cache (safetensors + JSON),
      including physically pruned shapes.
    """

    trainable: ClassVar[bool] = True
    supports_sizes: ClassVar[bool] = False
    samplers: ClassVar[tuple[str, ...]] = ("ddpm", "ddim")
    train_options: ClassVar[type | None] = None
    distill_options: ClassVar[type | None] = None

    @classmethod
    def kind_name(cls) -> str:
        return "model"

    def train_config(self, table: dict[str, Any]) -> Any:
        """The teacher's training options from the ``[model.train]`` table (None: no such stage).

        Its ``dataclasses.asdict`` is part of the teacher's cache key.
        """
        return stage_options(type(self), "train", table)

    def distill_config(self, table: dict[str, Any], train: Any) -> Any:
        """The students' distillation options from ``[model.distill]``, resolved.

        ``train`` is the teacher's :meth:`train_config`, for defaults that follow it (a
        family overrides this to fill them in). Its ``dataclasses.asdict`` is part of the
        students' cache keys.
        """
        return stage_options(type(self), "distill", table)

    def build(self, dataset: Dataset) -> DiffusionModel:
        raise NotImplementedError

    def train_teacher(self, model: DiffusionModel, dataset: Dataset, train: Any, ctx: TrainContext) -> DiffusionModel:
        return model

    def distill_student(
        self, student: DiffusionModel, teacher: DiffusionModel, dataset: Dataset, train: Any, ctx: TrainContext
    ) -> DiffusionModel:
        return student

    def state(self, model: DiffusionModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        raise NotImplementedError

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], dataset: Dataset) -> DiffusionModel:
        raise NotImplementedError

    def finetune(self, model: DiffusionModel, dataset: Dataset, steps: int, ctx: TrainContext) -> DiffusionModel:
        """Denoising-loss fine-tuning for ``steps`` steps (used by pruners)."""
        return model

    def config_key(self) -> dict[str, Any]:
        return {"name": self.name, "options": options_dict(self.options)}


class Pruner(Plugin):
    """A pruning method: ``prune(model, rate, ctx) -> model``.

    Contract: ``rate`` in [0, 1) is the share removed (weights, channels or heads: the
    docstring of each pruner says which). ``model.net`` is modified or replaced; the
    returned model must still sample. Randomness comes only from ``ctx.generator``.
    ``removes_structure`` is True when parameters are physically removed.

    ``prunable_weights(model)`` names the weights the pruner may touch; the stored
    ``sparsity`` column is the share of zeros among them, measured on the pruned model.
    """

    removes_structure: ClassVar[bool] = False

    @classmethod
    def kind_name(cls) -> str:
        return "pruners"

    def prune(self, model: DiffusionModel, rate: float, ctx: PruneContext) -> DiffusionModel:
        raise NotImplementedError

    def prunable_weights(self, model: DiffusionModel) -> list[torch.Tensor]:
        """The weights of ``model`` this pruner may touch (the scope of the ``sparsity`` column).

        Default: :func:`harness.prunable_weights` (conv and linear weights, attention input
        projections) outside the model's ``protected_modules``, its net's
        ``ignored_layers()`` and this pruner's ``protect`` option if it has one (module
        paths, :func:`harness.in_module`). Override it when the pruner touches fewer or
        other weights, so that a pruner removing ``rate`` of its scope stores ``rate``.
        """
        from harness.sizes import prunable_weights

        protect = (*model.protected_modules, *(getattr(self.options, "protect", None) or ()))
        return [ref.tensor for ref in prunable_weights(model.net, protect)]


class Metric(Plugin):
    """A metric: ``compute(ctx)`` -> float, ``{name: float}`` or a list of row dicts.

    Contract: ``requires`` is a subset of ``samples, reference_samples, trajectories,
    reference_trajectories, real_images, conditions, model``; the runner fills those
    fields of the :class:`MetricContext` (and records trajectories only when some metric
    needs them). Row dicts have ``metric``, ``value`` and optionally ``timestep``.
    ``higher_is_better`` says which way is better. Values are raw (not normalised).
    A dict return stores one row per key (metric name = key).

    ``cached``: the values are kept in the artifact cache (kind ``metric``, keyed by the
    metric's options, its ``cache_version`` and the sample sets it reads), so a re-run
    that recomputes a cell does not compute them again. Set it to ``False`` for a metric
    that only reads what the runner already keeps (``sampling_stats``): computing it
    costs less than a cache entry.

    ``sample_size_biased``: the expected value depends on the number of samples (FID's
    estimator is biased upwards at small n): ``bench report`` and ``bench results`` warn
    when one table compares its values computed at different ``num_samples``.
    """

    higher_is_better: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset({"samples"})
    cached: ClassVar[bool] = True
    sample_size_biased: ClassVar[bool] = False

    @classmethod
    def kind_name(cls) -> str:
        return "metrics"

    def compute(self, ctx: MetricContext) -> float | dict[str, float] | list[dict[str, Any]]:
        raise NotImplementedError

    def fingerprint(self, ctx: MetricContext) -> Any:
        """What the values depend on besides the options and ``cache_version`` (JSON-able):
        e.g. the feature extractor's weights hash. It enters the cached value's key, so a
        value measured with other weights is not reused. Default: nothing (``None``)."""
        return None


class WorkUnit(Protocol):
    """Cells that share one model variant (:class:`harness.planner.WorkUnit`).

    ``variant`` is hashable and ``variant.parent()`` names the variant it is derived from
    (``None`` for the teacher), so an executor can run a unit after the units that
    build its ancestors.
    """

    variant: Any
    cells: Sequence[Any]
    #: a readable name for logs and dashboards
    name: str


@runtime_checkable
class Worker(Protocol):
    """What an executor runs units with (:class:`harness.worker.UnitWorker`). Picklable."""

    #: the device the matrix asks for: 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'
    device: str
    #: workers with equal identities are interchangeable: an executor may keep one per
    #: process and hand it later units (it keeps its loaded models)
    identity: Hashable

    def __call__(self, unit: WorkUnit) -> Iterable[Any]:
        """Compute every cell of ``unit``; yields one result per cell."""
        ...

    def error_results(self, unit: WorkUnit, message: str, duration: float = 0.0) -> list[Any]:
        """Error results for every cell of ``unit`` (its task failed where it ran)."""
        ...


class Executor(Plugin):
    """Runs planned work units and yields their results.

    Contract: ``run(units, worker)`` calls ``worker(unit)`` for each :class:`WorkUnit`
    (in this process or elsewhere) and yields the cell results it returns, in any order,
    as they finish; a unit whose task failed yields ``worker.error_results(unit,
    message)``. ``units`` is an iterable handed out lazily: take a unit when you are
    about to run it (or ``list(units)`` to schedule them all). Executors only execute:
    the runner calls the lifecycle hooks (as units are taken) and stores results. Every
    executor gives identical rows for the same matrix (the worker sets torch's threads).
    """

    @classmethod
    def kind_name(cls) -> str:
        return "execution"

    def run(self, units: Iterable[WorkUnit], worker: Worker) -> Iterator[Any]:
        raise NotImplementedError


class Plot(Plugin):
    """A figure from a results DataFrame: ``draw(df, out_dir) -> list[Path]``.

    Contract: reads only the DataFrame (as returned by ``harness.load_results``), writes
    PNG (or other) files under ``out_dir`` and returns their paths; draws nothing (and
    returns ``[]``) when the columns or metrics it needs are absent.
    """

    @classmethod
    def kind_name(cls) -> str:
        return "plots"

    def draw(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        raise NotImplementedError


__all__ = ["Conditions", "Dataset", "DiffusionModel", "Executor", "ImageBatch", "Metric", "MetricContext",
           "ModelFamily", "Plot", "Plugin", "PruneContext", "Pruner", "SampleOutput", "TrainContext", "Worker",
           "WorkUnit"]
