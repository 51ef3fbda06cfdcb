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


def test_durable_kinds_and_volatile_kinds_both_round_trip(tmp_path):
    cache = ArtifactCache(tmp_path)
    for kind in ("model", "samples", "metric"):
        art = cache.get_or_create(kind, {"k": kind}, _build([]))
        assert cache.exists(kind, art.key)
        assert cache.load(kind, art.key).meta["_kind"] == kind
