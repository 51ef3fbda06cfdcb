"""A layer-wise (not global) L1 magnitude pruner."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from harness import DiffusionModel, PruneContext, Pruner, protected_modules


class LayerMagnitudePruner(Pruner):
    """Layer-wise L1 magnitude pruning: each conv/linear layer loses ``rate`` of its weights.

    Unlike a global criterion every layer ends at the same sparsity, so no layer can be
    emptied. The model's protected modules and the ``protect`` option's module paths
    (with everything inside them) are left alone. Deterministic: no randomness is used.
    """

    name = "layer_magnitude"

    @dataclass
    class Options:
        protect: tuple[str, ...] = ()

    def layers(self, model: DiffusionModel) -> list[nn.Module]:
        """The conv and linear layers this pruner prunes (outside the protected modules)."""
        protect = (*model.protected_modules, *self.options.protect)
        protected = {id(m) for m in protected_modules(model.net, protect).values()}
        return [m for m in model.net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in protected]

    def prunable_weights(self, model: DiffusionModel) -> list[torch.Tensor]:
        # narrower than the default scope (no attention input projections): the stored
        # sparsity is measured over exactly the weights pruned here
        return [m.weight for m in self.layers(model)]

    def prune(self, model: DiffusionModel, rate: float, ctx: PruneContext) -> DiffusionModel:
        for module in self.layers(model):
            prune.l1_unstructured(module, "weight", amount=float(rate))
            prune.remove(module, "weight")
        return model
