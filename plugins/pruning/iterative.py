"""``iterative``: gradual global magnitude pruning with fine-tuning between rounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from harness import Pruner
from plugins.pruning._common import protect_field

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from harness import DiffusionModel, PruneContext


@dataclass
class IterativeOptions:
    """Options of the ``iterative`` pruner."""

    rounds: int = field(default=3, metadata={"help": "pruning rounds (cumulative targets rate*k/rounds)"})
    finetune_steps: int = field(default=100, metadata={"help": "fine-tuning optimizer steps after each round"})
    criterion: Literal["magnitude"] = field(
        default="magnitude", metadata={"help": "ranking of weights (global unstructured |w|)"}
    )
    finetune_after: bool = field(default=True, metadata={"help": "also fine-tune after the last round"})
    protect: list[str] = protect_field()

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps}")


class IterativePruner(Pruner):
    """Iterative global magnitude pruning: prune a little, fine-tune, repeat.

    Rate semantics: like ``magnitude``, ``rate`` is the final share of the prunable
    weights set to zero. Round k of ``rounds`` brings the cumulative sparsity to
    ``rate * k / rounds`` (linear targets over the prunable weights, not compounded:
    0.5 in 3 rounds gives 1/6, 1/3, 1/2), ranking the surviving weights by |w| after the
    previous fine-tune; weights removed earlier stay removed. ``ctx.finetune(model,
    finetune_steps)`` runs after each round except the last one (and after the last one
    too when ``finetune_after``), so the default makes ``rounds`` fine-tuning calls.
    During fine-tuning the masks stay attached as ``torch.nn.utils.parametrize``
    parametrisations (``weight = original * mask``, recomputed on every access), so
    pruned weights take part in no forward pass and get no gradient; the masks are
    re-applied after each call (in case the fine-tune replaced the parameters) and made
    permanent at the end (plain parameters, the usual state-dict keys). With ``rounds = 1`` and no fine-tuning this
    is exactly ``magnitude``. Rate 0 returns the model untouched (no fine-tuning).
    Deterministic apart from what the fine-tune does.
    """

    name = "iterative"
    Options = IterativeOptions
    removes_structure: ClassVar[bool] = False

    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        """The contract checks behaviour, not convergence: 2 rounds of 2 fine-tune steps."""
        return {"options": {"rounds": 2, "finetune_steps": 2}}

    def prune(self, model: DiffusionModel, rate: float, ctx: PruneContext) -> DiffusionModel:
        import torch

        from plugins.pruning import _common

        o = self.options
        rate = _common.check_rate(rate, self.name)
        refs = _common.prunable_weights(model.net, o.protect, warn=True)
        names = [r.name for r in refs]
        total = _common.num_weights(refs)
        if rate == 0.0:
            return model
        masks: list[torch.Tensor] | None = None
        for k in range(1, o.rounds + 1):
            # a fine-tune may hand back a copied network: find the weights by name again
            _common.make_permanent(model.net)
            refs = _common.resolve(model.net, names)
            if masks is not None:
                _reapply(refs, masks)
            count = round(rate * total * k / o.rounds)
            masks = _common.global_magnitude_masks(refs, count, keep_zero=masks)
            _common.attach_masks(refs, masks)
            if o.finetune_steps > 0 and (k < o.rounds or o.finetune_after):
                model = ctx.finetune(model, o.finetune_steps)
        _common.make_permanent(model.net)
        if masks is not None:
            _reapply(_common.resolve(model.net, names), masks)
        _common.record_info(
            model,
            {
                "method": self.name,
                "rate": rate,
                "rounds": o.rounds,
                "finetune_steps": o.finetune_steps,
                "sparsity": _common.weight_sparsity(model.net, o.protect),
            },
        )
        return model


def _reapply(refs, masks) -> None:  # noqa: ANN001 - internal
    import torch

    with torch.no_grad():
        for ref, mask in zip(refs, masks, strict=True):
            ref.tensor.mul_(mask.to(device=ref.tensor.device, dtype=ref.tensor.dtype))
