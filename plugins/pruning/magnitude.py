"""``magnitude``: global unstructured L1 magnitude pruning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from harness import Pruner
from plugins.pruning._common import protect_field

if TYPE_CHECKING:  # pragma: no cover
    from harness import DiffusionModel, PruneContext


@dataclass
class MagnitudeOptions:
    """Options of the ``magnitude`` pruner."""

    protect: list[str] = protect_field()


class MagnitudePruner(Pruner):
    """Global unstructured L1 magnitude pruning of conv, linear and attention weights.

    Rate semantics: ``rate`` is the share of the *prunable weights* (every conv / linear
    weight and ``nn.MultiheadAttention`` input projection outside the ``protect``ed
    modules; biases, norms and embeddings excluded) set to zero, ranked by |w| across all
    of them at once (``torch.nn.utils.prune.global_unstructured``), so layers end up with
    different sparsities. Exactly ``round(rate * n_prunable)`` weights are removed; the
    masks are made permanent (``prune.remove``), so shapes and parameter count stay the
    same and ``nonzero_params`` drops. Deterministic (no randomness).
    """

    name = "magnitude"
    Options = MagnitudeOptions
    removes_structure: ClassVar[bool] = False

    def prune(self, model: DiffusionModel, rate: float, ctx: PruneContext) -> DiffusionModel:
        from plugins.pruning import _common

        def zero_smallest(refs: list[_common.WeightRef], count: int, total: int) -> None:
            from torch.nn.utils import prune

            prune.global_unstructured(
                [(r.module, r.attr) for r in refs], pruning_method=prune.L1Unstructured, amount=count
            )
            for r in refs:
                prune.remove(r.module, r.attr)

        return _common.prune_unstructured(model, rate, self.name, self.options.protect, zero_smallest)
