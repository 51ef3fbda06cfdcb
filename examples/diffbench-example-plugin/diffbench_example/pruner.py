"""A layer-wise (not global) L1 magnitude pruner."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from harness import DiffusionModel, PruneContext, Pruner


class LayerMagnitudePruner(Pruner):
    """Layer-wise L1 magnitude pruning: each conv/linear layer loses ``rate`` of its weights.

    Unlike a global criterion every layer ends at the same sparsity, so no layer can be
    emptied. Layers whose names contain a protected substring of the model (or of the
    ``protect`` option) are left alone. Deterministic: no randomness is used.
    """

    name = "layer_magnitude"

    @dataclass
    class Options:
        protect: tuple[str, ...] = ()

    def prune(self, model: DiffusionModel, rate: float, ctx: PruneContext) -> DiffusionModel:
        protected = (*model.protected_modules, *self.options.protect)
        for name, module in model.net.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not any(p in name for p in protected):
                prune.l1_unstructured(module, "weight", amount=float(rate))
                prune.remove(module, "weight")
        return model
