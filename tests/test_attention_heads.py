"""Physical attention-head pruning: ``HeadPrunedAttention``, the pruner, cache round trips."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from harness.attention import HeadPrunedAttention
from harness.base import PruneContext
from harness.cache import ArtifactCache
from harness.sizes import measure_macs
from harness.modelio import count_params, net_state, restore_net
from harness.testing import prune_context
from plugins.models.unet import UNetFamily, capture_attention
from plugins.pruning import _common
from plugins.pruning.attention_heads import AttentionHeadPruner
from plugins.pruning.structured import StructuredPruner


def zero_heads(mha: nn.MultiheadAttention, heads: list[int]) -> None:
    """The functional reference: zero the heads' q/k/v rows, biases and out_proj columns."""
    e, d = mha.embed_dim, mha.head_dim
    with torch.no_grad():
        for h in heads:
            for part in range(3):
                rows = slice(part * e + h * d, part * e + (h + 1) * d)
                mha.in_proj_weight[rows] = 0.0
                mha.in_proj_bias[rows] = 0.0
            mha.out_proj.weight[:, h * d : (h + 1) * d] = 0.0


def random_mha(batch_first: bool) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()  # non-zero biases: they must move with their heads
        mha.out_proj.bias.normal_()
    return mha


# ---------------------------------------------------------------------------- the module


@pytest.mark.parametrize("batch_first", [True, False])
def test_head_pruned_attention_equals_the_zeroed_layer(batch_first):
    mha = random_mha(batch_first)
    pruned = HeadPrunedAttention.from_mha(mha, [2, 0])
    zeroed = copy.deepcopy(mha)
    zero_heads(zeroed, [1, 3])
    x = torch.randn(3, 10, 32) if batch_first else torch.randn(10, 3, 32)
    with torch.no_grad():
        out, none = pruned(x, x, x, need_weights=False)
        ref, _ = zeroed(x, x, x, need_weights=False)
        out_w, w = pruned(x, x, x, need_weights=True, average_attn_weights=False)
        _, ref_w = zeroed(x, x, x, need_weights=True, average_attn_weights=False)
        _, mean_w = pruned(x, x, x)
        separate, _ = pruned(x, x.clone(), x.clone(), need_weights=False)  # not packed: 3 projections
    assert none is None
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(separate, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_w, ref, atol=1e-5, rtol=0)
    assert w.shape == (3, 2, 10, 10)
    torch.testing.assert_close(w, ref_w[:, [0, 2]], atol=1e-6, rtol=0)  # the kept heads' weights
    torch.testing.assert_close(mean_w, w.mean(dim=1))
    assert pruned.q_proj_weight.shape == (16, 32) and pruned.out_proj.weight.shape == (32, 16)
    # pruning a pruned layer again keeps the heads it names (indices into its own heads)
    again = HeadPrunedAttention.from_mha(pruned, [1])
    zero_heads(zeroed, [0])
    with torch.no_grad():
        torch.testing.assert_close(again(x, x, x, need_weights=False)[0], zeroed(x, x, x, need_weights=False)[0], atol=1e-5, rtol=0)


def test_head_pruned_attention_rejects_what_it_does_not_support():
    mha = random_mha(True)
    with pytest.raises(ValueError, match=r"keep: \[\] must be a non-empty subset of range\(4\)"):
        HeadPrunedAttention.from_mha(mha, [])
    with pytest.raises(ValueError, match=r"subset of range\(4\)"):
        HeadPrunedAttention.from_mha(mha, [4])
    x = torch.randn(2, 5, 32)
    with pytest.raises(NotImplementedError, match="no attention masks"):
        HeadPrunedAttention.from_mha(mha, [0])(x, x, x, attn_mask=torch.zeros(5, 5))


# ---------------------------------------------------------------------------- the default UNet


def digits_stub() -> SimpleNamespace:
    return SimpleNamespace(name="digits", num_classes=10, image_size=16, channels=1)


def unet(seed: int = 0):  # noqa: ANN201
    """The default ``unet`` (28/56 channels, 4 heads in 4 attention layers), untrained."""
    torch.manual_seed(seed)
    return UNetFamily().build(digits_stub())


def inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(3, 1, 16, 16, generator=g), torch.tensor([0, 20, 49]), torch.tensor([1, 5, 10])


def ctx(model) -> PruneContext:  # noqa: ANN001
    c = prune_context(model)
    c.example_inputs = inputs()
    return c


def attention(net: nn.Module) -> dict[str, nn.MultiheadAttention]:
    return {n: m for n, m in net.named_modules() if isinstance(m, nn.MultiheadAttention)}


@pytest.mark.parametrize("importance", ["l1", "random"])
def test_pruned_unet_equals_the_zeroed_unet_and_is_smaller(importance):
    model = unet()
    zeroed = copy.deepcopy(model.net).eval()
    params0, macs0 = count_params(model.net)[0], measure_macs(model)
    AttentionHeadPruner(importance=importance).prune(model, 0.9, ctx(model))
    removed = model.info["pruning"][-1]["heads_removed"]
    assert len(removed) == 4 and all(len(h) == 3 for h in removed.values())
    layers = attention(model.net)
    assert all(type(m) is HeadPrunedAttention and m.num_heads == 1 and m.head_dim == 14 for m in layers.values())
    for name, heads in removed.items():
        zero_heads(zeroed.get_submodule(name), heads)
    model.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.net(*inputs()), zeroed(*inputs()), atol=1e-5, rtol=0)
    # parameters: exactly the removed heads' q/k/v rows and biases and out_proj columns
    e, d = 56, 14
    assert count_params(model.net)[0] == params0 - 4 * 3 * (4 * e * d + 3 * d)
    # MACs (one sample, L = 4 x 4 positions): their projections and attention products
    length = 16
    assert measure_macs(model) == macs0 - 4 * 3 * (4 * length * e * d + 2 * length * length * d)


def test_pruned_unet_round_trips_through_the_family_and_the_cache(tmp_path):
    family = UNetFamily()
    model = unet()
    AttentionHeadPruner().prune(model, 0.5, ctx(model))
    tensors, meta = family.state(model)
    assert meta["net"]["rebuild"]["mid.0.attn.attn"] == {
        "type": "HeadPrunedAttention",
        "config": {"embed_dim": 56, "num_heads": 2, "head_dim": 14, "kdim": 56, "vdim": 56, "bias": True,
                   "batch_first": True, "dropout": 0.0},
    }
    art = ArtifactCache(tmp_path).save("variant", "k1", tensors, meta)  # safetensors + JSON
    torch.manual_seed(1)  # the fresh UNet's own weights differ: everything must come from the file
    restored = family.restore(art.tensors, art.meta, digits_stub())
    assert {n: (type(m), m.num_heads) for n, m in attention(restored.net).items()} == {
        n: (type(m), m.num_heads) for n, m in attention(model.net).items()
    }
    model.net.eval()
    with torch.no_grad():
        assert torch.equal(restored.net(*inputs()), model.net(*inputs()))
    assert count_params(restored.net) == count_params(model.net)


def test_restore_names_an_unknown_module_type():
    net = unet().net
    tensors, meta = net_state(net)
    meta["rebuild"] = {"mid.0.attn.attn": {"type": "os.system", "config": {}}}
    with pytest.raises(ValueError, match=r"cannot rebuild module 'mid.0.attn.attn' of type 'os.system'"):
        restore_net(net, tensors, meta)


def test_attention_maps_of_the_pruned_unet_have_the_kept_heads():
    model = unet()
    zeroed = copy.deepcopy(model.net).eval()
    AttentionHeadPruner().prune(model, 0.5, ctx(model))
    x, t, c = inputs()
    maps = model.attention_maps(x, t, c)
    assert [tuple(m.shape) for m in maps] == [(3, 2, 16, 16)] * 4
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 2, 16), atol=1e-5, rtol=0)
    # in call order (encoder, middle, decoder) the kept heads' maps of the zeroed network
    removed = model.info["pruning"][-1]["heads_removed"]
    for name, heads in removed.items():
        zero_heads(zeroed.get_submodule(name), heads)
    with torch.no_grad(), capture_attention(zeroed) as ref:
        zeroed(x, t, c)
    call_order = ["down.2.blocks.0.attn.attn", "mid.0.attn.attn", "up.0.blocks.0.attn.attn", "up.0.blocks.1.attn.attn"]
    assert sorted(call_order) == sorted(removed)
    for got, want, name in zip(maps, ref, call_order, strict=True):
        kept = [h for h in range(4) if h not in removed[name]]
        torch.testing.assert_close(got, want[:, kept], atol=1e-5, rtol=0)
    assert all(not m._forward_pre_hooks for m in attention(model.net).values())


def test_rate_below_half_a_head_leaves_the_unet_unchanged():
    model = unet()
    state = copy.deepcopy(model.net.state_dict())
    AttentionHeadPruner().prune(model, 0.1, ctx(model))
    assert all(type(m) is nn.MultiheadAttention for m in attention(model.net).values())
    assert all(torch.equal(v, state[k]) for k, v in model.net.state_dict().items())
    assert set(map(len, model.info["pruning"][-1]["heads_removed"].values())) == {0}
    assert "rebuild" not in net_state(model.net)[1]


def test_channels_then_heads_works_heads_then_channels_is_a_clear_error():
    model = unet()
    StructuredPruner().prune(model, 0.5, ctx(model))
    zeroed = copy.deepcopy(model.net).eval()
    AttentionHeadPruner().prune(model, 0.5, ctx(model))
    for name, heads in model.info["pruning"][-1]["heads_removed"].items():
        zero_heads(zeroed.get_submodule(name), heads)
    model.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.net(*inputs()), zeroed(*inputs()), atol=1e-5, rtol=0)
    # the unstructured pruners' scope covers the pruned layers' projections
    names = {r.name for r in _common.prunable_weights(model.net)}
    assert {"mid.0.attn.attn.q_proj_weight", "mid.0.attn.attn.out_proj.weight"} <= names
    with pytest.raises(ValueError, match=r"structured: UNet.down.2.blocks.0.attn.attn is a head-pruned attention layer.*before .attention_heads."):
        StructuredPruner().prune(model, 0.5, ctx(model))
