"""Multi-head attention with fewer heads than its width allows (physical head pruning).

``nn.MultiheadAttention`` ties its inner width to its token width: ``num_heads x
head_dim = embed_dim``. :class:`HeadPrunedAttention` keeps the token width ``E`` (its
input and output, i.e. the residual stream) but has only ``H'`` heads of ``d`` each::

    q, k, v = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv     # (N, L, H' d), split into H' heads
    o_h = softmax(q_h k_h^T / sqrt(d)) v_h               # per head, (N, L, d)
    out = [o_1 ... o_H'] Wo^T + bo                        # Wo: E x H' d

:meth:`HeadPrunedAttention.from_mha` copies exactly the kept heads' rows of the q/k/v
projections and columns of ``out_proj``, so its output equals that of the original
layer with the other heads' weights set to zero (a zeroed head outputs exactly zero).

:func:`register_flop_formulas` teaches torch's ``FlopCounterMode`` the two attention
kernels it does not count on CPU. Importing this module registers
:class:`HeadPrunedAttention` with :func:`harness.modelio.register_module_type` and does
nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.modelio import register_module_type


def qkv_weights(mha: nn.MultiheadAttention) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The q, k and v projection weights of ``mha`` (packed or separate), each inner x in."""
    if mha._qkv_same_embed_dim:
        wq, wk, wv = mha.in_proj_weight.chunk(3)
        return wq, wk, wv
    return mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight


@register_module_type  # a head-pruned network is saved and restored by harness.modelio
class HeadPrunedAttention(nn.MultiheadAttention):
    """Attention with ``num_heads`` heads of ``head_dim`` over ``embed_dim``-wide tokens.

    A drop-in for ``nn.MultiheadAttention``'s forward (batched inputs, no masks):
    ``attn(q, k, v, need_weights=False)`` returns ``(out, None)``; with
    ``need_weights=True`` it also returns the softmax weights, N x H' x L x S with
    ``average_attn_weights=False`` (N x L x S, mean over heads, otherwise). The fast path
    uses ``F.scaled_dot_product_attention``; the weights path computes them explicitly.

    Parameters follow ``nn.MultiheadAttention``'s separate-projection layout with
    ``H' * head_dim`` rows: ``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight``,
    ``in_proj_bias`` (3 H' d), ``out_proj`` (H' d -> E), so code written for that layout
    (prunable-weight scopes, per-head slicing) applies unchanged. It subclasses
    ``nn.MultiheadAttention`` so that hooks and checks keyed on it (attention-map
    capture, head counts) see it, but does not call its ``__init__``, which requires
    ``num_heads * head_dim == embed_dim``. Not supported: attention masks,
    ``is_causal``, ``bias_k`` / ``bias_v``, ``add_zero_attn``, unbatched inputs.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        if num_heads < 1 or head_dim < 1:
            raise ValueError(f"HeadPrunedAttention needs num_heads >= 1 and head_dim >= 1, got {num_heads}, {head_dim}")
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        inner = num_heads * head_dim
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = False  # separate q/k/v weights: their rows are H' d, not E
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.batch_first = batch_first
        self.q_proj_weight = nn.Parameter(torch.empty(inner, embed_dim, **factory))
        self.k_proj_weight = nn.Parameter(torch.empty(inner, self.kdim, **factory))
        self.v_proj_weight = nn.Parameter(torch.empty(inner, self.vdim, **factory))
        self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * inner, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, **factory)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self._reset_parameters()  # nn.MultiheadAttention's: Xavier weights, zero biases

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention, keep: Sequence[int]) -> HeadPrunedAttention:
        """A copy of ``mha`` (or of a :class:`HeadPrunedAttention`) with only the heads ``keep``.

        :param keep: indices of the heads to keep, in ``range(mha.num_heads)``, at least one.
        """
        heads = sorted(set(int(h) for h in keep))
        if not heads or heads[0] < 0 or heads[-1] >= mha.num_heads:
            raise ValueError(f"keep: {list(keep)} must be a non-empty subset of range({mha.num_heads})")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("HeadPrunedAttention.from_mha: bias_k / bias_v / add_zero_attn are not supported")
        wq, wk, wv = qkv_weights(mha)
        d = mha.head_dim
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads]).to(wq.device)
        bias = mha.in_proj_bias is not None
        new = cls(
            mha.embed_dim, len(heads), d, kdim=mha.kdim, vdim=mha.vdim, bias=bias,
            batch_first=mha.batch_first, dropout=mha.dropout, device=wq.device, dtype=wq.dtype,
        )
        with torch.no_grad():
            new.q_proj_weight.copy_(wq[rows])
            new.k_proj_weight.copy_(wk[rows])
            new.v_proj_weight.copy_(wv[rows])
            new.out_proj.weight.copy_(mha.out_proj.weight[:, rows])
            if bias:
                new.in_proj_bias.copy_(torch.cat([b[rows] for b in mha.in_proj_bias.chunk(3)]))
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def shape_config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (``harness.modelio`` rebuilds the module from them)."""
        return {
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "kdim": self.kdim,
            "vdim": self.vdim,
            "bias": self.in_proj_bias is not None,
            "batch_first": self.batch_first,
            "dropout": self.dropout,
        }

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise NotImplementedError("HeadPrunedAttention supports no attention masks")
        if query.dim() != 3:
            raise ValueError(f"HeadPrunedAttention needs batched 3-d inputs, got {query.dim()}-d")
        packed = query is key and key is value and self.kdim == self.vdim == self.embed_dim
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length = query.shape[:2]
        h, d = self.num_heads, self.head_dim
        if packed:  # self-attention: one projection matmul (a third faster at one head on CPU)
            w = torch.cat([self.q_proj_weight, self.k_proj_weight, self.v_proj_weight])
            q, k, v = F.linear(query, w, self.in_proj_bias).view(n, length, 3, h, d).permute(2, 0, 3, 1, 4)
        else:
            biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

            def split(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
                return F.linear(x, w, b).view(n, x.shape[1], h, d).transpose(1, 2)  # N x H' x L x d

            q = split(query, self.q_proj_weight, biases[0])
            k = split(key, self.k_proj_weight, biases[1])
            v = split(value, self.v_proj_weight, biases[2])
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            weights = torch.softmax((q @ k.transpose(-2, -1)) * d**-0.5, dim=-1)
            if p > 0.0:
                weights = F.dropout(weights, p)  # returned after dropout, as nn.MultiheadAttention does
            o = weights @ v
        else:
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        out = self.out_proj(o.transpose(1, 2).reshape(n, length, h * d))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights


# ---------------------------------------------------------------------------- MAC counting


def _native_mha_flops(query: Any, key: Any, value: Any, embed_dim: int, *args: Any, **kwargs: Any) -> int:
    """Flops (2 x MACs) of ``aten._native_multi_head_attention`` (batch-first N x L x E).

    In-projections N (L + 2 S) E^2, scores and weighted sum 2 N L S E, out-projection N L E^2.
    """
    n, length, e = query
    s = key[1]
    return 2 * (n * (length + 2 * s) * e * e + 2 * n * length * s * e + n * length * e * e)


def _sdpa_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def register_flop_formulas() -> None:
    """Count the attention kernels that torch's ``FlopCounterMode`` misses on CPU.

    ``nn.MultiheadAttention``'s inference fast path (``aten._native_multi_head_attention``:
    projections and attention in one kernel) and CPU ``scaled_dot_product_attention``
    (``aten._scaled_dot_product_flash_attention_for_cpu``) have no flop formula in torch
    2.x, so a counter sees no attention at all. Idempotent; a formula torch already has
    is kept. Takes effect for counters created afterwards.
    """
    from torch.utils import flop_counter

    formulas = {
        "_native_multi_head_attention": _native_mha_flops,
        "_scaled_dot_product_flash_attention_for_cpu": _sdpa_flops,
    }
    for op_name, formula in formulas.items():
        op = getattr(torch.ops.aten, op_name, None)
        if op is not None and op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)
