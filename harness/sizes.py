"""What a model variant costs: multiply-accumulates and the share of zero weights.

One MAC counter and one sparsity count for the engine and for pruners alike
(``plugins/pruning`` measures with these too; each caller chooses which weights count),
and the one rule of what a pruner may touch: :func:`prunable_weights` outside
:func:`protected_modules`, matched by module path (:func:`in_module`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

#: version of the MAC counting stored with variants (2: attention kernels counted)
MACS_VERSION = 2


def count_macs(net: torch.nn.Module, example_inputs: Sequence[Any]) -> float:
    """Multiply-accumulates of one forward pass of ``net`` on ``example_inputs``
    (torch's FLOP counter / 2), with the attention kernels counted."""
    from torch.utils.flop_counter import FlopCounterMode

    from harness.attention import register_flop_formulas

    # without these formulas attention counts 0 MACs on CPU, and a head-pruned net would
    # look costlier than its parent (its projections are plain linears)
    register_flop_formulas()
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            net(*example_inputs)
    finally:
        net.train(was_training)
    return counter.get_total_flops() / 2.0


def measure_macs(model: Any) -> float:
    """MACs of one denoiser call of a :class:`harness.base.DiffusionModel` on one sample.

    NaN for models that cannot call their denoiser outside their own sampler
    (``example_inputs`` raises ``NotImplementedError``, e.g. SDXL pipelines).
    """
    try:
        inputs = model.example_inputs(1)
    except NotImplementedError as exc:
        log.info("MACs not measured: %s", exc)
        return float("nan")
    return count_macs(model.net, inputs)


def weight_sparsity(weights: Iterable[torch.Tensor]) -> float:
    """Share of exactly-zero entries among ``weights`` (0 when there are none)."""
    zeros = 0
    total = 0
    with torch.no_grad():
        for w in weights:
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total if total else 0.0


# ------------------------------------------------------------------- what a pruner may touch


def in_module(name: str, path: str) -> bool:
    """True when the module called ``name`` is the module ``path`` or inside it.

    How ``protect`` entries match: by module path (``net.named_modules()`` names), not by
    substring, so ``out_conv`` protects ``out_conv`` and ``out_conv.weight_proj`` but not
    ``blocks.0.out_conv_skip``.
    """
    return bool(path) and (name == path or name.startswith(path + "."))


def protected_modules(net: torch.nn.Module, protect: Iterable[str] = ()) -> dict[str, torch.nn.Module]:
    """The modules of ``net`` no pruner may touch (name -> module), submodules included:
    those inside a ``protect`` path (:func:`in_module`) and those the network lists in
    ``net.ignored_layers()`` (if it has that method)."""
    paths = [p for p in protect if p]
    declared: set[int] = set()
    ignored = getattr(net, "ignored_layers", None)
    if callable(ignored):
        for m in ignored():
            declared.update(id(sub) for sub in m.modules())
    return {name: m for name, m in net.named_modules()
            if id(m) in declared or any(in_module(name, p) for p in paths)}


@dataclass(frozen=True)
class WeightRef:
    """One prunable weight: ``getattr(module, attr)``, called ``name`` in the state dict."""

    name: str
    module: torch.nn.Module
    attr: str

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.attr)


_CONV_LINEAR = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d,
                torch.nn.ConvTranspose2d, torch.nn.Linear)


def prunable_weights(net: torch.nn.Module, protect: Iterable[str] = ()) -> list[WeightRef]:
    """The weights a pruner may touch by default, in module order: the ``weight`` of every
    conv and linear layer (the ``out_proj`` of ``nn.MultiheadAttention`` included) and the
    input projections of every ``nn.MultiheadAttention`` (``in_proj_weight``, or
    ``q/k/v_proj_weight``), outside :func:`protected_modules`. Biases, norms and
    embeddings are never in scope."""
    protected = {id(m) for m in protected_modules(net, protect).values()}
    refs: list[WeightRef] = []
    for name, module in net.named_modules():
        if id(module) in protected:
            continue
        prefix = f"{name}." if name else ""
        if isinstance(module, _CONV_LINEAR):
            attrs: tuple[str, ...] = ("weight",)
        elif isinstance(module, torch.nn.MultiheadAttention):
            attrs = ("in_proj_weight",) if module._qkv_same_embed_dim else ("q_proj_weight", "k_proj_weight",
                                                                              "v_proj_weight")
        else:
            continue
        refs += [WeightRef(prefix + a, module, a) for a in attrs if isinstance(getattr(module, a, None), torch.Tensor)]
    return refs
