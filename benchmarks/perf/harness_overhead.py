"""Harness overhead: the share of wall time not spent in plugin work.

Runs a synthetic matrix of about ``--cells`` cells (2 pruners x 9 rates x 1 CFG scale x
N seeds, plus one reference cell per seed) whose model spends ``--work-s`` of simulated
compute per cell (its one sampling call; 1 s is the cheapest real cell, a quickstart
cell costs 25 to 50 s), and measures, in the same run, the time spent inside plugin code
(building/pruning variants, sampling, metrics) against the wall time of ``bench run``.
Everything else (planning, hashing, cache look-ups, Parquet writes, manifest, progress)
is harness overhead; the one-off import of torch (seconds, whatever the matrix) is
done before the clock starts and printed apart. It also times planning a 10,000-cell
matrix.

Usage: python benchmarks/perf/harness_overhead.py [--work-s 1.0] [--cells 200] [--quick]
Prints the figures last: ``harness overhead: 2.1% of wall time`` and
``plan 10,000 cells: 0.8 s``.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "benchmarks" / "synthetic.toml"


def _timed(cls: type, method: str, bucket: list[float]) -> None:
    original = getattr(cls, method)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            bucket.append(time.perf_counter() - t0)

    setattr(cls, method, wrapper)


def _time_plugin_calls(registry: object) -> list[float]:
    """Wrap every plugin entry point the stages call; the returned list collects their times."""
    from plugins.models.synthetic import SyntheticFamily, SyntheticModel

    plugin_time: list[float] = []
    for kind, name, method in [
        ("models", "synthetic", "build"),
        ("datasets", "synthetic", "load"),
        ("metrics", "synthetic_quality", "compute"),
        ("metrics", "generation_time", "compute"),
        ("pruners", "magnitude", "prune"),
        ("pruners", "random", "prune"),
    ]:
        _timed(registry.get(kind, name), method, plugin_time)  # type: ignore[attr-defined]
    for cls, method in ((SyntheticModel, "sample"), (SyntheticFamily, "restore"), (SyntheticFamily, "state")):
        _timed(cls, method, plugin_time)
    return plugin_time


def _warm_start_up() -> float:
    """Import torch and warm its FLOP counter (whose first count imports dynamo, ~1.3 s):
    seconds once per process whatever the matrix, reported apart; returns the seconds."""
    t0 = time.perf_counter()
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import harness.worker  # noqa: F401

    with FlopCounterMode(display=False):
        torch.nn.Linear(2, 2)(torch.ones(1, 2))
    return time.perf_counter() - t0


def _plan_seconds(registry: object) -> tuple[int, float]:
    """Cells planned and seconds to plan 10,000 cells: 2 methods x 10 rates x 10 CFG x 50 seeds."""
    from harness.config import load_matrix
    from harness.planner import plan_cells

    big = [
        'matrix.pruning_method=["magnitude", "random"]',
        f"matrix.pruning_rate={[round(0.05 + 0.09 * i, 2) for i in range(10)]}",
        f"matrix.cfg_scale={[float(c) for c in range(1, 11)]}",
        f"matrix.seed={list(range(50))}",
    ]
    cfg = load_matrix(MATRIX, big, registry=registry)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    planned = plan_cells(cfg)
    return len(planned), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-s", type=float, default=1.0, help="simulated plugin work per cell (s)")
    parser.add_argument("--cells", type=int, default=200, help="about how many cells to run (19 per seed)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="smoke run: 19 cells of 10 ms")
    args = parser.parse_args()
    if args.quick:
        args.work_s, args.cells = 0.01, 19

    from harness import runner
    from harness.registry import build_registry

    registry = build_registry()
    plugin_time = _time_plugin_calls(registry)
    overrides = [
        'matrix.pruning_method=["magnitude", "random"]',
        "matrix.pruning_rate=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]",
        "matrix.cfg_scale=[1.0]",
        f"matrix.seed={list(range(max(1, round(args.cells / 19))))}",
        f"model.cost_ms={args.work_s * 1000}",
        "sampling.warmup=false",
        f'execution.device="{args.device}"',
    ]
    startup = _warm_start_up()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = runner.run(MATRIX, overrides, results_dir=tmp, quiet=True)
        wall = time.perf_counter() - t0
    assert summary.error == 0, summary.errors[:3]
    cells, work = summary.ok, sum(plugin_time)
    overhead = wall - work
    planned, plan_s = _plan_seconds(registry)

    print(f"cells run: {cells}  wall: {wall:.1f} s  plugin work: {work:.1f} s  "
          f"(simulated {args.work_s:g} s per cell)")
    print(f"start-up imports (torch, FLOP counter), once per process, not counted: {startup:.1f} s")
    print(f"harness overhead per cell: {overhead / cells * 1000:.1f} ms")
    print(f"planned cells: {planned} (incl. references)")
    print(f"plan 10,000 cells: {plan_s:.2f} s")
    print(f"harness overhead: {overhead / wall:.1%} of wall time")


if __name__ == "__main__":
    main()
