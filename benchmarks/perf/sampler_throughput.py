"""Sampler throughput: images/s of diffbench's sampler against hand-written sampling loops.

Three contenders sample the same untrained teacher (the ``unet`` family on 16x16 digits,
weights from a fixed seed: weights do not change the cost) with DDIM and classifier-free
guidance, on the same noise and labels, in one run:

- **harness**: the sample stage's own sampling routine for a cell (``SampleStage.draw``: the
  matrix is loaded with ``load_matrix``, the cell planned with ``plan_cells``, the
  variant built through the artifact cache); its time is the one the cell records
  (``sampling_seconds``, around ``model.sample`` after the engine's warm-up).
- **per-image loop**: what research scripts usually write: for each image, for each
  timestep, a conditional and an unconditional forward pass of batch 1 under
  ``torch.no_grad``. Timed on a subset (``--loop-images``) to stay affordable.
- **hand-written batched loop**: the fastest loop one writes by hand: all images in one
  batch, ``torch.inference_mode``, the net in eval mode, coefficients precomputed, the
  network's input in the engine's layout (channels-last on CPU, see below), guidance
  either as one concatenated batch of 2N (``concat``) or as two passes of N (``split``);
  both are timed and the faster one is the reference.

Layout: on CPU the engine hands the network channels-last inputs (``fast_layout`` in
``harness/diffusion.py``: oneDNN's channels-last convolutions are ~15-20% faster; for one
channel only an explicit channels-last copy selects them). A loop in torch's default NCHW
layout is not the limit a user can reach, so the hand-written loops copy their input into
channels-last once per step as well (the same one-line copy, written out here). They are
honest minimal loops otherwise: no engine code runs in them.

Rounds interleave the contenders (the order rotates each round) so that load from other
processes hits all of them alike; each contender's best round (wall time) is compared.
The table also gives each contender's process CPU seconds (best round) and its wall time
per round: the same work costs about the same CPU seconds, so a wall-time gap between
contenders with equal CPU seconds is load from other processes, not the code (on CPU the
script prints that cross-check as ``same work: ... by CPU seconds``).
Torch threads are left as the engine leaves them (torch's default); ``OMP_WAIT_POLICY``
defaults to ``PASSIVE`` (see below).

Same output, within float32 rounding: the harness's images are compared with the
hand-written loops' images on the same noise (max abs difference, images in [0, 1]).
Different convolution kernels (layouts, batch shapes) round differently, by about one
float32 epsilon (``eps32`` = 1.19e-7) per operation; each of the K sampler steps adds
such rounding, and the steps grow it: a forward pass is many operations deep, the clean
estimate divides the noise prediction by ``sqrt(alpha_bar)`` (0.001 at the noisiest
step of the 50-step cosine schedule), guidance multiplies the branches' difference by
the scale, and every later step feeds the error through the network again. So the
difference two correct loops can show is ``K x eps32 x G``, with G the growth, measured
in the same run: the split loop runs once more in the other layout (NCHW on CPU: other
kernels, the same maths) and its images are compared with the engine-layout loop's;
that spread gives G (>= 1). The tolerance is ``ROUNDING_MULTIPLE`` (4) times
``K x eps32 x G``: a contender whose rounding is as independent of the reference as the
other layout's differs by up to ~2x the spread (the triangle inequality through the
other layout's images), and 2x more covers the variation of a maximum over all pixels.
Measured here: spread 1.3e-3 at the defaults (G ~ 420; tolerance 5.0e-3), 5.4e-5 with
``--quick`` (2 steps, G ~ 225). A real difference is far above it: on 16 images of the
default run, guidance 3.01 instead of 3 moves images by 0.98, 24 steps instead of 25 by
0.11, one wrong label by 1.0 (the untrained net amplifies any change). The harness in
the engine's layout matches its hand-written loop exactly (0.0 here); the script exits
1 only beyond the tolerance.

Goals: >= 2.5x the per-image loop, >= 0.95x the best hand-written batched loop.

Usage: python benchmarks/perf/sampler_throughput.py [--images 256] [--steps 25]
       [--repeats 5] [--loop-images 16] [--device auto] [--quick]
Prints a table, the rounding and output check, ``sampler vs per-image loop: 4.8x`` and,
last, ``sampler vs best hand-written loop (channels-last): 0.97x``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Idle OpenMP workers spin by default: on a shared, loaded machine that makes one and the
# same forward pass vary 10x from call to call (measured on 2 busy cores), which drowns
# the differences this script measures. Passive waiting keeps torch's thread count (the
# engine's default) and only stops the spinning; OMP_WAIT_POLICY=ACTIVE measures the
# default. Must be set before torch starts OpenMP, hence before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

#: float32 machine epsilon: the relative rounding of one float32 operation
EPS32 = torch.finfo(torch.float32).eps
#: the tolerance is this many times the measured rounding spread ``K x eps32 x G`` (module docstring)
ROUNDING_MULTIPLE = 4.0

MATRIX = """\
[benchmark]
name = "sampler_throughput"
seed = 0

[dataset]
name = "digits"
image_size = 16

[model]
name = "unet"
timesteps = 50
schedule = "cosine"

[sampling]
sampler = "ddim"
steps = {steps}
cfg_batching = "{cfg_batching}"
num_samples = {images}
batch_size = {batch_size}

[matrix]
cfg_scale = [{cfg_scale}]
seed = [0]

[metrics]
names = ["generation_time"]

[execution]
device = "{device}"
"""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """The DDIM timesteps, evenly spaced from T-1 to 0 (as the harness documents them)."""
    if steps == 1:
        return [T - 1]
    return [int(round(v)) for v in torch.linspace(T - 1, 0, steps, dtype=torch.float64).tolist()]


def per_image_loop(model, noise, labels, steps: int, scale: float) -> torch.Tensor:  # noqa: ANN001
    """The research-script loop: one image at a time, two batch-1 forwards per step."""
    net, sched = model.net, model.schedule
    ts = ddim_timesteps(sched.timesteps, steps)
    alpha_bar = sched.alpha_bar.to(noise.device)
    out = []
    with torch.no_grad():
        for i in range(noise.shape[0]):
            x = noise[i : i + 1]
            y = labels[i : i + 1]
            y_null = torch.full_like(y, model.num_classes)
            for j, t in enumerate(ts):
                t_batch = torch.tensor([t], device=noise.device)
                eps_c = net(x, t_batch, y)
                eps_u = net(x, t_batch, y_null)
                eps = eps_u + scale * (eps_c - eps_u)
                ab = alpha_bar[t]
                ab_prev = alpha_bar[ts[j + 1]] if j + 1 < len(ts) else torch.ones((), device=noise.device)
                x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
                eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
                x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
            out.append(((x + 1) / 2).clamp(0, 1).cpu())
    return torch.cat(out)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` copied into channels-last strides (for one channel, ``x.contiguous(memory_format=
    torch.channels_last)`` keeps the NCHW strides and the NCHW convolution kernels)."""
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


def batched_loop(model, noise, labels, steps: int, scale: float, concat: bool,  # noqa: ANN001
                 cl: bool = True) -> torch.Tensor:
    """The tight hand-written loop: the whole batch per step, guidance as 2N or N + N.

    ``cl``: the network's input is copied into channels-last once per step (the engine's
    layout on CPU); ``False`` keeps torch's default NCHW layout.
    """
    net, sched = model.net, model.schedule
    net.eval()
    layout = channels_last if cl else (lambda x: x)
    ts = ddim_timesteps(sched.timesteps, steps)
    n = noise.shape[0]
    dev = noise.device
    null = torch.full_like(labels, model.num_classes)
    both_labels = torch.cat([labels, null])
    coefs = []
    for j, t in enumerate(ts):
        ab = sched.alpha_bar_of(t)
        ab_prev = sched.alpha_bar_of(ts[j + 1] if j + 1 < len(ts) else -1)
        coefs.append((math.sqrt(ab), math.sqrt(1 - ab), math.sqrt(ab_prev), math.sqrt(1 - ab_prev)))
    t_n = [torch.full((n,), t, dtype=torch.long, device=dev) for t in ts]
    t_2n = [torch.full((2 * n,), t, dtype=torch.long, device=dev) for t in ts]
    x = noise
    with torch.inference_mode():
        for j in range(len(ts)):
            sa, s1a, sa_prev, s1a_prev = coefs[j]
            if concat:
                eps_c, eps_u = net(layout(torch.cat([x, x])), t_2n[j], both_labels).chunk(2)
            else:
                xl = layout(x)
                eps_c = net(xl, t_n[j], labels)
                eps_u = net(xl, t_n[j], null)
            eps = eps_u + scale * (eps_c - eps_u)
            x0 = ((x - s1a * eps) / sa).clamp(-1, 1)
            eps = (x - sa * x0) / s1a
            x = sa_prev * x0 + s1a_prev * eps
        return ((x + 1) / 2).clamp(0, 1).cpu()


@dataclass
class Timing:
    """Wall and process CPU seconds of one sampling run."""

    wall: float
    cpu: float


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[Timing, torch.Tensor]:
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    _sync(device)
    return Timing(time.perf_counter() - t0, time.process_time() - c0), out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` shrinks the run, a scale of 0 or 1 is refused."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="images per sampling run")
    parser.add_argument("--batch-size", type=int, default=None, help="harness batch size (default: --images)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--cfg-scale", type=float, default=3.0, help="guidance scale (not 0 or 1: both branches run)")
    parser.add_argument("--cfg-batching", default="auto", choices=["auto", "concat", "split"],
                        help="the harness's sampling.cfg_batching")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the best round counts")
    parser.add_argument("--loop-images", type=int, default=16, help="images the per-image loop samples")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained teacher's weights")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 images, 2 steps, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.repeats, args.loop_images = 4, 2, 1, 2
    if args.cfg_scale in (0.0, 1.0):
        parser.error("--cfg-scale 0 or 1 runs a single branch; use a guided scale such as 3")
    return args


@dataclass
class Bench:
    """The cell, its model and the inputs every contender samples from."""

    stages: Any
    cell: Any
    spec: Any
    variant: Any
    model: Any
    device: torch.device
    noise: torch.Tensor
    labels: torch.Tensor
    n: int
    loop_images: int
    batch_size: int
    steps: int
    scale: float
    harness_mode: str
    channels_last: bool  # the engine's layout for this device: channels-last (CPU) or NCHW

    @property
    def layout(self) -> str:
        return "channels-last" if self.channels_last else "NCHW"

    @property
    def other_layout(self) -> str:
        return "NCHW" if self.channels_last else "channels-last"


def build_bench(args: argparse.Namespace, tmp: Path) -> Bench:
    """Write the matrix, plan its one cell and build its untrained teacher, noise and labels."""
    from harness.config import load_matrix
    from harness.diffusion import fast_layout, resolve_cfg_batching
    from harness.planner import plan_cells
    from harness.worker import Stages

    batch_size = args.batch_size or args.images
    matrix = tmp / "sampler_throughput.toml"
    matrix.write_text(MATRIX.format(steps=args.steps, cfg_batching=args.cfg_batching, images=args.images,
                                    batch_size=batch_size, cfg_scale=args.cfg_scale, device=args.device))
    cfg = load_matrix(matrix, results_dir=str(tmp / "results"))
    (cell,) = plan_cells(cfg)
    stages = Stages(cfg, tmp / "cache")
    device = stages.session.device
    spec = cell.variant
    # an untrained teacher, built by the variant stage through the artifact cache as for
    # any cell; trainable=False is the contract flag of families with ready weights
    stages.session.family(spec).trainable = False
    torch.manual_seed(args.seed)
    variant = stages.variants.get(spec)
    model = variant.model

    n = args.images
    noise = stages.samples.noise(cell, tuple(model.sample_shape), n).to(device)
    labels = model.encode_conditions(stages.samples.conditions(cell, n))
    return Bench(stages=stages, cell=cell, spec=spec, variant=variant, model=model, device=device, noise=noise,
                 labels=labels, n=n, loop_images=max(1, min(args.loop_images, args.images)), batch_size=batch_size,
                 steps=args.steps, scale=float(args.cfg_scale),
                 harness_mode=resolve_cfg_batching(args.cfg_batching, device),
                 channels_last=fast_layout(noise) is not noise)  # the engine copies its input: channels-last


def record_sample_cpu(model) -> list[float]:  # noqa: ANN001
    """Record the CPU seconds of each ``model.sample`` call (the engine's timed call).

    Its wall time is the engine's own figure; the instance attribute shadows the method
    for this model only.
    """
    sample_cpu: list[float] = []
    sample = model.sample

    def sample_with_cpu(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        c0 = time.process_time()
        try:
            return sample(*a, **kw)
        finally:
            sample_cpu.append(time.process_time() - c0)

    model.sample = sample_with_cpu  # type: ignore[method-assign]
    return sample_cpu


#: a contender: the images it samples per round and its timed round
Contender = tuple[int, Callable[[], tuple[Timing, torch.Tensor]]]


def make_contenders(b: Bench) -> dict[str, Contender]:
    """The four contenders, in table order: harness, concat, split (in the engine's layout), per-image loop."""
    sample_cpu = record_sample_cpu(b.model)

    def run_harness() -> tuple[Timing, torch.Tensor]:
        tensors, meta = b.stages.samples.draw(b.spec, b.cell, False)
        return Timing(meta["stats"]["sampling_seconds"], sample_cpu[-1]), tensors["images"]

    model, noise, labels, steps, scale, device = b.model, b.noise, b.labels, b.steps, b.scale, b.device
    k, cl = b.loop_images, b.channels_last
    return {
        f"harness sampler (sample stage, {b.harness_mode})": (b.n, run_harness),
        f"hand-written batched, concat, {b.layout}": (
            b.n, lambda: timed(lambda: batched_loop(model, noise, labels, steps, scale, True, cl), device)),
        f"hand-written batched, split, {b.layout}": (
            b.n, lambda: timed(lambda: batched_loop(model, noise, labels, steps, scale, False, cl), device)),
        "per-image loop (research script)": (
            k, lambda: timed(lambda: per_image_loop(model, noise[:k], labels[:k], steps, scale), device)),
    }


def warm_up(b: Bench) -> None:
    """Warm up the hand-written loops in both layouts (the harness warms up inside every call, as a cell does)."""
    m = min(b.n, 4)
    for cl in (True, False):
        batched_loop(b.model, b.noise[:m], b.labels[:m], b.steps, b.scale, True, cl)
        batched_loop(b.model, b.noise[:m], b.labels[:m], b.steps, b.scale, False, cl)
    per_image_loop(b.model, b.noise[:1], b.labels[:1], 1, b.scale)


def other_layout_run(b: Bench) -> tuple[Timing, torch.Tensor]:
    """The split loop once in the other layout: the same maths on other kernels (the rounding reference)."""
    return timed(lambda: batched_loop(b.model, b.noise, b.labels, b.steps, b.scale, False, not b.channels_last),
                 b.device)


def timed_rounds(
    contenders: dict[str, Contender], repeats: int
) -> tuple[dict[str, list[Timing]], dict[str, torch.Tensor]]:
    """Run the contenders in interleaved rounds: each one's timings, and its last output."""
    names = list(contenders)
    runs: dict[str, list[Timing]] = {k: [] for k in names}
    outputs: dict[str, torch.Tensor] = {}
    for r in range(repeats):
        # rotate the order so no contender always follows the same one
        for name in names[r % len(names) :] + names[: r % len(names)]:
            timing, out = contenders[name][1]()
            runs[name].append(timing)
            outputs[name] = out
    return runs, outputs


def print_table(b: Bench, contenders: dict[str, Contender], runs: dict[str, list[Timing]],
                rate: dict[str, float], best_hw: str, repeats: int) -> None:
    """The set-up line, then one row per contender."""
    model, names = b.model, list(contenders)
    params = sum(p.numel() for p in model.net.parameters())
    print(f"unet teacher (untrained, {params:,} params), {tuple(model.sample_shape)}, DDIM {b.steps} steps, "
          f"CFG {b.scale:g}, {b.n} images, batch {b.batch_size}, device {b.device}, "
          f"torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, best of {repeats} interleaved round(s)")
    width = max(len(k) for k in names)
    print(f"{'contender':<{width}}  {'images':>6}  {'best s':>8}  {'median s':>8}  {'images/s':>8}  "
          f"{'cpu s':>8}  wall s per round")
    for k in names:
        walls = [t.wall for t in runs[k]]
        mark = "  <- best hand-written" if k == best_hw else ""
        print(f"{k:<{width}}  {contenders[k][0]:>6}  {min(walls):>8.3f}  {statistics.median(walls):>8.3f}  "
              f"{rate[k]:>8.1f}  {min(t.cpu for t in runs[k]):>8.3f}  {' '.join(f'{w:.2f}' for w in walls)}{mark}")


def check_output(b: Bench, names: list[str], outputs: dict[str, torch.Tensor],
                 other: tuple[Timing, torch.Tensor]) -> bool:
    """Print the rounding spread and the output check; True when the harness is within float32 rounding."""
    harness_name, concat_name, split_name, loop_name = names
    other_timing, other_images = other
    spread = float((other_images - outputs[split_name]).abs().max())
    rounding = b.steps * EPS32  # K steps x eps32: the rounding if the steps did not amplify it
    growth = max(1.0, spread / rounding)
    tolerance = ROUNDING_MULTIPLE * rounding * growth
    diff_hw = max(float((outputs[harness_name] - outputs[k]).abs().max()) for k in (concat_name, split_name))
    nchw_images = other_images if b.channels_last else outputs[split_name]  # the per-image loop's layout
    diff_loop = float((outputs[loop_name] - nchw_images[: b.loop_images]).abs().max())
    print(f"float32 rounding: split loop in {b.other_layout} (run once, {other_timing.wall:.2f} s, "
          f"{b.n / other_timing.wall:.1f} images/s) vs {b.layout} max |diff| = {spread:.2e} = {b.steps} steps x "
          f"eps32 {EPS32:.2e} x growth {growth:.0f}; tolerance {ROUNDING_MULTIPLE:g}x = {tolerance:.2e}")
    same = diff_hw <= tolerance
    print(f"same output: harness vs hand-written max |diff| = {diff_hw:.2e} ({'ok' if same else 'MISMATCH'}); "
          f"per-image loop vs hand-written NCHW = {diff_loop:.2e} (images in [0, 1])")
    return same


def report(b: Bench, contenders: dict[str, Contender], runs: dict[str, list[Timing]],
           outputs: dict[str, torch.Tensor], other: tuple[Timing, torch.Tensor], repeats: int) -> int:
    """Print the table, the output check and the ratios (the last two lines); 1 when outputs disagree."""
    rate = {k: contenders[k][0] / min(t.wall for t in v) for k, v in runs.items()}
    names = list(contenders)
    harness_name, concat_name, split_name, loop_name = names
    best_hw = concat_name if rate[concat_name] >= rate[split_name] else split_name

    print_table(b, contenders, runs, rate, best_hw, repeats)
    same = check_output(b, names, outputs, other)
    wall_ratio = rate[harness_name] / rate[best_hw]
    if b.device.type == "cpu":
        cpu_best = {k: min(t.cpu for t in runs[k]) for k in names}
        cpu_ratio = min(cpu_best[concat_name], cpu_best[split_name]) / cpu_best[harness_name]
        print(f"same work: sampler vs best hand-written loop by CPU seconds: {cpu_ratio:.2f}x")
        if wall_ratio < 0.95 <= cpu_ratio:
            print("note: the wall-time gap is not in the CPU seconds: other processes took the CPU; "
                  "rerun with more --repeats or on an idle machine")
    print(f"sampler vs per-image loop: {rate[harness_name] / rate[loop_name]:.1f}x")
    print(f"sampler vs best hand-written loop ({b.layout}): {wall_ratio:.2f}x")
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sampler-throughput-") as tmp:
        bench = build_bench(args, Path(tmp))
        contenders = make_contenders(bench)
        warm_up(bench)
        other = other_layout_run(bench)
        runs, outputs = timed_rounds(contenders, args.repeats)
    return report(bench, contenders, runs, outputs, other, args.repeats)


if __name__ == "__main__":
    sys.exit(main())
