"""Model save/restore: registered module types round-trip; unknown ones are a clear error."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from harness import HeadPrunedAttention, net_state, register_module_type, restore_net
from harness.modelio import _TYPES


class Bottleneck(nn.Module):
    """A third party's module: a linear layer squeezed through ``rank`` features."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.width, self.rank = width, rank
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)


@pytest.fixture
def bottleneck_registered():
    register_module_type(Bottleneck, lambda m: {"width": m.width, "rank": m.rank}, name="test.Bottleneck")
    yield
    del _TYPES["test.Bottleneck"]


def test_a_registered_third_party_type_round_trips(bottleneck_registered):
    torch.manual_seed(0)
    net = Net()
    net.b = Bottleneck(8, 3)  # what a low-rank "pruner" would do
    tensors, meta = net_state(net)
    assert meta["rebuild"] == {"b": {"type": "test.Bottleneck", "config": {"width": 8, "rank": 3}}}
    meta = json.loads(json.dumps(meta))  # what the cache stores
    restored = restore_net(Net(), tensors, meta)
    assert isinstance(restored.b, Bottleneck) and restored.b.rank == 3
    x = torch.randn(2, 8)
    torch.testing.assert_close(restored.b(restored.a(x)), net.b(net.a(x)))


def test_an_unregistered_type_is_a_clear_error(bottleneck_registered):
    net = Net()
    net.b = Bottleneck(8, 3)
    tensors, meta = net_state(net)
    meta["rebuild"]["b"]["type"] = "Unknown"
    with pytest.raises(ValueError, match=r"cannot rebuild module 'b' of type 'Unknown'; registered types: .*"
                                         r"'HeadPrunedAttention'.*'test.Bottleneck'.*register_module_type"):
        restore_net(Net(), tensors, meta)


def test_a_name_clash_names_both_classes():
    class HeadPrunedAttentionClone(HeadPrunedAttention):
        pass

    with pytest.raises(ValueError, match=r"'HeadPrunedAttention' is taken by harness\.attention\.HeadPrunedAttention"):
        register_module_type(HeadPrunedAttentionClone, name="HeadPrunedAttention")
    assert _TYPES["HeadPrunedAttention"].cls is HeadPrunedAttention
    assert register_module_type(HeadPrunedAttention) is HeadPrunedAttention  # registering again is harmless


def test_a_type_without_shape_config_needs_config():
    with pytest.raises(ValueError, match="Bottleneck has no shape_config"):
        register_module_type(Bottleneck)
    assert "Bottleneck" not in _TYPES


def test_head_pruned_attention_keeps_its_recorded_name():
    # saved networks of earlier versions name the type "HeadPrunedAttention": they must still restore
    net = nn.Sequential(nn.Linear(8, 8))
    net.append(HeadPrunedAttention(8, 1, 4, batch_first=True))
    tensors, meta = net_state(net)
    assert meta["rebuild"]["1"]["type"] == "HeadPrunedAttention"
    restored = restore_net(nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True)), tensors,
                           meta)
    assert isinstance(restored[1], HeadPrunedAttention) and restored[1].num_heads == 1
