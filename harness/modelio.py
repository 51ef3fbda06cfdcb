"""Round-trip a (possibly physically pruned) ``nn.Module`` through safetensors + JSON.

Structured pruning changes layer shapes, so a plain ``state_dict`` no longer fits a
freshly built network. :func:`net_state` records, next to the tensors, the
shape-defining attributes of every standard layer (channels, features, groups, heads);
:func:`restore_net` puts those attributes and parameter shapes back on a freshly built
network of the same family before loading the weights. A module of a class the family
does not build (e.g. the :class:`~harness.attention.HeadPrunedAttention` that head
pruning puts in place of ``nn.MultiheadAttention``) must be registered with
:func:`register_module_type`: it is recorded by type name and constructor arguments,
and :func:`restore_net` swaps a new one in at its name. No pickle is involved and
classes come only from that registry, so an untrusted cache file cannot execute code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T", bound=nn.Module)


@dataclass(frozen=True)
class _ModuleType:
    cls: type[nn.Module]
    config: Callable[[nn.Module], dict[str, Any]]


#: rebuildable module types by recorded name (filled by :func:`register_module_type`)
_TYPES: dict[str, _ModuleType] = {}


def register_module_type(
    cls: type[T], config: Callable[[T], dict[str, Any]] | None = None, *, name: str | None = None
) -> type[T]:
    """Let :func:`net_state` / :func:`restore_net` record and rebuild modules of ``cls``.

    For a module class a pruner puts into a network in place of one the family builds
    (a family's fresh network cannot hold it, so restoring needs to build one). Register
    it in the module that defines the class or the plugin that uses it, so that every
    process that loads the plugins (including executor workers) can restore it. Usable
    as a class decorator.

    :param cls: the ``nn.Module`` subclass; it is rebuilt as ``cls(**config(module))``
        and then receives the saved tensors.
    :param config: ``module -> JSON-able constructor arguments`` that fix its parameter
        shapes; defaults to the class's ``shape_config()`` method.
    :param name: the name recorded in saved metadata (default ``cls.__name__``). It must
        stay the same across versions, or saved networks no longer restore.
    :raises ValueError: ``name`` is taken by another class, or ``cls`` has no
        ``shape_config`` and no ``config`` is given.
    """
    key = name or cls.__name__
    if config is None:
        if not callable(getattr(cls, "shape_config", None)):
            raise ValueError(f"register_module_type: {cls.__qualname__} has no shape_config(); pass config=")
        config = cls.shape_config
    existing = _TYPES.get(key)
    if existing is not None and existing.cls is not cls:
        raise ValueError(
            f"register_module_type: the name {key!r} is taken by {existing.cls.__module__}.{existing.cls.__qualname__}; "
            f"register {cls.__module__}.{cls.__qualname__} with another name="
        )
    _TYPES[key] = _ModuleType(cls, config)
    return cls


#: attributes that define a layer's shape, per layer type (what torch-pruning edits)
SHAPE_ATTRS: dict[type, tuple[str, ...]] = {
    nn.Conv1d: ("in_channels", "out_channels", "groups"),
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.ConvTranspose2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.LayerNorm: ("normalized_shape",),
    nn.BatchNorm2d: ("num_features",),
    nn.Embedding: ("num_embeddings", "embedding_dim"),
    nn.MultiheadAttention: ("embed_dim", "num_heads", "head_dim", "kdim", "vdim"),
}


def _shape_attrs(module: nn.Module) -> dict[str, Any]:
    for cls, attrs in SHAPE_ATTRS.items():
        if isinstance(module, cls):
            out = {}
            for a in attrs:
                if hasattr(module, a):
                    v = getattr(module, a)
                    out[a] = list(v) if isinstance(v, tuple) else v
            return out
    return {}


def net_state(net: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (state dict, on CPU) and JSON-able shape metadata of ``net``.

    Metadata: ``modules`` (name -> shape attributes of each standard layer) and, when
    ``net`` holds modules of a registered type (:func:`register_module_type`),
    ``rebuild`` (name -> ``{"type", "config"}``).
    """
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    names = {t.cls: key for key, t in _TYPES.items()}
    rebuild = {
        name: {"type": names[type(m)], "config": _TYPES[names[type(m)]].config(m)}
        for name, m in net.named_modules()
        if type(m) in names
    }
    modules = {name: attrs for name, m in net.named_modules() if name not in rebuild and (attrs := _shape_attrs(m))}
    meta: dict[str, Any] = {"modules": modules}
    if rebuild:
        meta["rebuild"] = rebuild
    return tensors, meta


def _rebuild(net: nn.Module, name: str, spec: dict[str, Any]) -> None:
    """Put a new module of the recorded class and shape at ``name`` (same device, dtype, mode)."""
    known = _TYPES.get(spec.get("type", ""))
    if known is None or not name:
        raise ValueError(
            f"restore_net: cannot rebuild module {name!r} of type {spec.get('type')!r}; registered types: "
            f"{sorted(_TYPES)} (harness.register_module_type; import the module that registers it)"
        )
    old = net.get_submodule(name)
    new = known.cls(**spec["config"])
    ref = next(old.parameters(), None)
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype)
    net.set_submodule(name, new.train(old.training))


def restore_net(net: nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    """Give ``net`` the recorded modules and shapes, then load ``tensors`` strictly."""
    for name, spec in (meta.get("rebuild") or {}).items():
        _rebuild(net, name, spec)
    named = dict(net.named_modules())
    for name, attrs in (meta.get("modules") or {}).items():
        module = named.get(name)
        if module is None:
            continue
        for attr, value in attrs.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        if isinstance(module, nn.MultiheadAttention):
            module._qkv_same_embed_dim = module.kdim == module.embed_dim and module.vdim == module.embed_dim
    current = net.state_dict(keep_vars=True)
    for key, value in tensors.items():
        cur = current.get(key)
        if cur is None or tuple(cur.shape) == tuple(value.shape):
            continue
        owner_name, _, leaf = key.rpartition(".")
        owner = named[owner_name] if owner_name else net
        if isinstance(cur, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(torch.empty_like(value), requires_grad=cur.requires_grad))
        else:
            owner._buffers[leaf] = torch.empty_like(value)
    net.load_state_dict(tensors, strict=True)
    return net


def count_params(net: nn.Module) -> tuple[int, int]:
    """``(num_params, nonzero_params)`` of ``net`` (parameters only, not buffers)."""
    total = 0
    nonzero = 0
    with torch.no_grad():
        for p in net.parameters():
            total += p.numel()
            nonzero += int(torch.count_nonzero(p).item())
    return total, nonzero
