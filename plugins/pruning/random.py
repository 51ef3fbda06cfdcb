"""``random``: global unstructured random pruning (the baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from harness import Pruner
from plugins.pruning._common import protect_field

if TYPE_CHECKING:  # pragma: no cover
    from harness import DiffusionModel, PruneContext


@dataclass
class RandomOptions:
    """Options of the ``random`` pruner."""

    protect: list[str] = protect_field()


class RandomPruner(Pruner):
    """Global unstructured random pruning: the baseline every method should beat.

    Rate semantics: exactly ``round(rate * n_prunable)`` of the prunable weights (same
    scope as ``magnitude``) are set to zero, chosen uniformly at random over all of them
    (``torch.randperm`` with ``ctx.generator``: same generator state, same mask). Masks are
    permanent; shapes and parameter count stay the same.
    """

    name = "random"
    Options = RandomOptions
    removes_structure: ClassVar[bool] = False

    def prune(self, model: DiffusionModel, rate: float, ctx: PruneContext) -> DiffusionModel:
        from plugins.pruning import _common

        def zero_at_random(refs: list[_common.WeightRef], count: int, total: int) -> None:
            import torch

            flat = torch.ones(total)
            flat[torch.randperm(total, generator=ctx.generator)[:count]] = 0.0
            _common.apply_masks(refs, _common.split_like(flat, refs))

        return _common.prune_unstructured(model, rate, self.name, self.options.protect, zero_at_random)
