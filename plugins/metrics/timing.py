"""``generation_time`` and ``peak_memory_mb``: the cost of sampling, as measured by the runner."""

from __future__ import annotations

import math
from typing import ClassVar

from harness import CellError, Metric, MetricContext


def _stat(ctx: MetricContext, key: str, metric: str) -> float:
    stats = ctx.sampling_stats or {}
    if key not in stats or stats[key] is None:
        have = ", ".join(sorted(stats)) or "none"
        raise CellError(
            f"metric '{metric}' reads sampling_stats['{key}'], which the runner did not record (recorded: {have})"
        )
    value = float(stats[key])
    return value if math.isfinite(value) else float("nan")


class GenerationTime(Metric):
    """Wall-clock seconds per generated image, measured around sampling only.

    generation_time = T / N: T is the time the runner measured for sampling the cell's N
    images (after a warm-up batch, with ``torch.cuda.synchronize()`` on GPU; model
    building, decoding to files and metrics are excluded). Read from
    ``ctx.sampling_stats["generation_time"]``; lower is better.
    """

    name = "generation_time"
    higher_is_better = False
    requires: ClassVar[frozenset[str]] = frozenset({"samples"})
    cached: ClassVar[bool] = False  # a copy of sampling_stats: no cache entry

    def compute(self, ctx: MetricContext) -> float:
        return _stat(ctx, "generation_time", self.name)


class PeakMemory(Metric):
    """Peak memory in MB used while sampling the cell's images, as measured by the runner.

    peak_memory_mb = the runner's measurement around sampling only (on CUDA the peak
    allocated memory after a reset before sampling; see the runner's docs for CPU).
    Read from ``ctx.sampling_stats["peak_memory_mb"]``; lower is better.
    """

    name = "peak_memory_mb"
    higher_is_better = False
    requires: ClassVar[frozenset[str]] = frozenset({"samples"})
    cached: ClassVar[bool] = False  # a copy of sampling_stats: no cache entry

    def compute(self, ctx: MetricContext) -> float:
        return _stat(ctx, "peak_memory_mb", self.name)
