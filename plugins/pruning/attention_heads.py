"""``attention_heads``: remove whole self-attention heads physically."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

# imported here, not in prune(): loading the plugin registers the module type, so any
# process that loads the plugins can restore a head-pruned network (harness.modelio)
from harness import HeadPrunedAttention, Pruner
from plugins._fixtures import TINY_UNET
from plugins.pruning._common import protect_field

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import torch
    from torch import nn

    from harness import DiffusionModel, PruneContext


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

    Removal is physical: a layer that loses heads is replaced by a
    :class:`harness.attention.HeadPrunedAttention` holding exactly the kept heads'
    weights. Its token width (``embed_dim``, the residual stream) is unchanged, its inner
    width shrinks to kept heads x ``head_dim``, so ``num_params`` drops by
    ``4 * embed_dim * head_dim + 3 * head_dim`` per removed head (q/k/v rows and biases,
    ``out_proj`` columns) and MACs and time drop with it. Its output equals the original
    layer's with the removed heads' weights zeroed (a zeroed head outputs exactly zero),
    up to float rounding. A layer that loses no head stays an ``nn.MultiheadAttention``,
    so rates below ``0.5 / H`` leave the network unchanged. ``harness.modelio`` records
    the replaced modules, so a cached variant restores to the same network. Channel
    pruning (``structured``) must come before head pruning, not after. Deterministic for
    ``l1``; ``random`` depends only on ``ctx.generator``. Non-attention weights are
    untouched.
    """

    name = "attention_heads"
    Options = AttentionHeadOptions
    removes_structure: ClassVar[bool] = True
    #: "2": heads are removed physically (version 1 zeroed them); old cached variants are stale
    cache_version: ClassVar[str] = "2"

    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        """Pruned by the contract: a tiny UNet, not the stand-in model (it has no attention)."""
        return {"model": TINY_UNET}

    def prune(self, model: DiffusionModel, rate: float, ctx: PruneContext) -> DiffusionModel:
        import torch
        from torch import nn

        from plugins.pruning import _common

        rate = _common.check_rate(rate, self.name)
        protected = {id(m) for m in _common.protected_modules(model.net, self.options.protect, warn=True).values()}
        removed: dict[str, list[int]] = {}
        total_heads = 0
        for name, module in list(model.net.named_modules()):
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
            keep = [h for h in range(module.num_heads) if h not in heads]
            model.net.set_submodule(name, HeadPrunedAttention.from_mha(module, keep))
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


def head_l1(mha: nn.MultiheadAttention) -> torch.Tensor:
    """Per-head L1 norm of the head's q/k/v rows (with biases) and out_proj columns."""
    import torch

    from harness import qkv_weights

    d = mha.head_dim
    parts = list(qkv_weights(mha))
    if mha.in_proj_bias is not None:
        parts += [b[:, None] for b in mha.in_proj_bias.chunk(3)]
    with torch.no_grad():
        rows = sum(p.abs().sum(dim=1).view(mha.num_heads, d).sum(dim=1) for p in parts)
        return rows + mha.out_proj.weight.abs().sum(dim=0).view(mha.num_heads, d).sum(dim=1)
