"""The artifact cache: content-addressed keys, atomic writes, torn artifacts rebuilt."""

from __future__ import annotations

import torch

from harness.cache import ArtifactCache


def _build(calls: list[int]):
    def build():
        calls.append(1)
        return {"x": torch.arange(6.0).reshape(2, 3)}, {"note": "built"}

    return build


def test_second_get_loads_instead_of_building(tmp_path):
    cache, calls = ArtifactCache(tmp_path), []
    a = cache.get_or_create("samples", {"n": 2}, _build(calls))
    b = cache.get_or_create("samples", {"n": 2}, _build(calls))
    assert calls == [1]
    assert torch.equal(a.tensors["x"], b.tensors["x"]) and b.meta["note"] == "built"
    assert a.key == cache.key("samples", {"n": 2}) != cache.key("samples", {"n": 3})
    assert cache.key("samples", {"n": 2}, parent="p") != a.key


def test_a_torn_artifact_is_rebuilt(tmp_path, caplog):
    cache, calls = ArtifactCache(tmp_path), []
    art = cache.get_or_create("samples", {"n": 2}, _build(calls))
    tensors = art.path / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:10])  # as after a power loss without fsync
    with caplog.at_level("WARNING"):
        again = cache.get_or_create("samples", {"n": 2}, _build(calls))
    assert calls == [1, 1]
    assert "unreadable" in caplog.text
    assert torch.equal(again.tensors["x"], torch.arange(6.0).reshape(2, 3))
    assert not list(tmp_path.glob("samples/.broken-*")) and not list(tmp_path.glob("samples/.tmp-*"))


def test_a_volatile_artifact_not_waited_for_is_readable_at_once_and_locked_until_written(tmp_path):
    import fcntl

    cache = ArtifactCache(tmp_path)
    art = cache.get_or_create("metric", {"n": 1}, _build([]), wait=False)
    assert cache.exists("metric", art.key)  # waits for the queued write
    assert (art.path / "meta.json").is_file() and not list(tmp_path.glob("metric/.tmp-*"))
    with open(tmp_path / "metric" / f".lock-{art.key}", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the writer has released it
    loaded = cache.load("metric", art.key)
    assert loaded.meta == art.meta and torch.equal(loaded.tensors["x"], art.tensors["x"])
    again = cache.get_or_create("metric", {"n": 1}, _build(calls := []), wait=False)
    assert calls == [] and again.meta == art.meta


def test_durable_kinds_and_volatile_kinds_both_round_trip(tmp_path):
    cache = ArtifactCache(tmp_path)
    for kind in ("model", "samples", "metric"):
        art = cache.get_or_create(kind, {"k": kind}, _build([]))
        assert cache.exists(kind, art.key)
        assert cache.load(kind, art.key).meta["_kind"] == kind


def test_clean_partial_removes_only_leftovers_of_dead_writers(tmp_path) -> None:
    import os
    import subprocess
    import sys
    import time

    from harness.cache import HOST, ArtifactCache

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    kind = tmp_path / "model"
    names = {
        "dead": f".tmp-abc-{HOST}-{dead_pid}-x1y2",  # this host, writer gone
        "live": f".tmp-abd-{HOST}-{os.getpid()}-x1y2",  # this process: still writing
        "remote_fresh": ".tmp-abe-otherhost-12-x1y2",  # another machine, recent: may be live
        "remote_old": ".tmp-abf-otherhost-12-x1y2",  # another machine, two days old
    }
    for name in names.values():
        (kind / name).mkdir(parents=True)
        (kind / name / "tensors.safetensors").write_bytes(b"partial")
    old = time.time() - 2 * 24 * 3600
    os.utime(kind / names["remote_old"], (old, old))
    (kind / "abc").mkdir()  # a finished artifact is never touched
    assert ArtifactCache(tmp_path).clean_partial() == 2
    left = {p.name for p in kind.iterdir()}
    assert left == {names["live"], names["remote_fresh"], "abc"}


def test_a_run_removes_fragment_leftovers_of_a_killed_run(tmp_path) -> None:
    import io
    import subprocess
    import sys
    from pathlib import Path

    from harness import runner
    from harness.cache import HOST

    matrix = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic.toml"
    small = ['matrix.pruning_method=["none"]', "matrix.cfg_scale=[1.0]", "matrix.seed=[0]"]
    runner.run(matrix, small, results_dir=str(tmp_path), stream=io.StringIO(), interactive=False)
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout)
    run_dir = next(p for p in (tmp_path / "synthetic").rglob("*") if p.is_dir() and list(p.glob("*.parquet")))
    leftover = run_dir / f".tmp-deadbeef0000-{HOST}-{dead_pid}.parquet.tmp"
    leftover.write_bytes(b"half a fragment")
    cache_left = tmp_path / ".cache" / "samples" / f".tmp-0123-{HOST}-{dead_pid}-zz"
    cache_left.mkdir(parents=True)
    runner.run(matrix, [*small[:2], "matrix.seed=[1]"], results_dir=str(tmp_path), stream=io.StringIO(),
               interactive=False)
    assert not leftover.exists() and not cache_left.exists()


def test_macs_counted_by_an_older_counter_are_counted_again(tmp_path) -> None:
    import json
    from pathlib import Path

    from harness.config import load_matrix
    from harness.engine import Engine, measure_macs
    from harness.planner import plan_cells

    matrix = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic.toml"
    cfg = load_matrix(matrix, ['matrix.pruning_method=["none"]', "matrix.cfg_scale=[1.0]", "matrix.seed=[0]"],
                      results_dir=str(tmp_path))
    spec = plan_cells(cfg)[0].variant
    first = Engine(cfg, tmp_path / ".cache").variant(spec)
    assert first.macs == measure_macs(first.model)
    meta_file = next((tmp_path / ".cache" / "model").glob("*/meta.json"))
    meta = json.loads(meta_file.read_text())
    assert meta.pop("macs_version") == 2
    meta["macs"] = 1.0  # what an older counter (blind to attention) stored, without a version
    meta_file.write_text(json.dumps(meta))
    again = Engine(cfg, tmp_path / ".cache").variant(spec)
    assert again.macs == first.macs
