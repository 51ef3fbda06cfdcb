"""The runner on the synthetic benchmark: rows, resume, --force, failures, crashes, hooks."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import textwrap
import sys
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pyarrow.parquet as pq
import pytest

import harness
from harness import hookimpl, runner
from harness.base import Metric, MetricContext
from harness.cli import main
from harness.config import load_matrix
from harness.planner import group_units, plan_cells
from harness.schema import COLUMNS
from harness.store import fragment_files
from _matrices import SMALL, SYNTHETIC

METRICS = {"synthetic_quality", "generation_time"}


def live_fragments(results: Path) -> list[Path]:
    # os.walk, not rglob: the run being killed creates and renames cache folders meanwhile
    return sorted(fragment_files(results))


def run(results: Path, overrides: list[str] | None = None, **kw: Any) -> runner.RunSummary:
    return runner.run(SYNTHETIC, [*SMALL, *(overrides or [])], results_dir=str(results), stream=io.StringIO(),
                      interactive=False, **kw)


# ----------------------------------------------------------------------------- rows


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, runner.RunSummary]:
    """The small synthetic matrix, run once for the module's read-only tests."""
    import torch

    torch.set_num_threads(1)  # module-scoped: runs before the function-scoped _threads
    results = tmp_path_factory.mktemp("results")
    return results, run(results)


def test_one_row_per_cell_and_metric_with_every_column(finished):
    results, summary = finished
    assert (summary.total, summary.ok, summary.error, summary.skipped) == (4, 4, 0, 0)
    frags = live_fragments(results)
    assert len(frags) == 4
    for frag in frags:
        table = pq.read_table(frag)
        assert table.column_names[: len(COLUMNS)] == list(COLUMNS)
        rows = table.to_pylist()
        assert {r["metric"] for r in rows} == METRICS and len(rows) == len(METRICS)
        assert {r["cell_id"] for r in rows} == {frag.stem}
        assert {r["status"] for r in rows} == {"ok"}
        assert all(r["error"] is None for r in rows)
        assert {r["benchmark"] for r in rows} == {"synthetic"}
        assert {r["run_id"] for r in rows} == {summary.run_id}
    cells = plan_cells(load_matrix(SYNTHETIC, SMALL))
    assert {f.stem for f in frags} == {c.cell_id for c in cells}


def test_columns_hold_the_cells_values(finished):
    results, _ = finished
    df = harness.load_results(results)
    assert len(df) == 8
    pruned = df[df["pruning_method"] == "magnitude"]
    assert set(pruned["role"]) == {"pruned"} and set(pruned["pruning_rate"]) == {0.5}
    assert (pruned["sparsity"] > 0).all()  # measured on the pruned model, not assumed
    assert (pruned["nonzero_params"] < pruned["num_params"]).all()
    ref = df[df["role"] == "reference"]
    assert (ref["sparsity"] == 0).all() and (ref["param_ratio"] == 1).all()
    assert set(df["seed"]) == {0, 1} and set(df["cfg_scale"]) == {1.0}
    assert set(df["dataset"]) == {"synthetic"} and set(df["model"]) == {"synthetic"}
    assert (df["num_samples"] == 16).all() and (df["steps"] == 4).all()
    assert df["size_factor"].isna().all() and set(df["size_tier"]) == {"teacher"}
    assert df["value"].notna().all() and (df["macs"] > 0).all()
    gen = df[df["metric"] == "generation_time"]
    assert (gen["value"] > 0).all() and not gen["higher_is_better"].any()


def test_pandas_and_load_results_read_the_folder(finished):
    results, _ = finished
    raw = pd.read_parquet(results)
    assert len(raw) == 8
    assert set(COLUMNS) <= set(raw.columns)
    df = harness.load_results(results)
    assert len(df) == 8
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert isinstance(df["metric"].dtype, pd.CategoricalDtype)
    with_ref = harness.load_results(results, with_reference=True)
    assert with_ref["reference_value"].notna().all()
    assert (with_ref.loc[with_ref["role"] == "reference", "delta"] == 0).all()


def test_manifest_describes_the_run(finished):
    import json

    results, summary = finished
    manifest = json.loads((summary.run_dir / "_manifest.json").read_text())
    assert manifest["benchmark"] == "synthetic"
    assert manifest["run_id"] == summary.run_id
    assert manifest["end_time"] and manifest["status"] == "finished"
    assert manifest["resolved"]["axes"]["pruning_rate"] == [0.5]
    assert "torch" in manifest["versions"]


# ----------------------------------------------------------------------------- resume


def test_second_run_computes_nothing(tmp_path, capsys):
    first = run(tmp_path)
    assert first.ok == 4
    before = live_fragments(tmp_path)
    second = run(tmp_path)
    assert second.skipped == second.total == 4
    assert second.ok == second.error == 0 and second.run_id is None
    assert live_fragments(tmp_path) == before
    assert [p.name for p in (tmp_path / "synthetic").iterdir() if not p.name.startswith((".", "_"))] == [first.run_id]
    code = main(["plan", str(SYNTHETIC), "--results", str(tmp_path), *[a for o in SMALL for a in ("--set", o)]])
    out = capsys.readouterr().out
    assert code == 0
    assert "synthetic: 4 cells, 4 already stored, 0 to run" in out


def test_new_cells_only_are_computed(tmp_path):
    run(tmp_path)
    summary = run(tmp_path, ["matrix.seed=[0, 1, 2]"])
    assert (summary.total, summary.skipped, summary.ok) == (6, 4, 2)
    assert len(live_fragments(tmp_path)) == 6


def test_adding_a_metric_recomputes_the_cells_and_supersedes_their_rows(tmp_path):
    first = run(tmp_path, ['metrics.names=["synthetic_quality"]'])
    assert first.ok == 4
    ids = {p.stem for p in live_fragments(tmp_path)}
    second = run(tmp_path, ['metrics.names=["synthetic_quality", "generation_time"]'])
    assert (second.ok, second.skipped) == (4, 0)
    live = live_fragments(tmp_path)
    assert {p.stem for p in live} == ids  # same cells: the metric list is not their identity
    assert {p.parent.name for p in live} == {second.run_id}
    assert len(list((tmp_path / "synthetic" / "_superseded" / first.run_id).iterdir())) == 4
    df = harness.load_results(tmp_path)
    assert len(df) == 8 and not df.duplicated(["cell_id", "metric"]).any()
    assert set(df.metric) == {"synthetic_quality", "generation_time"}
    assert run(tmp_path, ['metrics.names=["synthetic_quality", "generation_time"]']).skipped == 4
    # the same metrics listed in another order are the same content
    assert run(tmp_path, ['metrics.names=["generation_time", "synthetic_quality"]']).skipped == 4


def test_force_recomputes_and_keeps_the_old_fragments(tmp_path):
    first = run(tmp_path)
    old = {p.stem: p.read_bytes() for p in live_fragments(tmp_path)}
    second = run(tmp_path, force=True)
    assert (second.ok, second.skipped) == (4, 0)
    live = live_fragments(tmp_path)
    assert len(live) == 4 and {p.parent.name for p in live} == {second.run_id}
    superseded = sorted((tmp_path / "synthetic" / "_superseded" / first.run_id).iterdir())
    assert [p.name for p in superseded] == sorted(f"{cid}.parquet.superseded" for cid in old)
    for p in superseded:  # no data lost: the old fragments, byte for byte
        assert p.read_bytes() == old[p.name.split(".")[0]]
    assert len(harness.load_results(tmp_path)) == 8
    assert len(pd.read_parquet(tmp_path)) == 8


# ----------------------------------------------------------------------------- failures


class Flaky(Metric):
    """Fails on every cell of seed 1 (test plugin)."""

    name = "flaky"
    requires: ClassVar[frozenset[str]] = frozenset({"samples"})

    def compute(self, ctx: MetricContext) -> float:
        if ctx.cell.axes["seed"] == 1:
            raise ValueError("flaky fails on seed 1")
        return 0.5


class FlakyPlugin:
    @hookimpl
    def bench_register_metrics(self, register: Any) -> None:
        register(Flaky)


FLAKY = ['metrics.names=["synthetic_quality", "flaky"]']


def test_a_failing_metric_records_error_rows_and_the_run_goes_on(tmp_path, extra_plugins):
    extra_plugins(FlakyPlugin())
    summary = run(tmp_path, FLAKY)
    assert (summary.ok, summary.error, summary.exit_code) == (2, 2, 1)
    df = harness.load_results(tmp_path)
    errors = df[df["status"] == "error"]
    assert set(errors["seed"]) == {1} and len(errors) == 4  # one row per metric of each failed cell
    assert set(errors["metric"]) == {"synthetic_quality", "flaky"}
    assert set(errors["error"]) == {"ValueError: flaky fails on seed 1"}
    assert errors["value"].isna().all()
    ok = df[df["status"] == "ok"]
    assert set(ok["seed"]) == {0} and set(ok["metric"]) == {"synthetic_quality", "flaky"}
    assert len(summary.errors) == 2 and all("flaky fails on seed 1" in e for e in summary.errors)


def test_failed_cells_are_retried_by_the_next_run(tmp_path, extra_plugins):
    extra_plugins(FlakyPlugin())
    run(tmp_path, FLAKY)
    again = run(tmp_path, FLAKY)
    assert (again.skipped, again.error) == (2, 2)
    assert len(live_fragments(tmp_path)) == 4  # the retried cells superseded their error fragments


def test_failed_cells_exit_1_through_the_cli(tmp_path, extra_plugins, capsys):
    extra_plugins(FlakyPlugin())
    args = [a for o in [*SMALL, *FLAKY] for a in ("--set", o)]
    code = main(["run", str(SYNTHETIC), "--results", str(tmp_path), *args])
    out, err = capsys.readouterr()
    assert code == 1
    assert "synthetic: 2 ok, 2 failed, 0 already stored" in out
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2
    assert all(line.endswith(": ValueError: flaky fails on seed 1") for line in failed)
    assert "Traceback" not in err


def test_fail_fast_stops_at_the_first_failed_cell(tmp_path, extra_plugins):
    extra_plugins(FlakyPlugin())
    summary = run(tmp_path, FLAKY, fail_fast=True)
    assert summary.error == 1
    assert summary.ok + summary.error < summary.total
    assert len(live_fragments(tmp_path)) == summary.ok + summary.error
    manifest = pd.read_json(summary.run_dir / "_manifest.json", typ="series")
    assert manifest["end_time"]


# ----------------------------------------------------------------------------- crash


def test_sigkill_half_way_then_resume(tmp_path):
    """A crash loses at most the cells in flight; a re-run completes every cell once."""
    # 5 seeds x 2 cfg x (reference + 2 methods x 9 rates) = 190 cells, ~10 ms of simulated work each
    overrides = ["model.cost_ms=10", "matrix.seed=[0, 1, 2, 3, 4]", 'metrics.names=["synthetic_quality"]']
    args = [a for o in overrides for a in ("--set", o)]
    # the child kills itself as its 30th fragment is written: a deterministic point half-way
    driver = textwrap.dedent("""
        import os, signal, sys
        import harness.store as store

        write_cell, stored = store.Run.write_cell, []

        def write_and_maybe_die(self, *a, **kw):
            path = write_cell(self, *a, **kw)
            stored.append(path)
            if len(stored) == 30:
                os.kill(os.getpid(), signal.SIGKILL)
            return path

        store.Run.write_cell = write_and_maybe_die
        from harness.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", driver, "run", str(SYNTHETIC), "--results", str(tmp_path), *args],
                          capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    done = len(live_fragments(tmp_path))
    cells = plan_cells(load_matrix(SYNTHETIC, overrides))
    assert len(cells) == 190 and done == 30
    for frag in live_fragments(tmp_path):  # what is visible is whole
        pq.read_table(frag)

    summary = runner.run(SYNTHETIC, overrides, results_dir=str(tmp_path), quiet=True)
    assert summary.error == 0
    assert summary.skipped >= done and summary.skipped + summary.ok == 190

    frags = live_fragments(tmp_path)
    stems = [f.stem for f in frags]
    assert sorted(stems) == sorted(c.cell_id for c in cells)  # every cell exactly once
    for frag in frags:
        assert pq.read_table(frag).num_rows == 1
    df = harness.load_results(tmp_path)
    assert len(df) == 190 and df["cell_id"].is_unique
    assert len(pd.read_parquet(tmp_path)) == 190


# ----------------------------------------------------------------------------- hooks


class Recorder:
    """Records lifecycle hook calls."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @hookimpl
    def bench_before_cell(self, cell: Any) -> None:
        self.events.append(("before", cell.cell_id))

    @hookimpl
    def bench_after_cell(self, cell: Any, rows: list[dict[str, Any]]) -> None:
        assert {r["cell_id"] for r in rows} == {cell.cell_id}
        self.events.append(("after", cell.cell_id))

    @hookimpl
    def bench_run_finished(self, run_dir: Path, summary: dict[str, Any]) -> None:
        self.events.append(("finished", (run_dir, summary["ok"], summary["error"], summary["skipped"])))


def test_lifecycle_hooks_are_called_in_order(tmp_path, extra_plugins):
    recorder = Recorder()
    extra_plugins(recorder)
    summary = run(tmp_path)
    events = recorder.events
    assert len(events) == 2 * 4 + 1
    # the local executor takes one unit (a variant's cells) at a time: its cells' befores,
    # then each cell's after once its rows are stored, then the next unit
    units = [[c.cell_id for c in u.cells] for u in group_units(plan_cells(load_matrix(SYNTHETIC, SMALL)))]
    expected = [e for ids in units for e in [*(("before", c) for c in ids), *(("after", c) for c in ids)]]
    assert events[:-1] == expected
    assert sorted(c for ids in units for c in ids) == sorted(p.stem for p in live_fragments(tmp_path))
    assert events[-1] == ("finished", (summary.run_dir, 4, 0, 0))


def test_after_cell_sees_failed_cells_too(tmp_path, extra_plugins):
    recorder = Recorder()
    extra_plugins(recorder, FlakyPlugin())
    run(tmp_path, FLAKY)
    assert [k for k, _ in recorder.events] == (["before"] * 2 + ["after"] * 2) * 2 + ["finished"]
    assert recorder.events[-1][1][1:] == (2, 2, 0)


# ----------------------------------------------------------------------------- metric keys

CALLS: list[tuple[str, float]] = []


class ModelOnly(Metric):
    """Reads the networks only, no sample set (test plugin): its value is one per model."""

    name = "model_only"
    requires: ClassVar[frozenset[str]] = frozenset({"model"})

    def compute(self, ctx: MetricContext) -> float:
        CALLS.append((self.name, ctx.cell.axes["cfg_scale"]))
        return float(sum(p.detach().abs().sum() for p in ctx.model.net.parameters()))


class PerSampleSet(Metric):
    """Reads the samples (test plugin): one value per sample set."""

    name = "per_sample_set"

    def compute(self, ctx: MetricContext) -> float:
        CALLS.append((self.name, ctx.cell.axes["cfg_scale"]))
        return float(ctx.samples.mean())


class KeyPlugin:
    @hookimpl
    def bench_register_metrics(self, register: Any) -> None:
        register(ModelOnly)
        register(PerSampleSet)


def test_a_metric_that_reads_no_samples_is_computed_once_per_model(tmp_path, extra_plugins):
    extra_plugins(KeyPlugin())
    CALLS.clear()
    summary = run(tmp_path, ['metrics.names=["model_only", "per_sample_set"]', "matrix.cfg_scale=[1.0, 3.0, 5.0]",
                             "matrix.seed=[0]"])
    assert summary.ok == 6  # reference and magnitude@0.5, 3 CFG scales each
    assert sum(1 for n, _ in CALLS if n == "per_sample_set") == 6
    assert sum(1 for n, _ in CALLS if n == "model_only") == 2  # one per model, not per CFG scale
    df = harness.load_results(tmp_path)
    values = df[df.metric == "model_only"].groupby("pruning_method", observed=True)["value"].nunique()
    assert (values == 1).all()  # every CFG scale of a model shares the value
    ref = df[(df.metric == "model_only") & (df.pruning_method == "none")]["value"].iloc[0]
    pruned = df[(df.metric == "model_only") & (df.pruning_method == "magnitude")]["value"].iloc[0]
    assert pruned < ref  # and the models differ
