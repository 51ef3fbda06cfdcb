"""Stage 1, variants: the teacher (trained), students (distilled) and pruned models.

A variant is cached as a ``model`` artifact keyed by its config and its parent's key
(pruned <- student or teacher <- teacher), so a second run trains nothing and a new
pruning rate prunes the cached parent. The stored artifact carries the weights (with
pruned shapes), the build time and the MAC count; parameters and sparsity are measured
on every load.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.base import Conditions, DiffusionModel, ImageBatch, PruneContext, Pruner
from harness.options import options_dict
from harness.errors import CellError
from harness.modelio import count_params
from harness.planner import VariantSpec
from harness.session import Session
from harness.sizes import MACS_VERSION, measure_macs, prunable_weights, weight_sparsity

log = logging.getLogger(__name__)


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


def _shapes(net: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(p.shape)) for name, p in net.named_parameters()]


def stored_sparsity(model: DiffusionModel, pruner: Pruner | None = None) -> float:
    """The ``sparsity`` column: the share of zeros among the weights ``pruner`` may touch
    (:meth:`Pruner.prunable_weights`, its ``protect`` scope included); without a pruner
    (teacher, students), among :func:`harness.prunable_weights` outside the model's
    ``protected_modules``. Protected modules match by module path, not substring."""
    if pruner is not None:
        return weight_sparsity(pruner.prunable_weights(model))
    return weight_sparsity(ref.tensor for ref in prunable_weights(model.net, model.protected_modules))


class VariantStage:
    """Builds (or loads) the model variants of one session; keeps the teacher and the last one in memory."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self._loaded: dict[VariantSpec, Variant] = {}
        self._keys: dict[VariantSpec, str] = {}
        self._failed: dict[VariantSpec, str] = {}

    # -- keys ---------------------------------------------------------------------
    def config(self, spec: VariantSpec) -> tuple[dict[str, Any], str | None]:
        """What identifies the variant (hashed into its key), and its parent's key."""
        parent = spec.parent()
        parent_key = self.key(parent) if parent is not None else None
        if spec.is_reference:
            fam = self.s.family(spec)
            return {
                "role": "teacher",
                "dataset": self.s.dataset(spec).config_key(),
                "model": fam.config_key(),
                "train": options_dict(self.s.train_config(spec)) if fam.trainable else None,
                "seed": self.s.cfg.benchmark.seed,
            }, None
        if spec.pruning_method == "none":
            return {"role": "student", "size_factor": spec.size_factor,
                    "distill": options_dict(self.s.distill_config(spec))}, parent_key
        pruner = self.pruner(spec)
        return {"role": "pruned", "method": spec.pruning_method, "rate": spec.pruning_rate,
                "options": options_dict(pruner.options),
                "code": getattr(pruner, "cache_version", "1")}, parent_key

    def key(self, spec: VariantSpec) -> str:
        if spec not in self._keys:
            config, parent = self.config(spec)
            self._keys[spec] = self.s.cache.key("model", config, parent)
        return self._keys[spec]

    def is_stored(self, spec: VariantSpec) -> bool:
        return self.s.cache.exists("model", self.key(spec))

    def pruner(self, spec: VariantSpec) -> Pruner:
        cls = self.s.registry.get("pruners", spec.pruning_method, "matrix.pruning_method")
        return cls(**json.loads(spec.pruner_options))

    # -- load or build ------------------------------------------------------------
    def get(self, spec: VariantSpec) -> Variant:
        """The built variant (from memory, the cache, or built now and cached)."""
        if spec in self._loaded:
            return self._loaded[spec]
        if spec in self._failed:
            raise CellError(f"variant could not be built: {self._failed[spec]}")
        # keep the reference and the most recent variant: enough for unit-by-unit work
        for old in [s for s in self._loaded if not s.is_reference and s != spec]:
            del self._loaded[old]
        config, parent_key = self.config(spec)
        try:
            art = self.s.cache.get_or_create("model", config, lambda: self._build(spec), parent=parent_key,
                                             key=self.key(spec))
        except Exception as exc:
            self._failed[spec] = f"{type(exc).__name__}: {exc}"
            raise
        model = self.s.family(spec).restore(art.tensors, art.meta.get("model_meta", {}), self.s.dataset(spec))
        model = model.to(self.s.device)
        model.net.eval()
        num, nonzero = count_params(model.net)
        # MACs stored by an older counter (before MACS_VERSION 2 attention counted 0) are counted again
        macs = float(art.meta.get("macs", math.nan)) if art.meta.get("macs_version", 1) >= MACS_VERSION \
            else measure_macs(model)
        pruner = None if spec.is_reference or spec.pruning_method == "none" else self.pruner(spec)
        variant = Variant(spec, art.key, model, num, nonzero, stored_sparsity(model, pruner), macs, art.meta)
        self._loaded[spec] = variant
        return variant

    def _build(self, spec: VariantSpec) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        t0 = time.perf_counter()
        if spec.is_reference:
            model = self._train_teacher(spec)
        elif spec.pruning_method == "none":
            model = self._distil_student(spec)
        else:
            model = self._prune(spec)
        model.net.eval()
        tensors, model_meta = self.s.family(spec).state(model)
        macs = math.nan
        parent = spec.parent()
        if parent is not None and spec.pruning_method != "none":
            # zeroed weights do not change the dense MAC count: a pruned net of its parent's
            # shapes has its parent's MACs (counting costs a traced forward)
            p = self.get(parent)
            if _shapes(p.model.net) == _shapes(model.net):
                macs = p.macs
        if not math.isfinite(macs):
            macs = measure_macs(model)
        meta = {"model_meta": model_meta, "build_seconds": time.perf_counter() - t0, "macs": macs,
                "macs_version": MACS_VERSION}
        return tensors, meta

    def _train_teacher(self, spec: VariantSpec) -> DiffusionModel:
        fam, ds = self.s.family(spec), self.s.dataset(spec)
        # initial weights from a seed of the benchmark, not from the global RNG state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.s.seed("init", "teacher") % 2**63)
            model = fam.build(ds).to(self.s.device)
        if not fam.trainable:
            return model
        log.info("training the teacher (%s)", fam.name)
        return fam.train_teacher(model, ds, self.s.train_config(spec), self.s.train_context("teacher"))

    def _distil_student(self, spec: VariantSpec) -> DiffusionModel:
        fam, ds = self.s.family(spec), self.s.dataset(spec)
        teacher = self.get(spec.reference()).model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.s.seed("init", "student", spec.size_factor) % 2**63)
            student = teacher.make_student(float(spec.size_factor)).to(self.s.device)
        log.info("distilling the student of size factor %g", spec.size_factor)
        ctx = self.s.train_context("student", spec.size_factor)
        return fam.distill_student(student, teacher, ds, self.s.distill_config(spec), ctx)

    def _prune(self, spec: VariantSpec) -> DiffusionModel:
        fam, ds = self.s.family(spec), self.s.dataset(spec)
        parent = self.get(spec.parent())  # type: ignore[arg-type]
        # prune a private copy: the parent stays cached in memory unchanged
        tensors, meta = fam.state(parent.model)
        model = fam.restore(tensors, meta, ds).to(self.s.device)
        log.info("pruning with %s at rate %g", spec.pruning_method, spec.pruning_rate)
        return self.pruner(spec).prune(model, spec.pruning_rate, self.prune_context(spec, model))

    def prune_context(self, spec: VariantSpec, model: DiffusionModel) -> PruneContext:
        """The pruner's context; the train split is read only when the pruner needs it.

        The calibration batch is 256 random train images drawn with the pruner's generator,
        which the pruner then continues (as before the batch became lazy, so results and
        cached variants stay the same). A data-free pruner that only draws random numbers
        still triggers the draw; where the train split cannot be loaded, it gets the
        generator fresh.
        """
        fam, ds = self.s.family(spec), self.s.dataset(spec)
        gen = self.s.generator("prune", spec.pruning_method, spec.pruning_rate, spec.size_factor)
        ft_ctx = self.s.train_context("finetune", spec.pruning_method, spec.pruning_rate, spec.size_factor)

        def calibration() -> ImageBatch:
            train = ds.load("train")
            idx = torch.randperm(len(train.images), generator=gen)[: min(len(train.images), 256)]
            return ImageBatch(train.images[idx], _index_conditions(train.conditions, idx))

        def generator() -> torch.Generator:
            try:
                ctx.calibration  # noqa: B018 (draws the calibration batch first, see above)
            except Exception as exc:  # noqa: BLE001 (the pruner never reads the batch: it cannot fail it)
                log.info("no calibration batch for %s (%s); the generator starts fresh", spec.pruning_method, exc)
            return gen

        def finetune(m: DiffusionModel, steps: int) -> DiffusionModel:
            return fam.finetune(m, ds, int(steps), ft_ctx)

        ctx = PruneContext(calibration=calibration, device=self.s.device, generator=generator, finetune=finetune,
                           example_inputs=model.example_inputs(2), seed=self.s.seed("prune"))
        return ctx


def _index_conditions(c: Conditions, idx: torch.Tensor) -> Conditions:
    return Conditions(
        labels=None if c.labels is None else c.labels[idx],
        prompts=None if c.prompts is None else [c.prompts[i] for i in idx.tolist()],
    )
