"""The work of one process: build model variants, sample, measure, through the caches.

Stages and their artifacts (each keyed by the hash of its inputs and its parent's key):

- ``model``: the teacher (trained), students (distilled from the teacher) and pruned
  variants (pruned from a teacher or student), as safetensors + shape metadata;
- ``samples``: the images (and, when a metric needs them, trajectories) of one variant
  for one (sampler, steps, CFG scale, seed, number of samples), with the measured
  generation time;
- ``metric``: the rows of one metric on one sample set (and its reference).

So a second run trains nothing, adding a CFG scale samples only the new scale, and
adding a metric computes only that metric. Everything here is device-agnostic: the
device is resolved once and passed explicitly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.base import (
    Conditions,
    Dataset,
    DiffusionModel,
    ImageBatch,
    Metric,
    MetricContext,
    ModelFamily,
    PruneContext,
    TrainContext,
    options_dict,
)
from harness.diffusion import TORCH_DTYPES, resolve_cfg_batching
from harness.cache import ArtifactCache, canonical_json, stable_hash
from harness.config import BenchConfig
from harness.errors import CellError, UserError
from harness.modelio import count_params
from harness.planner import Cell, VariantSpec, WorkUnit
from harness.schema import size_tier

log = logging.getLogger(__name__)

TRAJECTORY_REQS = frozenset({"trajectories", "reference_trajectories"})
REFERENCE_REQS = frozenset({"reference_samples", "reference_trajectories", "model"})
#: a metric requiring none of these reads no sample set: its cache key leaves them out
SAMPLE_REQS = frozenset({"samples", "reference_samples", "trajectories", "reference_trajectories", "conditions"})


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"execution.device: '{device}' requested but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(device)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any hashable parts (stable across processes and machines)."""
    return int(stable_hash(list(parts), 15), 16)


def generator(*parts: Any) -> torch.Generator:
    """A CPU generator seeded from ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass
class Variant:
    """A built model variant with its measured size."""

    spec: VariantSpec
    key: str
    model: DiffusionModel
    num_params: int
    nonzero_params: int
    sparsity: float
    macs: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SampleSet:
    """One sampling of one variant (images in [0, 1] on CPU).

    ``images`` and ``conditions`` are ``None`` in a statistics-only set (``Engine.samples(...,
    tensors=False)``: the reference's timings when no metric reads its images).
    """

    key: str
    images: torch.Tensor | None
    conditions: Conditions | None
    trajectory: torch.Tensor | None
    timesteps: list[int] | None
    stats: dict[str, float]


@dataclass
class CellResult:
    """The rows of one finished (or failed) cell."""

    cell: Cell
    rows: list[dict[str, Any]]
    status: str
    error: str | None
    duration_s: float


def measure_sparsity(net: torch.nn.Module, protected: tuple[str, ...]) -> float:
    """Share of exactly-zero entries among the weight tensors (dim >= 2) of unprotected modules."""
    total = 0
    zeros = 0
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() < 2 or any(s in name for s in protected):
                continue
            total += p.numel()
            zeros += int((p == 0).sum().item())
    return zeros / total if total else 0.0


def _shapes(net: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(p.shape)) for name, p in net.named_parameters()]


def measure_macs(model: DiffusionModel) -> float:
    """Multiply-accumulates of one denoiser call on one sample (torch's FLOP counter / 2).

    NaN for models that cannot call their denoiser outside their own sampler
    (``example_inputs`` raises ``NotImplementedError``, e.g. SDXL pipelines).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from harness.attention import register_flop_formulas

    # without these formulas attention counts 0 MACs on CPU, and a head-pruned net would
    # look costlier than its parent (its projections are plain linears)
    register_flop_formulas()
    try:
        inputs = model.example_inputs(1)
    except NotImplementedError as exc:
        log.info("MACs not measured: %s", exc)
        return float("nan")
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.net(*inputs)
    return counter.get_total_flops() / 2.0


#: version of the MAC counting stored with variants (2: attention kernels counted)
MACS_VERSION = 2

#: bytes of initial noise the engine keeps for reuse across cells (see Engine.noise)
NOISE_MEMO_BYTES = 64 * 2**20
#: condition sets the engine keeps for reuse across cells (see Engine.conditions)
CONDITIONS_MEMO_ENTRIES = 4096


def is_out_of_memory(exc: BaseException) -> bool:
    """A device out-of-memory error (CUDA's ``OutOfMemoryError`` or an allocator message)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def sample_with_backoff(model: DiffusionModel, noise: torch.Tensor, conditions: Conditions, batch_size: int,
                        **kwargs: Any) -> tuple[Any, int]:
    """``model.sample`` with ``batch_size``, halved after each out-of-memory error (down to 1).

    Samples do not depend on the batch size (the contract of ``sample``), so a retry draws
    the same images. Returns ``(output, batch size that worked)``.
    """
    bs = max(1, int(batch_size))
    while True:
        try:
            return model.sample(noise, conditions, batch_size=bs, **kwargs), bs
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
            if not is_out_of_memory(exc) or bs == 1:
                raise
            if noise.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("sampling ran out of memory at batch size %d; retrying with %d", bs, bs // 2)
            bs //= 2


@contextlib.contextmanager
def sampling_mode(model: DiffusionModel, device: torch.device, dtype: str, compile_mode: str) -> Iterator[None]:
    """Autocast the denoiser to ``dtype`` (fp16/bf16) and/or ``torch.compile`` it, for sampling only.

    The variant's weights stay as they are (fp32 for the built-in models); autocast runs
    the network's matmuls and convolutions in the lower precision. ``compile_mode`` is
    ``torch.compile``'s mode (``none`` = eager); the model's ``compiled(mode)`` context
    swaps in the compiled module (``DiffusionModel.compiled``).
    """
    with contextlib.ExitStack() as stack:
        if dtype != "fp32":
            stack.enter_context(torch.autocast(device_type=device.type, dtype=TORCH_DTYPES[dtype]))
        if compile_mode != "none":
            stack.enter_context(model.compiled(compile_mode))
        yield


class Engine:
    """Builds variants, sample sets and metric rows for cells of one matrix."""

    def __init__(self, cfg: BenchConfig, cache_root: Path, progress: Any = None) -> None:
        from harness import diffusion

        self.cfg = cfg
        self.cache = ArtifactCache(cache_root)
        self.device = resolve_device(cfg.execution.device)
        self.progress = progress
        self.registry = cfg.registry
        self._datasets: dict[str, Dataset] = {}
        self._families: dict[str, ModelFamily] = {}
        self._variants: dict[VariantSpec, Variant] = {}
        self._keys: dict[VariantSpec, str] = {}
        self._failed: dict[VariantSpec, str] = {}
        self._real: dict[str, ImageBatch] = {}
        # per-cell memos (see dataset(), conditions() and noise() for why each is safe)
        self._dataset_for: dict[str, Dataset] = {}
        self._family_for: dict[str, ModelFamily] = {}
        self._conditions: dict[tuple[Any, ...], Conditions] = {}
        self._metrics: dict[tuple[str, str], Metric] = {}
        self._sample_meta: dict[tuple[str, str, bool], SampleSet] = {}
        self._noise: dict[tuple[Any, ...], torch.Tensor] = {}
        self._noise_bytes = 0
        self._train_cls = diffusion.TrainConfig
        self._distill_cls = diffusion.DistillConfig

    # ------------------------------------------------------------------ plugins
    def _overrides(self, spec: VariantSpec) -> dict[str, Any]:
        return json.loads(spec.model_overrides)

    @staticmethod
    def _per_overrides(memo: dict[str, Any], spec: VariantSpec | None, make: Callable[[Any], Any]) -> Any:
        """``make(spec)``, memoised by ``spec``'s overrides string (the only part of ``spec``
        that ``dataset()`` and ``family()`` use): they are called several times per cell,
        and what they resolve depends only on that string and the matrix."""
        over_key = spec.model_overrides if spec else ""
        found = memo.get(over_key)
        if found is None:
            found = memo[over_key] = make(spec)
        return found

    def dataset(self, spec: VariantSpec | None = None) -> Dataset:
        return self._per_overrides(self._dataset_for, spec, self._make_dataset)

    def _make_dataset(self, spec: VariantSpec | None) -> Dataset:
        over = self._overrides(spec) if spec else {}
        opts = {**self.cfg.dataset.options, **{k.split(".", 1)[1]: v for k, v in over.items() if k.startswith("dataset.")}}
        key = json.dumps(opts, sort_keys=True, default=str)
        if key not in self._datasets:
            cls = self.registry.get("datasets", self.cfg.dataset.name, "dataset.name")
            self._datasets[key] = cls(**opts)
        return self._datasets[key]

    def family(self, spec: VariantSpec | None = None) -> ModelFamily:
        return self._per_overrides(self._family_for, spec, self._make_family)

    def _make_family(self, spec: VariantSpec | None) -> ModelFamily:
        over = self._overrides(spec) if spec else {}
        opts = {
            **self.cfg.model.options,
            **{k.split(".", 1)[1]: v for k, v in over.items() if k.startswith("model.") and k.count(".") == 1},
        }
        key = json.dumps(opts, sort_keys=True, default=str)
        if key not in self._families:
            cls = self.registry.get("models", self.cfg.model.name, "model.name")
            self._families[key] = cls(**opts)
        return self._families[key]

    def train_config(self, spec: VariantSpec) -> Any:
        over = self._overrides(spec)
        table = {**self.cfg.train, **{k.split(".", 2)[2]: v for k, v in over.items() if k.startswith("model.train.")}}
        return self._train_cls(**table)

    def distill_config(self, spec: VariantSpec) -> Any:
        over = self._overrides(spec)
        table = {**self.cfg.distill, **{k.split(".", 2)[2]: v for k, v in over.items() if k.startswith("model.distill.")}}
        distill = self._distill_cls(**table)
        if distill.epochs is None:
            distill = dataclasses.replace(distill, epochs=max(1, self.train_config(spec).epochs // 2))
        return distill

    def train_context(self, *seed_parts: Any) -> TrainContext:
        seed = derive_seed(self.cfg.benchmark.seed, *seed_parts)
        return TrainContext(
            device=self.device,
            generator=torch.Generator().manual_seed(seed),
            seed=seed,
            progress=self.progress.task if self.progress is not None else None,
            log=log.info,
        )

    # ------------------------------------------------------------------ variants
    def _variant_config(self, spec: VariantSpec) -> tuple[dict[str, Any], str | None]:
        parent = spec.parent()
        parent_key = self.variant_key(parent) if parent is not None else None
        if spec.is_reference:
            fam = self.family(spec)
            return {
                "role": "teacher",
                "dataset": self.dataset(spec).config_key(),
                "model": fam.config_key(),
                "train": dataclasses.asdict(self.train_config(spec)) if fam.trainable else None,
                "seed": self.cfg.benchmark.seed,
            }, None
        if spec.pruning_method == "none":
            return {"role": "student", "size_factor": spec.size_factor,
                    "distill": dataclasses.asdict(self.distill_config(spec))}, parent_key
        pruner = self.pruner(spec)
        return {"role": "pruned", "method": spec.pruning_method, "rate": spec.pruning_rate,
                "options": options_dict(pruner.options),
                "code": getattr(pruner, "cache_version", "1")}, parent_key

    def variant_key(self, spec: VariantSpec) -> str:
        if spec not in self._keys:
            config, parent = self._variant_config(spec)
            self._keys[spec] = self.cache.key("model", config, parent)
        return self._keys[spec]

    def pruner(self, spec: VariantSpec) -> Any:
        cls = self.registry.get("pruners", spec.pruning_method, "matrix.pruning_method")
        return cls(**json.loads(spec.pruner_options))

    def variant(self, spec: VariantSpec) -> Variant:
        """The built variant (from memory, the cache, or built now and cached)."""
        if spec in self._variants:
            return self._variants[spec]
        if spec in self._failed:
            raise CellError(f"variant could not be built: {self._failed[spec]}")
        # keep the reference and the most recent variant: enough for unit-by-unit work
        for old in [s for s in self._variants if not s.is_reference and s != spec]:
            del self._variants[old]
        config, parent_key = self._variant_config(spec)
        fam = self.family(spec)
        ds = self.dataset(spec)
        try:
            art = self.cache.get_or_create("model", config, lambda: self._build_gated(spec), parent=parent_key)
        except Exception as exc:
            self._failed[spec] = f"{type(exc).__name__}: {exc}"
            raise
        model = fam.restore(art.tensors, art.meta.get("model_meta", {}), ds).to(self.device)
        model.net.eval()
        num, nonzero = count_params(model.net)
        variant = Variant(
            spec=spec,
            key=art.key,
            model=model,
            num_params=num,
            nonzero_params=nonzero,
            sparsity=measure_sparsity(model.net, model.protected_modules),
            macs=self._macs(art, model),
            meta=art.meta,
        )
        self._variants[spec] = variant
        return variant

    def _macs(self, art: Any, model: DiffusionModel) -> float:
        """The variant's MACs: stored with it, or measured again if counted by an older
        counter (before ``MACS_VERSION`` 2 attention counted 0 MACs on CPU)."""
        if art.meta.get("macs_version", 1) >= MACS_VERSION:
            return float(art.meta.get("macs", float("nan")))
        return measure_macs(model)

    def _build_gated(self, spec: VariantSpec) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self._build(spec)

    def _build(self, spec: VariantSpec) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        fam = self.family(spec)
        ds = self.dataset(spec)
        t0 = time.perf_counter()
        if spec.is_reference:
            # initial weights from a seed of the benchmark, not from the global RNG state
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(self.cfg.benchmark.seed, "init", "teacher") % 2**63)
                model = fam.build(ds).to(self.device)
            if fam.trainable:
                log.info("training the teacher (%s)", fam.name)
                model = fam.train_teacher(model, ds, self.train_config(spec), self.train_context("teacher"))
        elif spec.pruning_method == "none":
            teacher = self.variant(spec.reference()).model
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(self.cfg.benchmark.seed, "init", "student", spec.size_factor) % 2**63)
                student = teacher.make_student(float(spec.size_factor)).to(self.device)
            log.info("distilling the student of size factor %g", spec.size_factor)
            model = fam.distill_student(
                student, teacher, ds, self.distill_config(spec), self.train_context("student", spec.size_factor)
            )
        else:
            parent = self.variant(spec.parent())  # type: ignore[arg-type]
            # prune a private copy: the parent stays cached in memory unchanged
            tensors, meta = fam.state(parent.model)
            model = fam.restore(tensors, meta, ds).to(self.device)
            pruner = self.pruner(spec)
            ctx = self.prune_context(spec, model, ds, fam)
            log.info("pruning with %s at rate %g", spec.pruning_method, spec.pruning_rate)
            model = pruner.prune(model, spec.pruning_rate, ctx)
        model.net.eval()
        tensors, model_meta = fam.state(model)
        macs = None
        if not spec.is_reference and spec.pruning_method != "none":
            # zeroed weights do not change the dense MAC count: a pruned net of its parent's
            # shapes has its parent's MACs (counting costs a traced forward, ~0.1 s a variant)
            parent = self.variant(spec.parent())  # type: ignore[arg-type]
            if _shapes(parent.model.net) == _shapes(model.net) and math.isfinite(parent.macs):
                macs = parent.macs
        if macs is None:
            macs = measure_macs(model)
        meta = {"model_meta": model_meta, "build_seconds": time.perf_counter() - t0, "macs": macs,
                "macs_version": MACS_VERSION}
        return tensors, meta

    def prune_context(self, spec: VariantSpec, model: DiffusionModel, ds: Dataset, fam: ModelFamily) -> PruneContext:
        train = ds.load("train")
        gen = generator(self.cfg.benchmark.seed, "prune", spec.pruning_method, spec.pruning_rate, spec.size_factor)
        n = min(len(train.images), 256)
        idx = torch.randperm(len(train.images), generator=gen)[:n]
        calib = ImageBatch(train.images[idx], _index_conditions(train.conditions, idx))
        ft_ctx = self.train_context("finetune", spec.pruning_method, spec.pruning_rate, spec.size_factor)

        def finetune(m: DiffusionModel, steps: int) -> DiffusionModel:
            return fam.finetune(m, ds, int(steps), ft_ctx)

        return PruneContext(
            calibration=calib,
            device=self.device,
            generator=gen,
            finetune=finetune,
            example_inputs=model.example_inputs(2),
            seed=derive_seed(self.cfg.benchmark.seed, "prune"),
        )

    # ------------------------------------------------------------------ samples
    def sample_config(self, variant_key: str, cell: Cell, trajectory: bool) -> dict[str, Any]:
        return {
            "variant": variant_key,
            "sampler": cell.axes["sampler"],
            "steps": cell.axes["steps"],
            "cfg_scale": cell.axes["cfg_scale"],
            "seed": cell.axes["seed"],
            "bench_seed": self.cfg.benchmark.seed,
            "num_samples": cell.sampling["num_samples"],
            "trajectory_samples": cell.sampling["trajectory_samples"] if trajectory else 0,
            "dataset": self.dataset(cell.variant).config_key(),
            **({"dtype": cell.sampling["dtype"]} if cell.sampling.get("dtype", "fp32") != "fp32" else {}),
            # generation_time and peak_memory_mb are measured with the samples: a new batch
            # size, CFG batching, warm-up or device draws (and times) them again
            "timing": {
                "batch_size": cell.sampling.get("batch_size", self.cfg.sampling.batch_size),
                "cfg_batching": resolve_cfg_batching(cell.sampling.get("cfg_batching", "auto"), self.device),
                "warmup": bool(cell.sampling.get("warmup", True)),
                "device": self.device.type,
                **({"compile": cell.sampling["compile"]} if cell.sampling.get("compile", "none") != "none" else {}),
            },
        }

    def conditions(self, cell: Cell, n: int) -> Conditions:
        """Paired design: the conditions depend only on (benchmark seed, cell seed).

        Memoised per (dataset, cell seed, n): ``Dataset.sample_conditions`` is a pure
        function of its freshly seeded generator (the Dataset contract), so every cell of
        a seed gets the same conditions; each caller gets its own copy (labels cloned,
        prompts list copied), so a caller that changes them cannot change another's.
        """
        memo_key = (cell.variant.model_overrides, self.cfg.benchmark.seed, cell.axes["seed"], n)
        found = self._conditions.get(memo_key)
        if found is None:
            gen = generator(self.cfg.benchmark.seed, cell.axes["seed"], "conditions")
            found = self.dataset(cell.variant).sample_conditions(n, gen)
            if len(self._conditions) < CONDITIONS_MEMO_ENTRIES:
                self._conditions[memo_key] = found
            else:
                return found
        return dataclasses.replace(
            found,
            labels=None if found.labels is None else found.labels.clone(),
            prompts=None if found.prompts is None else list(found.prompts),
        )

    def noise(self, cell: Cell, shape: tuple[int, ...], n: int) -> torch.Tensor:
        """Paired design: sample i's initial noise depends only on (benchmark seed, cell seed, i).

        Memoised per (cell seed, shape, n), up to ``NOISE_MEMO_BYTES`` in all (the first
        sets drawn are kept; no eviction, so a large matrix still hits on those): every
        cell of a seed draws the same noise, one seeded generator per sample. Callers get
        a clone, so a sampler that works on the noise in place cannot change another
        cell's.
        """
        memo_key = (self.cfg.benchmark.seed, cell.axes["seed"], tuple(shape), n)
        found = self._noise.get(memo_key)
        if found is None:
            found = torch.empty((n, *shape))
            for i in range(n):
                gen = generator(self.cfg.benchmark.seed, cell.axes["seed"], "noise", i)
                found[i] = torch.randn(shape, generator=gen)
            size = found.numel() * found.element_size()
            if self._noise_bytes + size > NOISE_MEMO_BYTES:
                return found
            self._noise[memo_key] = found
            self._noise_bytes += size
        return found.clone()

    def samples(self, variant_spec: VariantSpec, cell: Cell, trajectory: bool, tensors: bool = True) -> SampleSet:
        """The sample set of ``variant_spec`` under ``cell``'s sampling settings.

        :param tensors: ``False``: only its key and statistics are needed; a stored set's
            metadata is read without its tensors (a set not stored yet is drawn as usual).
        """
        config_traj = self.sample_config(self.variant_key(variant_spec), cell, True)
        # sample_config(..., False) differs only in this entry: build and hash it once
        config_plain = {**config_traj, "trajectory_samples": 0}
        key_traj = self.cache.key("samples", config_traj)
        key_plain = self.cache.key("samples", config_plain)
        # statistics-only sets are memoised: every cell of every unit asks for the
        # reference's timings, and an artifact never changes under its key
        memo_key = (key_traj, key_plain, trajectory)
        if not tensors and memo_key in self._sample_meta:
            return self._sample_meta[memo_key]
        traj_stored = self.cache.exists("samples", key_traj)
        if not tensors:
            key = key_traj if trajectory or traj_stored else key_plain
            if traj_stored if key == key_traj else self.cache.exists("samples", key):
                meta = self.cache.load_meta("samples", key)
                found = self._sample_meta[memo_key] = SampleSet(
                    key, None, None, None, meta.get("timesteps"), dict(meta["stats"]))
                return found
        if not trajectory and traj_stored:
            art = self.cache.load("samples", key_traj)  # a set with trajectories serves too
        else:
            # get_or_create looks the key up itself (no second stat here), and what it
            # returns is what loading the artifact gives (no second read)
            config, key = (config_traj, key_traj) if trajectory else (config_plain, key_plain)
            art = self.cache.get_or_create("samples", config, lambda: self._sample(variant_spec, cell, trajectory),
                                           key=key)
        if variant_spec.is_reference:
            self._sample_meta[memo_key] = SampleSet(
                art.key, None, None, None, art.meta.get("timesteps"), dict(art.meta["stats"]))
        n = cell.sampling["num_samples"]
        return SampleSet(
            key=art.key,
            images=art.tensors["images"],
            conditions=self.conditions(cell, n),
            trajectory=art.tensors.get("trajectory"),
            timesteps=art.meta.get("timesteps"),
            stats=dict(art.meta["stats"]),
        )

    def _sample(self, spec: VariantSpec, cell: Cell, trajectory: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        variant = self.variant(spec)
        model = variant.model
        n = cell.sampling["num_samples"]
        conditions = self.conditions(cell, n)
        noise = self.noise(cell, tuple(model.sample_shape), n)
        kwargs = dict(
            cfg_scale=cell.axes["cfg_scale"],
            sampler=cell.axes["sampler"],
            steps=cell.axes["steps"],
            cfg_batching=cell.sampling.get("cfg_batching", self.cfg.sampling.cfg_batching),
        )
        batch_size = int(cell.sampling.get("batch_size", self.cfg.sampling.batch_size))
        cuda = self.device.type == "cuda"
        with sampling_mode(model, self.device, cell.sampling.get("dtype", "fp32"), cell.sampling.get("compile", "none")):
            if cell.sampling.get("warmup", True):
                m = min(n, 4)
                _, batch_size = sample_with_backoff(
                    model, noise[:m].to(self.device), conditions.slice(0, m), batch_size,
                    record_trajectory=False, generator=generator(0, "warmup"), **kwargs)
            while True:  # an out-of-memory retry re-times the whole set
                if cuda:
                    torch.cuda.synchronize(self.device)
                    torch.cuda.reset_peak_memory_stats(self.device)
                t0 = time.perf_counter()
                out, used = sample_with_backoff(
                    model, noise.to(self.device), conditions, batch_size, record_trajectory=trajectory,
                    generator=generator(self.cfg.benchmark.seed, cell.axes["seed"], "sampler"), **kwargs)
                if cuda:
                    torch.cuda.synchronize(self.device)
                elapsed = time.perf_counter() - t0
                if used == batch_size:
                    break
                batch_size = used
        if cuda:
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            # CPU: no allocator statistics; the process's peak resident set size (an upper bound)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
        images = out.images.detach().float().cpu()
        if not torch.isfinite(images).all():
            raise CellError(f"sampling produced non-finite values ({int((~torch.isfinite(images)).sum())} entries)")
        tensors = {"images": images.contiguous()}
        if trajectory and out.trajectory is not None:
            m = min(n, cell.sampling["trajectory_samples"])
            tensors["trajectory"] = out.trajectory[:, :m].detach().float().cpu().contiguous()
        meta = {
            "stats": {"generation_time": elapsed / n, "peak_memory_mb": peak, "sampling_seconds": elapsed},
            "timesteps": list(out.timesteps) if out.timesteps is not None else None,
            "device": str(self.device),
            "batch_size_used": batch_size,
        }
        return tensors, meta

    # ------------------------------------------------------------------ metrics
    def real_images(self, spec: VariantSpec) -> torch.Tensor:
        ds = self.dataset(spec)
        key = json.dumps(ds.config_key(), sort_keys=True, default=str)
        if key not in self._real:
            self._real[key] = ds.load("reference")
        return ((self._real[key].images + 1) / 2).clamp(0, 1)

    def run_cell(self, cell: Cell) -> CellResult:
        """Sample and measure one cell; failures become an error result."""
        t0 = time.perf_counter()
        try:
            rows, info = self._measure(cell)
        except (Exception, UserError) as exc:  # noqa: BLE001 - a failing cell must not stop the run
            log.debug("cell %s failed:\n%s", cell.name, traceback.format_exc())
            message = f"{type(exc).__name__}: {exc}".strip()
            return error_result(self.cfg, cell, message, time.perf_counter() - t0)
        duration = time.perf_counter() - t0
        out = [self._row(cell, r, info, duration) for r in rows]
        return CellResult(cell, out, "ok", None, duration)

    def metric_objects(self, cell: Cell) -> list[tuple[str, Metric]]:
        """The cell's metric plugins, one object per (name, options) for the engine's life
        (a metric may keep loaded weights on itself between cells)."""
        objs = []
        for spec in self.cfg.metrics:
            options = cell.metric_options.get(spec.name, spec.options)
            memo_key = (spec.name, canonical_json(options))
            metric = self._metrics.get(memo_key)
            if metric is None:
                metric = self._metrics[memo_key] = self.registry.get("metrics", spec.name)(**options)
            objs.append((spec.name, metric))
        return objs

    def _measure(self, cell: Cell) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        metrics = self.metric_objects(cell)
        requires = frozenset().union(*(type(m).requires for _, m in metrics)) if metrics else frozenset()
        want_traj = bool(requires & TRAJECTORY_REQS)
        variant = self.variant(cell.variant)
        samples = self.samples(cell.variant, cell, want_traj)
        ref_spec = cell.variant.reference()
        # the reference's images only when a metric reads them; its timings always (speedup)
        ref_tensors = bool(requires & {"reference_samples", "reference_trajectories"})
        reference = samples if cell.variant.is_reference else self.samples(ref_spec, cell, want_traj, ref_tensors)
        ref_variant = variant if cell.variant.is_reference else self.variant(ref_spec)
        info = {
            "num_params": variant.num_params,
            "nonzero_params": variant.nonzero_params,
            "sparsity": variant.sparsity,
            "macs": variant.macs,
            "param_ratio": variant.num_params / ref_variant.num_params if ref_variant.num_params else float("nan"),
            "speedup": reference.stats["generation_time"] / samples.stats["generation_time"]
            if samples.stats.get("generation_time")
            else float("nan"),
            "num_samples": int(samples.images.shape[0]),
        }
        rows: list[dict[str, Any]] = []
        for name, metric in metrics:
            rows.extend(self._metric_rows(cell, name, metric, variant, samples, ref_variant, reference))
        return rows, info

    def _metric_rows(
        self,
        cell: Cell,
        name: str,
        metric: Metric,
        variant: Variant,
        samples: SampleSet,
        ref_variant: Variant,
        reference: SampleSet,
    ) -> list[dict[str, Any]]:
        req = type(metric).requires
        config: dict[str, Any] = {
            "metric": name,
            "options": options_dict(metric.options),
            "code": getattr(metric, "cache_version", "1"),
            "variant": variant.key if "model" in req else None,
            "cell_seed": cell.axes["seed"],
            "bench_seed": self.cfg.benchmark.seed,
        }
        if req & SAMPLE_REQS:
            config.update({
                "samples": samples.key,
                # which drawing of that sample set: rebuilt samples (a deleted cache) are measured
                # anew, so timings and everything computed from them are recomputed too
                "drawn": samples.stats.get("sampling_seconds"),
                "reference": reference.key if req & REFERENCE_REQS else None,
                "reference_drawn": reference.stats.get("sampling_seconds") if req & REFERENCE_REQS else None,
            })
        else:
            # reads no sample set (e.g. the networks on real data): one value per model,
            # shared by its cells at every CFG scale, sampler and number of samples
            config.update({
                "reference_variant": ref_variant.key if "model" in req else None,
                "dataset": self.dataset(cell.variant).config_key() if "real_images" in req else None,
            })

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            ctx = MetricContext(
                cell=cell,
                device=self.device,
                generator=generator(self.cfg.benchmark.seed, cell.axes["seed"], "metric", name),
                dataset=self.dataset(cell.variant),
                sampling_stats=dict(samples.stats),
                cache=self.cache,
                timesteps=samples.timesteps,
                samples=samples.images,
                conditions=samples.conditions,
            )
            if "reference_samples" in req:
                ctx.reference_samples = reference.images
            if "trajectories" in req:
                ctx.trajectories = samples.trajectory
            if "reference_trajectories" in req:
                ctx.reference_trajectories = reference.trajectory
            if "real_images" in req:
                ctx.real_images = self.real_images(cell.variant)
            if "model" in req:
                ctx.model = variant.model
                ctx.reference_model = ref_variant.model
            result = metric.compute(ctx)
            rows = normalise_metric_result(name, result)
            # blobs (bytes) cannot go in the JSON metadata: row i's is tensor "blob.i"
            blobs = {f"blob.{i}": torch.frombuffer(bytearray(r.pop("blob")), dtype=torch.uint8)
                     for i, r in enumerate(rows) if "blob" in r}
            return blobs, {"rows": rows}

        if type(metric).cached:
            # a value's key holds the cell's sample keys (or, for a metric that reads no
            # samples, its models' keys)
            art = self.cache.get_or_create("metric", config, compute)
            tensors, meta = art.tensors, art.meta
        else:
            tensors, meta = compute()
        hib = bool(type(metric).higher_is_better)
        out = []
        for i, r in enumerate(meta["rows"]):
            blob = tensors.get(f"blob.{i}")
            out.append({**r, "higher_is_better": r.get("higher_is_better", hib),
                        **({"blob": blob.numpy().tobytes()} if blob is not None else {})})
        return out

    # ------------------------------------------------------------------ rows
    def _row(self, cell: Cell, r: dict[str, Any] | None, info: dict[str, Any], duration: float,
             error: str | None = None) -> dict[str, Any]:
        return cell_row(self.cfg, cell, r, info, duration, error)


def cell_row(cfg: BenchConfig, cell: Cell, r: dict[str, Any] | None, info: dict[str, Any], duration: float,
             error: str | None = None) -> dict[str, Any]:
    """One result row of ``cell``: metric row ``r`` plus the cell's columns (``info``: measured sizes)."""
    sf = cell.axes["size_factor"]
    row = {
        "cell_id": cell.cell_id,
        "cell_name": cell.name,
        "role": cell.role,
        "model": cfg.model.name,
        "size_factor": float("nan") if sf is None else float(sf),
        "size_tier": size_tier(sf),
        "param_ratio": info.get("param_ratio", float("nan")),
        "pruning_method": cell.axes["pruning_method"],
        "pruning_rate": float(cell.axes["pruning_rate"]),
        "sparsity": info.get("sparsity", float("nan")),
        "cfg_scale": float(cell.axes["cfg_scale"]),
        "sampler": cell.axes["sampler"],
        "steps": int(cell.axes["steps"]),
        "seed": int(cell.axes["seed"]),
        "dataset": cfg.dataset.name,
        "num_samples": info.get("num_samples", cell.sampling["num_samples"]),
        "reference": None if r is None else r.get("reference"),
        "num_reference": None if r is None else r.get("num_reference"),
        "num_params": info.get("num_params"),
        "nonzero_params": info.get("nonzero_params"),
        "macs": info.get("macs", float("nan")),
        "speedup": info.get("speedup", float("nan")),
        "metric": None if r is None else r["metric"],
        "value": float("nan") if r is None else float(r["value"]),
        "timestep": float("nan") if r is None or r.get("timestep") is None else float(r["timestep"]),
        "higher_is_better": None if r is None else bool(r["higher_is_better"]),
        "status": "error" if error else "ok",
        "error": error,
        "duration_s": duration,
        "blob": None if r is None else r.get("blob"),
    }
    row.update(cell.option_columns())
    return row


def error_result(cfg: BenchConfig, cell: Cell, message: str, duration: float) -> CellResult:
    """The result of a failed cell: one error row per metric (the store keys rows by metric)."""
    failed = [{"metric": m.name, "value": float("nan"),
               "higher_is_better": cfg.registry.get("metrics", m.name).higher_is_better}
              for m in cfg.metrics]
    rows = [cell_row(cfg, cell, r, {}, duration, error=message) for r in failed]
    return CellResult(cell, rows, "error", message, duration)


def normalise_metric_result(name: str, result: Any) -> list[dict[str, Any]]:
    """float | {name: float} | [row dicts] -> row dicts with finite float values.

    A row dict may carry ``reference`` (str: the reference statistics it was measured
    against), ``num_reference`` (int: how many real images they hold) and ``blob``: bytes
    (the ``.npy`` of a small array, see ``harness.schema.encode_blob``), kept as
    ``bytes``; other extra keys are dropped.
    """
    if isinstance(result, dict):
        rows = [{"metric": k, "value": v} for k, v in result.items()]
    elif isinstance(result, (list, tuple)):
        rows = [dict(r) for r in result]
    else:
        rows = [{"metric": name, "value": result}]
    out = []
    for r in rows:
        if "metric" not in r or "value" not in r:
            raise CellError(f"metric '{name}' returned a row without 'metric' and 'value': {r!r}")
        value = float(r["value"])
        if not math.isfinite(value):
            raise CellError(f"metric '{name}' returned {'NaN' if math.isnan(value) else value} for '{r['metric']}'")
        clean = {"metric": str(r["metric"]), "value": value}
        if r.get("timestep") is not None:
            clean["timestep"] = float(r["timestep"])
        if "higher_is_better" in r:
            clean["higher_is_better"] = bool(r["higher_is_better"])
        if r.get("reference") is not None:  # which reference statistics (FID-like metrics)
            clean["reference"] = str(r["reference"])
        if r.get("num_reference") is not None:
            clean["num_reference"] = int(r["num_reference"])
        if r.get("blob") is not None:
            if not isinstance(r["blob"], (bytes, bytearray, memoryview)) or not len(r["blob"]):
                raise CellError(f"metric '{name}' returned a blob of type {type(r['blob']).__name__} for "
                                f"'{r['metric']}'; a blob is non-empty bytes (harness.schema.encode_blob(array))")
            clean["blob"] = bytes(r["blob"])
        out.append(clean)
    return out


def _index_conditions(c: Conditions, idx: torch.Tensor) -> Conditions:
    return Conditions(
        labels=None if c.labels is None else c.labels[idx],
        prompts=None if c.prompts is None else [c.prompts[i] for i in idx.tolist()],
    )


class UnitWorker:
    """Runs work units (picklable, so executors can ship it to other processes).

    Pickling drops the in-process parts: the loaded matrix and engine (another process
    reloads the matrix from ``cfg_path`` + ``overrides``, so ship absolute paths), the
    progress display and ``on_start``. ``on_start(cell)`` is the runner's "cell started"
    callback (progress line, ``bench_before_cell``); called here before each cell when the
    worker runs in the runner's process. An executor that runs the worker elsewhere calls
    ``work.on_start(cell)`` itself, in the runner's process, when it hands the unit out.
    """

    def __init__(
        self, cfg_path: str, overrides: list[str], results_dir: str, cache_dir: str, cfg: BenchConfig | None = None
    ) -> None:
        self.cfg_path = cfg_path
        self.overrides = overrides
        self.results_dir = results_dir
        self.cache_dir = cache_dir
        self._cfg = cfg  # reused in-process; other processes reload the matrix file
        self._engine: Engine | None = None
        self.progress: Any = None
        self.on_start: Callable[[Cell], None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_engine=None, _cfg=None, progress=None, on_start=None)
        return state

    @property
    def config(self) -> BenchConfig:
        """The matrix (given in-process; loaded from ``cfg_path`` once per process otherwise)."""
        if self._cfg is None:
            from harness.config import load_matrix

            self._cfg = load_matrix(self.cfg_path, self.overrides, results_dir=self.results_dir)
        return self._cfg

    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.config, Path(self.cache_dir), progress=self.progress)
        return self._engine

    def error_results(self, unit: WorkUnit, message: str, duration: float = 0.0) -> list[CellResult]:
        """Error results for every cell of ``unit`` (for executors whose worker died on it)."""
        return [error_result(self.config, cell, message, duration) for cell in unit.cells]

    def __call__(self, unit: WorkUnit) -> Iterator[CellResult]:
        engine = self.engine()
        for cell in unit.cells:
            if self.on_start is not None:
                self.on_start(cell)
            yield engine.run_cell(cell)
