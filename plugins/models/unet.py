"""``unet``: a small class-conditional UNet for the embedded default (digits, 16x16).

The network (architecture, pruning notes, attention maps) is in
:mod:`plugins.models.unet_net`; this module is the family: building, training,
students and (de)serialisation.

Students (``make_student(size_factor)``): tiny (< 0.1) drops the lowest resolution level;
small, medium and full keep the teacher's depth. The base width is the integer that puts
the parameter count closest to ``size_factor`` x the teacher's, preferring widths that the
teacher's head count divides (otherwise heads drop to a divisor of the attention width);
the achieved ratio is recorded in ``model.info["param_ratio"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from harness import (
    ConfigError,
    Dataset,
    DiffusionModel,
    DistillConfig,
    ModelFamily,
    NoiseSchedule,
    ScheduledDiffusionModel,
    TrainConfig,
    TrainContext,
    distill,
    finetune,
    net_state,
    restore_net,
    train_ddpm,
)
from plugins.models.unet_net import UNet, UNetConfig, capture_attention, count_arch_params

# ---------------------------------------------------------------------------- tiers

TIERS = (("tiny", 0.1), ("small", 0.3), ("medium", 0.7), ("full", math.inf))


def size_tier(size_factor: float | None) -> str:
    """Report tier of a size factor: tiny < 0.1 <= small < 0.3 <= medium < 0.7 <= full."""
    if size_factor is None:
        return "full"
    for name, upper in TIERS:
        if size_factor < upper:
            return name
    return "full"  # pragma: no cover


# ---------------------------------------------------------------------------- model and students


class UNetDiffusionModel(ScheduledDiffusionModel):
    """A :class:`ScheduledDiffusionModel` around a :class:`UNet` that can show its attention."""

    def attention_maps(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> list[torch.Tensor]:
        """Self-attention weights of one denoiser call ``net(x_t, t, cond)``.

        :param x_t: N x C x H x W in model space; ``t`` long N; ``cond`` as from
            ``encode_conditions`` (no guidance: one conditional call).
        :returns: one float tensor (N, heads, Q, K) per attention block, in call order
            (encoder, middle, decoder), on CPU; Q = K = the block's H' x W' positions
            (row-major), each row a softmax over the keys.
        """
        was_training = self.net.training
        self.net.eval()
        dev = self.device
        try:
            with torch.inference_mode(), capture_attention(self.net) as maps:
                self.net(x_t.to(dev), t.to(dev), cond.to(dev) if isinstance(cond, torch.Tensor) else cond)
        finally:
            self.net.train(was_training)
        return [m.float().cpu() for m in maps]

    def copy(self) -> UNetDiffusionModel:
        out = super().copy()
        out.__class__ = type(self)  # the base class builds a ScheduledDiffusionModel
        return out


def _heads_for(channels: list[int], num_heads: int) -> int:
    common = 0
    for c in channels:
        common = math.gcd(common, c)
    for h in range(max(1, num_heads), 0, -1):
        if common % h == 0:
            return h
    return 1


def student_config(teacher: UNetConfig, size_factor: float) -> tuple[UNetConfig, float]:
    """The student architecture for ``size_factor`` and its achieved parameter ratio."""
    if not 0.0 < size_factor <= 1.0:
        raise ConfigError(f"size_factor: {size_factor} is out of range; valid: 0 < size_factor <= 1")
    teacher_params = count_arch_params(teacher)
    if size_factor == 1.0:
        return teacher, 1.0
    mults = teacher.channel_mults
    if size_tier(size_factor) == "tiny" and len(mults) > 1:
        mults = mults[:-1]
    attention_levels = min(teacher.attention_levels, len(mults))
    target = size_factor * teacher_params
    best: tuple[float, UNetConfig, int] | None = None
    for base in range(2, 2 * teacher.base_channels + 1):
        attn_channels = [base * m for m in mults[len(mults) - attention_levels :]] + [base * mults[-1]]
        cfg = UNetConfig(
            in_channels=teacher.in_channels,
            base_channels=base,
            channel_mults=mults,
            num_res_blocks=teacher.num_res_blocks,
            attention_levels=attention_levels,
            num_heads=_heads_for(attn_channels, teacher.num_heads),
            norm_groups=teacher.norm_groups,
            num_classes=teacher.num_classes,
            timesteps=teacher.timesteps,
            dropout=teacher.dropout,
        )
        n = count_arch_params(cfg)
        # prefer the teacher's head count unless that costs > ~5% in parameter ratio
        err = abs(math.log(n / target)) + (0.05 if cfg.num_heads != teacher.num_heads else 0.0)
        if best is None or err < best[0]:
            best = (err, cfg, n)
        if n > target * 1.5:
            break
    assert best is not None
    return best[1], best[2] / teacher_params


# ---------------------------------------------------------------------------- family


@dataclass
class _StudentBuilder:
    """``make_student`` of a unet model: a picklable callable (models may cross processes)."""

    family: UNetFamily
    teacher_cfg: UNetConfig
    schedule: NoiseSchedule
    sample_shape: tuple[int, int, int]
    clip_sample: bool

    def __call__(self, size_factor: float) -> DiffusionModel:
        s_cfg, ratio = student_config(self.teacher_cfg, float(size_factor))
        info = {
            "size_factor": float(size_factor),
            "size_tier": size_tier(float(size_factor)),
            "param_ratio": ratio,
            "num_params": count_arch_params(s_cfg),
            "teacher_params": count_arch_params(self.teacher_cfg),
        }
        return self.family._wrap(
            UNet(s_cfg), self.schedule, self.sample_shape, self.teacher_cfg, info, self.clip_sample
        )


@dataclass
class Options:
    """Options of the ``unet`` model family (``[model]`` keys)."""

    base_channels: int = field(default=28, metadata={"help": "width of the first level"})
    channel_mults: tuple[int, ...] = field(default=(1, 2, 2), metadata={"help": "width multiplier per level"})
    num_res_blocks: int = field(default=1, metadata={"help": "residual blocks per encoder level"})
    attention_levels: int = field(default=1, metadata={"help": "lowest levels with self-attention"})
    num_heads: int = field(default=4, metadata={"help": "attention heads"})
    norm_groups: int = field(default=8, metadata={"help": "GroupNorm groups (gcd with the width)"})
    timesteps: int = field(default=50, metadata={"help": "training timesteps T"})
    schedule: Literal["linear", "cosine"] = field(default="cosine", metadata={"help": "noise schedule"})
    dropout: float = field(default=0.0, metadata={"help": "dropout in residual blocks"})
    clip_sample: bool = field(default=True, metadata={"help": "clip x0 estimates to [-1, 1] when sampling"})

    def __post_init__(self) -> None:
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError("channel_mults must be a non-empty list of positive integers")
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {self.base_channels}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not 0 <= self.attention_levels <= len(self.channel_mults):
            raise ValueError(f"attention_levels must be in [0, {len(self.channel_mults)}]")
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}")
        if self.timesteps < 2:
            raise ValueError(f"timesteps must be >= 2, got {self.timesteps}")
        widths = [self.base_channels * m for m in self.channel_mults]
        for w in widths[len(widths) - self.attention_levels :] + [widths[-1]]:
            if w % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} must divide the attention width {w}")


class UNetFamily(ModelFamily):
    """Small class-conditional UNet with self-attention (the embedded default model)."""

    name = "unet"
    supports_sizes = True
    Options = Options
    train_options = TrainConfig
    distill_options = DistillConfig

    # -- building ---------------------------------------------------------------------
    def _teacher_config(self, dataset: Dataset) -> UNetConfig:
        o = self.options
        if dataset.num_classes is None:
            raise ConfigError(f"model.unet: dataset '{dataset.name}' has no classes; unet is class-conditional")
        levels = len(o.channel_mults)
        if dataset.image_size % (2 ** (levels - 1)):
            raise ConfigError(
                f"model.unet.channel_mults: {levels} levels need an image_size divisible by "
                f"{2 ** (levels - 1)}, dataset '{dataset.name}' has {dataset.image_size}"
            )
        return UNetConfig(
            in_channels=dataset.channels,
            base_channels=o.base_channels,
            channel_mults=o.channel_mults,
            num_res_blocks=o.num_res_blocks,
            attention_levels=o.attention_levels,
            num_heads=o.num_heads,
            norm_groups=o.norm_groups,
            num_classes=dataset.num_classes,
            timesteps=o.timesteps,
            dropout=o.dropout,
        )

    def _wrap(
        self,
        net: UNet,
        schedule: NoiseSchedule,
        sample_shape: tuple[int, int, int],
        teacher_cfg: UNetConfig,
        info: dict[str, Any],
        clip_sample: bool,
    ) -> ScheduledDiffusionModel:
        cfg = net.config
        model = UNetDiffusionModel(
            net,
            schedule,
            sample_shape,
            cfg.num_classes,
            arch={"unet": cfg.to_json(), "teacher_unet": teacher_cfg.to_json()},
            info=info,
            clip_sample=clip_sample,
        )

        model.student_builder = _StudentBuilder(self, teacher_cfg, schedule, sample_shape, clip_sample)
        return model

    def build(self, dataset: Dataset) -> ScheduledDiffusionModel:
        """An untrained teacher for ``dataset`` (weights from the global torch seed; the
        runner seeds them through ``torch.manual_seed`` or restores cached weights)."""
        cfg = self._teacher_config(dataset)
        schedule = NoiseSchedule(self.options.schedule, self.options.timesteps)
        shape = (dataset.channels, dataset.image_size, dataset.image_size)
        n = count_arch_params(cfg)
        info = {"size_factor": None, "size_tier": "full", "param_ratio": 1.0, "num_params": n, "teacher_params": n}
        return self._wrap(UNet(cfg), schedule, shape, cfg, info, self.options.clip_sample)

    # -- training ---------------------------------------------------------------------
    def distill_config(self, table: dict[str, Any], train: TrainConfig | None) -> DistillConfig:
        """``[model.distill]`` with unset ``epochs`` resolved to half the teacher's (at least 1)."""
        cfg = super().distill_config(table, train)
        return cfg.resolved(train.epochs if train is not None else None)

    def train_teacher(
        self, model: DiffusionModel, dataset: Dataset, train: TrainConfig | None, ctx: TrainContext
    ) -> DiffusionModel:
        batch = dataset.load("train")
        return train_ddpm(model, batch.images, batch.conditions, train or TrainConfig(), ctx)

    def distill_student(
        self,
        student: DiffusionModel,
        teacher: DiffusionModel,
        dataset: Dataset,
        train: DistillConfig | None,
        ctx: TrainContext,
    ) -> DiffusionModel:
        """Distil ``teacher`` into ``student``; ``train.epochs = None`` = half the teacher's."""
        batch = dataset.load("train")
        return distill(student, teacher, batch.images, batch.conditions, train or DistillConfig(), ctx)

    def finetune(self, model: DiffusionModel, dataset: Dataset, steps: int, ctx: TrainContext) -> DiffusionModel:
        batch = dataset.load("train")
        return finetune(model, batch.images, batch.conditions, steps, ctx)

    # -- (de)serialisation ------------------------------------------------------------
    def state(self, model: DiffusionModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        assert isinstance(model, ScheduledDiffusionModel)
        tensors, net_meta = net_state(model.net)
        meta = {
            "family": self.name,
            "arch": model.arch,
            "schedule": model.schedule.config(),
            "sample_shape": list(model.sample_shape),
            "clip_sample": model.clip_sample,
            "net": net_meta,
            "info": model.info,
        }
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], dataset: Dataset) -> DiffusionModel:
        """Rebuild the architecture recorded in ``meta`` (pruned shapes included) and load."""
        cfg = UNetConfig.from_json(meta["arch"]["unet"])
        teacher_cfg = UNetConfig.from_json(meta["arch"].get("teacher_unet", meta["arch"]["unet"]))
        schedule = NoiseSchedule(meta["schedule"]["kind"], meta["schedule"]["timesteps"])
        net = UNet(cfg)
        restore_net(net, tensors, meta["net"])
        net.eval()
        shape = tuple(meta["sample_shape"])
        return self._wrap(net, schedule, shape, teacher_cfg, dict(meta.get("info") or {}), meta.get("clip_sample", True))
