"""A cached re-run against the first run of the same matrix (goal: < 5% of the time).

Runs ``benchmarks/quickstart.toml`` (with ``--set`` overrides that shrink it, by default a
short teacher/student training and fewer samples) into a temporary results folder, then
runs it again: every cell is stored, so the second run must only plan, look at the store
and stop. Then it adds a metric (``feature_distance`` -> re-measures every cell from the
cached samples, training and sampling nothing) and times that too. Prints the times and
last ``cached re-run vs first run: 0.3%``.

Usage: python benchmarks/perf/cached_rerun.py [--full] [--quick]
  --full   the quickstart as it is (minutes on 2 CPU cores)
  --quick  a tiny smoke run
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see sampler_throughput.py

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "benchmarks" / "quickstart.toml"
METRICS = '"fid_digits", "label_accuracy", "generation_time"'


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the quickstart as it is")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = p.parse_args(argv)
    from harness import runner

    small = [] if args.full else [
        "model.train.epochs=3", "model.distill.epochs=2", "sampling.num_samples=100", "sampling.steps=10",
    ]
    if args.quick:
        small = ["model.train.max_steps=3", "model.distill.max_steps=2", "sampling.num_samples=8",
                 "sampling.steps=2", "matrix.seed=[0]", "matrix.cfg_scale=[1.0]"]
    first_metrics = [f"metrics.names=[{METRICS}]"]
    more_metrics = [f'metrics.names=[{METRICS}, "feature_distance"]']

    def run(results: str, extra: list[str]) -> tuple[float, runner.RunSummary]:
        t0 = time.perf_counter()
        summary = runner.run(MATRIX, [*small, *extra], results_dir=results, stream=io.StringIO(), interactive=False)
        return time.perf_counter() - t0, summary

    with tempfile.TemporaryDirectory() as tmp:
        first, s1 = run(tmp, first_metrics)
        again, s2 = run(tmp, first_metrics)
        added, s3 = run(tmp, more_metrics)
    assert s1.error == 0 and s2.skipped == s1.total and s3.ok == s1.total, (s1, s2, s3)
    print(f"quickstart{'' if args.full else ' (shrunk: ' + ' '.join(small) + ')'}: {s1.total} cells")
    print(f"first run:                 {first:8.2f} s  ({s1.ok} cells computed)")
    print(f"re-run (all stored):       {again:8.2f} s  ({s2.skipped} cells skipped)")
    print(f"re-run with a new metric:  {added:8.2f} s  ({s3.ok} cells re-measured from cached samples)")
    print(f"new metric vs first run: {added / first:.1%}")
    print(f"cached re-run vs first run: {again / first:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
