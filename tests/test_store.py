"""The result store: atomic fragments, superseding, stored_cells, the lock, readers, reference deltas."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import harness
from harness.errors import UserError
from harness.schema import CATEGORICAL, COLUMNS, SCHEMA_VERSION
from harness.store import ResultStore, load_results, new_run_id

REPO = Path(__file__).resolve().parents[1]


def row(metric: str = "fid", value: float = 1.0, status: str = "ok", **kw):
    return {"metric": metric, "value": value, "status": status, **kw}


def cell_rows(n: int = 5, **kw):
    return [row(f"m{i}", float(i), **kw) for i in range(n)]


def live_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if "_superseded" not in p.parts)


# -- writing ----------------------------------------------------------------------------


def test_fragment_has_schema_columns_in_order_then_extras_and_metadata(tmp_path):
    run = ResultStore(tmp_path, "bench").new_run({})
    path = run.write_cell(
        "abc123",
        [
            row("fid", 3.5, seed=1, cfg_scale=7.5, **{"pruners.iterative.rounds": 3, "pruners.x.mode": "l1"}),
            row("acc", 0.9, seed=1, cfg_scale=7.5, **{"pruners.iterative.rounds": 3, "pruners.x.flag": True}),
        ],
    )
    assert path == tmp_path / "bench" / run.run_id / "abc123.parquet"
    schema = pq.read_schema(path)
    names = schema.names
    assert names[: len(COLUMNS)] == list(COLUMNS)
    assert names[len(COLUMNS) :] == ["pruners.iterative.rounds", "pruners.x.flag", "pruners.x.mode"]
    for name, typ in COLUMNS.items():
        assert schema.field(name).type == typ, name
    assert schema.field("pruners.iterative.rounds").type == pa.int64()
    assert schema.field("pruners.x.flag").type == pa.bool_()
    assert schema.field("pruners.x.mode").type == pa.string()
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["diffbench.schema_version"] == SCHEMA_VERSION
    assert meta["diffbench.version"] == harness.__version__
    assert meta["diffbench.status"] == "ok"
    assert meta["diffbench.cell_id"] == "abc123"

    t = pq.read_table(path).to_pylist()
    assert [r["benchmark"] for r in t] == ["bench", "bench"]
    assert [r["run_id"] for r in t] == [run.run_id] * 2
    assert [r["cell_id"] for r in t] == ["abc123"] * 2
    # missing schema columns are nulls; a missing extra value is null
    assert t[0]["size_factor"] is None and t[0]["timestep"] is None and t[0]["steps"] is None
    assert t[1]["pruners.x.mode"] is None
    assert t[0]["timestamp"].tzinfo is not None


def test_swept_values_typed_the_same_in_every_fragment(tmp_path):
    run = ResultStore(tmp_path, "bench").new_run({})
    run.declare_columns({"pruners.a.rate": [1, 0.5], "pruners.a.k": [None, 2]})
    p1 = run.write_cell("c1", [row(**{"pruners.a.rate": 1, "pruners.a.k": None})])
    p2 = run.write_cell("c2", [row(**{"pruners.a.rate": 0.5, "pruners.a.k": 2})])
    for p in (p1, p2):
        s = pq.read_schema(p)
        assert s.field("pruners.a.rate").type == pa.float64()
        assert s.field("pruners.a.k").type == pa.int64()


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([], "no rows"),
        ([{"value": 1.0, "status": "ok"}], "no 'metric'"),
        ([{"metric": "fid", "value": 1.0}], "status None"),
        ([{"metric": "fid", "value": 1.0, "status": "failed"}], "status 'failed'"),
        ([row(steps="many")], "column 'steps'"),
    ],
)
def test_bad_rows_are_refused(tmp_path, rows, match):
    run = ResultStore(tmp_path, "bench").new_run({})
    with pytest.raises(ValueError, match=match):
        run.write_cell("c1", rows)
    assert live_files(tmp_path) == []
    assert [p.name for p in run.path.iterdir()] == ["_manifest.json"]


@pytest.mark.parametrize("cell_id", ["", "_x", ".x", "a/b", "../up"])
def test_unsafe_cell_id_is_refused(tmp_path, cell_id):
    run = ResultStore(tmp_path, "bench").new_run({})
    with pytest.raises(UserError, match="cell id"):
        run.write_cell(cell_id, [row()])


def test_a_failing_write_leaves_nothing_visible_and_the_old_fragment_live(tmp_path, monkeypatch):
    st = ResultStore(tmp_path, "bench")
    old = st.new_run({}).write_cell("c1", [row(value=1.0)])
    run = st.new_run({})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run.write_cell("c1", [row(value=2.0)])
    assert not any(p.name.startswith(".tmp") for p in run.path.iterdir())
    assert old.exists()
    monkeypatch.undo()
    assert st.stored_cells() == {"c1": "ok"}
    assert load_results(tmp_path)["value"].tolist() == [1.0]


def test_each_write_is_in_place_when_write_cell_returns_and_counted(tmp_path):
    st = ResultStore(tmp_path, "bench")
    with st.lock():
        run = st.new_run({})
        for i in range(50):
            assert run.write_cell(f"c{i}", cell_rows(2)).exists()
        run.write_cell("c0", [row(value=9.0)])  # supersedes c0
        run.write_cell("late", [row(status="error", error="x")])
        assert st.stored_cells()["late"] == "error"
        run.write_cell("last", [row()])
    assert run.finish()["summary"] == {"cells": 53, "ok": 52, "error": 1, "superseded": 1}
    df = load_results(tmp_path)
    assert df.loc[df["cell_id"] == "c0", "value"].tolist() == [9.0]
    assert df["cell_id"].nunique() == 52


def test_a_crashed_write_temp_file_is_invisible_to_every_reader(tmp_path):
    import duckdb
    import polars as pl

    st = ResultStore(tmp_path, "bench")
    run = st.new_run({})
    run.write_cell("c1", cell_rows(3))
    # A writer killed between write and rename leaves its temp file (half a Parquet file).
    good = (run.path / "c1.parquet").read_bytes()
    (run.path / f".tmp-c2-{os.getpid()}.parquet.tmp").write_bytes(good[: len(good) // 2])

    assert st.stored_cells() == {"c1": "ok"}
    assert len(load_results(tmp_path)) == 3
    assert len(pd.read_parquet(tmp_path)) == 3
    glob = f"{tmp_path}/**/*.parquet"
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall()[0][0] == 3
    assert pl.read_parquet(glob).height == 3


def test_sigkill_mid_run_leaves_only_whole_fragments(tmp_path):
    """The writer reports each stored cell and keeps writing; it is killed after the 20th
    report, somewhere in the middle of a later write."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from harness.store import ResultStore
        run = ResultStore({str(tmp_path)!r}, "bench").new_run({{}})
        i = 0
        while True:
            run.write_cell(f"c{{i}}", [{{"metric": f"m{{k}}", "value": 1.0, "status": "ok"}} for k in range(5)])
            print(i, flush=True)
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        reported = [proc.stdout.readline() for _ in range(20)]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert reported[-1].strip() == "19"
    files = live_files(tmp_path)
    assert len(files) >= 20
    stored = ResultStore(tmp_path, "bench").stored_cells()
    assert set(stored) == {p.stem for p in files}
    assert set(stored.values()) == {"ok"}
    assert len(load_results(tmp_path)) == 5 * len(files)


# -- runs and manifests -----------------------------------------------------------------


def test_run_ids_are_sortable_and_unique():
    import datetime as dt

    t0 = dt.datetime(2026, 11, 23, 19, 22, 33, tzinfo=dt.timezone.utc)
    a = new_run_id(t0)
    b = new_run_id(t0 + dt.timedelta(seconds=1))
    assert re.fullmatch(r"20261123-192233-[0-9a-f]{4}", a)
    assert a < b
    assert len({new_run_id(t0) for _ in range(50)}) > 40  # 4 random hex digits
    # within one second, a run id drawn after another sorts after it
    ids = [new_run_id(t0)]
    for _ in range(20):
        ids.append(new_run_id(t0, after=ids[-1]))
    assert ids == sorted(set(ids))


def test_manifest_written_at_start_and_finish(tmp_path):
    st = ResultStore(tmp_path, "bench")
    run = st.new_run({"matrix": {"cfg_scale": [1.0, 7.5]}, "device": "cpu", "git_commit": "abc"})
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run.run_id)
    assert run.path == tmp_path / "bench" / run.run_id
    m = json.loads((run.path / "_manifest.json").read_text())
    assert m["run_id"] == run.run_id and m["benchmark"] == "bench"
    assert m["matrix"] == {"cfg_scale": [1.0, 7.5]} and m["device"] == "cpu" and m["git_commit"] == "abc"
    assert m["schema_version"] == SCHEMA_VERSION and m["diffbench_version"] == harness.__version__
    assert m["start_time"].endswith("+00:00") and m["end_time"] is None and m["status"] == "running"

    run.write_cell("c1", [row()])
    run.write_cell("c2", [row(status="error", error="boom")])
    run.finish(summary={"seconds": 1.5})
    m = st.manifest(run.run_id)
    assert m["end_time"] is not None and m["status"] == "finished"
    assert m["summary"] == {"cells": 2, "ok": 1, "error": 1, "superseded": 0, "seconds": 1.5}
    assert m["matrix"] == {"cfg_scale": [1.0, 7.5]}
    assert st.runs() == [run.run_id]
    assert not any(p.name.startswith(".tmp") for p in run.path.iterdir())


# -- superseding ------------------------------------------------------------------------


def test_rerun_supersedes_the_old_fragment_and_keeps_it(tmp_path):
    st = ResultStore(tmp_path, "bench")
    r1 = st.new_run({})
    r1.write_cell("c1", [row(value=1.0, status="error", error="boom")])
    r1.write_cell("c2", [row(value=5.0)])
    # a fresh store object, as in the next `bench run`
    st2 = ResultStore(tmp_path, "bench")
    r2 = st2.new_run({})
    r2.write_cell("c1", [row(value=2.0)])

    assert not (r1.path / "c1.parquet").exists()
    moved = tmp_path / "bench" / "_superseded" / r1.run_id / "c1.parquet.superseded"
    assert pq.read_table(moved).column("value").to_pylist() == [1.0]
    assert st2.stored_cells() == {"c1": "ok", "c2": "ok"}
    assert sorted(p.stem for p in live_files(tmp_path)) == ["c1", "c2"]
    df = load_results(tmp_path)
    assert sorted(df["value"]) == [2.0, 5.0]
    # the superseded data stays readable when asked for explicitly
    old = load_results(tmp_path / "bench" / "_superseded")
    assert old["value"].tolist() == [1.0] and old["status"].tolist() == ["error"]
    assert r2.finish()["summary"]["superseded"] == 1


def test_retry_within_one_run_supersedes_too(tmp_path):
    run = ResultStore(tmp_path, "bench").new_run({})
    for v in (1.0, 2.0, 3.0):
        run.write_cell("c1", [row(value=v)])
    sup = tmp_path / "bench" / "_superseded" / run.run_id
    assert sorted(p.name for p in sup.iterdir()) == ["c1.1.parquet.superseded", "c1.parquet.superseded"]
    assert load_results(tmp_path)["value"].tolist() == [3.0]
    assert sorted(load_results(sup)["value"]) == [1.0, 2.0]


# -- stored_cells -----------------------------------------------------------------------


def test_stored_cells_reads_the_fragments_footers(tmp_path):
    st = ResultStore(tmp_path, "bench")
    r1 = st.new_run({})
    r1.write_cell("a", [row()], content_key="k1")
    r1.write_cell("b", [row(), row("lpips", status="error", error="x")])
    r2 = st.new_run({})
    r2.write_cell("c", [row()])
    st.new_run({})  # a run killed before its first cell: manifest only
    assert st.stored_cells() == {"a": "ok", "b": "error", "c": "ok"}
    assert {c: f.content_key for c, f in st.fragments().items()} == {"a": "k1", "b": None, "c": None}

    # an index of an older version, out of step with the files: ignored
    (r1.path / "_index.jsonl").write_text('["a", "ok", 1, 2, 3, "k1"]\n["zz", "ok", 1, 2, 3]\n["zz", "o')
    # a fragment replaced by hand (status changed): its footer is what counts
    table = pq.read_table(r1.path / "a.parquet")
    table = table.replace_schema_metadata({**table.schema.metadata, b"diffbench.status": b"error"})
    pq.write_table(table, r1.path / "a.parquet")
    # a leftover temp file
    (r1.path / ".tmp-d-1.parquet.tmp").write_bytes(b"PAR1")

    assert ResultStore(tmp_path, "bench").stored_cells() == {"a": "error", "b": "error", "c": "ok"}


def test_stored_cells_of_a_missing_benchmark_is_empty(tmp_path):
    assert ResultStore(tmp_path, "nothing").stored_cells() == {}


def test_a_results_folder_of_the_previous_layout_resumes(tmp_path):
    """Earlier versions also left an ``_index.jsonl`` per run folder, the holder's pid in
    ``.lock``, lock stripes in the cache and artifacts staged in ``.cache/.staging/``.
    The same matrix finds every cell stored (the index, here claiming errors, is not
    read); a larger one reuses the cache, computes only the new cells, and removes the
    staged leftovers of a dead writer."""
    import io

    from harness import runner
    from harness.fsio import HOST

    matrix = REPO / "benchmarks" / "synthetic.toml"
    small = ['matrix.pruning_method=["none", "magnitude"]', "matrix.pruning_rate=[0.5]", "matrix.cfg_scale=[1.0]"]
    quiet = {"results_dir": str(tmp_path), "stream": io.StringIO(), "interactive": False}
    first = runner.run(matrix, [*small, "matrix.seed=[0]"], **quiet)
    assert first.ok == first.total == 2
    frags = sorted(first.run_dir.glob("*.parquet"))
    (first.run_dir / "_index.jsonl").write_text("".join(json.dumps([p.stem, "error", 1, 2, 3]) + "\n" for p in frags))
    (tmp_path / "synthetic" / ".lock").write_text("12345\n")
    cache = tmp_path / ".cache"
    (cache / "samples" / ".lock-stripe-0001").write_text("")
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True, check=True).stdout)
    staged = cache / ".staging" / f".tmp-samples-0123-{HOST}-{dead_pid}-zz"
    staged.mkdir(parents=True)
    (staged / "tensors.safetensors").write_bytes(b"partial")
    artifacts = {p.relative_to(cache) for p in cache.glob("*/*") if not p.name.startswith(".")}

    again = runner.run(matrix, [*small, "matrix.seed=[0]"], **quiet)
    assert (again.skipped, again.ok, again.run_id) == (2, 0, None)
    more = runner.run(matrix, [*small, "matrix.seed=[0, 1]"], **quiet)
    assert (more.skipped, more.ok, more.error) == (2, 2, 0)
    assert all(p.is_file() for p in frags)  # the old fragments stay live, untouched
    assert artifacts <= {p.relative_to(cache) for p in cache.glob("*/*") if not p.name.startswith(".")}
    assert not (cache / ".staging").exists()
    df = load_results(tmp_path)
    assert len(df) == 2 * len(pd.read_parquet(frags[0])) * 2 and not df.duplicated(["cell_id", "metric"]).any()


# -- lock -------------------------------------------------------------------------------


def test_lock_refuses_a_second_holder_and_names_the_pid(tmp_path):
    a = ResultStore(tmp_path, "bench")
    b = ResultStore(tmp_path, "bench")  # its own open file description: flock conflicts
    with a.lock():
        assert (tmp_path / "bench" / ".lock.pid").read_text().strip() == str(os.getpid())
        with pytest.raises(UserError) as exc:
            with b.lock(wait=False):
                pass
        assert str(exc.value) == (
            f"{tmp_path / 'bench'} is locked by another bench run (pid {os.getpid()}); "
            "wait for it or use another --results folder"
        )
        with a.lock():  # re-entrant for its holder
            pass
    with b.lock(wait=False):
        pass


def test_lock_held_by_another_process(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from harness.store import ResultStore
        with ResultStore({str(tmp_path)!r}, "bench").lock():
            print("locked", flush=True)
            sys.stdin.readline()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"locked by another bench run \(pid {proc.pid}\)"):
            with ResultStore(tmp_path, "bench").lock(wait=False):
                pass
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    with ResultStore(tmp_path, "bench").lock(wait=False):
        pass


# -- reading ----------------------------------------------------------------------------


@pytest.fixture
def results(tmp_path) -> Path:
    """2 benchmarks x 2 runs, a superseded fragment, an artifact cache and manifests."""
    root = tmp_path / "results"
    for bench, extra in (("distill", {"pruners.iterative.rounds": 3}), ("pruning", {"pruners.x.mode": "l1"})):
        st = ResultStore(root, bench)
        with st.lock():
            for r in range(2):
                run = st.new_run({"matrix": {}})
                for c in range(3):
                    run.write_cell(f"{bench[0]}{r}{c}", cell_rows(4, seed=c, **extra))
                run.finish()
            run.write_cell(f"{bench[0]}00", cell_rows(4, seed=0, **extra))  # supersedes
    cache = root / ".cache" / "teacher" / "0123abcd"
    cache.mkdir(parents=True)
    (cache / "tensors.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (cache / "meta.json").write_text("{}")
    (root / ".cache" / "teacher" / ".lock-0123abcd").write_text("")
    return root


N_ROWS = 2 * 2 * 3 * 4  # benchmarks x runs x cells x rows


def test_pandas_reads_the_whole_results_folder(results):
    df = pd.read_parquet(results)
    assert len(df) == N_ROWS
    assert df["cell_id"].nunique() == 12


def test_duckdb_reads_the_whole_results_folder(results):
    import duckdb

    glob = f"{results}/**/*.parquet"
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall()[0][0] == N_ROWS
    n, ids = duckdb.sql(
        f"select count(*), count(distinct cell_id) from read_parquet('{glob}', union_by_name=true) "
        "where \"pruners.iterative.rounds\" = 3"
    ).fetchall()[0]
    assert (n, ids) == (N_ROWS // 2, 6)


def test_polars_reads_the_whole_results_folder(results):
    import polars as pl

    # one benchmark: every fragment has the same columns
    assert pl.read_parquet(f"{results}/pruning/**/*.parquet").height == N_ROWS // 2
    # all benchmarks: their swept-option columns differ, so tell polars to tolerate that
    lf = pl.scan_parquet(f"{results}/**/*.parquet", missing_columns="insert", extra_columns="ignore")
    assert lf.collect().height == N_ROWS


def test_load_results_at_every_level(results):
    st = ResultStore(results, "distill")
    run_id = st.runs()[0]  # the first run, whose cell d00 the second run superseded
    assert [p.name for p in (results / "distill" / "_superseded").iterdir()] == [run_id]
    assert len(load_results(results)) == N_ROWS
    assert len(load_results(results / "distill")) == N_ROWS // 2
    assert len(load_results(results / "distill" / run_id)) == 2 * 4  # one of 3 cells was superseded
    assert len(load_results(results / "distill" / run_id / "d01.parquet")) == 4
    assert len(load_results(str(results / "distill" / "_superseded"))) == 4


def test_load_results_types(results):
    df = load_results(results)
    assert list(df.columns) == [*COLUMNS, "pruners.iterative.rounds", "pruners.x.mode"]
    for col in CATEGORICAL:
        assert isinstance(df[col].dtype, pd.CategoricalDtype), col
    assert str(df["timestamp"].dtype) == "datetime64[us, UTC]"
    assert df["size_factor"].dtype == "float64" and df["size_factor"].isna().all()
    assert df["timestep"].dtype == "float64" and df["timestep"].isna().all()
    assert df["value"].dtype == "float64"
    assert df["seed"].dtype == "Int64" and df["steps"].dtype == "Int64"
    assert df["higher_is_better"].dtype == "boolean"
    # different extra columns per fragment concatenate, missing values are NA
    assert df["pruners.iterative.rounds"].dtype == "Int64"
    assert (df.loc[df["benchmark"] == "distill", "pruners.iterative.rounds"] == 3).all()
    assert df.loc[df["benchmark"] == "pruning", "pruners.iterative.rounds"].isna().all()
    assert set(df["pruners.x.mode"].dropna()) == {"l1"}


def test_load_results_unifies_an_option_typed_differently_across_fragments(tmp_path):
    run = ResultStore(tmp_path, "b").new_run({})
    run.write_cell("c1", [row(**{"pruners.a.k": None})])
    run2 = ResultStore(tmp_path, "b").new_run({})
    run2.write_cell("c2", [row(**{"pruners.a.k": 2})])
    run2.write_cell("c3", [row(**{"pruners.a.k": 0.5})])
    df = load_results(tmp_path)
    assert df["pruners.a.k"].dtype == "float64"
    assert df.sort_values("cell_id")["pruners.a.k"].tolist()[1:] == [2.0, 0.5]


def test_load_results_can_leave_out_errors(tmp_path):
    run = ResultStore(tmp_path, "b").new_run({})
    run.write_cell("c1", [row("fid", 1.0)])
    run.write_cell("c2", [row("fid", float("nan"), status="error", error="CUDA out of memory")])
    df = load_results(tmp_path)
    assert df["status"].tolist() == ["ok", "error"]
    assert df["error"].tolist()[1] == "CUDA out of memory"
    ok = load_results(tmp_path, include_errors=False)
    assert ok["cell_id"].tolist() == ["c1"]
    assert list(ok["status"].cat.categories) == ["ok"]


@pytest.mark.parametrize("make", ["missing", "empty", "only_cache_and_manifest"])
def test_no_results_is_a_one_line_error(tmp_path, make):
    path = tmp_path / "results"
    if make != "missing":
        path.mkdir()
    if make == "only_cache_and_manifest":
        (path / ".cache" / "x").mkdir(parents=True)
        (path / ".cache" / "x" / "meta.json").write_text("{}")
        ResultStore(path, "b").new_run({})
    with pytest.raises(UserError) as exc:
        load_results(path)
    assert str(exc.value) == f"no results under {path}"


def test_a_corrupt_fragment_is_named(tmp_path):
    run = ResultStore(tmp_path, "b").new_run({})
    (run.path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match=r"cannot read result fragment .*bad\.parquet"):
        load_results(tmp_path)
    assert ResultStore(tmp_path, "b").stored_cells() == {"bad": "error"}  # so it is recomputed


# -- reference deltas -------------------------------------------------------------------


def reference_case(tmp_path: Path) -> Path:
    """Reference and a student over cfg x seed, a per-step metric, a swept metric option."""
    st = ResultStore(tmp_path, "distill")
    run = st.new_run({})
    base = {"sampler": "ddim", "steps": 10}
    for cfg in (1.0, 7.5):
        for seed in (0, 1):
            ref = {**base, "role": "reference", "cfg_scale": cfg, "seed": seed}
            stu = {**base, "role": "student", "size_factor": 0.5, "cfg_scale": cfg, "seed": seed}
            r = 10 * cfg + seed  # reference fid
            run.write_cell(
                f"ref-{cfg}-{seed}",
                [
                    row("fid", r, **ref, **{"metrics.lpips.net": None}),
                    row("lpips", 0.0, **ref, **{"metrics.lpips.net": "alex"}),
                    row("lpips", 0.5, **ref, **{"metrics.lpips.net": "vgg"}),
                    row("eps_mse", 1.0, timestep=0.0, **ref),
                    row("eps_mse", 2.0, timestep=500.0, **ref),
                ],
            )
            run.write_cell(
                f"stu-{cfg}-{seed}",
                [
                    row("fid", r + 3.0, **stu, **{"metrics.lpips.net": None}),
                    row("lpips", 0.25, **stu, **{"metrics.lpips.net": "alex"}),
                    row("lpips", 0.75, **stu, **{"metrics.lpips.net": "vgg"}),
                    row("eps_mse", 1.5, timestep=0.0, **stu),
                    row("eps_mse", 4.0, timestep=500.0, **stu),
                    row("extra_metric", 1.0, **stu),  # no reference row: NaN
                ],
            )
    return tmp_path


def test_with_reference_adds_reference_value_and_delta(tmp_path):
    df = load_results(reference_case(tmp_path), with_reference=True)
    assert list(df.columns[-2:]) == ["reference_value", "delta"]
    ref = df[df["role"] == "reference"]
    assert (ref["delta"] == 0).all() and (ref["reference_value"] == ref["value"]).all()
    stu = df[df["role"] == "student"].set_index(["metric", "metrics.lpips.net", "timestep", "cfg_scale", "seed"])
    assert stu.loc[("fid", None, math.nan, 7.5, 1), "reference_value"].item() == 76.0
    assert stu.loc[("fid", None, math.nan, 7.5, 1), "delta"].item() == 3.0
    fid = df[(df["role"] == "student") & (df["metric"] == "fid")]
    assert (fid["delta"] == 3.0).all() and len(fid) == 4
    lp = df[(df["role"] == "student") & (df["metric"] == "lpips")]
    assert lp["delta"].tolist() == [0.25] * 8  # 2 cfg x 2 seeds x 2 nets
    ts = df[(df["role"] == "student") & (df["metric"] == "eps_mse")].sort_values("timestep")
    assert ts["delta"].tolist() == [0.5, 0.5, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0]
    extra = df[df["metric"] == "extra_metric"]
    assert extra["reference_value"].isna().all() and extra["delta"].isna().all()
    assert len(df) == 4 * 5 + 4 * 6  # no rows duplicated by the pairing


def test_with_reference_prefers_the_same_run_and_ignores_errored_references(tmp_path):
    st = ResultStore(tmp_path, "b")
    ref = {"role": "reference", "cfg_scale": 1.0, "seed": 0}
    stu = {"role": "student", "cfg_scale": 1.0, "seed": 0}
    r1 = st.new_run({})
    r1.write_cell("ref-old", [row("fid", 100.0, **ref)])
    r1.write_cell("stu-old", [row("fid", 101.0, **stu)])
    r2 = st.new_run({})
    r2.write_cell("ref-new", [row("fid", 50.0, **ref)])
    r2.write_cell("stu-new", [row("fid", 55.0, **stu)])
    r2.write_cell("ref-bad", [row("fid", 0.0, status="error", error="x", **ref)])
    df = load_results(tmp_path, with_reference=True).set_index("cell_id")
    assert df.loc["stu-old", "delta"] == 1.0
    assert df.loc["stu-new", "delta"] == 5.0
