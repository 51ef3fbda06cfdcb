"""Ray executor vs local: wall time of one CPU-bound synthetic matrix, both ways.

Runs the synthetic matrix (2 pruners x 3 rates x 2 CFG scales x ``--seeds`` seeds, plus
the reference cells) whose model busy-loops ``--cost-ms`` per sampling call, once with
the ``local`` executor and once with ``ray`` on a local Ray instance of 2 CPUs (2 workers
of 1 CPU), each into its own results folder (so every run builds every variant). Ray's
start is timed separately and not counted. The first Ray run includes starting the two
worker processes (a fresh Python importing torch: seconds, more on a busy machine); the
second runs on the same, now warm, workers: that is the steady state of a long run and
the figure printed last. The reference unit runs alone before the others (they are
compared with it), so for the plugin work alone the speed-up is bounded by
(reference + rest) / (reference + rest / 2) = 42 / 24 = 1.75x with 3 seeds; the
harness's own per-cell work parallelises too.

Usage: python benchmarks/perf/ray_vs_local.py [--cost-ms 250] [--seeds 3] [--quick]
Prints ``ray (2 workers) vs local: 1.7x`` last (warm workers). Needs the ray extra.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "benchmarks" / "synthetic.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost-ms", type=float, default=250.0, help="simulated work per sampling call (ms)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per point (3 -> 42 cells)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 ms per call, 1 seed")
    args = parser.parse_args()
    if args.quick:
        args.cost_ms, args.seeds = 20.0, 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per worker, and the same for local

    import ray
    import torch

    from harness import runner

    torch.set_num_threads(1)
    overrides = [
        'matrix.pruning_method=["magnitude", "random"]',
        "matrix.pruning_rate=[0.3, 0.5, 0.7]",
        "matrix.cfg_scale=[1.0, 3.0]",
        f"matrix.seed={list(range(args.seeds))}",
        f"model.cost_ms={args.cost_ms}",
        "sampling.warmup=false",
        'metrics.names=["synthetic_quality"]',
        'execution.device="cpu"',
    ]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        local = runner.run(MATRIX, overrides, results_dir=f"{tmp}/local", quiet=True)
        local_s = time.perf_counter() - t0
        print(f"local: {local.ok} cells in {local_s:.1f} s ({args.cost_ms:g} ms of work per cell)")

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        print(f"ray start (local instance, 2 CPUs): {time.perf_counter() - t0:.1f} s (not counted)")
        ray_overrides = [*overrides, "execution.executor=ray", "execution.num_cpus=1", "execution.max_workers=2"]
        seconds = []
        try:
            for name in ("ray-cold", "ray-warm"):
                t0 = time.perf_counter()
                remote = runner.run(MATRIX, ray_overrides, results_dir=f"{tmp}/{name}", quiet=True)
                seconds.append(time.perf_counter() - t0)
                if (local.ok, local.error) != (remote.ok, remote.error):
                    raise SystemExit(f"different outcomes: local {local.ok} ok / {local.error} failed, "
                                     f"ray {remote.ok} ok / {remote.error} failed")
        finally:
            ray.shutdown()
        cold, warm = seconds
        print(f"ray (2 workers), first run: {remote.ok} cells in {cold:.1f} s (starting the worker processes "
              f"included; {local_s / cold:.1f}x local)")
        print(f"ray (2 workers), warm workers: {remote.ok} cells in {warm:.1f} s")
        print(f"ray (2 workers) vs local: {local_s / warm:.1f}x")


if __name__ == "__main__":
    main()
