"""Training throughput: images/s of diffbench's training step against hand-written loops.

The model is the quickstart's teacher (``benchmarks/quickstart.toml``: the ``unet`` family on
16x16 digits, 50 cosine timesteps), trained with the ``TrainConfig`` defaults at batch 64:
AdamW (lr 2e-3, no weight decay), linear warm-up over 50 steps, an EMA of the weights
(0.999, with the short-run ramp), gradient clipping at norm 1 and 10% condition dropout.
Every contender starts from the same initial weights and the same random stream and runs
a fixed number of optimizer steps (``--steps``; the ratio per step is what matters):

- **engine**: what a cell runs: the matrix is loaded, its teacher cell planned, and the
  family's ``train_teacher`` called with the session's training options (``[model.train]``
  with ``max_steps``) and training context, as the variant stage does (``train_ddpm`` ->
  ``_fit``: data preparation, the steps, the EMA weights loaded at the end).
- **hand-written, same kernels**: the minimal loop one writes by hand with the engine's
  tricks (channels-last input via ``fast_layout``, foreach AdamW, foreach EMA, gradients
  set to ``None``) and nothing else: the same maths in the same order, so it must end on
  the engine's weights to the bit (the check below).
- **hand-written, fused AdamW**: the same loop with torch's fused AdamW kernel, the
  fastest optimizer torch has on CPU. Same maths, different rounding (the fused kernel
  orders its float operations differently), so its weights are compared with a tolerance.
- **hand-written, NCHW** (``--all``): the same-kernels loop without the channels-last copy,
  to show what the layout buys.
- **torch.compile** (``--compile``): the same-kernels loop around ``torch.compile(net)``;
  the compilation (minutes on 2 cores) is done in the warm-up and not timed.

Rounds interleave the contenders (the order rotates each round), so load from other
processes hits all of them alike; each contender's best round (wall time) counts, and the
best hand-written contender is the reference. The table gives CPU seconds too: equal CPU
seconds with unequal wall times is load, not code. MACs per image: the forward pass
(``harness.count_macs``) and forward + backward measured with torch's FLOP counter on a
training step (attention's CPU backward kernel counted as in ``torch.utils.flop_counter``'s
SDPA backward formula); achieved MAC/s = forward+backward MACs x images/s (the optimizer,
EMA and clipping add no MACs, only memory traffic).

Checks (exit 1 when one fails): the same-kernels loop and the engine end on identical
weights (max |diff| <= ``SAME_TOL`` = 0: same ops, same order, same thread count); the
other loops within ``ROUNDING_TOL`` of them (max |diff| of the final EMA weights, which
are ~0.1 in size; measured: ~5e-6 after 30-40 steps, float32 rounding of Adam's update
growing with the steps; the tolerance is 100x that). ``--threads`` sets torch's intra-op
threads for every contender (default: torch's, as a local run); CPU seconds count all
threads. ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (see ``sampler_throughput.py``).

What remains (2 CPU cores, see ``README.md``): the engine's loop is the hand-written loop
(the same kernels in the same order, bitwise the same weights); the model's forward and
backward are ~95-97% of a step (oneDNN convolution backward alone ~57% of the CPU time,
its 1x1 convolutions at a third of the 3x3s' MAC/s), AdamW (foreach) 2-4%, clipping
< 1%, EMA 0.3%, the batch (gather, ``t``, noise, dropout, channels-last copy) 0.2%.
Torch's fused AdamW kernel is ~half of foreach's cost (2.7 vs 6.3 ms a step) but rounds
differently, which would change every stored model, so the engine keeps foreach (the
fused loop is a contender: within noise of the others). ``torch.compile`` of the net took
130 s to compile on 2 cores and ran a step within noise of eager (<= 2%), less than it
costs on a whole quickstart teacher (690 steps), so it is not used on CPU (``--compile``
measures it on your device). Channels-last input is within noise of NCHW in training
(``--all``); torch without oneDNN is 2x slower. Threads: on a loaded 2-core machine one
thread (275 ms a step) beats two (370-680 ms, 35% more CPU seconds in either case: the
small kernels parallelise poorly); on an idle one two threads are ~1.45x one. The
thread count is the run's ``[execution] threads``, not the loop's choice (results depend
on it).

Usage: python benchmarks/perf/training_throughput.py [--steps 30] [--repeats 5]
       [--batch-size 64] [--threads N] [--device auto] [--all] [--compile] [--quick]
Prints the set-up and MAC lines, a table, the checks and, last,
``training step vs best hand-written loop: 0.97x``.
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

# see sampler_throughput.py: spinning OpenMP workers make timings on a shared machine
# vary 10x; passive waiting keeps torch's thread count. Must precede the torch import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F
from torch import nn

#: max |diff| of the final weights: the same-kernels loop vs the engine (same ops, same order)
SAME_TOL = 0.0
#: max |diff| of the final weights: the fused-AdamW loop vs the engine (rounding only)
ROUNDING_TOL = 5e-4

MATRIX = """\
[benchmark]
name = "training_throughput"
seed = 0

[dataset]
name = "digits"
image_size = 16

[model]
name = "unet"
timesteps = 50
schedule = "cosine"

[model.train]
epochs = 30
batch_size = {batch_size}
max_steps = {steps}

[matrix]
seed = [0]

[metrics]
names = ["generation_time"]

[execution]
device = "{device}"
"""


@dataclass
class Timing:
    """Wall and process CPU seconds of one training run."""

    wall: float
    cpu: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> Timing:
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    _sync(device)
    return Timing(time.perf_counter() - t0, time.process_time() - c0)


@dataclass
class Bench:
    """The teacher cell's model, data and options, and the initial weights every run starts from."""

    family: Any
    dataset: Any
    session: Any
    spec: Any
    model: Any
    init: dict[str, torch.Tensor]
    cfg: Any
    device: torch.device
    images: torch.Tensor
    labels: torch.Tensor

    def reset(self) -> nn.Module:
        """The net, back on the initial weights (untimed, before every run)."""
        self.model.net.load_state_dict(self.init)
        return self.model.net

    def generator(self) -> torch.Generator:
        """A fresh copy of the training stream the engine draws from (the session's context)."""
        return self.session.train_context("teacher").generator

    def weights(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten().cpu() for p in self.model.net.parameters()])


def build_bench(args: argparse.Namespace, tmp: Path) -> Bench:
    """Write the matrix, plan its teacher cell and build the untrained teacher as the variant stage does."""
    from harness.config import load_matrix
    from harness.planner import plan_cells
    from harness.worker import Stages

    matrix = tmp / "training_throughput.toml"
    matrix.write_text(MATRIX.format(batch_size=args.batch_size, steps=args.steps, device=args.device))
    cfg = load_matrix(matrix, results_dir=str(tmp / "results"))
    (cell,) = plan_cells(cfg)
    session = Stages(cfg, tmp / "cache").session
    spec = cell.variant
    family, dataset = session.family(spec), session.dataset(spec)
    with torch.random.fork_rng(devices=[]):  # the initial weights as VariantStage._train_teacher seeds them
        torch.manual_seed(session.seed("init", "teacher") % 2**63)
        model = family.build(dataset).to(session.device)
    init = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    batch = dataset.load("train")
    labels = model.encode_conditions(batch.conditions).to(session.device)
    images = model.encode(batch.images.to(session.device, torch.float32))
    return Bench(family, dataset, session, spec, model, init, session.train_config(spec), session.device,
                 images, labels)


# ---------------------------------------------------------------------------- hand-written loop


def hand_written(b: Bench, net: nn.Module, *, fused: bool = False, channels_last: bool = True) -> list[float]:
    """The minimal training loop by hand: same maths and random stream as the engine.

    Per step: a batch of the epoch's permutation, ``t``, noise and the dropout mask drawn
    in that order, ``x_t`` as the schedule forms it, epsilon-MSE, AdamW with linear warm-up,
    clipping, EMA; the EMA weights are loaded at the end. Returns the per-step losses.
    """
    from harness.diffusion import fast_layout

    cfg, model, device, x_all, y_all = b.cfg, b.model, b.device, b.images, b.labels
    params = [p for p in b.model.net.parameters() if p.requires_grad]
    opt_kw = {"fused": True} if fused else {"foreach": True}
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **opt_kw)
    ema = [p.detach().clone() for p in params]
    live = [p.detach() for p in params]
    ab = torch.tensor([model.schedule.alpha_bar_of(i) for i in range(model.num_timesteps)], dtype=torch.float64)
    sa, s1a = ab.sqrt().float().to(device), (1 - ab).sqrt().float().to(device)
    n, bs, T = x_all.shape[0], min(cfg.batch_size, x_all.shape[0]), model.num_timesteps
    null = torch.full((bs,), model.num_classes, dtype=torch.long, device=device)
    gen, losses, step = b.generator(), [], 0
    net.train()
    while step < cfg.max_steps:
        perm = torch.randperm(n, generator=gen).to(device)
        for s in range(0, n, bs):
            if step >= cfg.max_steps:
                break
            idx = perm[s : s + bs]
            m = idx.shape[0]
            x0, y = x_all[idx], y_all[idx]
            t = torch.randint(0, T, (m,), generator=gen).to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            drop = (torch.rand(m, generator=gen) < cfg.cond_dropout).to(device)
            y = torch.where(drop, null[:m], y)
            x_t = sa[t].view(-1, 1, 1, 1) * x0 + s1a[t].view(-1, 1, 1, 1) * noise
            loss = F.mse_loss(net(fast_layout(x_t) if channels_last else x_t, t, y), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            for group in opt.param_groups:  # the engine's expression, to the last bit
                group["lr"] = cfg.lr * (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else cfg.lr
            opt.step()
            torch._foreach_lerp_(ema, live, 1.0 - min(cfg.ema_decay, (1 + step) / (10 + step)))
            losses.append(loss.detach())
            step += 1
    torch._foreach_copy_(live, ema)
    net.eval()
    return [float(v) for v in losses]


# ---------------------------------------------------------------------------- contenders


#: a contender: one timed run from the initial weights -> its timing and final weights
Contender = Callable[[], tuple[Timing, torch.Tensor]]


def make_contenders(b: Bench, args: argparse.Namespace) -> dict[str, Contender]:
    """The contenders in table order: the engine first, then the hand-written loops."""

    def engine() -> tuple[Timing, torch.Tensor]:
        b.reset()
        ctx = b.session.train_context("teacher")
        timing = timed(lambda: b.family.train_teacher(b.model, b.dataset, b.cfg, ctx), b.device)
        return timing, b.weights()

    def hand(net: nn.Module | None = None, **kw: Any) -> Contender:
        def run() -> tuple[Timing, torch.Tensor]:
            eager = b.reset()  # a compiled net shares the eager net's parameters
            return timed(lambda: hand_written(b, eager if net is None else net, **kw), b.device), b.weights()

        return run

    out: dict[str, Contender] = {
        "engine (train_teacher, a cell's path)": engine,
        "hand-written, same kernels": hand(),
        "hand-written, fused AdamW": hand(fused=True),
    }
    if args.all:
        out["hand-written, NCHW input"] = hand(channels_last=False)
    if args.compile:
        out["hand-written, torch.compile(net)"] = hand(torch.compile(b.model.net))
    return out


def warm_up(contenders: dict[str, Contender]) -> None:
    """One untimed run of each contender (allocator, oneDNN primitives, compilation)."""
    for run in contenders.values():
        run()


def timed_rounds(contenders: dict[str, Contender], repeats: int) -> tuple[dict[str, list[Timing]], dict[str, torch.Tensor]]:
    """Interleaved rounds, the order rotating each round: each contender's timings and final weights."""
    names = list(contenders)
    runs: dict[str, list[Timing]] = {k: [] for k in names}
    weights: dict[str, torch.Tensor] = {}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            timing, w = contenders[name]()
            runs[name].append(timing)
            weights[name] = w
    return runs, weights


# ---------------------------------------------------------------------------- MACs


def _sdpa_cpu_backward_flops(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def training_macs(b: Bench, n: int) -> tuple[float, float]:
    """MACs per image of one forward pass and of one forward + backward training pass (batch ``n``)."""
    from torch.utils import flop_counter
    from torch.utils.flop_counter import FlopCounterMode

    from harness import count_macs
    from harness.attention import register_flop_formulas

    fwd = count_macs(b.model.net, b.model.example_inputs(1))
    register_flop_formulas()
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if op is not None and op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(op)(_sdpa_cpu_backward_flops)
    net = b.reset()
    net.train()
    from harness.diffusion import fast_layout

    x = fast_layout(b.images[:n].clone())
    t = torch.zeros(x.shape[0], dtype=torch.long, device=b.device)
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(net(x, t, b.labels[:n]), x).backward()
    net.zero_grad(set_to_none=True)
    net.eval()
    return fwd, counter.get_total_flops() / 2.0 / x.shape[0]


# ---------------------------------------------------------------------------- where a step goes


def step_phases(b: Bench, steps: int) -> dict[str, float]:
    """Seconds per phase of ``steps`` steps of the same-kernels loop (``time.perf_counter``
    between phases; on CUDA each phase is synchronised, which costs a little overlap).

    The same calls as :func:`hand_written` on the epoch's first batches, to say how much of
    a step is the model (forward, backward) and how much the loop around it.
    """
    from harness.diffusion import fast_layout

    cfg, model, device = b.cfg, b.model, b.device
    net = b.reset()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    ema, live = [p.detach().clone() for p in params], [p.detach() for p in params]
    bs, gen = min(cfg.batch_size, b.images.shape[0]), b.generator()
    perm = torch.randperm(b.images.shape[0], generator=gen).to(device)
    phases = dict.fromkeys(["batch, t, noise, dropout, x_t", "forward + loss", "backward", "clip", "AdamW", "EMA"], 0.0)
    names = list(phases)
    marks: list[float] = []

    def tick() -> None:
        _sync(device)
        marks.append(time.perf_counter())

    net.train()
    for step in range(steps):
        marks.clear()
        tick()
        idx = perm[(step * bs) % b.images.shape[0] :][:bs]
        x0, y = b.images[idx], b.labels[idx]
        t = torch.randint(0, model.num_timesteps, (idx.shape[0],), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        drop = (torch.rand(idx.shape[0], generator=gen) < cfg.cond_dropout).to(device)
        x_t = fast_layout(model.add_noise(x0, noise, t))
        y = torch.where(drop, model.num_classes, y)
        tick()
        loss = F.mse_loss(net(x_t, t, y), noise)
        tick()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        tick()
        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        tick()
        opt.step()
        tick()
        torch._foreach_lerp_(ema, live, 1.0 - min(cfg.ema_decay, (1 + step) / (10 + step)))
        tick()
        for k, a, z in zip(names, marks, marks[1:]):
            phases[k] += z - a
    net.eval()
    b.reset()
    return phases


# ---------------------------------------------------------------------------- report


def print_table(b: Bench, args: argparse.Namespace, runs: dict[str, list[Timing]], rate: dict[str, float],
                macs: tuple[float, float], best_hw: str) -> None:
    """The set-up and MAC lines, then one row per contender."""
    params = sum(p.numel() for p in b.model.net.parameters())
    c = b.cfg
    print(f"unet teacher ({params:,} params), {tuple(b.model.sample_shape)}, {b.images.shape[0]} train images, "
          f"batch {c.batch_size}, {c.max_steps} steps (AdamW lr {c.lr:g}, warm-up {c.warmup_steps}, "
          f"EMA {c.ema_decay:g}, clip {c.grad_clip:g}, cond dropout {c.cond_dropout:g}), device {b.device}, "
          f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"best of {args.repeats} interleaved round(s)")
    fwd, fwd_bwd = macs
    print(f"MACs per image: forward {fwd / 1e6:.1f} M, forward+backward {fwd_bwd / 1e6:.1f} M "
          f"({fwd_bwd / fwd:.2f}x forward)")
    width = max(len(k) for k in runs)
    print(f"{'contender':<{width}}  {'best s':>8}  {'median s':>8}  {'images/s':>8}  {'GMAC/s':>7}  "
          f"{'cpu s':>8}  wall s per round")
    for k, timings in runs.items():
        walls = [t.wall for t in timings]
        mark = "  <- best hand-written" if k == best_hw else ""
        print(f"{k:<{width}}  {min(walls):>8.3f}  {statistics.median(walls):>8.3f}  {rate[k]:>8.1f}  "
              f"{rate[k] * fwd_bwd / 1e9:>7.2f}  {min(t.cpu for t in timings):>8.3f}  "
              f"{' '.join(f'{w:.2f}' for w in walls)}{mark}")


def check_weights(weights: dict[str, torch.Tensor]) -> bool:
    """Print each hand-written loop's max |diff| to the engine's final weights; False when one is off."""
    names = list(weights)
    engine = weights[names[0]]
    ok = True
    parts = []
    for k in names[1:]:
        tol = SAME_TOL if k == "hand-written, same kernels" else ROUNDING_TOL
        diff = float((weights[k] - engine).abs().max())
        good = diff <= tol and math.isfinite(diff)
        ok &= good
        parts.append(f"{k.removeprefix('hand-written, ')} {diff:.2e} (tol {tol:g}, {'ok' if good else 'MISMATCH'})")
    print("same weights after the steps, max |diff| to the engine: " + "; ".join(parts))
    return ok


def report(b: Bench, args: argparse.Namespace, runs: dict[str, list[Timing]], weights: dict[str, torch.Tensor],
           macs: tuple[float, float], phases: dict[str, float], steps: int) -> int:
    """Print the table, the weight check and the ratios (the ratio last); 1 when weights disagree."""
    images = b.cfg.max_steps * min(b.cfg.batch_size, b.images.shape[0])
    rate = {k: images / min(t.wall for t in v) for k, v in runs.items()}
    names = list(runs)
    engine, hand = names[0], names[1:]
    best_hw = max(hand, key=lambda k: rate[k])
    print_table(b, args, runs, rate, macs, best_hw)
    ok = check_weights(weights)
    total = sum(phases.values())
    print(f"a step of the same-kernels loop ({total / steps * 1e3:.0f} ms over {steps} steps, outside the rounds): "
          + ", ".join(f"{k} {v / total:.1%}" for k, v in phases.items()))
    wall_ratio = rate[engine] / rate[best_hw]
    if b.device.type == "cpu":
        cpu = {k: min(t.cpu for t in runs[k]) for k in names}
        cpu_ratio = cpu[best_hw] / cpu[engine]
        print(f"same work: training step vs best hand-written loop by CPU seconds: {cpu_ratio:.2f}x")
        if wall_ratio < 0.95 <= cpu_ratio:
            print("note: the wall-time gap is not in the CPU seconds: other processes took the CPU; "
                  "rerun with more --repeats or on an idle machine")
    print(f"training step vs best hand-written loop: {wall_ratio:.2f}x")
    return 0 if ok else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` shrinks the run to seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (the quickstart: 690)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (the quickstart's 64)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the best round counts")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--all", action="store_true", help="also time the hand-written loop on NCHW input")
    parser.add_argument("--compile", action="store_true",
                        help="also time the hand-written loop on torch.compile(net) (compiles in the warm-up)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps of batch 16, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.repeats = 3, 16, 1
    if min(args.steps, args.batch_size, args.repeats, args.threads or 1) < 1:
        parser.error("--steps, --batch-size, --repeats and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="training-throughput-") as tmp:
        bench = build_bench(args, Path(tmp))
        macs = training_macs(bench, min(bench.cfg.batch_size, bench.images.shape[0]))
        contenders = make_contenders(bench, args)
        warm_up(contenders)
        runs, weights = timed_rounds(contenders, args.repeats)
        phase_steps = min(args.steps, 10)
        phases = step_phases(bench, phase_steps)
    return report(bench, args, runs, weights, macs, phases, phase_steps)


if __name__ == "__main__":
    sys.exit(main())
