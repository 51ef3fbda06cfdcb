"""What the three stages of one process share: the matrix, the cache, the device, plugin objects.

A :class:`Session` is made once per worker process (see :mod:`harness.worker`) and handed
to the variant, sample and metric stages. It resolves the device once, makes the dataset
and model family of a variant (a swept ``model.*`` / ``dataset.*`` option makes another
one), the training options of a variant, and every seed: all randomness of a run derives
from the benchmark seed and named parts (:func:`derive_seed`), never from global state.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from harness.base import Dataset, ModelFamily, TrainContext
from harness.cache import ArtifactCache, stable_hash
from harness.config import BenchConfig
from harness.errors import UserError
from harness.planner import VariantSpec

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"execution.device: '{device}' requested but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(device)


def default_threads() -> int:
    """The thread count when ``[execution] threads`` is not set: torch's own default in the
    process that plans the run (what a plain local run has always used), resolved once
    there and handed to every worker, whatever the executor."""
    return torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, then restore the previous number.

    Training results depend on the thread count (reductions are split differently), so
    every executor runs every unit with the run's one resolved count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any hashable parts (stable across processes and machines)."""
    return int(stable_hash(list(parts), 15), 16)


def generator(*parts: Any) -> torch.Generator:
    """A CPU generator seeded from ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


class Session:
    """The matrix, cache and device of one process, and the plugin objects they make."""

    def __init__(self, cfg: BenchConfig, cache_root: Path, progress: Any = None) -> None:
        self.cfg = cfg
        self.cache = ArtifactCache(cache_root)
        self.device = resolve_device(cfg.execution.device)
        self.progress = progress
        self.registry = cfg.registry
        self._plugins: dict[tuple[str, str], Any] = {}

    # -- seeds --------------------------------------------------------------------
    def seed(self, *parts: Any) -> int:
        """A seed of this benchmark (its ``benchmark.seed``) for ``parts``."""
        return derive_seed(self.cfg.benchmark.seed, *parts)

    def generator(self, *parts: Any) -> torch.Generator:
        return generator(self.cfg.benchmark.seed, *parts)

    # -- plugin objects -----------------------------------------------------------
    @staticmethod
    def overrides(spec: VariantSpec | None, prefix: str) -> dict[str, Any]:
        """The swept options of ``spec`` under ``prefix`` (e.g. ``model.train.``), prefix removed."""
        over = json.loads(spec.model_overrides) if spec is not None else {}
        return {k[len(prefix):]: v for k, v in over.items() if k.startswith(prefix) and "." not in k[len(prefix):]}

    def dataset(self, spec: VariantSpec | None = None) -> Dataset:
        """The dataset of ``spec`` (one object per distinct options, for the session's life)."""
        return self._plugin("datasets", self.cfg.dataset, self.overrides(spec, "dataset."), "dataset.name")

    def family(self, spec: VariantSpec | None = None) -> ModelFamily:
        """The model family of ``spec`` (one object per distinct options)."""
        return self._plugin("models", self.cfg.model, self.overrides(spec, "model."), "model.name")

    def _plugin(self, kind: str, spec: Any, swept: dict[str, Any], where: str) -> Any:
        options = {**spec.options, **swept}
        key = (kind, json.dumps(options, sort_keys=True, default=str))
        if key not in self._plugins:
            self._plugins[key] = self.registry.get(kind, spec.name, where)(**options)
        return self._plugins[key]

    def train_config(self, spec: VariantSpec) -> Any:
        """The teacher's training options: ``[model.train]`` plus swept ``model.train.*``."""
        table = {**self.cfg.train, **self.overrides(spec, "model.train.")}
        return self.family(spec).train_config(table)

    def distill_config(self, spec: VariantSpec) -> Any:
        """A student's distillation options: ``[model.distill]`` plus swept ``model.distill.*``."""
        table = {**self.cfg.distill, **self.overrides(spec, "model.distill.")}
        return self.family(spec).distill_config(table, self.train_config(spec))

    def train_context(self, *seed_parts: Any) -> TrainContext:
        seed = self.seed(*seed_parts)
        return TrainContext(
            device=self.device,
            generator=torch.Generator().manual_seed(seed),
            seed=seed,
            progress=self.progress.task if self.progress is not None else None,
            log=log.info,
        )
