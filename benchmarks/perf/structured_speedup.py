"""Structured pruning at rate 0.5: measured sampling speed-up of the pruned UNet.

The ``structured`` pruner removes channels physically (torch-pruning's dependency graph),
so the pruned network is smaller and faster, not just sparser. This script builds the
default ``unet`` teacher for 16x16 digits (untrained, weights from a fixed seed: weights
do not change the cost), prunes a copy with ``structured`` at ``--rate`` through the
registry (as a cell would), and times DDIM sampling with CFG of both on the same noise
and labels, in interleaved rounds (the order alternates) so load from other processes
hits both alike. It prints parameter and MAC ratios, the best round of each, and last
``structured 0.5 sampling speed-up: 1.6x`` (goal >= 1.5x on CPU).

Usage: python benchmarks/perf/structured_speedup.py [--rate 0.5] [--images 256]
       [--steps 25] [--repeats 5] [--device auto] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see sampler_throughput.py

import torch  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` shrinks the run to a smoke test."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=0.5)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (a few images and steps)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.repeats = 8, 2, 1
    return args


def build_models(args: argparse.Namespace) -> tuple[Any, Any, torch.device]:
    """The untrained teacher and its copy pruned by ``structured`` at ``--rate`` (as a cell would), in eval mode."""
    from harness.base import Conditions, ImageBatch, PruneContext
    from harness.registry import build_registry
    from harness.session import resolve_device

    device = resolve_device(args.device)
    reg = build_registry()
    dataset = reg.get("datasets", "digits")()
    family = reg.get("models", "unet")()
    torch.manual_seed(0)
    teacher = family.build(dataset).to(device)
    tensors, meta = family.state(teacher)
    pruned = family.restore(tensors, meta, dataset).to(device)
    batch = dataset.load("train")
    calib = ImageBatch(batch.images[:64], Conditions(labels=batch.conditions.labels[:64]))
    ctx = PruneContext(
        calibration=calib,
        device=device,
        generator=torch.Generator().manual_seed(0),
        finetune=lambda model, steps: model,  # structured does not fine-tune
        example_inputs=pruned.example_inputs(2),
        seed=0,
    )
    pruned = reg.get("pruners", "structured")().prune(pruned, args.rate, ctx)
    for m in (teacher, pruned):
        m.net.eval()
    return teacher, pruned, device


def timed_rounds(teacher, pruned, args: argparse.Namespace,  # noqa: ANN001
                 device: torch.device) -> dict[str, list[float]]:
    """Warm up, then time DDIM + CFG sampling of both on the same noise and labels, in alternating order."""
    from harness.base import Conditions

    gen = torch.Generator().manual_seed(1)
    noise = torch.randn((args.images, *teacher.sample_shape), generator=gen).to(device)
    labels = torch.randint(0, 10, (args.images,), generator=gen)
    conditions = Conditions(labels=labels, prompts=None)

    def run(model) -> float:  # noqa: ANN001
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model.sample(noise, conditions, cfg_scale=3.0, sampler="ddim", steps=args.steps,
                     batch_size=256, generator=torch.Generator().manual_seed(2))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    run(teacher), run(pruned)  # warm-up
    times: dict[str, list[float]] = {"teacher": [], "pruned": []}
    for r in range(args.repeats):
        order = [("teacher", teacher), ("pruned", pruned)]
        for name, model in order if r % 2 == 0 else order[::-1]:
            times[name].append(run(model))
    return times


def params(m) -> int:  # noqa: ANN001
    """Parameter count of the model's network."""
    return sum(t.numel() for t in m.net.parameters())


def report(teacher, pruned, args: argparse.Namespace, device: torch.device,  # noqa: ANN001
           times: dict[str, list[float]]) -> None:
    """Parameter and MAC ratios, the best round of each and, last, the speed-up."""
    from harness.sizes import measure_macs

    best = {k: min(v) for k, v in times.items()}
    print(f"unet teacher {params(teacher):,} params, structured {args.rate:g}: {params(pruned):,} params "
          f"({params(pruned) / params(teacher):.2f}x), MACs {measure_macs(pruned) / measure_macs(teacher):.2f}x; "
          f"DDIM {args.steps} steps, CFG 3, {args.images} images, device {device}, best of {args.repeats}")
    for name, v in times.items():
        print(f"{name:8s} best {best[name]:7.2f} s  rounds " + " ".join(f"{t:.2f}" for t in v))
    print(f"structured {args.rate:g} sampling speed-up: {best['teacher'] / best['pruned']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    teacher, pruned, device = build_models(args)
    times = timed_rounds(teacher, pruned, args, device)
    report(teacher, pruned, args, device, times)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
