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
        import torch

        from plugins.pruning import _common

        rate = _common.check_rate(rate, self.name)
        refs = _common.prunable_weights(model.net, self.options.protect, warn=True)
        total = _common.num_weights(refs)
        count = round(rate * total)
        if count > 0:
            flat = torch.ones(total)
            flat[torch.randperm(total, generator=ctx.generator)[:count]] = 0.0
            _common.apply_masks(refs, _common.split_like(flat, refs))
        _common.record_info(
            model,
            {"method": self.name, "rate": rate, "sparsity": _common.weight_sparsity(model.net, self.options.protect)},
        )
        return model
