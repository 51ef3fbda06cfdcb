"""Round-trip a (possibly physically pruned) ``nn.Module`` through safetensors + JSON.

Structured pruning changes layer shapes, so a plain ``state_dict`` no longer fits a
freshly built network. :func:`net_state` records, next to the tensors, the
shape-defining attributes of every standard layer (channels, features, groups, heads);
:func:`restore_net` puts those attributes and parameter shapes back on a freshly built
network of the same family before loading the weights. No pickle is involved, so an
untrusted cache file cannot execute code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

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
    """Tensors (state dict, on CPU) and JSON-able shape metadata of ``net``."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    modules = {name: attrs for name, m in net.named_modules() if (attrs := _shape_attrs(m))}
    return tensors, {"modules": modules}


def restore_net(net: nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
    """Give ``net`` the recorded shapes, then load ``tensors`` strictly."""
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
