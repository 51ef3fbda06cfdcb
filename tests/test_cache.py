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
    assert not list(tmp_path.glob("samples/.broken-*")) and not list(tmp_path.glob("*/.tmp-*"))


def test_a_volatile_artifact_not_waited_for_is_readable_at_once_and_locked_until_written(tmp_path):
    import fcntl

    cache = ArtifactCache(tmp_path)
    art = cache.get_or_create("metric", {"n": 1}, _build([]), wait=False)
    assert cache.exists("metric", art.key)  # waits for the queued write
    assert (art.path / "meta.json").is_file() and not list(tmp_path.glob("*/.tmp-*"))
    with open(cache.lock_path("metric", art.key), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the writer has released it
    loaded = cache.load("metric", art.key)
    assert loaded.meta == art.meta and torch.equal(loaded.tensors["x"], art.tensors["x"])
    again = cache.get_or_create("metric", {"n": 1}, _build(calls := []), wait=False)
    assert calls == [] and again.meta == art.meta


def test_volatile_kinds_share_a_bounded_set_of_lock_files(tmp_path):
    cache = ArtifactCache(tmp_path)
    for i in range(40):
        cache.get_or_create("samples", {"n": i}, _build([]), wait=False)
    cache.flush()
    locks = {p.name for p in (tmp_path / "samples").glob(".lock-*")}
    assert 0 < len(locks) <= 40 and all(n.startswith(".lock-stripe-") for n in locks)
    assert {cache.lock_path("samples", f"{i:08x}" + "0" * 12).name for i in range(5000)} == {
        f".lock-stripe-{i:04d}" for i in range(1024)}  # bounded: LOCK_STRIPES files per kind
    cache.get_or_create("model", {"n": 0}, _build([]))
    assert [p.name for p in (tmp_path / "model").glob(".lock-*")] == [f".lock-{cache.key('model', {'n': 0})}"]


def test_a_stripe_held_by_this_process_is_shared_and_other_processes_wait(tmp_path):
    """Nested builds of two keys in one stripe do not wait for themselves; another
    process cannot take the stripe until the last holder here lets go."""
    import subprocess
    import sys

    cache = ArtifactCache(tmp_path)
    a = cache.key("metric", {"n": 1})
    b = next(k for k in (cache.key("metric", {"n": i}) for i in range(2, 100000))
             if cache.lock_path("metric", k) == cache.lock_path("metric", a))
    probe = ("import fcntl, sys\nfh = open(sys.argv[1], 'a')\n"
             "try:\n    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')")

    def other_process_sees() -> str:
        path = str(cache.lock_path("metric", a))
        return subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True).stdout.strip()

    with cache.lock("metric", a):
        with cache.lock("metric", b):  # same stripe, same process: no self-deadlock
            assert cache.lock_path("metric", a) == cache.lock_path("metric", b)
        assert other_process_sees() == "held"
    assert other_process_sees() == "free"


def test_a_non_exclusive_build_takes_no_lock_and_the_first_write_wins(tmp_path):
    cache = ArtifactCache(tmp_path)
    first = cache.get_or_create("metric", {"n": 1}, _build([]), wait=False, exclusive=False)
    cache.flush()
    assert not list((tmp_path / "metric").glob(".lock-*"))
    # a second process that built the same artifact meanwhile: its write is dropped
    other = ArtifactCache(tmp_path)
    assert other._write("metric", first.key, {"x": torch.zeros(1)}, '{"note": "late"}') is False
    assert cache.load("metric", first.key).meta["note"] == "built"
    assert not list(tmp_path.glob("*/.tmp-*"))


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
