"""Training loops for epsilon-prediction models: teacher training, distillation, fine-tuning.

All three run one loop (:func:`_fit`): epsilon-MSE on noised data at uniform random
``t``, AdamW, optional condition dropout (so the model also learns the unconditional
branch classifier-free guidance needs), linear learning-rate warm-up and an exponential
moving average of the weights. They differ only in their options and regression target:
the true noise (training, fine-tuning) or a teacher's prediction (distillation).

Randomness (batch order, ``t``, noise, condition dropout) comes from the context's CPU
``torch.Generator`` in a fixed order, so a run is reproducible on any device. The noise
schedule and the samplers live in :mod:`harness.diffusion`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.base import Conditions, DiffusionModel, TrainContext
from harness.diffusion import fast_layout

log = logging.getLogger(__name__)

#: ``target_fn(x_t, t, cond, noise)`` -> the regression target of one batch
TargetFn = Callable[[torch.Tensor, torch.Tensor, Any, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------- options


@dataclass
class LoopConfig:
    """Options of the shared training loop; :class:`TrainConfig` and :class:`DistillConfig`
    are the ``[model.train]`` and ``[model.distill]`` tables built on it.

    The field order is part of the cache keys of trained models (``dataclasses.asdict``),
    so subclasses only change defaults and never reorder or rename fields.

    :ivar epochs: passes over the train split; ``None`` = run ``max_steps`` steps.
    :ivar batch_size: images per optimizer step.
    :ivar lr: AdamW learning rate (linear warm-up over ``warmup_steps``, then constant).
    :ivar cond_dropout: share of examples whose condition is replaced by the null
        condition, so the model also learns the unconditional branch used by CFG.
    :ivar ema_decay: decay of the exponential moving average of the weights (0 = off);
        the returned model holds the EMA weights. The effective decay is
        ``min(ema_decay, (1 + step) / (10 + step))`` so short runs are averaged over
        their recent steps rather than dominated by the initial weights.
    :ivar weight_decay: AdamW weight decay.
    :ivar grad_clip: max gradient norm (0 disables clipping).
    :ivar max_steps: cap on optimizer steps (for tests and smoke runs).
    :ivar warmup_steps: linear learning-rate warm-up.
    """

    epochs: int | None = None
    batch_size: int = 64
    lr: float = 2e-3
    cond_dropout: float = 0.1
    ema_decay: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_steps: int | None = None
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        checks = [
            (self.epochs is None or self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a finite number > 0, got {self.lr}"),
            (self.weight_decay >= 0 and math.isfinite(self.weight_decay),
             f"weight_decay must be a finite number >= 0, got {self.weight_decay}"),
            (self.grad_clip >= 0 and math.isfinite(self.grad_clip),
             f"grad_clip must be a finite number >= 0 (0 = off), got {self.grad_clip}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (0.0 <= self.cond_dropout < 1.0, f"cond_dropout must be in [0, 1), got {self.cond_dropout}"),
            (0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class TrainConfig(LoopConfig):
    """Teacher training (the ``[model.train]`` table of the ``unet`` family): ``epochs``
    defaults to 10; the other fields as :class:`LoopConfig`."""

    epochs: int = 10


@dataclass
class DistillConfig(LoopConfig):
    """Student distillation (the ``[model.distill]`` table of the ``unet`` family).

    :ivar epochs: ``None`` = half the teacher's epochs (at least 1); see :meth:`resolved`.
    """

    def resolved(self, teacher_epochs: int | None) -> DistillConfig:
        """A copy with ``epochs`` filled in: half the teacher's epochs when ``None``.

        The one place this default is decided: the engine's cache key (through
        ``UNetFamily.distill_config``) and :func:`distill` both call it.
        """
        if self.epochs is not None:
            return self
        base = teacher_epochs if teacher_epochs is not None else TrainConfig().epochs
        return replace(self, epochs=max(1, int(base) // 2))


@dataclass
class TrainReport:
    """What a training loop did: steps, seconds and mean loss per epoch."""

    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 3),
            "epoch_losses": [round(v, 6) for v in self.epoch_losses],
        }


# ---------------------------------------------------------------------------- the loop


def mix_condition(cond: torch.Tensor, null: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """``cond`` with the rows where ``drop`` (bool, N) is True replaced by ``null``."""
    mask = drop.view((-1,) + (1,) * (cond.dim() - 1))
    return torch.where(mask, null, cond)


class _Progress:
    """``ctx.progress`` when given, else plain log lines."""

    def __init__(self, ctx: TrainContext, desc: str, total: int) -> None:
        self.desc, self.total, self.n = desc, total, 0
        self.bar = None
        if ctx.progress is not None:
            try:
                self.bar = ctx.progress(desc, total, unit="epochs")  # type: ignore[call-arg]
            except TypeError:  # a progress callable without units
                self.bar = ctx.progress(desc, total)

    def update(self, n: int = 1, loss: float | None = None) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            extra = f" loss {loss:.4f}" if loss is not None else ""
            log.info("%s: %d/%d%s", self.desc, self.n, self.total, extra)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Optimizer:
    """AdamW with linear warm-up, gradient clipping and an EMA of the weights.

    The per-step work around the model is a few foreach calls (clipping, AdamW, EMA: 2-6%
    of a quickstart teacher step on 2 CPU cores, see ``benchmarks/perf/training_throughput.py``).
    AdamW stays ``foreach``: torch's fused kernel costs half as much on CPU (2.7 vs 6.3 ms)
    but rounds differently, which would change every stored model, and gains nothing
    measurable on a whole step.
    """

    def __init__(self, net: nn.Module, cfg: LoopConfig) -> None:
        self.cfg = cfg
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        self.ema = [p.detach().clone() for p in self.params] if cfg.ema_decay > 0 else None
        # detached views of the live weights, made once: the optimizer updates them in place
        self.live = [p.detach() for p in self.params]

    def step(self, loss: torch.Tensor, step: int) -> None:
        """One optimizer step on ``loss``; ``step`` counts from 0 (warm-up and EMA depend on it)."""
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip and cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        if cfg.warmup_steps:
            lr = cfg.lr * (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else cfg.lr
            for group in self.opt.param_groups:
                group["lr"] = lr
        self.opt.step()
        if self.ema is not None:
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, self.live, 1.0 - decay)

    def load_ema(self) -> None:
        """Copy the averaged weights into the network (no-op without EMA)."""
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_copy_(self.live, self.ema)


@dataclass
class _Data:
    """The encoded training set on the device, and how it is cut into batches."""

    x: torch.Tensor
    cond: Any
    null: Any
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    epochs: int


def _prepare(model: DiffusionModel, images: torch.Tensor, conditions: Conditions | torch.Tensor,
             cfg: LoopConfig, device: torch.device, desc: str) -> _Data:
    """Encode the images and conditions; ``epochs`` passes or ``max_steps`` steps, whichever ends first."""
    x = model.encode(images.to(device=device, dtype=torch.float32))
    cond = conditions if isinstance(conditions, torch.Tensor) else model.encode_conditions(conditions)
    n = x.shape[0]
    if n == 0:
        raise ValueError(f"{desc}: no training images")
    bs = min(int(cfg.batch_size), n)
    per_epoch = math.ceil(n / bs)
    total = cfg.epochs * per_epoch if cfg.epochs is not None else int(cfg.max_steps or 0)
    if cfg.max_steps is not None:
        total = min(total, int(cfg.max_steps))
    null = model.null_condition(bs)
    null = null.to(device) if isinstance(null, torch.Tensor) else null
    epochs = math.ceil(total / per_epoch) if total else 0
    return _Data(x, cond.to(device), null, bs, per_epoch, total, epochs)


def _batch_loss(model: DiffusionModel, data: _Data, idx: torch.Tensor, gen: torch.Generator,
                cfg: LoopConfig, target_fn: TargetFn | None) -> torch.Tensor:
    """The loss of one batch. Draws ``t``, the noise and the dropout mask from ``gen``, in
    that order (the order is part of what makes stored models reproducible)."""
    device = data.x.device
    m = idx.shape[0]
    x0, cond = data.x[idx], data.cond[idx]
    t = torch.randint(0, int(model.num_timesteps), (m,), generator=gen).to(device)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    if cfg.cond_dropout > 0:
        drop = (torch.rand(m, generator=gen) < cfg.cond_dropout).to(device)
        cond = mix_condition(cond, data.null[:m], drop)
    x_t = fast_layout(model.add_noise(x0, noise, t))
    target = noise if target_fn is None else target_fn(x_t, t, cond, noise)
    return F.mse_loss(model.predict_noise(x_t, t, cond), target)


def _run_epochs(model: DiffusionModel, data: _Data, opt: _Optimizer, ctx: TrainContext, cfg: LoopConfig,
                target_fn: TargetFn | None, bar: _Progress) -> TrainReport:
    """The epochs of :func:`_fit`; returns the report without timing."""
    gen = ctx.generator if ctx.generator is not None else torch.Generator().manual_seed(int(ctx.seed))
    device = data.x.device
    n, bs = data.x.shape[0], data.batch_size
    report = TrainReport()
    step = 0
    for _epoch in range(data.epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        count = 0
        for b in range(data.steps_per_epoch):
            if step >= data.total_steps:
                break
            idx = perm[b * bs : (b + 1) * bs]
            loss = _batch_loss(model, data, idx, gen, cfg, target_fn)
            opt.step(loss, step)
            loss_sum += loss.detach() * idx.shape[0]
            count += idx.shape[0]
            step += 1
        epoch_loss = float(loss_sum) / max(count, 1)
        report.epoch_losses.append(epoch_loss)
        report.epochs += 1
        bar.update(1, epoch_loss)
    report.steps = step
    return report


def _fit(model: DiffusionModel, images: torch.Tensor, conditions: Conditions | torch.Tensor, cfg: LoopConfig,
         ctx: TrainContext, *, target_fn: TargetFn | None, desc: str) -> TrainReport:
    """The shared loop: epsilon-MSE on noised data at uniform random t, in place.

    ``target_fn(x_t, t, cond, noise)`` gives the regression target (the true noise when
    ``None``; the teacher's prediction for distillation). Leaves the net in eval mode
    holding the EMA weights (when ``cfg.ema_decay > 0``).
    """
    device = torch.device(ctx.device) if ctx.device is not None else torch.device("cpu")
    net: nn.Module = model.net
    net.to(device)
    data = _prepare(model, images, conditions, cfg, device, desc)
    opt = _Optimizer(net, cfg)
    bar = _Progress(ctx, desc, data.epochs)
    start = time.perf_counter()
    was_training = net.training
    net.train()
    try:
        report = _run_epochs(model, data, opt, ctx, cfg, target_fn, bar)
    finally:
        bar.close()
        net.train(was_training)
    opt.load_ema()
    net.eval()
    report.seconds = time.perf_counter() - start
    if ctx.log is not None:
        last = f"{report.epoch_losses[-1]:.4f}" if report.epoch_losses else "-"
        ctx.log(f"{desc}: {report.steps} steps, {report.epochs} epochs in {report.seconds:.1f}s, loss {last}")
    return report


def _info(model: DiffusionModel) -> dict[str, Any]:
    info = getattr(model, "info", None)
    if info is None:
        info = {}
        model.info = info  # type: ignore[attr-defined]
    return info


# ---------------------------------------------------------------------------- public loops


def train_ddpm(
    model: DiffusionModel,
    images: torch.Tensor,
    conditions: Conditions | torch.Tensor,
    cfg: TrainConfig,
    ctx: TrainContext,
) -> DiffusionModel:
    """Train ``model`` in place with the DDPM epsilon loss; returns it with EMA weights.

    :param images: float N x C x H x W in [-1, 1] (dataset space).
    :param conditions: the images' :class:`Conditions` (or already encoded condition
        tensors); a ``cfg.cond_dropout`` share is replaced by the null condition.
    Records ``model.info["train"]`` (steps, seconds, loss per epoch) and
    ``model.info["train_epochs"]``.
    """
    report = _fit(model, images, conditions, cfg, ctx, target_fn=None, desc="train teacher")
    info = _info(model)
    info["train"] = report.as_dict()
    info["train_epochs"] = cfg.epochs
    return model


def distill(
    student: DiffusionModel,
    teacher: DiffusionModel,
    images: torch.Tensor,
    conditions: Conditions | torch.Tensor,
    cfg: DistillConfig,
    ctx: TrainContext,
) -> DiffusionModel:
    """Distil ``teacher`` into ``student`` in place: regress the teacher's noise predictions.

    Real images are noised at uniform random t; both models see the same ``(x_t, t,
    cond)``, with the same condition dropout as training so the student also learns the
    teacher's unconditional branch (needed for CFG). ``cfg.epochs = None`` means half of
    the teacher's recorded training epochs (``teacher.info["train_epochs"]``), at least 1.
    The student must share the teacher's noise schedule and condition encoding.
    """
    if student.num_timesteps != teacher.num_timesteps:
        raise ValueError(
            f"student has {student.num_timesteps} timesteps but the teacher {teacher.num_timesteps}"
        )
    cfg = cfg.resolved(_info(teacher).get("train_epochs"))
    teacher.net.to(torch.device(ctx.device) if ctx.device is not None else torch.device("cpu"))
    teacher_was_training = teacher.net.training
    teacher.net.eval()

    def target_fn(x_t: torch.Tensor, t: torch.Tensor, cond: Any, noise: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return teacher.predict_noise(x_t, t, cond).detach()

    try:
        report = _fit(student, images, conditions, cfg, ctx, target_fn=target_fn, desc="distil student")
    finally:
        teacher.net.train(teacher_was_training)
    info = _info(student)
    info["distill"] = report.as_dict()
    info["train_epochs"] = cfg.epochs
    return student


def finetune(
    model: DiffusionModel,
    images: torch.Tensor,
    conditions: Conditions | torch.Tensor,
    steps: int,
    ctx: TrainContext,
    *,
    lr: float = 2e-4,
    batch_size: int = 64,
    cond_dropout: float = 0.1,
    grad_clip: float = 1.0,
) -> DiffusionModel:
    """A few optimizer steps of the DDPM loss (no EMA, no warm-up), in place.

    Used by pruners to recover after pruning; keeping pruned weights at zero is the
    pruner's business (masks or physical removal), not this loop's.
    """
    if steps <= 0:
        return model
    cfg = LoopConfig(epochs=None, max_steps=int(steps), batch_size=batch_size, lr=lr, weight_decay=0.0,
                     grad_clip=grad_clip, cond_dropout=cond_dropout, ema_decay=0.0, warmup_steps=0)
    report = _fit(model, images, conditions, cfg, ctx, target_fn=None, desc="fine-tune")
    info = _info(model)
    info["finetune_steps"] = int(info.get("finetune_steps", 0)) + report.steps
    return model


def evaluate_loss(
    model: DiffusionModel,
    images: torch.Tensor,
    conditions: Conditions | torch.Tensor,
    generator: torch.Generator,
    *,
    batch_size: int = 256,
    target: DiffusionModel | None = None,
) -> float:
    """Mean epsilon-MSE on ``images`` at uniform random t (no condition dropout).

    With ``target`` given, the regression target is that model's prediction (the
    distillation loss) instead of the true noise. Deterministic given ``generator``.
    """
    device = model.device
    x_all = model.encode(images.to(device=device, dtype=torch.float32))
    cond_all = conditions if isinstance(conditions, torch.Tensor) else model.encode_conditions(conditions)
    cond_all = cond_all.to(device)
    n = x_all.shape[0]
    t_all = torch.randint(0, int(model.num_timesteps), (n,), generator=generator)
    noise_all = torch.randn(x_all.shape, generator=generator)
    total = 0.0
    was_training = model.net.training
    model.net.eval()
    try:
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                x0 = x_all[s : s + batch_size]
                t = t_all[s : s + batch_size].to(device)
                noise = noise_all[s : s + batch_size].to(device)
                cond = cond_all[s : s + batch_size]
                x_t = fast_layout(model.add_noise(x0, noise, t))
                tgt = noise if target is None else target.predict_noise(x_t, t, cond)
                pred = model.predict_noise(x_t, t, cond)
                total += float(((pred - tgt) ** 2).mean(dim=tuple(range(1, pred.dim()))).sum())
    finally:
        model.net.train(was_training)
    return total / n


__all__ = [
    "DistillConfig",
    "LoopConfig",
    "TrainConfig",
    "TrainReport",
    "distill",
    "evaluate_loss",
    "finetune",
    "mix_condition",
    "train_ddpm",
]
