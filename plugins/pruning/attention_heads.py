"""``attention_heads``: remove whole self-attention heads (by zeroing their weights)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from harness.base import Pruner
from plugins.pruning._common import protect_field

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from harness.base import DiffusionModel, PruneContext


@dataclass
class AttentionHeadOptions:
    """Options of the ``attention_heads`` pruner."""

    importance: Literal["l1", "random"] = field(
        default="l1", metadata={"help": "head ranking: l1 norm of its q/k/v/out weights, or random"}
    )
    protect: list[str] = protect_field()


def heads_to_remove(num_heads: int, rate: float) -> int:
    """Heads removed from a layer of ``num_heads``: round half up, at least one kept."""
    return max(0, min(num_heads - 1, math.floor(rate * num_heads + 0.5)))


class AttentionHeadPruner(Pruner):
    """Removes the least important heads of every ``nn.MultiheadAttention``.

    Rate semantics: ``rate`` is the share of heads removed from each attention layer,
    ``heads_to_remove = min(H - 1, floor(rate * H + 0.5))`` for a layer of H heads
    (round half up, at least one head kept). With H = 4: rate 0.1 removes 0 heads,
    0.125-0.374 one, 0.375-0.624 two, 0.625 and above three. Layers are ranked
    independently. ``importance``: ``l1`` = sum of |w| over the head's rows of the q, k
    and v projections (and biases) and its columns of ``out_proj``; ``random`` = scores
    from ``ctx.generator``.

    Removal is functional, not physical: the head's q/k/v rows and biases and its
    ``out_proj`` columns are set to zero, so it contributes exactly nothing (its output
    is zero whatever the attention weights), ``nonzero_params`` drops by the head's
    weights, but ``num_params``, shapes and speed do not change. Physical removal is
    not possible without changing the block's channels: ``nn.MultiheadAttention`` ties
    its inner width (heads x head_dim) to ``embed_dim``, which is also the width of its
    query input and output, i.e. of the residual stream (torch-pruning's head pruning
    shrinks that stream with it). Deterministic for ``l1``; ``random`` depends only on
    ``ctx.generator``. Non-attention weights are untouched.
    """

    name = "attention_heads"
    Options = AttentionHeadOptions
    removes_structure: ClassVar[bool] = False

    def prune(self, model: DiffusionModel, rate: float, ctx: PruneContext) -> DiffusionModel:
        import torch
        from torch import nn

        from plugins.pruning import _common

        rate = _common.check_rate(rate, self.name)
        protected = {id(m) for m in _common.protected_modules(model.net, self.options.protect, warn=True).values()}
        removed: dict[str, list[int]] = {}
        total_heads = 0
        for name, module in model.net.named_modules():
            if not isinstance(module, nn.MultiheadAttention) or id(module) in protected:
                continue
            total_heads += module.num_heads
            n = heads_to_remove(module.num_heads, rate)
            if n == 0:
                removed[name] = []
                continue
            if self.options.importance == "random":
                scores = torch.rand(module.num_heads, generator=ctx.generator)
            else:
                scores = head_l1(module)
            heads = sorted(int(h) for h in scores.argsort(stable=True)[:n])
            zero_heads(module, heads)
            removed[name] = heads
        _common.record_info(
            model,
            {
                "method": self.name,
                "rate": rate,
                "heads_removed": removed,
                "head_share_removed": sum(len(v) for v in removed.values()) / total_heads if total_heads else 0.0,
            },
        )
        return model


def _head_tensors(mha: nn.MultiheadAttention, head: int) -> list[tuple[torch.Tensor, tuple[Any, ...]]]:
    """(tensor, index) pairs covering every weight that belongs to ``head`` only."""
    e, d = mha.embed_dim, mha.head_dim
    rows = slice(head * d, (head + 1) * d)
    out: list[tuple[torch.Tensor, tuple[Any, ...]]] = []
    if mha._qkv_same_embed_dim:
        for part in range(3):  # q, k, v sections of the packed projection
            out.append((mha.in_proj_weight, (slice(part * e + head * d, part * e + (head + 1) * d),)))
    else:
        for w in (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight):
            out.append((w, (rows,)))
    if mha.in_proj_bias is not None:
        for part in range(3):
            out.append((mha.in_proj_bias, (slice(part * e + head * d, part * e + (head + 1) * d),)))
    for extra in (mha.bias_k, mha.bias_v):
        if extra is not None:
            out.append((extra, (Ellipsis, rows)))
    out.append((mha.out_proj.weight, (slice(None), rows)))
    return out


def head_l1(mha: nn.MultiheadAttention) -> torch.Tensor:
    """Per-head L1 norm of the head's q/k/v rows (with biases) and out_proj columns."""
    import torch

    with torch.no_grad():
        return torch.tensor(
            [sum(float(t[idx].abs().sum()) for t, idx in _head_tensors(mha, h)) for h in range(mha.num_heads)]
        )


def zero_heads(mha: nn.MultiheadAttention, heads: list[int]) -> None:
    """Set every weight of ``heads`` to zero (the heads then output exactly zero)."""
    import torch

    with torch.no_grad():
        for h in heads:
            for t, idx in _head_tensors(mha, h):
                t[idx] = 0.0
