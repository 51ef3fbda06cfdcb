"""Shared helpers of the built-in pruners: scope, protection, masks and measurement.

Scope of the unstructured pruners ("prunable weights", :func:`harness.prunable_weights`,
also the scope the stored ``sparsity`` is measured over): the ``weight`` of every
``Conv1d/2d/ConvTranspose2d`` and ``Linear`` module (this includes the ``out_proj`` of
``nn.MultiheadAttention``) and the input projection of every ``nn.MultiheadAttention``
(``in_proj_weight``, or ``q/k/v_proj_weight`` when key/value widths differ or heads were
removed, see ``harness.attention``), minus the protected modules. Biases, norms and
embeddings are never pruned.

Protection (:func:`harness.protected_modules`): a module is protected when its qualified
name (``net.named_modules()``) is one of the ``protect`` paths or lies inside one
(``out_conv`` protects ``out_conv`` and ``out_conv.x``, not ``up.out_conv_skip``;
default: ``time_embed``, ``class_embed``, ``out_conv``: the time and class embeddings and
the output conv of the built-in UNet), or when the network lists it in
``net.ignored_layers()`` (the built-in UNet and the diffusers wrapper do); everything
inside a protected module is protected too. Unstructured pruners leave protected weights
untouched; the structured pruner keeps their output channels (their input channels may
shrink with the layer that feeds them, which the output conv needs). The image channels
(the in-channels of the first conv) are never removed: they are the network's input,
which torch-pruning's dependency graph cannot prune.

Sparsity (:func:`weight_sparsity`) is measured, never assumed: the share of exactly-zero
entries among the prunable weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from harness import ConfigError, WeightRef, in_module
from harness import protected_modules as harness_protected_modules
from harness import prunable_weights as harness_prunable_weights
from harness import weight_sparsity as harness_weight_sparsity

log = logging.getLogger(__name__)

#: module paths protected by default: time/class embeddings and the output conv
DEFAULT_PROTECT: tuple[str, ...] = ("time_embed", "class_embed", "out_conv")

def protect_field() -> Any:
    """The ``protect`` option shared by every built-in pruner (a dataclass field)."""
    return field(
        default_factory=lambda: list(DEFAULT_PROTECT),
        metadata={"help": "module paths never pruned, with everything inside them (embeddings, output conv by default)"},
    )


def check_rate(rate: float, pruner: str) -> float:
    """Validate a pruning rate (share removed, in [0, 1)); one-line error otherwise."""
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ConfigError(f"pruning_rate: {rate!r} is not a number (pruner '{pruner}')") from None
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise ConfigError(f"pruning_rate: {rate!r} is out of range for pruner '{pruner}'; valid: 0 <= rate < 1")
    return value


# ---------------------------------------------------------------------------- protection


_WARNED: set[tuple[str, str]] = set()


def protected_modules(
    net: nn.Module, protect: Iterable[str] = DEFAULT_PROTECT, *, warn: bool = False
) -> dict[str, nn.Module]:
    """Every protected module of ``net`` (name -> module), submodules included
    (:func:`harness.protected_modules`: ``protect`` paths and ``net.ignored_layers()``).

    :param warn: log a warning for each ``protect`` path that names no module.
    """
    if warn:
        names = [name for name, _ in net.named_modules()]
        for p in protect:
            if p and not any(in_module(n, p) for n in names) and (p, type(net).__name__) not in _WARNED:
                _WARNED.add((p, type(net).__name__))  # once per process, not once per pruned variant
                log.warning("pruning: protect path %r names no module of %s", p, type(net).__name__)
    return harness_protected_modules(net, protect)


def prunable_weights(
    net: nn.Module, protect: Iterable[str] = DEFAULT_PROTECT, *, warn: bool = False
) -> list[WeightRef]:
    """The prunable weights of ``net`` in module order (:func:`harness.prunable_weights`)."""
    if warn:
        protected_modules(net, protect, warn=True)
    return harness_prunable_weights(net, protect)


def resolve(net: nn.Module, names: Sequence[str]) -> list[WeightRef]:
    """Weight references of ``net`` by state-dict name (after a fine-tune may have copied it)."""
    modules = dict(net.named_modules())
    refs = []
    for n in names:
        owner, _, attr = n.rpartition(".")
        refs.append(WeightRef(n, modules[owner], attr))
    return refs


# ---------------------------------------------------------------------------- measuring


def weight_sparsity(net: nn.Module, protect: Iterable[str] = DEFAULT_PROTECT) -> float:
    """Share of exactly-zero entries among the prunable weights of ``net`` (measured with
    the core's one counter, :func:`harness.weight_sparsity`)."""
    return harness_weight_sparsity(ref.tensor for ref in prunable_weights(net, protect))


# ---------------------------------------------------------------------------- masks


class WeightMask(nn.Module):
    """A ``torch.nn.utils.parametrize`` parametrisation: ``weight = original * mask``.

    Used while fine-tuning between pruning rounds. Unlike ``torch.nn.utils.prune`` hooks
    it is recomputed on every access (``nn.MultiheadAttention`` reads ``out_proj.weight``
    without calling ``out_proj``, so a pre-forward hook would go stale) and a masked
    network can be deep-copied.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def make_permanent(net: nn.Module) -> int:
    """Fold every pruning mask of ``net`` into its weight; return how many.

    Handles ``torch.nn.utils.prune`` re-parametrisations and :class:`WeightMask`
    parametrisations; afterwards the weights are plain parameters again.
    """
    from torch.nn.utils import parametrize

    n = 0
    for module in list(net.modules()):
        hooks = list(module._forward_pre_hooks.values())
        for name in [h._tensor_name for h in hooks if isinstance(h, prune.BasePruningMethod)]:
            prune.remove(module, name)
            n += 1
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                if any(isinstance(p, WeightMask) for p in module.parametrizations[name]):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                    n += 1
    return n


def attach_masks(refs: Sequence[WeightRef], masks: Sequence[torch.Tensor]) -> None:
    """Attach ``masks`` as :class:`WeightMask` parametrisations (they hold in training)."""
    from torch.nn.utils import parametrize

    for ref, mask in zip(refs, masks, strict=True):
        t = ref.tensor
        parametrize.register_parametrization(ref.module, ref.attr, WeightMask(mask.to(device=t.device, dtype=t.dtype)))


def apply_masks(refs: Sequence[WeightRef], masks: Sequence[torch.Tensor]) -> None:
    """Zero the weights where ``masks`` is 0, permanently (plain parameters afterwards)."""
    for ref, mask in zip(refs, masks, strict=True):
        t = ref.tensor
        prune.custom_from_mask(ref.module, ref.attr, mask.to(device=t.device, dtype=t.dtype))
        prune.remove(ref.module, ref.attr)


def global_magnitude_masks(
    refs: Sequence[WeightRef], count: int, keep_zero: Sequence[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """Masks (1 = keep) removing the ``count`` smallest-|w| entries over all ``refs``.

    ``keep_zero``: earlier masks whose removed entries must stay removed (they are ranked
    first), so successive calls give nested masks.
    """
    with torch.no_grad():
        scores = []
        for i, ref in enumerate(refs):
            s = ref.tensor.detach().abs().flatten().to("cpu", torch.float32)
            if keep_zero is not None:
                s = torch.where(keep_zero[i].flatten().to("cpu") == 0, torch.full_like(s, -1.0), s)
            scores.append(s)
        flat = torch.cat(scores)
        mask = torch.ones_like(flat)
        if count > 0:
            # stable sort: ties broken by position, so the result is deterministic
            order = torch.sort(flat, stable=True).indices
            mask[order[:count]] = 0.0
        return split_like(mask, refs)


def split_like(flat: torch.Tensor, refs: Sequence[WeightRef]) -> list[torch.Tensor]:
    """Split a flat vector into tensors shaped like the weights of ``refs``."""
    out = []
    start = 0
    for ref in refs:
        n = ref.tensor.numel()
        out.append(flat[start : start + n].view_as(ref.tensor.detach().cpu()).clone())
        start += n
    return out


def num_weights(refs: Sequence[WeightRef]) -> int:
    return sum(ref.tensor.numel() for ref in refs)


# ---------------------------------------------------------------------------- context


def example_inputs(model: Any, ctx: Any) -> tuple[Any, ...]:
    """``ctx.example_inputs`` (or the model's own ``example_inputs()``) on the net's device."""
    inputs = tuple(getattr(ctx, "example_inputs", ()) or ())
    if not inputs:
        make = getattr(model, "example_inputs", None)
        if not callable(make):
            raise ValueError("structured pruning needs ctx.example_inputs = (x_t, t, cond) for tracing")
        inputs = tuple(make())
    device = next(model.net.parameters()).device
    return tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)


def record_info(model: Any, facts: dict[str, Any]) -> None:
    """Add JSON-able pruning facts to ``model.info`` (stored with the cached variant)."""
    info = getattr(model, "info", None)
    if isinstance(info, dict):
        info.setdefault("pruning", []).append(facts)


def prune_unstructured(
    model: Any, rate: float, pruner: str, protect: Iterable[str],
    zero: Callable[[list[WeightRef], int, int], None],
) -> Any:
    """The one-shot unstructured flow of ``magnitude`` and ``random``: only the choice differs.

    Validates ``rate``, gathers the prunable weights, and when ``round(rate * total) > 0``
    lets ``zero(refs, count, total)`` set exactly ``count`` of them to zero; then records
    the method, rate and measured sparsity in ``model.info``. Kept in one place so the two
    pruners cannot drift apart in scope, rounding or what they record.
    """
    rate = check_rate(rate, pruner)
    refs = prunable_weights(model.net, protect, warn=True)
    total = num_weights(refs)
    count = round(rate * total)
    if count > 0:
        zero(refs, count, total)
    record_info(model, {"method": pruner, "rate": rate, "sparsity": weight_sparsity(model.net, protect)})
    return model
