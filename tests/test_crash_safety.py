"""Crash safety of a real run: SIGKILL ``bench run`` at named points, then run it again.

A tiny real UNet matrix (the quickstart with a few-step teacher and student, 8 samples,
3 DDIM steps, 4 cells) is started as ``bench run`` in a subprocess, through a small
driver that installs one kill point and then calls ``harness.cli.main``, the console
script's own entry. When the run reaches the point, the process writes a marker (what
it was doing) and SIGKILLs itself, so the point is reached deterministically, not by
polling and luck. The harness itself carries no test hook.

Kill points (:data:`KILL_POINTS`): during the teacher's training, during the
student's distillation, while the teacher's artifact is being written (weights written
into the ``.tmp-*`` folder, not yet renamed), during sampling, while a sample set
artifact is being written, with a fragment half written, and just after a fragment was
renamed into place, before the run went on.

After each kill, the same ``bench run`` runs again (in this process) and must exit 0
with every planned cell stored exactly once, every Parquet file readable, only whole
artifacts in the cache (interrupted ``.tmp-*`` folders are never read) and values
bitwise equal to those of an uninterrupted run: on CPU, on one thread, training,
sampling, the digit classifier and both metrics are deterministic given the seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import harness
from harness.cache import ArtifactCache
from harness.cli import main
from harness.config import load_matrix
from harness.planner import plan_cells
from harness.store import fragment_files

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "benchmarks" / "quickstart.toml"
#: teacher and a 0.5x student at CFG 1 and 3, one seed: 4 cells, 4 sample sets, 8 rows
TINY = [
    "model.base_channels=8",
    "model.channel_mults=[1, 2]",
    "model.num_heads=2",
    "model.norm_groups=4",
    "model.train.max_steps=6",
    "model.train.batch_size=16",
    "model.distill.max_steps=4",
    "model.distill.batch_size=16",
    "sampling.num_samples=8",
    "sampling.steps=3",
    "sampling.batch_size=8",
    "matrix.size_factor=[0.5]",
    "matrix.cfg_scale=[1.0, 3.0]",
    "matrix.seed=[0]",
    'metrics.names=["fid_digits", "label_accuracy"]',
    "execution.device=cpu",
]
METRICS = {"fid_digits", "label_accuracy"}
SET_ARGS = [a for o in TINY for a in ("--set", o)]

#: Runs in the killed subprocess: installs the kill point named by DIFFBENCH_TEST_KILL_AT
#: (``POINT:N``, the N-th time the point is reached), then runs the CLI.
DRIVER = textwrap.dedent(
    '''
    import json, os, signal, sys
    from pathlib import Path

    point, _, nth = os.environ["DIFFBENCH_TEST_KILL_AT"].rpartition(":")
    nth = int(nth)
    marker = Path(os.environ["DIFFBENCH_TEST_KILL_MARKER"])
    seen = {"n": 0}

    def reached(**info):
        """Count a pass through the point; on the N-th, leave a marker and SIGKILL this process."""
        seen["n"] += 1
        if seen["n"] == nth:
            marker.write_text(json.dumps({"point": point, "n": nth, **info}))
            os.kill(os.getpid(), signal.SIGKILL)

    import harness.diffusion as diffusion
    import harness.fsio as fsio
    import harness.store as store

    if point in ("train", "distill"):
        # the N-th optimizer step of the teacher's training / the student's distillation
        from plugins.models.unet import UNetFamily

        desc = {"train": "train teacher", "distill": "distil student"}[point]
        method = {"train": "train_teacher", "distill": "distill_student"}[point]
        active = {"on": False}
        stage = getattr(UNetFamily, method)

        def during_stage(*args, **kwargs):
            active["on"] = True
            try:
                return stage(*args, **kwargs)
            finally:
                active["on"] = False

        setattr(UNetFamily, method, during_stage)

        def after_step(opt, args, kwargs):
            if active["on"]:
                reached(what=desc)

        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(after_step)
    elif point == "sample":
        # the N-th network evaluation while sampling (a DDIM step of one batch)
        guided = diffusion.guided_eps

        def guided_eps(*args, **kwargs):
            reached(what="denoising step")
            return guided(*args, **kwargs)

        diffusion.guided_eps = guided_eps
    elif point.startswith("save."):
        # the N-th artifact of a kind: its weights written into its <kind>/.tmp-* folder, no meta.json,
        # not renamed
        import safetensors.torch as st

        kind = point.split(".", 1)[1]
        save_file = st.save_file

        def save(tensors, filename, *args, **kwargs):
            save_file(tensors, filename, *args, **kwargs)
            tmp = Path(filename).parent
            if tmp.parent.name == kind and tmp.name.startswith(".tmp-"):
                reached(tmp=str(tmp))

        st.save_file = save
    elif point == "fragment.torn":
        # the N-th fragment: half of its bytes in the temporary file, then death
        class _Torn:
            def __init__(self, fh):
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self.fh.__exit__(*exc)

            def write(self, data):
                self.fh.write(data[: len(data) // 2])
                self.fh.flush()
                os.fsync(self.fh.fileno())
                reached(tmp=self.fh.name, size=len(data))

        def torn_open(path, mode="r", *args, **kwargs):
            fh = open(path, mode, *args, **kwargs)
            if ".parquet" not in Path(path).name:
                return fh
            if seen["n"] + 1 < nth:  # an earlier fragment: written whole
                seen["n"] += 1
                return fh
            return _Torn(fh)

        fsio.open = torn_open  # the open() that harness.fsio writes temporary files with
    elif point == "fragment.renamed":
        # the N-th fragment renamed into place: death as write_cell returns
        write_cell = store.Run.write_cell

        def _write_cell(self, cell_id, rows, **kwargs):
            path = write_cell(self, cell_id, rows, **kwargs)
            reached(fragment=str(path))
            return path

        store.Run.write_cell = _write_cell
    else:
        raise SystemExit(f"unknown kill point {point!r}")

    from harness.cli import main

    sys.exit(main(sys.argv[1:]))
    '''
)

#: (id, DIFFBENCH_TEST_KILL_AT, whether the teacher and student come from the cache)
KILL_POINTS = [
    ("training", "train:3", False),  # 6 steps in all
    ("distillation", "distill:2", False),  # 4 steps in all
    ("writing-teacher-artifact", "save.model:1", False),
    # 4 sample sets x (3-step warm-up + 3 steps): the 2nd step of the 2nd set's timed sampling
    ("sampling", "sample:11", True),
    ("writing-sample-set", "save.samples:2", True),
    ("fragment-half-written", "fragment.torn:2", True),
    ("fragment-renamed", "fragment.renamed:2", True),
]


def cells():
    return plan_cells(load_matrix(QUICKSTART, TINY))


def bench_run(results: Path) -> int:
    return main(["run", str(QUICKSTART), "--results", str(results), "--quiet", *SET_ARGS])


def values(results: Path) -> dict[tuple[str, str], float]:
    df = harness.load_results(results)
    return {(str(r.cell_id), str(r.metric)): r.value for r in df.itertuples()}


def artifact_dirs(results: Path) -> list[Path]:
    root = results / ".cache"
    return sorted(p for p in root.glob("*/*") if p.is_dir() and not p.name.startswith("."))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """The matrix run once, uninterrupted (in this process, one thread)."""
    import torch

    torch.set_num_threads(1)  # module-scoped: runs before the function-scoped fixture
    results = tmp_path_factory.mktemp("baseline")
    assert bench_run(results) == 0
    return results


def test_the_uninterrupted_run_is_deterministic_on_cpu(baseline, tmp_path):
    """What the kill tests compare against: a second run from scratch, same values bitwise."""
    first = values(baseline)
    assert {m for _, m in first} == METRICS and len(first) == 2 * len(cells())
    # from scratch except the digit classifier (deterministic too, and the slowest part)
    for kind in ("classifier", "reference_features"):
        shutil.copytree(baseline / ".cache" / kind, tmp_path / ".cache" / kind)
    assert bench_run(tmp_path) == 0
    assert values(tmp_path) == first


def _seed_cache(baseline: Path, results: Path, with_models: bool) -> None:
    """Start from the baseline's classifier (and trained models): the kill tests then only
    redo the stages around their kill point."""
    kinds = ["classifier", "reference_features", *(["model"] if with_models else [])]
    for kind in kinds:
        shutil.copytree(baseline / ".cache" / kind, results / ".cache" / kind,
                        ignore=shutil.ignore_patterns(".lock-*"))


def _killed_run(results: Path, point: str, tmp_path: Path) -> dict:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    marker = tmp_path / "killed.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFBENCH_TEST_KILL_AT": point,
           "DIFFBENCH_TEST_KILL_MARKER": str(marker)}
    proc = subprocess.run(
        [sys.executable, str(driver), "run", str(QUICKSTART), "--results", str(results), "--quiet", *SET_ARGS],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed at {point}:\n{proc.stderr[-3000:]}"
    assert marker.is_file(), f"killed, but not at {point}"
    return json.loads(marker.read_text())


def _check_whole(results: Path) -> list[Path]:
    """What a reader can see is whole: fragments readable, artifacts complete."""
    frags = fragment_files(results)
    for frag in frags:
        pq.read_table(frag)
    cache = ArtifactCache(results / ".cache")
    for art in artifact_dirs(results):
        cache.load(art.parent.name, art.name)  # meta.json and tensors of every visible artifact
    return frags


@pytest.mark.parametrize(("point", "cached_models"), [p[1:] for p in KILL_POINTS], ids=[p[0] for p in KILL_POINTS])
def test_sigkill_then_rerun_completes_with_every_cell_once(point, cached_models, baseline, tmp_path):
    results = tmp_path / "results"
    _seed_cache(baseline, results, cached_models)
    info = _killed_run(results, point, tmp_path)
    planned = sorted(c.cell_id for c in cells())

    # -- what the crash left
    before = _check_whole(results)
    assert len(before) < len(planned)  # it died before the end
    leftovers = sorted(p for p in (results / ".cache").glob("*/.tmp-*"))
    torn = sorted(p for p in results.rglob(".tmp-*.parquet-*.tmp"))
    if point.startswith("save."):
        tmp = Path(info["tmp"])
        assert leftovers == [tmp] and (tmp / "tensors.safetensors").is_file() and not (tmp / "meta.json").exists()
    if point.startswith("fragment.torn"):
        assert [str(p) for p in torn] == [info["tmp"]] and 0 < torn[0].stat().st_size < info["size"]
        assert len(before) == 1
        # readers skip the torn temporary file: pandas / pyarrow read the folder as usual
        assert len(pd.read_parquet(results)) == len(METRICS)
    if point.startswith("fragment.renamed"):
        assert Path(info["fragment"]) in before  # in place, though the run never went on

    # -- the same command again
    assert bench_run(results) == 0
    frags = _check_whole(results)
    assert sorted(f.stem for f in frags) == planned  # every cell exactly once
    df = harness.load_results(results)
    assert not df.duplicated(["cell_id", "metric"]).any()
    assert set(df["status"].astype(str)) == {"ok"} and df["value"].notna().all()
    assert len(pd.read_parquet(results)) == len(df) == len(METRICS) * len(planned)
    # interrupted artifacts were never taken for whole ones: each kind's artifacts are the
    # baseline's, key for key, and the values are the uninterrupted run's, bit for bit
    for kind in ("model", "samples", "classifier", "reference_features"):
        keys = {p.name for p in (results / ".cache" / kind).iterdir() if not p.name.startswith(".")}
        assert keys == {p.name for p in (baseline / ".cache" / kind).iterdir() if not p.name.startswith(".")}, kind
    for p in leftovers:  # left where they were (harmless: never looked up), or cleaned
        assert not p.exists() or not (p / "meta.json").exists()
    assert values(results) == values(baseline)
    # a third run finds everything stored
    assert bench_run(results) == 0
    assert sorted(f.stem for f in fragment_files(results)) == planned
