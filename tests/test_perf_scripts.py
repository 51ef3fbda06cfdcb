"""The performance scripts in ``benchmarks/perf/`` run end to end (smoke runs; no timings asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PERF = REPO / "benchmarks" / "perf"


def test_sampler_throughput_quick(tmp_path: Path) -> None:
    # --quick: 4 images, 2 DDIM steps, 1 round (a few seconds of work after the imports)
    proc = subprocess.run(
        [sys.executable, str(PERF / "sampler_throughput.py"), "--quick", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith("harness sampler (sample stage, ") for line in lines)
    assert any(re.fullmatch(r"same output: harness vs hand-written max \|diff\| = \S+ \(ok\);.*", line) for line in lines)
    assert re.fullmatch(r"sampler vs per-image loop: \d+\.\dx", lines[-2])
    assert re.fullmatch(r"sampler vs best hand-written loop: \d+\.\d\dx", lines[-1])


def _quick(script: str, tmp_path: Path) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(PERF / script), "--quick"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()


def test_structured_speedup_quick(tmp_path: Path) -> None:
    lines = _quick("structured_speedup.py", tmp_path)
    assert re.match(r"unet teacher [\d,]+ params, structured 0.5: [\d,]+ params \(0\.\d\dx\), MACs 0\.\d\dx", lines[0])
    assert re.fullmatch(r"structured 0.5 sampling speed-up: \d+\.\d\dx", lines[-1])


def test_cached_rerun_quick(tmp_path: Path) -> None:
    lines = _quick("cached_rerun.py", tmp_path)
    assert re.fullmatch(r"re-run \(all stored\): +\S+ s  \(3 cells skipped\)", lines[2])
    assert re.fullmatch(r"cached re-run vs first run: \d+\.\d%", lines[-1])


def test_diffusers_overhead_quick(tmp_path: Path) -> None:
    lines = _quick("diffusers_overhead.py", tmp_path)  # a tiny random SD pipeline in a temp folder
    assert lines[0].startswith("StableDiffusionPipeline (tiny random SD pipeline)")
    assert lines[-2] == "same images: max |diff| = 0.00e+00 (ok)"  # the wrapper draws exactly the pipeline's images
    assert re.fullmatch(r"diffbench vs direct pipeline call: \d+\.\d\dx time", lines[-1])


def test_harness_overhead_small(tmp_path: Path) -> None:
    # 19 cells of 10 ms: the script's bookkeeping end to end, the figure is not checked
    proc = subprocess.run(
        [sys.executable, str(PERF / "harness_overhead.py"), "--work-s", "0.01", "--cells", "19"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("cells run: 19 ")
    assert re.fullmatch(r"plan 10,000 cells: \d+\.\d\d s", lines[-2])
    assert re.fullmatch(r"harness overhead: \d+\.\d% of wall time", lines[-1])


def test_training_throughput_quick(tmp_path: Path) -> None:
    # --quick: 3 steps of batch 16, 1 round; the engine and the same-kernels loop must end on the same weights
    proc = subprocess.run(
        [sys.executable, str(PERF / "training_throughput.py"), "--quick", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"MACs per image: forward [\d.]+ M, forward\+backward [\d.]+ M \([\d.]+x forward\)", lines[1])
    assert any(line.startswith("engine (train_teacher, a cell's path) ") for line in lines)
    assert any(line.startswith("same weights after the steps, max |diff| to the engine: same kernels 0.00e+00 (tol 0, ok)")
               for line in lines)
    assert re.fullmatch(r"training step vs best hand-written loop: \d+\.\d\dx", lines[-1])
