"""``unet``: a small class-conditional UNet for the embedded default (digits, 16x16).

Architecture (ADM-style, scaled down): a sinusoidal time embedding + MLP (``time_embed``)
plus a class embedding with ``num_classes + 1`` rows (``class_embed``; the last row is the
null class for classifier-free guidance), summed and passed through SiLU into every
residual block. Residual blocks are GroupNorm -> SiLU -> 3x3 conv, with the embedding
projected and added per channel. Self-attention blocks (``nn.MultiheadAttention``,
``num_heads`` heads) sit at the lowest ``attention_levels`` resolutions and in the middle.
Each level halves the resolution; skips from every block feed the decoder; the output
conv is ``out_conv``.

Pruning notes: ``forward`` reads channel counts from tensors and layers only, so
torch-pruning can remove channels and heads. ``UNet.ignored_layers()`` lists what a
structured pruner must keep (``time_embed``, ``class_embed``, ``out_conv``). GroupNorms
use ``gcd(norm_groups, channels)`` groups: a pruner must keep every GroupNorm's channel
count divisible by its ``num_groups`` (e.g. torch-pruning ``round_to=norm_groups``), and
every attention block's width divisible by its (possibly pruned) head count.

Attention maps (``UNetDiffusionModel.attention_maps``, for the ``attention_maps``
diagnostic metric): forward hooks on every ``nn.MultiheadAttention`` switch it to
``need_weights=True, average_attn_weights=False`` for one call and capture its weights.
The hooks exist only inside that call, so ordinary forwards (sampling, training,
tracing) run the unchanged code path at unchanged speed.

Students (``make_student(size_factor)``): tiny (< 0.1) drops the lowest resolution level;
small, medium and full keep the teacher's depth. The base width is the integer that puts
the parameter count closest to ``size_factor`` x the teacher's, preferring widths that the
teacher's head count divides (otherwise heads drop to a divisor of the attention width);
the achieved ratio is recorded in ``model.info["param_ratio"]``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

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


# ---------------------------------------------------------------------------- network


@dataclass
class UNetConfig:
    """Shape-defining hyper-parameters of a :class:`UNet` (JSON-able; stored in meta)."""

    in_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: int = 1
    num_heads: int = 4
    norm_groups: int = 8
    num_classes: int = 10
    timesteps: int = 50
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.channel_mults = tuple(int(m) for m in self.channel_mults)

    @property
    def channels(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mults]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UNetConfig:
        return cls(**d)


def _groups(norm_groups: int, channels: int) -> int:
    return math.gcd(max(1, norm_groups), channels)


class SinusoidalEmbedding(nn.Module):
    """Transformer-style embedding of the timestep (rescaled to the 0..1000 range).

    The frequencies are a buffer, so the output width follows the stored tensor.
    """

    def __init__(self, dim: int, timesteps: int) -> None:
        super().__init__()
        half = max(1, dim // 2)
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=True)
        self.time_scale = 1000.0 / timesteps

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = (t.to(torch.float32) * self.time_scale)[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, embedding added per channel, 1x1 skip if widths differ."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, norm_groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(norm_groups, in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(_groups(norm_groups, out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention over the H*W positions, residual."""

    def __init__(self, channels: int, num_heads: int, norm_groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(norm_groups, channels), channels)
        self.attn = nn.MultiheadAttention(channels, num_heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x).flatten(2).transpose(1, 2)
        y, _ = self.attn(y, y, y, need_weights=False)
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class Block(nn.Module):
    """A residual block, optionally followed by self-attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class UpBlock(Block):
    """A decoder block: concatenates a 1x1-projected encoder skip, then a :class:`Block`.

    The projection decouples the encoder's channels from the decoder's, so structured
    pruning can size them independently; it also keeps attention-coupled channels from
    reaching a concatenation at a non-zero offset, which torch-pruning (1.6) mis-indexes
    when it prunes attention heads.
    """

    def __init__(self, skip_channels: int, res: ResBlock, attn: AttentionBlock | None) -> None:
        super().__init__(res, attn)
        self.skip_proj = nn.Conv2d(skip_channels, skip_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        assert skip is not None
        return super().forward(torch.cat([x, self.skip_proj(skip)], dim=1), emb)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    def __init__(self, blocks: list[Block] | list[UpBlock], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class UNet(nn.Module):
    """Class-conditional epsilon UNet: ``forward(x_t, t, labels) -> eps``.

    ``labels`` are long class indices in ``[0, num_classes]`` (``num_classes`` = null).
    Input side length must be divisible by ``2 ** (levels - 1)``.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        chs = cfg.channels
        levels = len(chs)
        g = cfg.norm_groups
        heads = cfg.num_heads
        emb_dim = 4 * cfg.base_channels
        sin_dim = max(2, cfg.base_channels - cfg.base_channels % 2)
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(sin_dim, cfg.timesteps),
            nn.Linear(sin_dim, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb_dim)
        self.in_conv = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)

        def has_attn(level: int) -> bool:
            return level >= levels - cfg.attention_levels

        def block(cin: int, cout: int, level: int) -> Block:
            res = ResBlock(cin, cout, emb_dim, g, cfg.dropout)
            return Block(res, AttentionBlock(cout, heads, g) if has_attn(level) else None)

        skips = [chs[0]]
        ch = chs[0]
        self.down = nn.ModuleList()
        for i, c in enumerate(chs):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(block(ch, c, i))
                ch = c
                skips.append(ch)
            down = None
            if i < levels - 1:
                down = Downsample(ch)
                skips.append(ch)
            self.down.append(Level(blocks, down))

        self.mid = nn.ModuleList(
            [
                Block(ResBlock(ch, ch, emb_dim, g, cfg.dropout), AttentionBlock(ch, heads, g)),
                Block(ResBlock(ch, ch, emb_dim, g, cfg.dropout), None),
            ]
        )

        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            c = chs[i]
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                skip = skips.pop()
                res = ResBlock(ch + skip, c, emb_dim, g, cfg.dropout)
                blocks.append(UpBlock(skip, res, AttentionBlock(c, heads, g) if has_attn(i) else None))
                ch = c
            self.up.append(Level(blocks, Upsample(ch) if i > 0 else None))
        self.out_norm = nn.GroupNorm(_groups(g, ch), ch)
        self.out_conv = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = F.silu(self.time_embed(t) + self.class_embed(labels))
        h = self.in_conv(x)
        hs = [h]
        for level in self.down:
            for blk in level.blocks:
                h = blk(h, emb)
                hs.append(h)
            if level.resample is not None:
                h = level.resample(h)
                hs.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        for level in self.up:
            for blk in level.blocks:
                h = blk(h, emb, hs.pop())
            if level.resample is not None:
                h = level.resample(h)
        return self.out_conv(F.silu(self.out_norm(h)))

    def ignored_layers(self) -> list[nn.Module]:
        """Modules a structured pruner must not prune (embeddings, output conv)."""
        return [self.time_embed, self.class_embed, self.out_conv]

    def attention_layers(self) -> list[nn.MultiheadAttention]:
        """Every ``nn.MultiheadAttention`` (for head pruning)."""
        return [m for m in self.modules() if isinstance(m, nn.MultiheadAttention)]


@contextlib.contextmanager
def capture_attention(net: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the weights of every ``nn.MultiheadAttention`` of ``net`` called inside the block.

    Yields a list that fills, in call order, with one tensor (N, heads, Q, K) per
    attention call (softmax weights: each row sums to 1 over the K keys). A pre-hook
    asks the module for per-head weights (``need_weights=True,
    average_attn_weights=False``); its output is otherwise the same up to float
    rounding (the weights path skips the fused kernel). The hooks are removed on exit.
    """
    captured: list[torch.Tensor] = []

    def want_weights(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def keep(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        captured.append(output[1].detach())

    handles = []
    for m in net.modules():
        if isinstance(m, nn.MultiheadAttention):
            handles.append(m.register_forward_pre_hook(want_weights, with_kwargs=True))
            handles.append(m.register_forward_hook(keep))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


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


def count_arch_params(cfg: UNetConfig) -> int:
    """Parameter count of a UNet with ``cfg``, without allocating its weights."""
    with torch.device("meta"):
        net = UNet(cfg)
    return sum(p.numel() for p in net.parameters())


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
