"""The ``unet`` family's network: a small class-conditional UNet with self-attention.

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
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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


def count_arch_params(cfg: UNetConfig) -> int:
    """Parameter count of a UNet with ``cfg``, without allocating its weights."""
    with torch.device("meta"):
        net = UNet(cfg)
    return sum(p.numel() for p in net.parameters())
