"""The generic diffusion engine: schedules, samplers, CFG batching, training loops."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.base import Conditions, TrainContext
from harness.diffusion import NoiseSchedule, ScheduledDiffusionModel, resolve_cfg_batching, run_sampler
from harness.training import DistillConfig, TrainConfig, distill, evaluate_loss, finetune, train_ddpm

NUM_CLASSES = 3
SHAPE = (1, 6, 6)


class ToyNet(nn.Module):
    """A tiny conditional epsilon net: enough structure for CFG to matter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.class_embed = nn.Embedding(NUM_CLASSES + 1, 8)
        self.time_embed = nn.Embedding(50, 8)
        self.out = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv(x) + (self.class_embed(c) + self.time_embed(t))[:, :, None, None]
        return self.out(torch.tanh(h))


def toy_model(seed: int = 0, schedule: str = "cosine") -> ScheduledDiffusionModel:
    torch.manual_seed(seed)
    return ScheduledDiffusionModel(ToyNet(), NoiseSchedule(schedule, 50), SHAPE, NUM_CLASSES)


def ctx(seed: int = 0) -> TrainContext:
    return TrainContext(device="cpu", generator=torch.Generator().manual_seed(seed), seed=seed)


def toy_data(n: int = 96) -> tuple[torch.Tensor, Conditions]:
    g = torch.Generator().manual_seed(123)
    labels = torch.arange(n) % NUM_CLASSES
    base = torch.linspace(-0.8, 0.8, NUM_CLASSES)[labels].view(n, 1, 1, 1)
    images = (base + 0.05 * torch.randn(n, *SHAPE, generator=g)).clamp(-1, 1)
    return images, Conditions(labels=labels)


def inputs(n: int = 10, seed: int = 0) -> tuple[torch.Tensor, Conditions]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), Conditions(labels=torch.arange(n) % NUM_CLASSES)


# ---------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("T", [50, 1000])
def test_schedule_ends_near_pure_noise(kind: str, T: int) -> None:
    s = NoiseSchedule(kind, T)
    assert s.alpha_bar.dtype == torch.float32 and s.alpha_bar.shape == (T,)
    assert float(s.alpha_bar[-1]) < 0.01
    assert float(s.alpha_bar[0]) > 0.99
    assert torch.all(s.alpha_bar[1:] < s.alpha_bar[:-1])
    assert torch.all((s.betas > 0) & (s.betas <= 0.999))
    assert torch.allclose(s.alphas, 1 - s.betas)


def test_linear_schedule_is_rescaled_for_short_schedules() -> None:
    s = NoiseSchedule("linear", 50)
    assert float(s.betas[0]) == pytest.approx(1e-4 * 20)
    assert float(s.betas[-1]) == pytest.approx(0.02 * 20)


def test_schedule_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="valid: linear, cosine"):
        NoiseSchedule("quadratic", 50)


def test_add_noise_matches_formula() -> None:
    s = NoiseSchedule("cosine", 50)
    x0, noise = torch.randn(4, *SHAPE), torch.randn(4, *SHAPE)
    t = torch.tensor([0, 10, 25, 49])
    expected = s.alpha_bar[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - s.alpha_bar[t]).sqrt().view(-1, 1, 1, 1) * noise
    assert torch.allclose(s.add_noise(x0, noise, t), expected, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 7, 25, 50])
def test_sampling_timesteps_are_evenly_spaced_from_noisy_to_clean(steps: int) -> None:
    ts = NoiseSchedule("cosine", 50).sampling_timesteps(steps)
    assert len(ts) == steps == len(set(ts))
    assert ts[0] == 49 and ts == sorted(ts, reverse=True)
    if steps > 1:
        assert ts[-1] == 0
    with pytest.raises(ValueError, match="steps must be in"):
        NoiseSchedule("cosine", 50).sampling_timesteps(51)


# ---------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_is_deterministic_given_noise_and_generator(sampler: str) -> None:
    model = toy_model()
    noise, cond = inputs()
    kw = dict(cfg_scale=3.0, sampler=sampler, steps=10)
    a = model.sample(noise, cond, generator=torch.Generator().manual_seed(5), **kw).images
    b = model.sample(noise.clone(), cond, generator=torch.Generator().manual_seed(5), **kw).images
    assert a.shape == (10, *SHAPE) and a.device.type == "cpu"
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    c = model.sample(noise, cond, generator=torch.Generator().manual_seed(6), **kw).images
    assert torch.equal(a, c) == (sampler == "ddim")  # only DDPM draws per-step noise


def test_sampling_does_not_touch_global_rng() -> None:
    model = toy_model()
    noise, cond = inputs()
    state = torch.get_rng_state()
    model.sample(noise, cond, cfg_scale=2.0, sampler="ddpm", steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samples_do_not_depend_on_batch_size(sampler: str) -> None:
    model = toy_model()
    noise, cond = inputs(11)
    kw = dict(cfg_scale=2.0, sampler=sampler, steps=8)
    a = model.sample(noise, cond, generator=torch.Generator().manual_seed(1), batch_size=4, **kw).images
    b = model.sample(noise, cond, generator=torch.Generator().manual_seed(1), batch_size=256, **kw).images
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_concat_and_split_cfg_give_the_same_samples(sampler: str) -> None:
    model = toy_model()
    noise, cond = inputs()
    kw = dict(cfg_scale=4.0, sampler=sampler, steps=10, record_trajectory=True)
    a = model.sample(noise, cond, cfg_batching="concat", generator=torch.Generator().manual_seed(2), **kw)
    b = model.sample(noise, cond, cfg_batching="split", generator=torch.Generator().manual_seed(2), **kw)
    assert torch.allclose(a.images, b.images, atol=1e-5)
    assert torch.allclose(a.trajectory, b.trajectory, atol=1e-4)


def test_cfg_changes_samples() -> None:
    model = toy_model()
    noise, cond = inputs()
    a = model.sample(noise, cond, cfg_scale=1.0, sampler="ddim", steps=10).images
    b = model.sample(noise, cond, cfg_scale=5.0, sampler="ddim", steps=10).images
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("cfg_batching", ["concat", "split"])
def test_cfg_scale_one_runs_only_the_conditional_pass(cfg_batching: str) -> None:
    model = toy_model()
    noise, cond = inputs()
    seen: list[torch.Tensor] = []

    def eps_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        seen.append(c.clone())
        return model.predict_noise(x, t, c)

    labels = model.encode_conditions(cond)
    with torch.inference_mode():
        x0, _, _ = run_sampler(
            eps_fn, model.schedule, noise, labels, model.null_condition(10),
            cfg_scale=1.0, sampler="ddim", steps=6, cfg_batching=cfg_batching,
        )
        # the conditional-only sampler: a "null" that equals the condition makes CFG a no-op
        ref, _, _ = run_sampler(
            model.predict_noise, model.schedule, noise, labels, labels,
            cfg_scale=3.0, sampler="ddim", steps=6, cfg_batching="split",
        )
    assert len(seen) == 6 and all(torch.equal(c, labels) for c in seen)
    assert torch.allclose(x0, ref, atol=1e-5)
    images = model.sample(noise, cond, cfg_scale=1.0, sampler="ddim", steps=6, cfg_batching=cfg_batching).images
    assert torch.allclose(images, model.decode(x0), atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_trajectory_runs_from_noise_to_the_decoded_images(sampler: str) -> None:
    model = toy_model()
    noise, cond = inputs(5)
    out = model.sample(
        noise, cond, cfg_scale=2.0, sampler=sampler, steps=7, record_trajectory=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.trajectory is not None and out.trajectory.shape == (8, 5, *SHAPE)
    assert out.trajectory.device.type == "cpu"
    assert out.timesteps == model.schedule.sampling_timesteps(7)
    assert torch.equal(out.trajectory[0], noise)
    assert torch.allclose(model.decode(out.trajectory[-1]), out.images)
    plain = model.sample(noise, cond, cfg_scale=2.0, sampler=sampler, steps=7, generator=torch.Generator().manual_seed(0))
    assert plain.trajectory is None and torch.allclose(plain.images, out.images)


def test_ddpm_with_all_timesteps_and_respaced() -> None:
    model = toy_model(schedule="linear")
    noise, cond = inputs(4)
    for steps in (50, 5):
        out = model.sample(noise, cond, cfg_scale=2.0, sampler="ddpm", steps=steps, generator=torch.Generator())
        assert torch.isfinite(out.images).all()


def test_sampling_rejects_bad_arguments() -> None:
    model = toy_model()
    noise, cond = inputs(4)
    with pytest.raises(ValueError, match="sampler 'euler' is not valid"):
        model.sample(noise, cond, cfg_scale=1.0, sampler="euler", steps=5)
    with pytest.raises(ValueError, match="cfg_batching 'both' is not valid"):
        model.sample(noise, cond, cfg_scale=2.0, sampler="ddim", steps=5, cfg_batching="both")
    with pytest.raises(ValueError, match="4 noise tensors but 3 conditions"):
        model.sample(noise, cond.slice(0, 3), cfg_scale=2.0, sampler="ddim", steps=5)


def test_auto_cfg_batching_depends_on_device() -> None:
    assert resolve_cfg_batching("auto", "cpu") == "split"
    assert resolve_cfg_batching("auto", "cuda") == "concat"
    assert resolve_cfg_batching("concat", "cpu") == "concat"


def test_model_conditions_and_decoding() -> None:
    model = toy_model()
    assert model.num_timesteps == 50
    assert torch.equal(model.null_condition(3), torch.full((3,), NUM_CLASSES))
    assert model.encode_conditions(Conditions(labels=torch.tensor([0, 2]))).dtype == torch.long
    assert torch.equal(model.decode(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match="need labels"):
        model.encode_conditions(Conditions(prompts=["a"]))


# ---------------------------------------------------------------------------- training


def test_train_config_validation_and_distill_epochs() -> None:
    with pytest.raises(ValueError, match="cond_dropout"):
        TrainConfig(cond_dropout=1.5)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    assert DistillConfig().resolved(30).epochs == 15
    assert DistillConfig().resolved(1).epochs == 1
    assert DistillConfig(epochs=4).resolved(30).epochs == 4
    assert DistillConfig().resolved(None).epochs == TrainConfig().epochs // 2


def test_training_lowers_the_loss_and_is_deterministic() -> None:
    images, cond = toy_data()
    losses = []
    states = []
    for _ in range(2):
        model = toy_model()
        before = evaluate_loss(model, images, cond, torch.Generator().manual_seed(9))
        cfg = TrainConfig(epochs=100, batch_size=32, lr=1e-2, max_steps=120, warmup_steps=10)
        train_ddpm(model, images, cond, cfg, ctx())
        after = evaluate_loss(model, images, cond, torch.Generator().manual_seed(9))
        losses.append((before, after))
        states.append({k: v.clone() for k, v in model.net.state_dict().items()})
        assert model.info["train"]["steps"] == 120
        assert model.info["train_epochs"] == 100
    assert losses[0][1] < 0.8 * losses[0][0]
    assert losses[0] == losses[1]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_training_reports_progress() -> None:
    images, cond = toy_data(40)
    events: list[tuple[str, int]] = []

    class Bar:
        def update(self, n: int) -> None:
            events.append(("update", n))

        def close(self) -> None:
            events.append(("close", 0))

    def progress(desc: str, total: int) -> Bar:
        events.append((desc, total))
        return Bar()

    c = TrainContext(device="cpu", generator=torch.Generator().manual_seed(0), seed=0, progress=progress)
    train_ddpm(toy_model(), images, cond, TrainConfig(epochs=3, batch_size=16), c)
    assert events == [("train teacher", 3), ("update", 1), ("update", 1), ("update", 1), ("close", 0)]


def test_distillation_lowers_the_distillation_loss() -> None:
    images, cond = toy_data()
    teacher = toy_model(seed=0)
    train_ddpm(teacher, images, cond, TrainConfig(epochs=100, batch_size=32, lr=1e-2, max_steps=60), ctx())
    student = toy_model(seed=1)
    g = 7
    before = evaluate_loss(student, images, cond, torch.Generator().manual_seed(g), target=teacher)
    distill(student, teacher, images, cond, DistillConfig(batch_size=32, lr=1e-2, max_steps=100), ctx(1))
    after = evaluate_loss(student, images, cond, torch.Generator().manual_seed(g), target=teacher)
    assert after < 0.5 * before
    # epochs defaulted to half of the teacher's recorded epochs
    assert student.info["train_epochs"] == 50


def test_finetune_runs_the_requested_steps_and_learns() -> None:
    images, cond = toy_data()
    model = toy_model()
    before = evaluate_loss(model, images, cond, torch.Generator().manual_seed(3))
    finetune(model, images, cond, 40, ctx(), lr=5e-3)
    after = evaluate_loss(model, images, cond, torch.Generator().manual_seed(3))
    assert model.info["finetune_steps"] == 40
    assert after < before
    assert not model.net.training


def test_ema_warm_up_keeps_short_runs_close_to_the_trained_weights() -> None:
    images, cond = toy_data()
    model = toy_model()
    init = {k: v.clone() for k, v in model.net.state_dict().items()}
    train_ddpm(model, images, cond, TrainConfig(epochs=10, batch_size=32, lr=1e-2, ema_decay=0.9999, max_steps=30), ctx())
    moved = sum(float((model.net.state_dict()[k] - init[k]).abs().sum()) for k in init)
    assert moved > 0 and math.isfinite(moved)
