"""``structured``: channel pruning with physical removal (torch-pruning dependency graph)."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from harness import Pruner, net_state, restore_net
from plugins._fixtures import TINY_UNET
from plugins.pruning._common import protect_field

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import torch

    from harness import DiffusionModel, PruneContext

log = logging.getLogger(__name__)


@dataclass
class StructuredOptions:
    """Options of the ``structured`` pruner."""

    importance: Literal["l1", "l2", "random", "taylor"] = field(
        default="l2",
        metadata={"help": "channel ranking: l1/l2 group weight norm, random, or taylor (|w * dL/dw|)"},
    )
    global_pruning: bool = field(
        default=False, metadata={"help": "rank channels across layers (rate over all channels) instead of per layer"}
    )
    protect: list[str] = protect_field()


@dataclass
class _Plan:
    """What to remove from one dependency group (rooted at ``root``'s output channels).

    The ``n`` channels are cut into contiguous chunks of ``chunk`` channels (each inside
    one GroupNorm group / attention head) and the same number of channels,
    ``remove_per_chunk``, is removed from every chunk: the lowest-scored ones.
    """

    root: Any
    handler: Any
    scores: torch.Tensor  # n importance scores
    chunk: int  # chunk width required by the group's own GroupNorms / heads
    shared: list[int] = field(default_factory=list)  # ids of concatenation GroupNorms it feeds
    remove_per_chunk: int = 0

    @property
    def channels(self) -> int:
        return int(self.scores.numel())

    @property
    def chunks(self) -> int:
        return self.channels // self.chunk

    def indices(self) -> list[int]:
        out: list[int] = []
        for c, row in enumerate(self.scores.view(self.chunks, self.chunk)):
            order = row.argsort(stable=True)[: self.remove_per_chunk]
            out.extend(int(i) + c * self.chunk for i in order.sort().values)
        return out


class StructuredPruner(Pruner):
    """Channel pruning with physical removal, through torch-pruning's dependency graph.

    Every group of coupled channels (a conv's or linear's output channels together with
    everything that consumes them: residual adds, skip concatenations, GroupNorms, the
    embedding projections, attention ``in_proj``/``out_proj``) is pruned as one, so the
    network stays consistent and really shrinks (``num_params`` and MACs drop).

    Rate semantics: ``rate`` is the share of channels removed from each prunable layer
    (``global_pruning = false``, the default) or from all prunable channels together,
    ranked across layers by normalised importance (``global_pruning = true``; layers
    then lose different shares). Channels are removed in equal numbers from every
    GroupNorm group and every attention head they belong to, so ``num_groups`` and
    ``num_heads`` never change (the head width shrinks) and every norm group keeps its
    own channels. The unit is therefore a chunk: ``num_channels / num_groups`` channels
    (or narrower, when heads or a norm over a skip concatenation require it), and per
    chunk ``max(1, floor(c * (1 - rate) + 0.5))`` of its ``c`` channels are kept. With
    8 groups of 32 channels (c = 4) rate 0.3 keeps 3 of 4 (removes 25%); with the
    ``unet`` default (28/56 channels, chunks of 7) rate 0.5 keeps 4 of 7 (43%). The
    share actually removed is recorded as ``channels_removed`` in ``model.info``, and
    the harness measures ``num_params`` and MACs: nothing is assumed. Parameters and
    compute go roughly as (1 - rate)^2 (both sides of a conv shrink).

    A network may define ``structured_ignored_layers()`` (more layers whose output
    channels stay, e.g. the q/k/v projections of diffusers attention, whose width the
    heads split) and ``sync_shapes()`` (called after channels are removed, to update
    width attributes its modules keep besides their layers').

    Protected modules (``protect``, see ``_common``) keep their output channels: the
    time and class embeddings keep their width, the output conv its image channels; the
    input image channels are never removed. ``importance``: ``l2`` / ``l1`` group weight
    norms (torch-pruning ``MagnitudeImportance``), ``random`` (scores from
    ``ctx.generator``: same generator state, same channels), or ``taylor`` (first-order
    Taylor |w * grad| of ``ctx.loss(model, ctx.calibration)``, the denoising loss at
    random t from ``ctx.generator``). Needs ``ctx.example_inputs = (x_t, t, cond)`` (or the model's
    ``example_inputs()``) for tracing. The network is pruned in place; a cached variant
    round-trips through ``harness.modelio`` (shapes are recorded per layer). A network
    whose heads ``attention_heads`` already removed is refused with a clear error
    (torch-pruning assumes heads x head_dim = embed_dim): prune channels first.
    """

    name = "structured"
    Options = StructuredOptions
    removes_structure: ClassVar[bool] = True

    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        """Pruned by the contract: a tiny UNet, not the stand-in model (its only channels feed a protected embedding)."""
        return {"model": TINY_UNET}

    def prune(self, model: DiffusionModel, rate: float, ctx: PruneContext) -> DiffusionModel:
        import torch
        from torch import nn

        from plugins.pruning import _common

        o = self.options
        rate = _common.check_rate(rate, self.name)
        if rate == 0.0:
            return model
        net: nn.Module = model.net
        _refuse_head_pruned(net)
        inputs = _common.example_inputs(model, ctx)
        ignored = [m for m in _common.protected_modules(net, o.protect, warn=True).values()]
        extra = getattr(net, "structured_ignored_layers", None)  # e.g. attention q/k/v widths
        if callable(extra):
            ignored += list(extra())
        params_before = sum(p.numel() for p in net.parameters())
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                out_shape = tuple(net(*inputs).shape)
            backup = copy.deepcopy(net)
            try:
                fraction = self._prune_net(model, ctx, inputs, ignored, rate, strict=False)
                _check_shapes(net)
            except _InvalidShapes as exc:
                # a GroupNorm over a concatenation of differently pruned parts: redo with
                # every group divisible on its own (some groups may then stay unpruned)
                log.warning("structured: %s; retrying with strict group divisibility", exc)
                restore_net(net, *net_state(backup))
                fraction = self._prune_net(model, ctx, inputs, ignored, rate, strict=True)
                _check_shapes(net)
            with torch.no_grad():
                new_shape = tuple(net(*inputs).shape)
            if new_shape != out_shape:
                raise RuntimeError(f"structured pruning changed the output shape {out_shape} -> {new_shape}")
        finally:
            net.zero_grad(set_to_none=True)
            net.train(was_training)
        params_after = sum(p.numel() for p in net.parameters())
        _common.record_info(
            model,
            {
                "method": self.name,
                "rate": rate,
                "importance": o.importance,
                "global_pruning": o.global_pruning,
                "channels_removed": fraction,
                "params_before": params_before,
                "params_after": params_after,
            },
        )
        return model

    def _prune_net(self, model: Any, ctx: Any, inputs: tuple[Any, ...], ignored: list[Any], rate: float, *, strict: bool) -> float:
        """Plan and remove channels in place; return the share of planned channels removed."""
        import torch
        import torch_pruning as tp
        from torch import nn

        net = model.net
        # torch-pruning traces the autograd graph: frozen weights (e.g. a pretrained
        # pipeline's) must require grad while it is built
        frozen = [p for p in net.parameters() if not p.requires_grad]
        try:
            for p in frozen:
                p.requires_grad_(True)
            with torch.enable_grad():
                graph = tp.DependencyGraph().build_dependency(net, example_inputs=inputs)
                groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Conv1d, nn.Linear]))
                importance = self._importance(model, ctx)
                plans = [p for g in groups if (p := _plan_group(g, importance, strict)) is not None]
        finally:
            frozen_ids = {id(p) for p in frozen}
            for p in net.parameters():
                if id(p) in frozen_ids:
                    p.requires_grad_(False)
        components = _share_chunks(plans)
        if self.options.global_pruning:
            _assign_global(components, rate)
        else:
            for p in plans:
                p.remove_per_chunk = p.chunk - kept_per_chunk(p.chunk, rate)
        total = sum(p.channels for p in plans)
        removed = 0
        for p in plans:
            idxs = p.indices()
            if not idxs:
                continue
            group = graph.get_pruning_group(p.root, p.handler, idxs)
            if not graph.check_pruning_group(group):  # would empty a layer
                log.warning("structured: skipping group of %s (would remove every channel)", type(p.root).__name__)
                continue
            group.prune()
            removed += len(idxs)
        sync = getattr(net, "sync_shapes", None)  # width attributes a net keeps besides its layers'
        if callable(sync):
            sync()
        net.zero_grad(set_to_none=True)
        return removed / total if total else 0.0

    def _importance(self, model: DiffusionModel, ctx: PruneContext) -> Any:
        import torch_pruning as tp


        kind = self.options.importance
        if kind == "l2":
            return tp.importance.MagnitudeImportance(p=2)
        if kind == "l1":
            return tp.importance.MagnitudeImportance(p=1)
        if kind == "random":
            return _GeneratorImportance(ctx.generator)
        # taylor: gradients of the denoising loss on the calibration batch
        model.net.zero_grad(set_to_none=True)
        ctx.loss(model, ctx.calibration).backward()
        return tp.importance.TaylorImportance()


def kept_per_chunk(width: int, rate: float) -> int:
    """Channels kept of a chunk of ``width``: ``width * (1 - rate)`` rounded half up, >= 1."""
    return max(1, math.floor(width * (1.0 - rate) + 0.5))


class _GeneratorImportance:
    """Uniform random channel scores drawn from an explicit generator (reproducible)."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def __call__(self, group: Any, **_: Any) -> torch.Tensor:
        import torch

        return torch.rand(len(group[0].idxs), generator=self.generator)


def _plan_group(group: Any, importance: Any, strict: bool) -> _Plan | None:
    """Importance of the group's channels and the chunk width that keeps it valid.

    The chunk count must be a multiple of every GroupNorm's ``num_groups`` and every
    attention layer's ``num_heads`` that sees all ``n`` channels. A GroupNorm over a
    concatenation sees a slice of its channels: its group width ``s`` must then be a
    multiple of the chunk width, and the chunk width is shared with the other slices'
    groups (:func:`_share_chunks`), so every norm group keeps the same number of channels.
    ``strict`` (the fallback) instead requires ``num_groups`` chunks in every group.
    """
    from torch import nn

    n = len(group[0].idxs)
    root = group[0].dep.target.module
    counts: list[int] = []
    widths: list[int] = []
    shared: list[int] = []
    for dep, idxs in group:
        module = dep.target.module
        if isinstance(module, nn.GroupNorm):
            if strict or len(idxs) >= module.num_channels:
                counts.append(int(module.num_groups))
            else:
                widths.append(int(module.num_channels) // int(module.num_groups))
                shared.append(id(module))
        elif isinstance(module, nn.MultiheadAttention):
            counts.append(int(module.num_heads))
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)) and 1 < module.groups < module.out_channels:
            counts.append(int(module.groups))
    chunks = math.lcm(1, *counts)
    if n % chunks:
        log.warning(
            "structured: %d channels of %s do not split into %d GroupNorm groups / heads; left unpruned",
            n,
            type(root).__name__,
            chunks,
        )
        return None
    imp = importance(group)
    if imp is None or imp.numel() != n:
        return None
    chunk = math.gcd(n // chunks, *widths)
    return _Plan(root=root, handler=group[0].dep.handler, scores=imp.detach().to("cpu").float().flatten(), chunk=chunk, shared=shared)


def _share_chunks(plans: list[_Plan]) -> list[list[_Plan]]:
    """Give plans that feed the same concatenation GroupNorm one chunk width (their gcd).

    Returns the connected components (lists of plans); each shares one chunk width, so
    the same rate removes the same share of every norm group they feed.
    """
    parent = list(range(len(plans)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for i, p in enumerate(plans):
        for key in p.shared:
            if key in owner:
                parent[find(i)] = find(owner[key])
            else:
                owner[key] = i
    components: dict[int, list[_Plan]] = {}
    for i, p in enumerate(plans):
        components.setdefault(find(i), []).append(p)
    for members in components.values():
        chunk = math.gcd(*[p.chunk for p in members])
        for p in members:
            p.chunk = chunk
        if chunk < 4 and len(members) > 1:
            log.info("structured: %d coupled groups share %d-channel chunks (coarse rate steps)", len(members), chunk)
    return list(components.values())


def _assign_global(components: list[list[_Plan]], rate: float) -> None:
    """Rank chunk positions across all components; remove ``rate`` of all channels.

    A component (plans sharing a concatenation GroupNorm) is one unit: its plans remove
    the same number of channels per chunk, so its norm groups stay equal in width.
    """
    import torch

    candidates: list[tuple[float, int]] = []
    for i, members in enumerate(components):
        # j-th smallest score of every chunk, averaged: nondecreasing in j
        rows = torch.cat([p.scores.view(p.chunks, p.chunk) for p in members])
        position_scores = rows.sort(dim=1).values.mean(dim=0)
        for j in range(members[0].chunk - 1):  # keep at least one per chunk
            candidates.append((float(position_scores[j]), i))
    total = sum(p.channels for members in components for p in members)
    target = round(rate * total)
    order = torch.tensor([c[0] for c in candidates]).argsort(stable=True) if candidates else []
    removed = 0
    for k in order:
        if removed >= target:
            break
        i = candidates[int(k)][1]
        for p in components[i]:
            p.remove_per_chunk += 1
            removed += p.chunks


def _refuse_head_pruned(net: Any) -> None:
    """Fail clearly on head-pruned attention: torch-pruning's attention handler assumes
    heads x head_dim = embed_dim and would index out of range (or prune wrong rows)."""
    from harness import HeadPrunedAttention

    for name, m in net.named_modules():
        if isinstance(m, HeadPrunedAttention):
            raise ValueError(
                f"structured: {type(net).__name__}.{name} is a head-pruned attention layer, which "
                "torch-pruning cannot prune; apply 'structured' before 'attention_heads', not after"
            )


class _InvalidShapes(RuntimeError):
    """Pruning left a GroupNorm or attention layer with an indivisible width."""


def _check_shapes(net: Any) -> None:
    from torch import nn

    for name, m in net.named_modules():
        if isinstance(m, nn.GroupNorm) and m.num_channels % m.num_groups:
            raise _InvalidShapes(f"GroupNorm {name} has {m.num_channels} channels in {m.num_groups} groups")
        if isinstance(m, nn.MultiheadAttention) and m.embed_dim % m.num_heads:
            raise _InvalidShapes(f"attention {name} has width {m.embed_dim} for {m.num_heads} heads")
