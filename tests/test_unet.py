"""The ``unet`` model family: shapes, students, (de)serialisation, training."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from harness.base import TrainContext
from harness.cache import ArtifactCache, canonical_json
from harness.diffusion import ScheduledDiffusionModel
from harness.errors import ConfigError
from harness.registry import build_registry, get_plugin_manager
from harness.training import DistillConfig, TrainConfig, evaluate_loss
from plugins.datasets.digits import DigitsDataset
from plugins.models.unet import UNet, UNetConfig, UNetFamily, count_arch_params, size_tier, student_config


@pytest.fixture(scope="module")
def digits() -> DigitsDataset:
    return DigitsDataset()


@pytest.fixture(scope="module")
def teacher(digits: DigitsDataset) -> ScheduledDiffusionModel:
    torch.manual_seed(0)
    return UNetFamily().build(digits)


def ctx(seed: int = 0) -> TrainContext:
    return TrainContext(device="cpu", generator=torch.Generator().manual_seed(seed), seed=seed)


def n_params(model: ScheduledDiffusionModel) -> int:
    return sum(p.numel() for p in model.net.parameters())


def test_registered_through_the_models_hook() -> None:
    import plugins.models

    registry = build_registry(get_plugin_manager(load_entrypoints=False, extra=[plugins.models]))
    assert registry.get("models", "unet") is UNetFamily


def test_default_teacher_shape_and_size(teacher: ScheduledDiffusionModel) -> None:
    assert 0.7e6 < n_params(teacher) < 0.95e6
    assert teacher.sample_shape == (1, 16, 16)
    assert teacher.num_timesteps == 50 and teacher.schedule.kind == "cosine"
    assert len(teacher.net.config.channel_mults) == 3
    heads = {m.num_heads for m in teacher.net.modules() if isinstance(m, nn.MultiheadAttention)}
    assert heads == {4}
    names = dict(teacher.net.named_modules())
    for name in ("time_embed", "class_embed", "out_conv"):
        assert name in names
    assert teacher.net.class_embed.num_embeddings == 11  # 10 digits + the null class
    x, t, c = teacher.example_inputs(3)
    assert teacher.net(torch.randn_like(x), t + 7, c).shape == (3, 1, 16, 16)


@pytest.mark.parametrize("size_factor", [0.05, 0.1, 0.3, 0.5, 1.0])
def test_student_parameter_ratio_is_near_the_size_factor(teacher: ScheduledDiffusionModel, size_factor: float) -> None:
    student = teacher.make_student(size_factor)
    ratio = n_params(student) / n_params(teacher)
    assert ratio == pytest.approx(size_factor, rel=0.15)
    assert student.info["param_ratio"] == pytest.approx(ratio)
    assert student.info["size_factor"] == size_factor
    assert student.info["size_tier"] == size_tier(size_factor)
    assert student.schedule is teacher.schedule
    levels = len(student.net.config.channel_mults)
    assert levels == (2 if size_factor < 0.1 else 3)
    for m in student.net.modules():
        if isinstance(m, nn.MultiheadAttention):
            assert m.embed_dim % m.num_heads == 0
    x, t, c = student.example_inputs(2)
    assert student.net(x, t, c).shape == x.shape


def test_full_size_student_has_the_teachers_shape(teacher: ScheduledDiffusionModel) -> None:
    student = teacher.make_student(1.0)
    assert student.net.config == teacher.net.config
    assert student.net is not teacher.net


def test_size_factor_out_of_range(teacher: ScheduledDiffusionModel) -> None:
    with pytest.raises(ConfigError, match="size_factor: 1.5 is out of range"):
        teacher.make_student(1.5)
    with pytest.raises(ConfigError, match="out of range"):
        student_config(teacher.net.config, 0.0)


def test_size_tiers() -> None:
    assert [size_tier(v) for v in (0.01, 0.099, 0.1, 0.29, 0.3, 0.69, 0.7, 1.0)] == [
        "tiny", "tiny", "small", "small", "medium", "medium", "full", "full"
    ]


def test_count_arch_params_matches_a_real_build() -> None:
    cfg = UNetConfig(base_channels=12, channel_mults=(1, 2), num_heads=2)
    assert count_arch_params(cfg) == sum(p.numel() for p in UNet(cfg).parameters())


def test_state_restore_round_trip_through_the_cache(
    tmp_path, digits: DigitsDataset, teacher: ScheduledDiffusionModel
) -> None:
    family = UNetFamily()
    model = teacher.make_student(0.2)
    model.info["note"] = "kept"
    tensors, meta = family.state(model)
    cache = ArtifactCache(tmp_path)
    art = cache.save("variant", "k1", tensors, meta)
    restored = family.restore(art.tensors, art.meta, digits)
    assert restored.info["note"] == "kept"
    assert restored.schedule.config() == model.schedule.config()
    x, t, c = model.example_inputs(4)
    x = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 10, 30, 49])
    with torch.no_grad():
        assert torch.equal(model.net.eval()(x, t, c), restored.net(x, t, c))
    # a restored model still makes students of the original teacher's size
    assert restored.make_student(0.5).info["teacher_params"] == n_params(teacher)


def test_restore_a_physically_pruned_net(digits: DigitsDataset) -> None:
    """Structured pruning changes shapes; restore rebuilds them from the metadata."""
    tp = pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    family = UNetFamily(base_channels=16)
    model = family.build(digits)
    net = model.net
    pruner = tp.pruner.MetaPruner(
        net,
        model.example_inputs(2),
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=net.ignored_layers(),
        num_heads={m: m.num_heads for m in net.attention_layers()},
    )
    before = n_params(model)
    pruner.step()
    assert n_params(model) < 0.6 * before
    tensors, meta = family.state(model)
    restored = family.restore(tensors, meta, digits)
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    t, c = torch.tensor([1, 20, 45]), torch.tensor([0, 5, 10])
    with torch.no_grad():
        assert torch.equal(net.eval()(x, t, c), restored.net(x, t, c))
    assert n_params(restored) == n_params(model)


def test_sampling_end_to_end(teacher: ScheduledDiffusionModel, digits: DigitsDataset) -> None:
    g = torch.Generator().manual_seed(0)
    cond = digits.sample_conditions(6, g)
    noise = torch.randn(6, 1, 16, 16, generator=g)
    kw = dict(cfg_scale=3.0, sampler="ddim", steps=4, record_trajectory=True)
    a = teacher.sample(noise, cond, cfg_batching="concat", **kw)
    b = teacher.sample(noise, cond, cfg_batching="split", **kw)
    assert a.images.shape == (6, 1, 16, 16)
    assert a.trajectory.shape == (5, 6, 1, 16, 16)
    assert torch.allclose(a.images, b.images, atol=1e-5)


@pytest.fixture(scope="module")
def small_digits() -> DigitsDataset:
    return DigitsDataset(image_size=8)  # native size: training tests stay fast


def test_training_lowers_the_loss(small_digits: DigitsDataset) -> None:
    digits = small_digits
    family = UNetFamily(base_channels=8, channel_mults=(1, 2), num_heads=2)
    torch.manual_seed(0)
    model = family.build(digits)
    ref = digits.load("reference")
    before = evaluate_loss(model, ref.images, ref.conditions, torch.Generator().manual_seed(1))
    family.train_teacher(model, digits, TrainConfig(epochs=10, batch_size=32, max_steps=120), ctx())
    after = evaluate_loss(model, ref.images, ref.conditions, torch.Generator().manual_seed(1))
    assert model.info["train"]["steps"] == 120
    assert after < 0.6 * before


def test_distill_and_finetune(small_digits: DigitsDataset) -> None:
    digits = small_digits
    family = UNetFamily(base_channels=8, channel_mults=(1, 2), num_heads=2)
    torch.manual_seed(0)
    teacher = family.build(digits)
    family.train_teacher(teacher, digits, TrainConfig(epochs=8, batch_size=32, max_steps=30), ctx())
    student = teacher.make_student(0.3)
    ref = digits.load("reference")
    g = 2
    before = evaluate_loss(student, ref.images, ref.conditions, torch.Generator().manual_seed(g), target=teacher)
    family.distill_student(student, teacher, digits, DistillConfig(batch_size=32, max_steps=40), ctx(1))
    after = evaluate_loss(student, ref.images, ref.conditions, torch.Generator().manual_seed(g), target=teacher)
    assert after < before
    assert student.info["train_epochs"] == 4  # half of the teacher's 8
    family.finetune(student, digits, 5, ctx(2))
    assert student.info["finetune_steps"] == 5


def test_build_checks_the_dataset(digits: DigitsDataset) -> None:
    with pytest.raises(ConfigError, match="image_size divisible by 4"):
        UNetFamily().build(DigitsDataset(image_size=10))

    class Unconditional(DigitsDataset):
        num_classes = None

    with pytest.raises(ConfigError, match="class-conditional"):
        UNetFamily().build(Unconditional())


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="num_heads=3 must divide the attention width"):
        UNetFamily(num_heads=3)
    with pytest.raises(ConfigError, match="schedule"):
        UNetFamily(schedule="cosin")
    assert UNetFamily(channel_mults=[1, 2]).options.channel_mults == (1, 2)


def test_models_pickle(teacher: ScheduledDiffusionModel) -> None:
    """Executors may ship models to other processes."""
    import pickle

    clone = pickle.loads(pickle.dumps(teacher))
    x, t, c = teacher.example_inputs(2)
    with torch.no_grad():
        assert torch.equal(clone.net.eval()(x, t, c), teacher.net.eval()(x, t, c))
    assert clone.make_student(0.3).info["param_ratio"] == teacher.make_student(0.3).info["param_ratio"]


# ---------------------------------------------------------------------------- training options

#: the default [model.train] / [model.distill] as they enter the teacher's and the students'
#: cache keys (canonical JSON of ``dataclasses.asdict``). Stored models are found by these:
#: if this test fails, every cached teacher and student would be retrained.
DEFAULT_TRAIN_KEY = (
    '{"batch_size":64,"cond_dropout":0.1,"ema_decay":0.999,"epochs":10,"grad_clip":1,'
    '"lr":0.002,"max_steps":null,"warmup_steps":50,"weight_decay":0}'
)
DEFAULT_DISTILL_KEY = DEFAULT_TRAIN_KEY.replace('"epochs":10', '"epochs":5')


def test_default_training_options_keep_their_cache_keys() -> None:
    family = UNetFamily()
    train = family.train_config({})
    distill = family.distill_config({}, train)
    assert canonical_json(dataclasses.asdict(train)) == DEFAULT_TRAIN_KEY
    assert canonical_json(dataclasses.asdict(distill)) == DEFAULT_DISTILL_KEY
    # the field order is the matrix documentation's and `bench list`'s
    assert [f.name for f in dataclasses.fields(train)] == [
        "epochs", "batch_size", "lr", "cond_dropout", "ema_decay", "weight_decay", "grad_clip", "max_steps",
        "warmup_steps",
    ]
    assert [f.name for f in dataclasses.fields(distill)] == [f.name for f in dataclasses.fields(train)]


def test_the_unet_declares_its_training_options() -> None:
    family = UNetFamily()
    assert (UNetFamily.train_options, UNetFamily.distill_options) == (TrainConfig, DistillConfig)
    train = family.train_config({"epochs": 7, "lr": 1e-3})
    assert (train.epochs, train.lr, train.batch_size) == (7, 1e-3, 64)
    # unset distillation epochs follow the teacher's: half, at least 1
    assert family.distill_config({}, train).epochs == 3
    assert family.distill_config({}, family.train_config({"epochs": 1})).epochs == 1
    assert family.distill_config({"epochs": 4}, train).epochs == 4
    assert family.distill_config({"batch_size": 8}, train) == DistillConfig(epochs=3, batch_size=8)


@pytest.mark.parametrize(
    ("stage", "table", "message"),
    [
        ("train", {"epoch": 3}, "model.train.epoch: unknown option of 'unet training' (did you mean 'epochs'?)"),
        ("distill", {"lr": "fast"}, "model.distill.lr: expected float, got str 'fast'"),
        ("train", {"cond_dropout": 1.0}, "model.train: cond_dropout must be in [0, 1), got 1.0"),
    ],
)
def test_bad_training_options_name_their_table(stage: str, table: dict, message: str) -> None:
    family = UNetFamily()
    with pytest.raises(ConfigError) as info:
        if stage == "train":
            family.train_config(table)
        else:
            family.distill_config(table, family.train_config({}))
    assert str(info.value).startswith(message)
