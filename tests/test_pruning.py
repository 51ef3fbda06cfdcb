"""The built-in pruners: rate semantics, protection, physical removal, round trips."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pluggy
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness import hookspecs
from harness.attention import HeadPrunedAttention
from harness.base import Conditions, ImageBatch, PruneContext, TrainContext
from harness.diffusion import NoiseSchedule, ScheduledDiffusionModel
from harness.errors import ConfigError
from harness.modelio import count_params, net_state, restore_net
from harness.sizes import count_macs
from harness.training import finetune
from plugins.pruning import _common
from plugins.pruning.attention_heads import AttentionHeadPruner, heads_to_remove
from plugins.pruning.iterative import IterativePruner
from plugins.pruning.magnitude import MagnitudePruner
from plugins.pruning.random import RandomPruner
from plugins.pruning.structured import StructuredPruner



@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: a second intra-op thread costs far more than it saves (10x CPU time
    # on a loaded 2-core machine); runs after conftest's thread setting
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------- a small UNet


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb_proj(F.silu(emb))[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class _Attn(nn.Module):
    def __init__(self, c: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, c)
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x).flatten(2).transpose(1, 2)
        y, _ = self.attn(y, y, y, need_weights=False)
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class ToyUNet(nn.Module):
    """GroupNorm ResBlocks, 4-head self-attention, time + class embedding, skip concat."""

    def __init__(self, ch: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.ch = ch
        emb = 2 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_embed = nn.Embedding(num_classes + 1, emb)
        self.in_conv = nn.Conv2d(1, ch, 3, padding=1)
        self.down1 = _Res(ch, ch, emb)
        self.downsample = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
        self.mid1 = _Res(2 * ch, 2 * ch, emb)
        self.mid_attn = _Attn(2 * ch)
        self.mid2 = _Res(2 * ch, 2 * ch, emb)
        self.up_conv = nn.Conv2d(2 * ch, ch, 3, padding=1)
        self.up1 = _Res(2 * ch, ch, emb)
        self.out_norm = nn.GroupNorm(8, ch)
        self.out_conv = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(_timestep_embedding(t, self.ch)) + self.class_embed(y)
        h1 = self.down1(self.in_conv(x), emb)
        h = self.mid2(self.mid_attn(self.mid1(self.downsample(h1), emb)), emb)
        h = self.up_conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.up1(torch.cat([h, h1], dim=1), emb)
        return self.out_conv(F.silu(self.out_norm(h)))


PROTECTED = ("time_embed", "class_embed", "out_conv")


def make_model(seed: int = 0) -> ScheduledDiffusionModel:
    torch.manual_seed(seed)
    return ScheduledDiffusionModel(ToyUNet(), NoiseSchedule("cosine", 50), (1, 16, 16), 10)


def make_ctx(seed: int = 0, finetune=lambda m, steps: m) -> PruneContext:  # noqa: ANN001
    g = torch.Generator().manual_seed(1234)
    images = torch.rand(16, 1, 16, 16, generator=g) * 2 - 1
    labels = torch.arange(16) % 10
    x = torch.randn(4, 1, 16, 16, generator=g)
    t = torch.tensor([0, 10, 25, 49])
    cond = torch.tensor([0, 3, 9, 10])
    return PruneContext(
        calibration=ImageBatch(images, Conditions(labels=labels)),
        device="cpu",
        generator=torch.Generator().manual_seed(seed),
        finetune=finetune,
        example_inputs=(x, t, cond),
    )


def protected_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if any(p in k for p in PROTECTED)}


def sample(model: ScheduledDiffusionModel) -> torch.Tensor:
    noise = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    out = model.sample(noise, Conditions(labels=torch.tensor([1, 2, 3, 4])), cfg_scale=3.0, sampler="ddim", steps=2)
    assert out.images.shape == (4, 1, 16, 16)
    assert torch.isfinite(out.images).all()
    return out.images


# ---------------------------------------------------------------------------- unstructured


@pytest.mark.parametrize("cls", [MagnitudePruner, RandomPruner])
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_unstructured_sparsity_equals_rate_and_protects(cls, rate):
    model = make_model()
    before = protected_state(model.net)
    shapes = {k: v.shape for k, v in model.net.state_dict().items()}
    cls().prune(model, rate, make_ctx())
    assert _common.weight_sparsity(model.net) == pytest.approx(rate, abs=0.01)
    after = model.net.state_dict()
    assert {k: v.shape for k, v in after.items()} == shapes  # masks folded in, no extra keys
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    # attention projections are in scope
    assert (model.net.mid_attn.attn.in_proj_weight == 0).any()
    assert model.info["pruning"][-1]["sparsity"] == pytest.approx(rate, abs=0.01)
    sample(model)


def test_magnitude_removes_the_smallest_weights_globally():
    model = make_model()
    original = {r.name: r.tensor.detach().clone() for r in _common.prunable_weights(model.net)}
    MagnitudePruner().prune(model, 0.5, make_ctx())
    removed, kept = [], []
    for r in _common.prunable_weights(model.net):
        w = original[r.name].abs()
        zero = r.tensor == 0
        removed.append(w[zero])
        kept.append(w[~zero])
    assert torch.cat(removed).max() <= torch.cat(kept).min()


def test_random_pruning_depends_only_on_the_generator():
    def masks(seed: int) -> list[torch.Tensor]:
        model = make_model()
        RandomPruner().prune(model, 0.5, make_ctx(seed))
        return [r.tensor == 0 for r in _common.prunable_weights(model.net)]

    a, b, c = masks(0), masks(0), masks(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_protect_option_extends_the_protected_modules():
    model = make_model()
    attn = copy.deepcopy(model.net.mid_attn.state_dict())
    MagnitudePruner(protect=[*PROTECTED, "mid_attn"]).prune(model, 0.5, make_ctx())
    for k, v in model.net.mid_attn.state_dict().items():
        assert torch.equal(v, attn[k])
    assert _common.weight_sparsity(model.net, [*PROTECTED, "mid_attn"]) == pytest.approx(0.5, abs=0.01)


def test_rate_zero_is_a_no_op_and_bad_rates_are_one_line_errors():
    model = make_model()
    state = copy.deepcopy(model.net.state_dict())
    for cls in (MagnitudePruner, RandomPruner, StructuredPruner, IterativePruner, AttentionHeadPruner):
        cls().prune(model, 0.0, make_ctx())
    assert all(torch.equal(v, state[k]) for k, v in model.net.state_dict().items())
    with pytest.raises(ConfigError, match=r"pruning_rate: 1\.0 is out of range for pruner 'magnitude'"):
        MagnitudePruner().prune(model, 1.0, make_ctx())


# ---------------------------------------------------------------------------- structured


def _gn_and_heads(net: nn.Module) -> list[tuple[str, int]]:
    return [
        (n, m.num_groups if isinstance(m, nn.GroupNorm) else m.num_heads)
        for n, m in net.named_modules()
        if isinstance(m, (nn.GroupNorm, nn.MultiheadAttention))
    ]


def test_structured_removes_channels_physically_and_round_trips():
    model = make_model()
    ctx = make_ctx()
    net = model.net
    x, t, cond = ctx.example_inputs
    params0, macs0 = count_params(net)[0], count_macs(net, ctx.example_inputs)
    groups0 = _gn_and_heads(net)
    StructuredPruner().prune(model, 0.5, ctx)
    params1, macs1 = count_params(net)[0], count_macs(net, ctx.example_inputs)
    # both sides of most layers shrink: between (1-r)^2 and (1-r) of the parameters
    assert 0.2 <= params1 / params0 <= 0.55
    assert macs1 / macs0 <= 0.55
    assert _gn_and_heads(net) == groups0  # groups and heads kept, widths shrink
    assert net.down1.conv1.out_channels == 16 and net.mid_attn.attn.embed_dim == 32
    assert net.mid_attn.attn.head_dim == 8
    # protected: embedding widths, image channels in and out
    assert net.time_embed[2].out_features == 64 and net.class_embed.embedding_dim == 64
    assert net.in_conv.in_channels == 1 and net.out_conv.out_channels == 1
    net.eval()
    with torch.no_grad():
        out = net(x, t, cond)
    assert out.shape == (4, 1, 16, 16)
    tensors, meta = net_state(net)
    torch.manual_seed(99)
    fresh = restore_net(ToyUNet().eval(), tensors, meta)
    with torch.no_grad():
        assert torch.equal(fresh(x, t, cond), out)
    sample(model)
    assert model.info["pruning"][-1]["channels_removed"] == pytest.approx(0.5)


def test_structured_rate_rounds_per_groupnorm_group():
    # 32 channels in 8 groups: chunks of 4, rate 0.3 keeps round(2.8) = 3 per chunk;
    # 64 channels in 8 groups (and 4 heads): chunks of 8 keep round(5.6) = 6
    model = make_model()
    StructuredPruner().prune(model, 0.3, make_ctx())
    assert model.net.down1.conv1.out_channels == 24
    assert model.net.mid1.conv1.out_channels == 48
    assert model.net.mid_attn.attn.embed_dim == 48 and model.net.mid_attn.attn.head_dim == 12


@pytest.mark.parametrize("importance", ["l1", "taylor"])
@pytest.mark.parametrize("global_pruning", [False, True])
def test_structured_importances_run(importance, global_pruning):
    model = make_model()
    ctx = make_ctx()
    params0 = count_params(model.net)[0]
    StructuredPruner(importance=importance, global_pruning=global_pruning).prune(model, 0.5, ctx)
    assert count_params(model.net)[0] < 0.6 * params0
    assert model.info["pruning"][-1]["channels_removed"] == pytest.approx(0.5, abs=0.02)
    assert all(p.grad is None for p in model.net.parameters())
    sample(model)


def test_structured_random_depends_only_on_the_generator():
    def pruned(seed: int) -> dict[str, torch.Tensor]:
        model = make_model()
        StructuredPruner(importance="random").prune(model, 0.5, make_ctx(seed))
        return model.net.state_dict()

    a, b, c = pruned(0), pruned(0), pruned(1)
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert not all(torch.equal(v, c[k]) for k, v in a.items())


# ---------------------------------------------------------------------------- iterative


class CountingFinetune:
    """A fake fine-tune: one real AdamW step on random data; records what it saw."""

    def __init__(self, copy_model: bool = False) -> None:
        self.calls = 0
        self.sparsity: list[float] = []
        self.changed: list[bool] = []
        self.copy_model = copy_model

    def __call__(self, model, steps):  # noqa: ANN001
        self.calls += 1
        if self.copy_model:  # a fine-tune may hand back another object
            model = model.copy()
        net = model.net
        before = [p.detach().clone() for p in net.parameters()]
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
        g = torch.Generator().manual_seed(self.calls)
        x = torch.randn(8, 1, 16, 16, generator=g)
        t = torch.randint(0, 50, (8,), generator=g)
        y = torch.randint(0, 11, (8,), generator=g)
        loss = (net(x, t, y) - torch.randn(8, 1, 16, 16, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        self.changed.append(any(not torch.equal(a, b) for a, b in zip(before, net.parameters())))
        with torch.no_grad():
            net(x, t, y)  # refresh the masked weights
        self.sparsity.append(_common.weight_sparsity(net))
        return model


@pytest.mark.parametrize("copy_model", [False, True])
def test_iterative_reaches_the_rate_and_keeps_zeros_through_finetuning(copy_model):
    ft = CountingFinetune(copy_model)
    model = make_model()
    model = IterativePruner(rounds=3, finetune_steps=5).prune(model, 0.6, make_ctx(finetune=ft))
    assert ft.calls == 3 and all(ft.changed)
    # cumulative linear targets 0.2, 0.4, 0.6 (not compounded), held during fine-tuning
    assert ft.sparsity == pytest.approx([0.2, 0.4, 0.6], abs=0.01)
    assert _common.weight_sparsity(model.net) == pytest.approx(0.6, abs=0.01)
    keys = set(model.net.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)  # masks made permanent
    sample(model)


def test_iterative_without_final_finetune_and_with_the_real_finetune_loop():
    ft = CountingFinetune()
    model = make_model()
    IterativePruner(rounds=2, finetune_steps=1, finetune_after=False).prune(model, 0.5, make_ctx(finetune=ft))
    assert ft.calls == 1

    model = make_model()
    ctx = make_ctx()
    train_ctx = TrainContext(device="cpu", generator=torch.Generator().manual_seed(0), seed=0)
    ctx.finetune = lambda m, steps: finetune(
        m, ctx.calibration.images, ctx.calibration.conditions, steps, train_ctx, batch_size=8
    )
    model = IterativePruner(rounds=2, finetune_steps=2).prune(model, 0.5, ctx)
    assert model.info["finetune_steps"] == 4
    assert _common.weight_sparsity(model.net) == pytest.approx(0.5, abs=0.01)


def test_iterative_options_are_validated():
    with pytest.raises(ConfigError, match="rounds must be >= 1"):
        IterativePruner(rounds=0)
    with pytest.raises(ConfigError, match=r"pruners.structured.importance: 'l3' is not valid; valid: 'l1', 'l2'"):
        StructuredPruner(importance="l3")


# ---------------------------------------------------------------------------- heads


def test_heads_to_remove_rounds_half_up_and_keeps_one():
    assert [heads_to_remove(4, r) for r in (0.0, 0.1, 0.125, 0.3, 0.5, 0.6, 0.7, 0.9, 0.99)] == [
        0, 0, 1, 1, 2, 2, 3, 3, 3,
    ]
    assert heads_to_remove(1, 0.9) == 0


@pytest.mark.parametrize("importance", ["l1", "random"])
def test_attention_heads_removes_half_the_heads_physically(importance):
    model = make_model()
    mha = model.net.mid_attn.attn
    others = {k: v.clone() for k, v in model.net.state_dict().items() if not k.startswith("mid_attn.attn")}
    total0 = count_params(model.net)[0]
    AttentionHeadPruner(importance=importance).prune(model, 0.5, make_ctx())
    dead = model.info["pruning"][-1]["heads_removed"]["mid_attn.attn"]
    assert len(dead) == 2 and set(dead) <= {0, 1, 2, 3}
    pruned = model.net.mid_attn.attn
    assert isinstance(pruned, HeadPrunedAttention) and pruned.num_heads == 2 and pruned.embed_dim == 64
    kept = [h for h in range(4) if h not in dead]
    assert torch.equal(pruned.out_proj.weight, torch.cat([mha.out_proj.weight[:, h * 16 : (h + 1) * 16] for h in kept], 1))
    e, d = mha.embed_dim, mha.head_dim
    per_head = 4 * d * e + 3 * d  # q/k/v rows, their biases and out_proj columns
    assert count_params(model.net)[0] == total0 - 2 * per_head
    assert all(torch.equal(v, others[k]) for k, v in model.net.state_dict().items() if k in others)
    sample(model)


def test_attention_heads_l1_removes_the_weakest_heads():
    model = make_model()
    mha = model.net.mid_attn.attn
    with torch.no_grad():
        for h, scale in enumerate([1.0, 0.01, 1.0, 0.02]):
            mha.out_proj.weight[:, h * 16 : (h + 1) * 16] *= scale
            for p in range(3):
                mha.in_proj_weight[p * 64 + h * 16 : p * 64 + (h + 1) * 16] *= scale
    AttentionHeadPruner().prune(model, 0.5, make_ctx())
    assert model.info["pruning"][-1]["heads_removed"] == {"mid_attn.attn": [1, 3]}


# ---------------------------------------------------------------------------- registration


def test_all_five_pruners_are_registered_through_the_hook():
    import plugins.pruning

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(plugins.pruning)
    found: dict[str, type] = {}
    pm.hook.bench_register_pruners(register=lambda cls: found.setdefault(cls.name, cls))
    assert sorted(found) == ["attention_heads", "iterative", "magnitude", "random", "structured"]
    assert found["structured"].removes_structure and not found["magnitude"].removes_structure
    assert found["attention_heads"].removes_structure


# ---------------------------------------------------------------------------- the real UNet


@pytest.fixture
def unet_family():
    unet = pytest.importorskip("plugins.models.unet")
    return unet.UNetFamily()


def _digits_stub() -> SimpleNamespace:
    return SimpleNamespace(name="digits", num_classes=10, image_size=16, channels=1)


def test_structured_on_the_real_unet_round_trips_through_the_family(unet_family):
    dataset = _digits_stub()
    torch.manual_seed(0)
    model = unet_family.build(dataset)
    ctx = make_ctx()
    params0 = count_params(model.net)[0]
    StructuredPruner().prune(model, 0.5, ctx)
    assert count_params(model.net)[0] < 0.4 * params0
    tensors, meta = unet_family.state(model)
    torch.manual_seed(1)
    restored = unet_family.restore(tensors, meta, dataset)
    model.net.eval()
    with torch.no_grad():
        assert torch.equal(restored.net(*ctx.example_inputs), model.net(*ctx.example_inputs))
    assert torch.equal(sample(restored), sample(model))


def _valid_widths(net: nn.Module) -> bool:
    return all(
        m.num_channels % m.num_groups == 0 if isinstance(m, nn.GroupNorm) else m.embed_dim % m.num_heads == 0
        for m in net.modules()
        if isinstance(m, (nn.GroupNorm, nn.MultiheadAttention))
    )


@pytest.mark.parametrize("global_pruning", [False, True])
def test_structured_real_unet_skip_concatenations_keep_norm_groups_valid(unet_family, global_pruning):
    # the default unet (28/56 channels) normalises skip concatenations whose parts are
    # pruned by different groups: they share one chunk width, so the total stays valid
    torch.manual_seed(0)
    model = unet_family.build(_digits_stub())
    groups0 = _gn_and_heads(model.net)
    StructuredPruner(global_pruning=global_pruning).prune(model, 0.5, make_ctx())
    assert _gn_and_heads(model.net) == groups0 and _valid_widths(model.net)
    removed = model.info["pruning"][-1]["channels_removed"]
    if global_pruning:  # the share is met over all channels
        assert removed == pytest.approx(0.5, abs=0.01)
    else:  # chunks of 7 channels keep 4 (3/7 removed), chunks of 14 keep 7
        assert 3 / 7 - 1e-9 <= removed <= 0.5


def test_structured_falls_back_to_strict_divisibility(unet_family, monkeypatch, caplog):
    from plugins.pruning import structured

    # without chunk sharing, a concatenation GroupNorm ends up indivisible
    monkeypatch.setattr(structured, "_share_chunks", lambda plans: [[p] for p in plans])
    torch.manual_seed(0)
    model = unet_family.build(_digits_stub())
    params0 = count_params(model.net)[0]
    with caplog.at_level("WARNING", logger="plugins.pruning.structured"):
        StructuredPruner().prune(model, 0.5, make_ctx())
    assert "retrying with strict group divisibility" in caplog.text
    assert _valid_widths(model.net) and count_params(model.net)[0] < params0
    sample(model)


@pytest.mark.parametrize("cls", [MagnitudePruner, AttentionHeadPruner])
def test_unstructured_and_heads_on_the_real_unet(unet_family, cls):
    torch.manual_seed(0)
    model = unet_family.build(_digits_stub())
    before = protected_state(model.net)
    cls().prune(model, 0.5, make_ctx())
    after = model.net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    if cls is MagnitudePruner:
        assert _common.weight_sparsity(model.net) == pytest.approx(0.5, abs=0.01)
    else:
        removed = model.info["pruning"][-1]["heads_removed"]
        assert removed and all(len(v) == 2 for v in removed.values())
    sample(model)


def test_ctx_loss_is_the_seeded_denoising_loss():
    model, ctx = make_model(), make_ctx(seed=3)
    batch = ctx.calibration
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, model.num_timesteps, (16,), generator=g)
    noise = torch.randn(batch.images.shape, generator=g)
    cond = model.encode_conditions(batch.conditions)
    expected = ((model.predict_noise(model.add_noise(batch.images, noise, t), t, cond) - noise) ** 2).mean()
    loss = ctx.loss(model, batch)
    torch.testing.assert_close(loss, expected)
    loss.backward()  # with its graph, ready for gradients
    assert all(p.grad is not None for p in model.net.parameters() if p.requires_grad)
    assert make_ctx(seed=3).loss(model, batch).item() == pytest.approx(loss.item())  # same seed, same loss


def test_ctx_calibration_batches_slice_the_calibration_batch_in_order():
    ctx = make_ctx()
    batches = list(ctx.calibration_batches(6))
    assert [len(b.images) for b in batches] == [6, 6, 4]
    assert torch.equal(torch.cat([b.images for b in batches]), ctx.calibration.images)
    assert torch.equal(torch.cat([b.conditions.labels for b in batches]), ctx.calibration.conditions.labels)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(ctx.calibration_batches(0))


def test_ctx_calibration_may_be_loaded_on_first_access():
    loads = []

    def load() -> ImageBatch:
        loads.append(1)
        return ImageBatch(torch.zeros(2, 1, 16, 16), Conditions(labels=torch.tensor([1, 2])))

    ctx = PruneContext(calibration=load, device="cpu", generator=torch.Generator(), finetune=lambda m, s: m)
    assert loads == []
    assert ctx.calibration.images.shape[0] == 2 and ctx.calibration.images.shape[0] == 2
    assert loads == [1]
