"""``bench run`` and ``bench plan``: plan cells, skip stored ones, execute, store rows.

Order of events in a run: load and validate the matrix (every error before any work),
take the benchmark's lock, expand cells, skip the ones already stored (unless
``force``), write the run manifest, hand the work units to the executor, and store each
cell's rows atomically as it finishes (``bench_before_cell`` / ``bench_after_cell``
around it), then finish the manifest and call ``bench_run_finished``.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness.cache import ArtifactCache
from harness.config import BenchConfig, load_matrix
from harness.planner import Cell, group_units, plan_cells
from harness.registry import build_registry, get_plugin_manager

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run did."""

    benchmark: str
    run_id: str | None
    run_dir: Path | None
    total: int
    skipped: int
    ok: int = 0
    error: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.error else 0


@dataclass
class PlanReport:
    """What ``bench plan`` prints: cells and the work per stage."""

    benchmark: str
    cells: list[Cell]
    stored: set[str]
    stages: dict[str, dict[str, int]]

    @property
    def todo(self) -> list[Cell]:
        return [c for c in self.cells if c.cell_id not in self.stored]


def cache_dir(cfg: BenchConfig) -> Path:
    return cfg.results_dir / ".cache"


def _git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions(cfg: BenchConfig) -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for dist in ("diffbench", "torch", "numpy", "pandas", "pyarrow", "pluggy", "clean-fid", "lpips",
                 "open_clip_torch", "torch-pruning", "diffusers"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    for kind in cfg.registry.plugins.values():
        for info in kind.values():
            if info.distribution not in ("diffbench", "(not installed)"):
                versions[info.distribution] = info.version
    return versions


def manifest(cfg: BenchConfig, argv: list[str] | None) -> dict[str, Any]:
    from harness.engine import resolve_device

    import harness

    return {
        "benchmark": cfg.benchmark.name,
        "matrix_file": str(cfg.path),
        "matrix": cfg.raw,
        "resolved": cfg.as_dict(),
        "versions": _versions(cfg),
        "git_commit": {
            "cwd": _git_commit(Path.cwd()),
            "diffbench": _git_commit(Path(harness.__file__).resolve().parent),
        },
        "device": str(resolve_device(cfg.execution.device)),
        "host": platform.node(),
        "argv": argv or sys.argv,
        "start_time": dt.datetime.now(dt.timezone.utc).isoformat(),
        "end_time": None,
    }


def plan(
    matrix: str | Path,
    overrides: list[str] | None = None,
    results_dir: str | None = None,
    with_stages: bool = True,
) -> PlanReport:
    """Expand the matrix and count, per stage, what is cached and what is to do."""
    from harness.store import ResultStore

    cfg = load_matrix(matrix, overrides, results_dir=results_dir)
    cells = plan_cells(cfg)
    store = ResultStore(cfg.results_dir, cfg.benchmark.name)
    frags = store.fragments()
    stored = {c.cell_id for c in cells if _is_stored(c, frags)}
    stages: dict[str, dict[str, int]] = {}
    if with_stages:
        stages = _stage_counts(cfg, [c for c in cells if c.cell_id not in stored])
    return PlanReport(cfg.benchmark.name, cells, stored & {c.cell_id for c in cells}, stages)


def _stage_counts(cfg: BenchConfig, todo: list[Cell]) -> dict[str, dict[str, int]]:
    from harness.engine import TRAJECTORY_REQS, Engine

    engine = Engine(cfg, cache_dir(cfg))
    metrics = engine.metric_objects(todo[0]) if todo else []
    want_traj = any(type(m).requires & TRAJECTORY_REQS for _, m in metrics)
    counts: dict[str, Counter[str]] = {"train": Counter(), "prune": Counter(), "sample": Counter()}
    seen_variants: set[Any] = set()
    seen_samples: set[str] = set()
    for cell in todo:
        for spec in {cell.variant, cell.variant.reference()}:
            chain = []
            s: Any = spec
            while s is not None:
                chain.append(s)
                s = s.parent()
            for v in chain:
                if v in seen_variants:
                    continue
                seen_variants.add(v)
                cached = engine.cache.exists("model", engine.variant_key(v))
                stage = "prune" if v.pruning_method != "none" else "train"
                counts[stage]["cached" if cached else "to do"] += 1
            key_t = engine.cache.key("samples", engine.sample_config(engine.variant_key(spec), cell, True))
            key_p = engine.cache.key("samples", engine.sample_config(engine.variant_key(spec), cell, False))
            key = key_t if want_traj else key_p
            if key in seen_samples:
                continue
            seen_samples.add(key)
            cached = engine.cache.exists("samples", key_t) or (not want_traj and engine.cache.exists("samples", key_p))
            counts["sample"]["cached" if cached else "to do"] += 1
    out = {k: {"to do": v["to do"], "cached": v["cached"]} for k, v in counts.items()}
    images = counts["sample"]["to do"] * cfg.sampling.num_samples
    out["sample"]["images to generate"] = images
    out["metrics"] = {"to do": len(todo) * len(metrics)}
    return out


def run(
    matrix: str | Path,
    overrides: list[str] | None = None,
    results_dir: str | None = None,
    force: bool = False,
    fail_fast: bool = False,
    stream: TextIO | None = None,
    interactive: bool | None = None,
    quiet: bool = False,
    argv: list[str] | None = None,
) -> RunSummary:
    """Run (or resume) a matrix and return what happened."""
    from harness.engine import UnitWorker
    from harness.progress import Progress
    from harness.store import ResultStore

    t0 = time.perf_counter()
    pm = get_plugin_manager()
    registry = build_registry(pm)
    cfg = load_matrix(matrix, overrides, registry=registry, results_dir=results_dir)
    cells = plan_cells(cfg)
    store = ResultStore(cfg.results_dir, cfg.benchmark.name)
    summary = RunSummary(cfg.benchmark.name, None, None, total=len(cells), skipped=0)
    with store.lock(wait=False):
        frags = store.fragments()
        todo = [c for c in cells if force or not _is_stored(c, frags)]
        summary.skipped = len(cells) - len(todo)
        if not todo:
            summary.seconds = time.perf_counter() - t0
            if not quiet:
                print(f"{cfg.benchmark.name}: all {len(cells)} cells already stored (use --force to recompute)",
                      file=stream or sys.stderr)
            return summary
        executor_cls = registry.get("executors", cfg.execution.executor, "execution.executor")
        executor = executor_cls(**cfg.executor_options)
        # leftovers of killed runs: temporary files whose writer is gone (never live ones)
        removed = store.clean_partial() + ArtifactCache(cache_dir(cfg)).clean_partial()
        if removed:
            log.info("removed %d temporary file(s) of interrupted writes", removed)
        run_handle = store.new_run(manifest(cfg, argv))
        # swept plugin options become columns; type them from all their values at once
        run_handle.declare_columns({k: [*v, *(d[k] for d in cfg.include if k in d)]
                                    for k, v in cfg.axes.items() if "." in k})
        summary.run_id, summary.run_dir = run_handle.run_id, run_handle.path
        # absolute paths: executors may run the worker in other processes, cwds and machines
        worker = UnitWorker(str(Path(matrix).resolve()), list(overrides or []), str(cfg.results_dir.resolve()),
                            str(cache_dir(cfg).resolve()), cfg=cfg)
        with Progress(len(todo), stream=stream, interactive=interactive, quiet=quiet) as progress:
            if summary.skipped:
                progress.message(f"{summary.skipped} of {len(cells)} cells already stored; running {len(todo)}")
            worker.progress = progress

            def started(cell: Cell) -> None:
                progress.cell_started(cell.name)
                pm.hook.bench_before_cell(cell=cell)

            worker.on_start = started
            results = executor.run(group_units(todo), worker)
            try:
                for result in results:
                    _store_result(cfg, run_handle, result, pm)
                    progress.cell_done(result.cell.name, result.status, result.duration_s, result.error)
                    if result.status == "ok":
                        summary.ok += 1
                    else:
                        summary.error += 1
                        summary.errors.append(f"{result.cell.name}: {result.error}")
                        if fail_fast:
                            progress.message("stopping at the first failed cell (--fail-fast)")
                            break
            finally:
                close = getattr(results, "close", None)
                if close is not None:
                    close()
        summary.seconds = time.perf_counter() - t0
        run_handle.finish(
            end_time=dt.datetime.now(dt.timezone.utc).isoformat(),
            summary={"ok": summary.ok, "error": summary.error, "skipped": summary.skipped,
                     "seconds": summary.seconds},
        )
    pm.hook.bench_run_finished(
        run_dir=run_handle.path,
        summary={"ok": summary.ok, "error": summary.error, "skipped": summary.skipped, "seconds": summary.seconds},
    )
    return summary


def _is_stored(cell: Cell, frags: dict[str, Any]) -> bool:
    """Whether ``cell`` has a live ``ok`` fragment computed with its current metrics."""
    frag = frags.get(cell.cell_id)
    if frag is None or frag.status != "ok":
        return False
    return frag.content_key is None or frag.content_key == cell.content_key


def _store_result(cfg: BenchConfig, run_handle: Any, result: Any, pm: Any) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    rows = [{**r, "benchmark": cfg.benchmark.name, "run_id": run_handle.run_id, "timestamp": now} for r in result.rows]
    run_handle.write_cell(result.cell.cell_id, rows, content_key=result.cell.content_key)
    pm.hook.bench_after_cell(cell=result.cell, rows=rows)

