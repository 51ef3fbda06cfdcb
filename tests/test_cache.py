"""The artifact cache: content-addressed keys, atomic writes, build locks, torn artifacts rebuilt."""

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


def test_keys_are_those_of_earlier_versions(tmp_path):
    """Stored caches stay valid: the same config gives the same key as before."""
    from harness.cache import canonical_json, stable_hash

    cache = ArtifactCache(tmp_path)
    assert cache.key("samples", {"n": 2}) == "c351b8fd2573873b19d8"
    config = {"lr": 1e-4, "steps": 1.0, "nan": float("nan"), "l": [1, 2, {"b": 1, "a": 0.1 + 0.2}]}
    assert cache.key("model", config, parent="p") == "277d7b405fab6adfc05f"
    assert stable_hash({"a": 1}) == "015abd7f5cc57a2d"
    assert canonical_json({"b": 1.0, "a": [0.30000000000000004, float("nan")]}) == '{"a":[0.3,"NaN"],"b":1}'


def test_every_artifact_is_on_disk_when_get_or_create_returns(tmp_path):
    cache = ArtifactCache(tmp_path)
    for kind in ("metric", "samples", "model"):
        art = cache.get_or_create(kind, {"n": 1}, _build([]))
        loaded = ArtifactCache(tmp_path).load(kind, art.key)  # as another process sees it
        assert loaded.meta == art.meta and torch.equal(loaded.tensors["x"], art.tensors["x"])
        assert loaded.meta["config"] == {"n": 1} and loaded.meta["parent"] is None
        assert [p.name for p in (tmp_path / kind).glob(".lock-*")] == [f".lock-{art.key}"]
    assert not list(tmp_path.glob("*/.tmp-*"))


def test_the_build_lock_is_held_against_other_processes(tmp_path):
    import subprocess
    import sys

    cache = ArtifactCache(tmp_path)
    key = cache.key("samples", {"n": 1})
    probe = ("import sys\nfrom filelock import FileLock, Timeout\n"
             "try:\n    FileLock(sys.argv[1], timeout=0).acquire(); print('free')\n"
             "except Timeout:\n    print('held')")

    def other_process_sees() -> str:
        path = str(tmp_path / "samples" / f".lock-{key}")
        return subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True,
                              check=True).stdout.strip()

    with cache.lock("samples", key):
        assert other_process_sees() == "held"
    assert other_process_sees() == "free"


def test_an_artifact_built_while_waiting_for_the_lock_is_loaded_not_built_again(tmp_path, monkeypatch):
    """The look-up is repeated under the lock: what another process built meanwhile is used."""
    cache = ArtifactCache(tmp_path)
    key = cache.key("model", {"n": 1})
    cache.save("model", key, {"x": torch.ones(2)}, {"note": "theirs"})  # the other process's
    looked = []
    real_exists = cache.exists

    def exists(kind, k):  # the first look-up happened before the other process finished
        looked.append(k)
        return len(looked) > 1 and real_exists(kind, k)

    monkeypatch.setattr(cache, "exists", exists)
    art = cache.get_or_create("model", {"n": 1}, _build(calls := []))
    assert calls == [] and len(looked) == 2 and art.meta["note"] == "theirs"


def test_a_second_writer_keeps_the_first_artifact(tmp_path):
    cache = ArtifactCache(tmp_path)
    first = cache.get_or_create("metric", {"n": 1}, _build([]))
    late = ArtifactCache(tmp_path).save("metric", first.key, {"x": torch.zeros(1)}, {"note": "late"})
    assert late.meta["note"] == "built" and cache.load("metric", first.key).meta["note"] == "built"
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

    from harness.cache import ArtifactCache
    from harness.fsio import HOST

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
    staging = tmp_path / ".staging"  # where earlier versions staged artifacts
    (staging / f".tmp-model-abc-{HOST}-{dead_pid}-x1y2").mkdir(parents=True)
    assert ArtifactCache(tmp_path).clean_partial() == 3
    left = {p.name for p in kind.iterdir()}
    assert left == {names["live"], names["remote_fresh"], "abc"}
    assert not staging.exists()


def test_a_run_removes_fragment_leftovers_of_a_killed_run(tmp_path) -> None:
    import io
    import subprocess
    import sys
    from pathlib import Path

    from harness import runner
    from harness.fsio import HOST

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
