"""diffbench's core: plugin contract, matrix files, planner, runner, caches and store.

Plugins need one import: ``from harness import hookimpl``.
"""

from __future__ import annotations

from typing import Any

from harness.base import (
    Conditions,
    Dataset,
    DiffusionModel,
    Executor,
    ImageBatch,
    Metric,
    MetricContext,
    ModelFamily,
    Plot,
    PruneContext,
    Pruner,
    SampleOutput,
    TrainContext,
)
from harness.hookspecs import hookimpl, hookspec
from harness.registry import build_registry, get_plugin_manager

__version__ = "0.1.0"

__all__ = [
    "Conditions",
    "Dataset",
    "DiffusionModel",
    "Executor",
    "ImageBatch",
    "Metric",
    "MetricContext",
    "ModelFamily",
    "Plot",
    "PruneContext",
    "Pruner",
    "SampleOutput",
    "TrainContext",
    "__version__",
    "build_registry",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "load_results",
]


def load_results(path: Any, **kwargs: Any):  # noqa: ANN201 - returns pandas.DataFrame
    """Read every result fragment under ``path`` into one typed pandas DataFrame.

    See :func:`harness.store.load_results` for the options.
    """
    from harness.store import load_results as _load

    return _load(path, **kwargs)
