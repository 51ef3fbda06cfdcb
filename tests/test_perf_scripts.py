"""The performance scripts in ``benchmarks/perf/`` run end to end (smoke runs; no timings asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert any(line.startswith("hand-written batched, split, channels-last ") for line in lines)  # the engine's layout
    assert any(re.fullmatch(r"float32 rounding: split loop in NCHW .* vs channels-last max \|diff\| = \S+ = 2 steps "
                            r"x eps32 1\.19e-07 x growth \d+; tolerance 4x = \S+", line) for line in lines)
    assert any(re.fullmatch(r"same output: harness vs hand-written max \|diff\| = \S+ \(ok\);.*", line) for line in lines)
    assert re.fullmatch(r"sampler vs per-image loop: \d+\.\dx", lines[-2])
    assert re.fullmatch(r"sampler vs best hand-written loop \(channels-last\): \d+\.\d\dx", lines[-1])


def test_sampler_throughput_mismatch_exits_1(tmp_path: Path) -> None:
    # a harness whose guidance scale is 1% off: far beyond float32 rounding, the script must fail
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import sampler_throughput as st, harness.diffusion as hd\n"
        "orig = hd.guided_eps\n"
        "hd.guided_eps = lambda f, x, t, c, n, s, mode: orig(f, x, t, c, n, s * 1.01, mode)\n"
        "sys.exit(st.main(['--quick', '--device', 'cpu']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(PERF)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"same output: harness vs hand-written max \|diff\| = \S+ \(MISMATCH\)", proc.stdout)


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


def test_ray_vs_local_quick(tmp_path: Path) -> None:
    pytest.importorskip("ray")  # the ray extra
    lines = _quick("ray_vs_local.py", tmp_path)  # 14 cells of 20 ms, local then on a local Ray instance
    assert re.fullmatch(r"local: 14 cells in \S+ s \(20 ms of work per cell\)", lines[0])
    assert re.fullmatch(r"ray \(2 workers\), warm workers: 14 cells in \S+ s", lines[-2])
    assert re.fullmatch(r"ray \(2 workers\) vs local: \d+\.\dx", lines[-1])


def test_perf_scripts_all_tested() -> None:
    """Every script in benchmarks/perf/ has a smoke run in this file."""
    text = Path(__file__).read_text()
    missing = [p.name for p in sorted(PERF.glob("*.py")) if f'"{p.name}"' not in text]
    assert not missing, f"perf scripts without a smoke test here: {missing}"


def test_harness_overhead_small(tmp_path: Path) -> None:
    # --quick: 19 cells of 10 ms: the script's bookkeeping end to end, the figure is not checked
    proc = subprocess.run(
        [sys.executable, str(PERF / "harness_overhead.py"), "--quick"],
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
