"""The ``ray`` executor: the same rows as ``local``, hooks, dependencies, retries, cancelling.

Cancelling (``--fail-fast``) and dependency order are checked against the stand-in of
Ray's API (deterministic, no timing); rows, hooks, retries and failures on a real Ray.

One small local Ray instance (2 CPUs, no dashboard) serves the whole module; the
executor reuses an instance it did not start and leaves it running. Starting and
stopping its own instance is checked against a stand-in of Ray's API (a real start
costs 10-20 s on a busy 2-core machine; the executor contract test in
tests/test_contracts.py does one).
"""

from __future__ import annotations

import io
import logging
import math
import os
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

import harness  # noqa: E402
from harness import hookimpl, runner  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.config import load_matrix  # noqa: E402
from harness.worker import UnitWorker  # noqa: E402
from harness.errors import UserError  # noqa: E402
from harness.planner import group_units, plan_cells  # noqa: E402
from harness.testing.checks import StandInUnit, StandInVariant  # noqa: E402
from harness.store import fragment_files  # noqa: E402
from plugins.executors.ray_executor import MISSING_RAY, RayExecutor, unit_dependencies  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "benchmarks" / "synthetic.toml"
#: reference + 2 methods x 2 rates, 1 CFG scale, 2 seeds, and a metric option whose
#: second value (fail = true) makes synthetic_quality raise: half the cells fail,
#: deterministically, in any process (Ray workers only see installed plugins)
MATRIX = [
    'matrix.pruning_method=["magnitude", "random"]',
    "matrix.pruning_rate=[0.3, 0.6]",
    "matrix.cfg_scale=[1.0]",
    "matrix.seed=[0, 1]",
    'matrix."metrics.synthetic_quality.fail"=[false, true]',
]
RAY = ["execution.executor=ray", "execution.max_workers=2", "execution.num_cpus=1"]
#: measured, not computed: differ between any two runs
TIMING_COLUMNS = {"duration_s", "timestamp", "run_id", "speedup"}
TIMING_METRICS = {"generation_time"}


class Recorder:
    """Records lifecycle hook calls (in the process that stores the results)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @hookimpl
    def bench_before_cell(self, cell: Any) -> None:
        self.events.append(("before", cell.cell_id))

    @hookimpl
    def bench_after_cell(self, cell: Any, rows: list[dict[str, Any]]) -> None:
        self.events.append(("after", cell.cell_id))

    @hookimpl
    def bench_run_finished(self, run_dir: Path, summary: dict[str, Any]) -> None:
        self.events.append(("finished", summary["ok"], summary["error"]))


def _run(results: Path, overrides: list[str], **kw: Any) -> runner.RunSummary:
    return runner.run(SYNTHETIC, [*MATRIX, *overrides], results_dir=str(results), stream=io.StringIO(),
                      interactive=False, **kw)


@pytest.fixture(scope="module")
def ray_instance() -> Any:
    """One small local Ray instance for the module (the executor reuses it)."""
    if ray.is_initialized():  # pragma: no cover - another module left one running
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    # the work functions below travel by value: Ray workers cannot import this test module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # start both worker processes (a Python importing torch: seconds) while `pair` runs local
    warm = ray.remote(num_cpus=1)(_import_the_harness)
    for _ in range(2):
        warm.remote()
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


def _import_the_harness() -> None:
    import harness.worker  # noqa: F401 - torch and the stages, as every unit's task needs them
    import plugins.executors.ray_executor  # noqa: F401


@pytest.fixture(scope="module")
def pair(ray_instance: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The matrix run by ``local`` and by ``ray`` (2 workers of 1 CPU)."""
    from harness import registry

    recorder = Recorder()
    original = registry.get_plugin_manager

    def with_recorder(load_entrypoints: bool = True, extra: list[Any] | None = None) -> Any:
        return original(load_entrypoints, [recorder, *(extra or [])])

    local_dir, ray_dir = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("ray")
    local = _run(local_dir, [])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "get_plugin_manager", with_recorder)
        mp.setattr(runner, "get_plugin_manager", with_recorder)
        remote = _run(ray_dir, RAY)
    return {"local": local, "ray": remote, "local_df": harness.load_results(local_dir),
            "ray_df": harness.load_results(ray_dir), "events": recorder.events,
            "cells": plan_cells(load_matrix(SYNTHETIC, [*MATRIX, *RAY]))}


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    df = df.drop(columns=[c for c in TIMING_COLUMNS if c in df.columns])
    df = df.assign(value=df["value"].where(~df["metric"].isin(TIMING_METRICS)))
    return df.sort_values(["cell_id", "metric"]).reset_index(drop=True)


def test_ray_rows_equal_the_local_rows(pair):
    local, remote = pair["local_df"], pair["ray_df"]
    assert (pair["ray"].ok, pair["ray"].error) == (pair["local"].ok, pair["local"].error) == (10, 10)
    assert list(remote.columns) == list(local.columns)
    assert set(remote["cell_id"]) == set(local["cell_id"]) == {c.cell_id for c in pair["cells"]}
    assert len(remote) == len(local) == 40  # 20 cells x 2 metrics
    pd.testing.assert_frame_equal(_comparable(remote), _comparable(local))
    quality = remote[(remote["metric"] == "synthetic_quality") & (remote["status"] == "ok")]
    assert len(quality) == 10 and quality["value"].between(0, 1.2).all()


def test_failing_cells_are_error_rows_on_ray_too(pair):
    df = pair["ray_df"]
    errors = df[df["status"] == "error"]
    assert len(errors) == 20 and set(errors["metrics.synthetic_quality.fail"]) == {True}
    assert set(errors["error"]) == {"RuntimeError: synthetic_quality: failing on purpose (fail = true)"}
    assert errors["value"].isna().all()
    assert all("failing on purpose" in e for e in pair["ray"].errors)


def test_lifecycle_hooks_fire_for_remote_cells(pair):
    events = pair["events"]
    assert events[-1] == ("finished", 10, 10)
    cell_events = events[:-1]
    ids = {c.cell_id for c in pair["cells"]}
    assert sorted(cid for kind, cid in cell_events if kind == "before") == sorted(ids)
    assert sorted(cid for kind, cid in cell_events if kind == "after") == sorted(ids)
    for cid in ids:  # each cell: started (handed to Ray) before its rows were stored
        assert cell_events.index(("before", cid)) < cell_events.index(("after", cid))
    # the reference cells are handed out first, alone: every other unit waits for them
    role = {c.cell_id: c.role for c in pair["cells"]}
    befores = [cid for kind, cid in cell_events if kind == "before"]
    assert {role[cid] for cid in befores[:4]} == {"reference"}  # 2 seeds x 2 values of fail
    first_after = next(cid for kind, cid in cell_events if kind == "after")
    assert role[first_after] == "reference"


def test_an_instance_the_executor_did_not_start_is_left_running(pair):
    assert ray.is_initialized()


def test_fail_fast_stops_a_ray_run_at_the_first_failed_cell(ray_instance, tmp_path):
    summary = _run(tmp_path, RAY, fail_fast=True)
    assert summary.error == 1 and summary.ok + summary.error < summary.total
    assert len(fragment_files(tmp_path)) == summary.ok + summary.error  # what finished is stored
    assert pd.read_json(summary.run_dir / "_manifest.json", typ="series")["end_time"]


# ----------------------------------------------------------------------------- the executor itself


def units(*names: str) -> list[StandInUnit]:
    """One stand-in work unit per name, whose only cell is the name."""
    return [StandInUnit(StandInVariant(n), [n]) for n in names]


class CellWorker:
    """A worker (the executor's Worker protocol) that maps ``cell(name)`` over a unit's cells."""

    device = "cpu"

    def __init__(self) -> None:
        self.identity = uuid.uuid4().hex  # never reused in place of another worker

    def cell(self, name: str) -> Any:
        raise NotImplementedError

    def __call__(self, unit: Any) -> list[Any]:
        return [self.cell(c) for c in unit.cells]

    def error_results(self, unit: Any, message: str, duration: float = 0.0) -> list[Any]:
        return [f"error: {message}" for _ in unit.cells]


class Upper(CellWorker):
    def cell(self, name: str) -> str:
        return name.upper()


def _attempt(folder: Path, name: str) -> int:
    """Count one attempt at ``name`` in ``folder`` (shared by the driver and the workers)."""
    with open(folder / f"{name}.attempts", "a") as fh:
        fh.write("x")
    return (folder / f"{name}.attempts").stat().st_size


class DiesOnce(CellWorker):
    """Kills its worker process on the first attempt at each unit."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def cell(self, name: str) -> str:
        if _attempt(self.folder, name) == 1:
            os._exit(1)
        return name.upper()


class AlwaysRaises(UnitWorker):
    """A harness worker whose every attempt raises (as if the matrix could not be loaded)."""

    folder: Path

    def __call__(self, unit: Any) -> Any:
        _attempt(self.folder, "unit")
        raise RuntimeError("boom")


def test_a_dead_worker_is_retried_once(ray_instance, tmp_path):
    assert list(RayExecutor(max_retries=1).run(units("a"), DiesOnce(tmp_path))) == ["A"]
    assert _attempt(tmp_path, "a") - 1 == 2  # died once, then succeeded


def test_a_unit_that_keeps_failing_becomes_error_results(ray_instance, tmp_path):
    cfg = load_matrix(SYNTHETIC, MATRIX)
    units = group_units(plan_cells(cfg))[:1]  # the reference unit
    worker = AlwaysRaises(str(SYNTHETIC), MATRIX, str(tmp_path), str(tmp_path / ".cache"), 1, cfg=cfg)
    worker.folder = tmp_path
    results = list(RayExecutor(max_retries=1).run(units, worker))
    assert [r.cell for r in results] == units[0].cells
    assert {r.status for r in results} == {"error"}
    assert {r.error for r in results} == {"RuntimeError: boom (on Ray, 2 attempt(s))"}
    for r in results:  # the worker's error rows: one per metric, NaN values
        assert [row.metric for row in r.rows] == ["synthetic_quality", "generation_time"]
        assert all(math.isnan(row.value) and row.status == "error" for row in r.rows)
    assert _attempt(tmp_path, "unit") - 1 == 2


def test_units_wait_for_the_unit_that_builds_their_variant(monkeypatch):
    real = group_units(plan_cells(load_matrix(SYNTHETIC, MATRIX)))
    deps = unit_dependencies(real)
    assert deps[0] == set() and all(d == {0} for d in deps[1:])  # everything waits for the teacher
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    # the teacher's unit listed second: the first waits for it, the third too
    work = [StandInUnit(StandInVariant(n, parent), [n]) for n, parent in
            (("a", "teacher"), ("teacher", None), ("b", "teacher"))]
    assert list(RayExecutor().run(work, Upper())) == ["TEACHER", "A", "B"]
    order = [c for c in fake.calls if c[0] in ("submit", "get")]
    assert order[:2] == [("submit", "teacher"), ("get", ["TEACHER"])]  # nothing else before its result
    assert sorted(order[2:]) == [("get", ["A"]), ("get", ["B"]), ("submit", "a"), ("submit", "b")]


# ----------------------------------------------------------------------------- without Ray


def test_without_ray_a_run_stops_with_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = [a for o in [*MATRIX, "execution.executor=ray"] for a in ("--set", o)]
    code = main(["run", str(SYNTHETIC), "--results", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"error: {MISSING_RAY}"]
    assert not list((tmp_path / "synthetic").glob("2*"))  # no run folder was started


# ----------------------------------------------------------------------------- its own instance


class FakeRay:
    """Just enough of Ray's API to run the executor in this process; records init and shutdown."""

    def __init__(self, resources: dict[str, float] | None = None, fail_init: Exception | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.initialized = False
        self.resources = resources or {"CPU": 2.0}
        self.fail_init = fail_init

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs: Any) -> None:
        self.calls.append(("init", kwargs))
        if self.fail_init is not None:
            raise self.fail_init
        self.initialized = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown", None))
        self.initialized = False

    def cluster_resources(self) -> dict[str, float]:
        return self.resources

    def put(self, obj: Any) -> Any:
        return obj

    def remote(self, fn: Any) -> Any:
        fake = self

        class Remote:
            def options(self, **options: Any) -> Any:
                fake.calls.append(("options", options))
                return self

            def remote(self, worker: Any, unit: Any) -> Any:
                fake.calls.append(("submit", unit.cells[0]))
                return FakeRef(fn(worker, unit))

        return Remote()

    def wait(self, refs: list[Any], num_returns: int = 1) -> tuple[list[Any], list[Any]]:
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref: Any) -> Any:
        self.calls.append(("get", ref.value))
        return ref.value

    def cancel(self, ref: Any) -> None:
        self.calls.append(("cancel", ref.value))


class FakeRef:
    def __init__(self, value: Any) -> None:
        self.value = value


def test_a_local_instance_is_started_for_the_run_and_shut_down(monkeypatch):
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    got = list(RayExecutor(max_workers=3, num_cpus=0.5, max_retries=2).run(units("a", "b"), Upper()))
    assert got == ["A", "B"]
    kinds = [kind for kind, _ in fake.calls]
    assert kinds[0] == "init" and kinds[-1] == "shutdown" and not fake.initialized
    init = fake.calls[0][1]
    # a new instance (not one RAY_ADDRESS points at), sized for max_workers tasks, no dashboard
    assert (init["address"], init["num_cpus"], init["include_dashboard"]) == ("local", 2, False)
    options = [o for kind, o in fake.calls if kind == "options"]
    assert {(o["num_cpus"], o["num_gpus"], o["max_retries"], o["retry_exceptions"]) for o in options} == {
        (0.5, 0.0, 2, True)}


def test_a_cluster_is_joined_and_left_but_not_stopped(monkeypatch):
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    results = RayExecutor(address="auto", init_kwargs={"namespace": "bench"}).run(units("a", "b", "c"), Upper())
    assert next(results) == "A"
    results.close()  # --fail-fast: the other tasks are cancelled, then the driver disconnects
    init = fake.calls[0][1]
    assert init["address"] == "auto" and init["namespace"] == "bench"
    assert "num_cpus" not in init and "include_dashboard" not in init  # not allowed when joining
    assert [c for c in fake.calls if c[0] == "cancel"] == [("cancel", ["B"]), ("cancel", ["C"])]
    assert fake.calls[-1] == ("shutdown", None)  # ray.shutdown() only disconnects from a cluster


def test_a_ray_that_cannot_start_is_one_line(monkeypatch):
    fake = FakeRay(fail_init=Exception("The current node timed out during startup.\nThis could happen ..."))
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(UserError) as err:
        list(RayExecutor().run(units("a"), Upper()))
    assert str(err.value) == ("execution.executor: 'ray' could not start a local Ray instance: "
                              "Exception: The current node timed out during startup. This could happen ...")
    fake = FakeRay(fail_init=ConnectionError("Could not find any running Ray instance."))
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(UserError, match=r"^execution.address: cannot connect to the Ray cluster at 'auto': "
                                        r"ConnectionError: Could not find any running Ray instance.$"):
        list(RayExecutor(address="auto").run(units("a"), Upper()))


def test_a_gpu_request_a_local_instance_cannot_meet_stops_the_run(monkeypatch):
    fake = FakeRay(resources={"CPU": 2.0})
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(UserError, match=r"^execution.num_gpus: each task requests 1 GPU\(s\) but the Ray cluster "
                                        r"has 0; set num_gpus = 0 or device = \"cpu\"$"):
        list(RayExecutor(num_gpus=1).run(units("a"), Upper()))
    assert fake.calls[-1] == ("shutdown", None)  # the instance it started is stopped


@pytest.mark.parametrize(("device", "cluster_gpus", "expected"), [
    ("cpu", 2, 0.0), ("cuda", 0, 1.0), ("cuda:1", 0, 1.0), ("auto", 0, 0.0), ("auto", 2, 1.0)])
def test_gpus_per_task_follow_the_device(device, cluster_gpus, expected):
    fake = FakeRay(resources={"CPU": 2.0, "GPU": float(cluster_gpus)})
    work = SimpleNamespace(device=device)
    assert RayExecutor()._gpus_per_task(fake, work) == expected
    assert RayExecutor(num_gpus=0.5)._gpus_per_task(fake, work) == 0.5


# ----------------------------------------------------------------------------- the same numbers on a real model

QUICKSTART = REPO / "benchmarks" / "quickstart.toml"
#: a tiny quickstart: one teacher epoch, one student, few samples, two threads per worker
#: (training results depend on the thread count: the run's one setting must reach Ray's workers)
TINY_UNET = ["model.train.epochs=1", "model.distill.epochs=1", "matrix.size_factor=[0.5]", "matrix.cfg_scale=[3.0]",
             "matrix.seed=[0]", "sampling.num_samples=16", "sampling.steps=5",
             'metrics.names=["fid_digits", "feature_distance", "kid", "prdc", "fid_inf"]', "execution.threads=2"]


def test_the_executor_does_not_change_the_numbers_of_a_unet(ray_instance, tmp_path):
    frames = {}
    for name, extra in (("local", []), ("ray", RAY)):
        summary = runner.run(QUICKSTART, [*TINY_UNET, *extra], results_dir=str(tmp_path / name),
                             stream=io.StringIO(), interactive=False)
        assert (summary.ok, summary.error) == (2, 0)
        assert pd.read_json(summary.run_dir / "_manifest.json", typ="series")["threads"] == 2
        frames[name] = _comparable(harness.load_results(tmp_path / name))
    local, remote = frames["local"], frames["ray"]
    assert len(local) == 2 * 8 and local["value"].notna().all()  # kid, fid_inf: value_sd; prdc: four rows
    pd.testing.assert_series_equal(remote["value"], local["value"], rtol=1e-6, atol=0)
    pd.testing.assert_series_equal(remote["value_sd"], local["value_sd"], rtol=1e-6, atol=0)
    assert local["blob"].notna().sum() == remote["blob"].notna().sum() == 2  # fid_inf's curves (floats: rtol above)
    floats = ["value", "value_sd", "blob"]
    pd.testing.assert_frame_equal(remote.drop(columns=floats), local.drop(columns=floats))
