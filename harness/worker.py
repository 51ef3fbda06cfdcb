"""The worker: runs a work unit's cells through the three stages and returns their rows.

For each cell: the variant (stage 1, :mod:`harness.variants`), its sample set and its
reference's (stage 2, :mod:`harness.samples`), then each metric's value (stage 3,
:mod:`harness.metric_values`), every stage through the artifact cache. A failing cell
becomes an error result; the run goes on.

:class:`UnitWorker` is what executors receive (the :class:`harness.base.Worker`
protocol): picklable, so an executor may run it in other processes, which reload the
matrix file from its absolute path and overrides.
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import BenchConfig
from harness.errors import UserError
from harness.metric_values import TRAJECTORY_REQS, CellInputs, MetricStage
from harness.planner import Cell, WorkUnit
from harness.samples import SampleStage
from harness.schema import ResultRow, size_tier
from harness.session import Session, torch_threads
from harness.variants import Variant, VariantStage

log = logging.getLogger(__name__)


@dataclass
class CellResult:
    """The rows of one finished (or failed) cell."""

    cell: Cell
    rows: list[ResultRow]
    status: str
    error: str | None
    duration_s: float


class Stages:
    """The three stages of one session, and how a cell goes through them."""

    def __init__(self, cfg: BenchConfig, cache_dir: Path, progress: Any = None) -> None:
        self.session = Session(cfg, cache_dir, progress=progress)
        self.variants = VariantStage(self.session)
        self.samples = SampleStage(self.session, self.variants)
        self.metrics = MetricStage(self.session)

    def run_cell(self, cell: Cell) -> CellResult:
        """Sample and measure one cell; failures become an error result."""
        cfg = self.session.cfg
        t0 = time.perf_counter()
        try:
            rows = self._measure(cell)
        except (Exception, UserError) as exc:  # noqa: BLE001 - a failing cell must not stop the run
            log.debug("cell %s failed:\n%s", cell.name, traceback.format_exc())
            return error_result(cfg, cell, f"{type(exc).__name__}: {exc}".strip(), time.perf_counter() - t0)
        duration = time.perf_counter() - t0
        for row in rows:
            row.duration_s = duration
        return CellResult(cell, rows, "ok", None, duration)

    def inputs(self, cell: Cell, requires: frozenset[str]) -> CellInputs:
        """The cell's variant and samples, and its reference's (the reference's images
        only when a metric reads them; its timings always, for ``speedup``)."""
        traj = bool(requires & TRAJECTORY_REQS)
        variant = self.variants.get(cell.variant)
        samples = self.samples.get(cell.variant, cell, traj)
        if cell.variant.is_reference:
            return CellInputs(variant, samples, variant, samples)
        ref_spec = cell.variant.reference()
        if requires & {"reference_samples", "reference_trajectories"}:
            reference = self.samples.get(ref_spec, cell, traj)
        else:
            reference = self.samples.stats(ref_spec, cell, traj)
        return CellInputs(variant, samples, self.variants.get(ref_spec), reference)

    def _measure(self, cell: Cell) -> list[ResultRow]:
        metrics = self.metrics.objects(cell)
        requires = frozenset().union(*(type(m).requires for _, m in metrics))
        inputs = self.inputs(cell, requires)
        rows = []
        for name, metric in metrics:
            for r in self.metrics.rows(cell, name, metric, inputs):
                rows.append(cell_row(self.session.cfg, cell, r, inputs))
        return rows


def _size_columns(inputs: CellInputs | None) -> dict[str, Any]:
    if inputs is None:
        return {}
    v: Variant = inputs.variant
    ref_params = inputs.ref_variant.num_params
    gen_time = inputs.samples.stats.get("generation_time")
    return {
        "num_params": v.num_params,
        "nonzero_params": v.nonzero_params,
        "sparsity": v.sparsity,
        "macs": v.macs,
        "param_ratio": v.num_params / ref_params if ref_params else math.nan,
        "speedup": inputs.reference.stats["generation_time"] / gen_time if gen_time else math.nan,
        "num_samples": int(inputs.samples.images.shape[0]),
    }


def cell_row(cfg: BenchConfig, cell: Cell, r: dict[str, Any], inputs: CellInputs | None = None,
             error: str | None = None, duration: float = math.nan) -> ResultRow:
    """One result row of ``cell``: metric row ``r`` plus the cell's columns and, for a
    measured cell, its variant's sizes (``inputs``)."""
    sf = cell.axes["size_factor"]
    columns = {"num_samples": cell.sampling.num_samples, **_size_columns(inputs)}
    extra = {k: r[k] for k in ("value_sd", "reference", "num_reference", "blob") if r.get(k) is not None}
    return ResultRow(
        cell_id=cell.cell_id,
        cell_name=cell.name,
        role=cell.role,
        model=cfg.model.name,
        size_factor=math.nan if sf is None else float(sf),
        size_tier=size_tier(sf),
        pruning_method=cell.axes["pruning_method"],
        pruning_rate=float(cell.axes["pruning_rate"]),
        cfg_scale=float(cell.axes["cfg_scale"]),
        sampler=cell.axes["sampler"],
        steps=int(cell.axes["steps"]),
        seed=int(cell.axes["seed"]),
        dataset=cfg.dataset.name,
        metric=r["metric"],
        value=float(r["value"]),
        timestep=float(r.get("timestep", math.nan)),
        higher_is_better=r.get("higher_is_better"),
        status="error" if error else "ok",
        error=error,
        duration_s=duration,
        options=cell.option_columns(),
        **columns,
        **extra,
    )


def error_result(cfg: BenchConfig, cell: Cell, message: str, duration: float) -> CellResult:
    """The result of a failed cell: one error row per metric (the store keys rows by metric)."""
    rows = [cell_row(cfg, cell, {"metric": m.name, "value": math.nan,
                                 "higher_is_better": cfg.registry.get("metrics", m.name).higher_is_better},
                     error=message, duration=duration)
            for m in cfg.metrics]
    return CellResult(cell, rows, "error", message, duration)


class UnitWorker:
    """Runs work units (the :class:`harness.base.Worker` protocol).

    Pickling drops the in-process parts (the loaded matrix, the stages, the progress
    display): another process reloads the matrix from ``cfg_path`` + ``overrides``, so
    those are absolute paths. Every unit runs with ``threads`` torch threads, whatever
    the executor, so that the same matrix gives the same rows everywhere.
    """

    def __init__(self, cfg_path: str, overrides: list[str], results_dir: str, cache_dir: str, threads: int,
                 cfg: BenchConfig | None = None) -> None:
        self.cfg_path = cfg_path
        self.overrides = list(overrides)
        self.results_dir = results_dir
        self.cache_dir = cache_dir
        self.threads = int(threads)
        self._cfg = cfg  # reused in-process; other processes reload the matrix file
        self._stages: Stages | None = None
        self.progress: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stages": None, "_cfg": None, "progress": None}

    @property
    def config(self) -> BenchConfig:
        """The matrix (given in-process; loaded from ``cfg_path`` once per process otherwise)."""
        if self._cfg is None:
            from harness.config import load_matrix

            self._cfg = load_matrix(self.cfg_path, self.overrides, results_dir=self.results_dir)
        return self._cfg

    @property
    def device(self) -> str:
        """The device the matrix asks for (``execution.device``: auto, cpu, cuda[:N], mps)."""
        return self.config.execution.device

    @property
    def identity(self) -> Hashable:
        """Workers with equal identities are interchangeable: an executor may keep one per
        process and run later units on it (its loaded teacher is reused)."""
        try:
            st = os.stat(self.cfg_path)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        return (self.cfg_path, tuple(self.overrides), self.results_dir, self.cache_dir, self.threads, stamp)

    def stages(self) -> Stages:
        if self._stages is None:
            self._stages = Stages(self.config, Path(self.cache_dir), progress=self.progress)
        return self._stages

    def error_results(self, unit: WorkUnit, message: str, duration: float = 0.0) -> list[CellResult]:
        """Error results for every cell of ``unit`` (for executors whose worker died on it)."""
        return [error_result(self.config, cell, message, duration) for cell in unit.cells]

    def __call__(self, unit: WorkUnit) -> Iterator[CellResult]:
        stages = self.stages()
        for cell in unit.cells:
            with torch_threads(self.threads):
                result = stages.run_cell(cell)
            yield result
