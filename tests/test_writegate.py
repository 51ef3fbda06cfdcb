"""The write gate: background writers start while plugin work runs (harness/writegate.py)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from harness import runner, writegate
from harness.cache import ArtifactCache
from harness.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "benchmarks" / "synthetic.toml"


def _build():
    import torch

    return {"x": torch.arange(3.0)}, {"v": 1}


def test_closed_and_opened_nest_and_restore():
    assert writegate.is_open()  # outside a run: writers start at once
    with writegate.closed():
        assert not writegate.is_open()
        with writegate.opened():
            assert writegate.is_open()
            with writegate.closed():
                assert not writegate.is_open()
            assert writegate.is_open()
        assert not writegate.is_open()
    assert writegate.is_open()


def test_a_queued_artifact_waits_for_the_gate_and_flush_opens_it(tmp_path, monkeypatch):
    monkeypatch.setattr(writegate, "MAX_DELAY_S", 60.0)  # only the gate can release the write
    cache = ArtifactCache(tmp_path)
    with writegate.closed():
        art = cache.get_or_create("metric", {"n": 1}, _build, wait=False, exclusive=False)
        time.sleep(0.2)
        assert not (art.path / "meta.json").exists()  # held back while the gate is closed
        cache.flush()  # waiting for a writer opens the gate
        assert (art.path / "meta.json").is_file()
        assert not writegate.is_open()  # and closes it again


def test_a_gate_left_closed_only_delays_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(writegate, "MAX_DELAY_S", 0.05)
    cache = ArtifactCache(tmp_path)
    run = ResultStore(tmp_path / "results", "bench").new_run({})
    with writegate.closed():
        art = cache.get_or_create("metric", {"n": 2}, _build, wait=False, exclusive=False)
        frag = run.write_cell("c1", [{"metric": "m", "value": 1.0, "status": "ok"}], wait=False)
        deadline = time.monotonic() + 30
        while not ((art.path / "meta.json").is_file() and frag.is_file()):
            assert time.monotonic() < deadline, "a write never happened with the gate closed"
            time.sleep(0.01)


def test_a_run_opens_the_gate_for_plugin_work_only(tmp_path, monkeypatch):
    from plugins.models.synthetic import SyntheticModel

    seen: dict[str, list[bool]] = {"sample": [], "store": []}
    sample, store = SyntheticModel.sample, runner._store_result

    def spy_sample(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen["sample"].append(writegate.is_open())
        return sample(self, *args, **kwargs)

    def spy_store(*args):  # noqa: ANN002, ANN202
        seen["store"].append(writegate.is_open())
        return store(*args)

    monkeypatch.setattr(SyntheticModel, "sample", spy_sample)
    monkeypatch.setattr(runner, "_store_result", spy_store)
    overrides = ['matrix.pruning_method=["none", "magnitude"]', "matrix.pruning_rate=[0.5]",
                 "matrix.cfg_scale=[1.0]", "matrix.seed=[0, 1]"]
    summary = runner.run(SYNTHETIC, overrides, results_dir=str(tmp_path), stream=io.StringIO(), interactive=False)
    assert summary.ok == 4
    assert seen["sample"] and all(seen["sample"])  # sampling: writers may run
    assert seen["store"] == [False] * 4  # the harness's bookkeeping: they hold back
    assert writegate.is_open()  # and the run leaves it open


@pytest.mark.parametrize("where", ["sample", "store"])
def test_a_failure_inside_leaves_the_gate_open_afterwards(tmp_path, monkeypatch, where):
    from plugins.models.synthetic import SyntheticModel

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("boom")

    if where == "sample":
        monkeypatch.setattr(SyntheticModel, "sample", boom)
    else:
        monkeypatch.setattr(runner, "_store_result", boom)
    overrides = ['matrix.pruning_method=["none"]', "matrix.cfg_scale=[1.0]", "matrix.seed=[0]"]
    try:
        runner.run(SYNTHETIC, overrides, results_dir=str(tmp_path), stream=io.StringIO(), interactive=False)
    except RuntimeError:
        assert where == "store"
    assert writegate.is_open()
