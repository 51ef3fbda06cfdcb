"""Hook specifications: the stable plugin contract (pluggy project ``bench``).

A plugin module implements any of these with ``@hookimpl`` (``from harness import
hookimpl``) and is exposed through the ``bench`` entry-point group. Each register hook
receives one callable, ``register(cls)``, and calls it once per class it offers.

Lifecycle hooks are called by the runner, in the process that stores results, during
``bench run``: ``bench_before_cell`` for each cell of a work unit when the executor takes
the unit, ``bench_after_cell`` for each cell once its rows are stored (in the order cells
finish), and once at the end ``bench_run_finished``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy

PROJECT = "bench"

#: marks the hook specifications below (diffbench's side of the contract)
hookspec = pluggy.HookspecMarker(PROJECT)
#: marks a plugin's hook implementations: ``@hookimpl def bench_register_pruners(register): ...``
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[type], None]


@hookspec
def bench_register_datasets(register: Register) -> None:
    """Register dataset classes (subclasses of :class:`harness.base.Dataset`).

    :param register: call ``register(cls)`` once per dataset class; ``cls.name`` is the
        name used in ``[dataset] name = ...``.
    """


@hookspec
def bench_register_models(register: Register) -> None:
    """Register model families (subclasses of :class:`harness.base.ModelFamily`).

    :param register: call ``register(cls)`` once per model family; ``cls.name`` is the
        name used in ``[model] name = ...``.
    """


@hookspec
def bench_register_pruners(register: Register) -> None:
    """Register pruning methods (subclasses of :class:`harness.base.Pruner`).

    :param register: call ``register(cls)`` once per pruner; ``cls.name`` is a value of
        the ``pruning_method`` axis.
    """


@hookspec
def bench_register_metrics(register: Register) -> None:
    """Register metrics (subclasses of :class:`harness.base.Metric`).

    :param register: call ``register(cls)`` once per metric; ``cls.name`` is used in
        ``[metrics] names = [...]``.
    """


@hookspec
def bench_register_features(register: Register) -> None:
    """Register feature extractors (subclasses of :class:`harness.features.FeatureExtractor`).

    :param register: call ``register(cls)`` once per extractor; ``cls.name`` is the name
        used in a metric's ``features`` option and in :func:`harness.get_feature_extractor`.
    """


@hookspec
def bench_register_executors(register: Register) -> None:
    """Register executors (subclasses of :class:`harness.base.Executor`).

    :param register: call ``register(cls)`` once per executor; ``cls.name`` is used in
        ``[execution] executor = ...``.
    """


@hookspec
def bench_register_plots(register: Register) -> None:
    """Register plots (subclasses of :class:`harness.base.Plot`).

    :param register: call ``register(cls)`` once per plot; ``cls.name`` is used by
        ``bench plot --kind NAME``.
    """


@hookspec
def bench_before_cell(cell: Any) -> None:
    """Called before a cell's results are computed: when the executor takes its work unit
    (the ``local`` executor: just before the unit runs; ``ray``: when the run starts).

    :param cell: the :class:`harness.planner.Cell` about to run.
    """


@hookspec
def bench_after_cell(cell: Any, rows: list[dict[str, Any]]) -> None:
    """Called after a cell's rows were written to the store.

    :param cell: the :class:`harness.planner.Cell` that finished (or failed).
    :param rows: the row dicts stored for it (``status`` tells success or error).
    """


@hookspec
def bench_run_finished(run_dir: Path, summary: dict[str, Any]) -> None:
    """Called once when ``bench run`` has finished all cells.

    :param run_dir: the folder of this run (``results/<benchmark>/<run_id>``).
    :param summary: counts of cells ``{"ok": n, "error": n, "skipped": n}`` and timings.
    """
