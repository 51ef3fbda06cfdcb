"""diffbench's diffusers sampling vs calling the same pipeline directly.

The ``diffusers`` model samples through the pipeline's own ``__call__``; what it adds is
per-image generators (so samples do not depend on the batch size), a fresh scheduler
per call, binding the variant's denoiser, and moving images to the CPU. This script
times both on the same prompts and initial latents, in interleaved rounds (the order
alternates) so load from other processes hits both alike, checks that they draw the same
images (exit 1 when they do not), and prints last ``diffbench vs direct pipeline call:
1.01x time`` (goal: within 5%, i.e. <= 1.05x).

The pipeline is ``--pretrained PATH_OR_HUB_ID`` (e.g. Stable Diffusion on a GPU) or, by
default, a tiny random Stable Diffusion pipeline of the real classes written to a temp
folder (``harness.testing.tiny_sd_pipeline``) at ``--size`` latent pixels: a small
denoiser makes the wrapper's fixed costs show more, not less.

Usage: python benchmarks/perf/diffusers_overhead.py [--pretrained PATH] [--images 16]
       [--steps 25] [--batch 16] [--repeats 5] [--device auto] [--dtype fp32] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see sampler_throughput.py

import torch  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` shrinks the run to a smoke test."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained", default="", help="pipeline folder or hub id (default: a tiny random SD pipeline)")
    p.add_argument("--size", type=int, default=16, help="latent side of the tiny pipeline (images 8x larger)")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (a few images and steps)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.batch, args.repeats, args.size = 2, 2, 2, 1, 8
    return args


def build_model(
    args: argparse.Namespace,
) -> tuple[Any, torch.device, tempfile.TemporaryDirectory[str] | None]:
    """diffbench's ``diffusers`` model on the device, and the temp folder of the tiny pipeline (if any)."""
    from harness.session import resolve_device
    from harness.testing import tiny_sd_pipeline
    from plugins.models.diffusers_model import DiffusersFamily

    device = resolve_device(args.device)
    tmp = None
    source = args.pretrained
    if not source:
        tmp = tempfile.TemporaryDirectory(prefix="diffbench-tiny-sd-")
        source = str(tiny_sd_pipeline(Path(tmp.name) / "pipe", sample_size=args.size))
    family = DiffusersFamily(pretrained=source, dtype=args.dtype)
    model = family.build(None).to(device)
    return model, device, tmp


def make_samplers(
    model, args: argparse.Namespace, device: torch.device  # noqa: ANN001
) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """diffbench's sampling and the direct pipeline call, on the same prompts and latents."""
    from harness.base import Conditions

    pipe = model.pipe
    n = args.images
    prompts = [f"a photo of object number {i}" for i in range(n)]
    latents = torch.randn((n, *model.sample_shape), generator=torch.Generator().manual_seed(0))
    conditions = Conditions(prompts=prompts)

    def ours() -> torch.Tensor:
        out = model.sample(latents.to(device), conditions, cfg_scale=args.cfg, sampler="default", steps=args.steps,
                           batch_size=args.batch, generator=torch.Generator().manual_seed(0))
        return out.images

    def direct() -> torch.Tensor:
        """What a user's script does: call the pipeline per batch with the same latents."""
        pipe.scheduler = model.base_scheduler
        images = []
        for s in range(0, n, args.batch):
            with torch.inference_mode():
                out = pipe(prompts[s : s + args.batch], latents=latents[s : s + args.batch].to(device, model.dtype),
                           num_inference_steps=args.steps, guidance_scale=args.cfg, height=model.resolution,
                           width=model.resolution, output_type="pt", return_dict=False)[0]
            images.append(out.float().cpu())
        return torch.cat(images)

    return ours, direct


def timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:  # noqa: ANN001
    """Wall seconds of one call (synchronised on CUDA) and its output."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def timed_rounds(
    ours: Callable[[], torch.Tensor], direct: Callable[[], torch.Tensor], repeats: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Both contenders in rounds of alternating order: their seconds, and their last images."""
    times: dict[str, list[float]] = {"diffbench": [], "direct": []}
    outputs: dict[str, torch.Tensor] = {}
    for r in range(repeats):
        order = [("diffbench", ours), ("direct", direct)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            seconds, outputs[name] = timed(fn, device)
            times[name].append(seconds)
    return times, outputs


def report(model, args: argparse.Namespace, device: torch.device,  # noqa: ANN001
           times: dict[str, list[float]], outputs: dict[str, torch.Tensor]) -> bool:
    """The set-up line, one line per contender, the image check and, last, the ratio.

    Returns True when both draw the same images.
    """
    params = sum(q.numel() for q in model.net.parameters())
    source = args.pretrained or "tiny random SD pipeline"
    print(f"{type(model.pipe).__name__} ({source}), denoiser {params:,} params, {model.resolution}px, "
          f"{args.steps} steps, CFG {args.cfg:g}, {args.images} images, batch {args.batch}, device {device}, "
          f"dtype {args.dtype}, {args.repeats} interleaved round(s)")
    for name, ts in times.items():
        print(f"{name:10s} best {min(ts):8.3f} s  median {statistics.median(ts):8.3f} s  rounds "
              + " ".join(f"{t:.3f}" for t in ts))
    diff = float((outputs["diffbench"] - outputs["direct"]).abs().max())
    print(f"same images: max |diff| = {diff:.2e} ({'ok' if diff < 1e-3 else 'DIFFERENT'})")
    print(f"diffbench vs direct pipeline call: {min(times['diffbench']) / min(times['direct']):.2f}x time")
    return diff < 1e-3


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, device, tmp = build_model(args)
    ours, direct = make_samplers(model, args, device)
    model.pipe.set_progress_bar_config(disable=True)
    ours()  # warm-up both (first calls allocate and pick kernels)
    direct()
    times, outputs = timed_rounds(ours, direct, args.repeats, device)
    same = report(model, args, device, times, outputs)
    if tmp is not None:
        tmp.cleanup()
    return 0 if same else 1  # different images: the two calls did not sample the same thing


if __name__ == "__main__":
    raise SystemExit(main())
