"""The ``diffusers`` model on a tiny random Stable Diffusion pipeline of the real classes, offline.

``harness.testing.tiny_sd_pipeline`` saves a StableDiffusionPipeline (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel, CLIPTokenizer, DDIMScheduler) with random weights to a temp
folder; the plugin loads it with ``local_files_only`` exactly as it loads Stable Diffusion.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import harness
from harness import runner
from harness.base import Conditions
from harness.errors import ConfigError, MissingFileError
from plugins.models.diffusers_model import DiffusersFamily, fingerprint
from plugins.pruning.magnitude import MagnitudePruner
from plugins.pruning.structured import StructuredPruner
from test_real_datasets import make_coco

PROMPTS = ["a red square", "a blue circle", "a green cat"]


@pytest.fixture
def family(tiny_sd_dir: Path) -> DiffusersFamily:
    return DiffusersFamily(pretrained=str(tiny_sd_dir))


def noise_for(model, n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, *model.sample_shape), generator=torch.Generator().manual_seed(seed))


def sample(model, noise, **kw):
    args = dict(cfg_scale=3.0, sampler="ddim", steps=4, batch_size=None)
    args.update(kw)
    return model.sample(noise, Conditions(prompts=PROMPTS[: len(noise)]), **args)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_samples_images_in_unit_range_deterministically_and_independent_of_batch_size(family) -> None:
    model = family.build(None)
    assert model.sample_shape == (4, 8, 8) and model.resolution == 16
    noise = noise_for(model)
    out = sample(model, noise, record_trajectory=True)
    assert out.images.shape == (3, 3, 16, 16)
    assert float(out.images.min()) >= 0.0 and float(out.images.max()) <= 1.0
    assert out.trajectory.shape == (5, 3, 4, 8, 8)  # x_K .. x_0 for 4 steps
    assert len(out.timesteps) == 4 and out.timesteps == sorted(out.timesteps, reverse=True)
    assert torch.equal(out.trajectory[0], noise)  # DDIM's init_noise_sigma is 1
    again = sample(model, noise, batch_size=1)
    assert torch.allclose(again.images, out.images, atol=1e-5)
    # stochastic samplers: one generator per image, so batch size does not matter either
    a = sample(model, noise, sampler="euler_a", batch_size=1, generator=torch.Generator().manual_seed(5))
    b = sample(model, noise, sampler="euler_a", batch_size=3, generator=torch.Generator().manual_seed(5))
    c = sample(model, noise, sampler="euler_a", batch_size=3, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(a.images, b.images, atol=1e-5) and not torch.allclose(b.images, c.images, atol=1e-4)


def test_cfg_scales_follow_the_harness_convention(family) -> None:
    model = family.build(None)
    noise = noise_for(model)
    uncond = sample(model, noise, cfg_scale=0.0).images
    empty = model.sample(noise, Conditions(prompts=[""] * 3), cfg_scale=1.0, sampler="ddim", steps=4).images
    assert torch.allclose(uncond, empty, atol=1e-6)  # 0 = unconditional only
    cond = sample(model, noise, cfg_scale=1.0).images
    guided = sample(model, noise, cfg_scale=5.0).images
    assert not torch.allclose(cond, guided, atol=1e-4) and not torch.allclose(cond, uncond, atol=1e-4)
    with pytest.raises(ValueError, match="only above 1"):
        sample(model, noise, cfg_scale=0.5)


def test_sampler_axis_picks_the_scheduler_and_default_is_the_checkpoints(family) -> None:
    model = family.build(None)
    assert type(model.scheduler_for("default")).__name__ == "DDIMScheduler"
    assert type(model.scheduler_for("euler")).__name__ == "EulerDiscreteScheduler"
    sample(model, noise_for(model), sampler="euler")
    # sampling with another scheduler does not change what "default" means
    assert type(model.scheduler_for("default")).__name__ == "DDIMScheduler"
    with pytest.raises(ValueError, match="valid:"):
        model.scheduler_for("nope")


def test_noise_prediction_and_forward_process(family) -> None:
    model = family.build(None)
    x0 = model.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert x0.shape == (2, 4, 8, 8)
    noise = torch.randn_like(x0)
    t = torch.tensor([10, 900])
    x_t = model.add_noise(x0, noise, t)
    eps = model.predict_noise(x_t, t, model.encode_conditions(Conditions(prompts=PROMPTS[:2])))
    assert eps.shape == x0.shape and torch.isfinite(eps).all()
    assert model.decode(x0).shape == (2, 3, 16, 16)
    assert model.num_timesteps == 1000


def test_reference_is_pristine_and_not_copied_into_the_cache(family) -> None:
    model = family.build(None)
    tensors, meta = family.state(model)
    assert tensors == {} and meta["pristine"] is True
    restored = family.restore(tensors, meta, None)
    assert restored.net.denoiser is not model.net.denoiser  # a private copy
    assert fingerprint(restored.net.denoiser) == fingerprint(model.net.denoiser)


def test_pruned_variants_round_trip_through_state(family, tiny_sd_dir: Path) -> None:
    from harness.testing import prune_context

    for pruner in (MagnitudePruner(), StructuredPruner()):
        model = family.build(None)
        before = sum(p.numel() for p in model.net.parameters())
        ctx = prune_context(model)
        ctx.example_inputs = model.example_inputs(2)
        pruner.prune(model, 0.5, ctx)
        tensors, meta = family.state(model)
        assert tensors and not meta.get("pristine"), type(pruner).__name__
        restored = family.restore(tensors, meta, None)
        noise = noise_for(model)
        assert torch.allclose(sample(restored, noise).images, sample(model, noise).images, atol=1e-6)
        after = sum(p.numel() for p in restored.net.parameters())
        if pruner.removes_structure:
            assert after < 0.6 * before
        else:
            assert after == before
    # pruning a restored copy never touched the pipeline's pristine denoiser
    assert family.state(family.build(None))[0] == {}


def test_bf16_sampling_runs_on_cpu(tiny_sd_dir: Path) -> None:
    model = DiffusersFamily(pretrained=str(tiny_sd_dir), dtype="bf16").build(None)
    assert model.dtype == torch.bfloat16
    out = sample(model, noise_for(model))
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()


def test_finetune_lowers_the_denoising_loss_on_the_training_images(family, tmp_path: Path) -> None:
    from harness.base import TrainContext
    from plugins.datasets.coco import CocoDataset

    ds = CocoDataset(root=str(make_coco(tmp_path / "coco")), image_size=16, max_items=2, train_items=4)
    model = family.build(ds)
    batch = ds.load("train")
    x0 = model.encode(batch.images)
    cond = model.encode_conditions(batch.conditions)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (len(x0),), generator=g)

    def loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(model.predict_noise(model.add_noise(x0, noise, t), t, cond), noise))

    start = loss()
    opts = DiffusersFamily(pretrained=family.options.pretrained, finetune_lr=1e-3)
    opts.finetune(model, ds, 30, TrainContext(device="cpu", generator=torch.Generator().manual_seed(0), seed=0))
    assert loss() < start
    assert not any(p.requires_grad for p in model.net.parameters())


def test_missing_or_broken_pipeline_is_one_line(tmp_path: Path) -> None:
    # a local folder is checked when the options are validated (exit 2 before any work)
    with pytest.raises(ConfigError) as exc:
        DiffusersFamily(pretrained=str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in one_line(exc) and "model_index.json" in one_line(exc)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as exc:
        DiffusersFamily(pretrained=str(tmp_path / "empty"))
    assert "pretrained" in one_line(exc) and "empty" in one_line(exc)
    with pytest.raises(MissingFileError) as exc:  # HF_HUB_OFFLINE=1: a hub id cannot be fetched
        DiffusersFamily(pretrained="someone/not-cached-model").build(None)
    assert "someone/not-cached-model" in one_line(exc) and "offline" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        DiffusersFamily()
    assert "DIFFBENCH_DIFFUSERS_MODEL" in one_line(exc)
    with pytest.raises(ConfigError):
        DiffusersFamily(pretrained="x", dtype="fp8")


def test_a_pretrained_pipeline_takes_no_training_tables(family) -> None:
    """The DDPM training options are the ``unet``'s: a pipeline is neither trained nor distilled."""
    assert (DiffusersFamily.train_options, DiffusersFamily.distill_options) == (None, None)
    assert family.train_config({}) is None and family.distill_config({}, None) is None
    with pytest.raises(ConfigError) as exc:
        family.train_config({"epochs": 3})
    assert one_line(exc) == "model.train.epochs: model 'diffusers' has no training stage; remove [model.train]"


def test_cli_refuses_a_missing_pipeline_folder_with_exit_2(tmp_path: Path, capsys) -> None:
    from harness.cli import main

    matrix = tmp_path / "m.toml"
    matrix.write_text(f"""
[benchmark]
name = "sd"
[dataset]
name = "synthetic"
[model]
name = "diffusers"
pretrained = "{tmp_path / 'weights' / 'sd15'}"
[metrics]
names = ["generation_time"]
""")
    (tmp_path / "results").mkdir()
    assert main(["run", str(matrix), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pretrained" in err[0] and "sd15" in err[0] and str(matrix) in err[0]


MATRIX = """
[benchmark]
name = "tiny-sd-pruning"
seed = 0

[dataset]
name = "coco"
root = "{coco}"
image_size = 16
max_items = 4
train_items = 0

[model]
name = "diffusers"
pretrained = "{pipe}"

[sampling]
sampler = "ddim"
steps = 3
num_samples = 4
batch_size = 4
warmup = false

[matrix]
pruning_method = ["none", "magnitude", "structured"]
pruning_rate = [0.3, 0.6]
cfg_scale = [7.5]
seed = [0]

[metrics]
names = ["clip_score", "fid", "lpips", "generation_time"]

[metrics.clip_score]
model_name = "ViT-S-32"
pretrained = ""
weights = "{clip}"

[metrics.fid]
weights = "{inception}"

[metrics.lpips]
backbone_weights = "{alexnet}"
"""


def test_pruning_matrix_over_the_tiny_pipeline_runs_end_to_end(
    tmp_path: Path, tiny_sd_dir: Path, small_clip_file: Path, inception_dir: Path, alexnet_file: Path
) -> None:
    coco = make_coco(tmp_path / "coco", ids=tuple(range(1, 9)))
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX.format(coco=coco, pipe=tiny_sd_dir, clip=small_clip_file, inception=inception_dir,
                                    alexnet=alexnet_file))
    summary = runner.run(matrix, [], results_dir=str(tmp_path / "results"), stream=io.StringIO(), interactive=False)
    assert summary.error == 0, summary.errors
    df = harness.load_results(tmp_path / "results")
    assert set(df["status"]) == {"ok"}
    assert set(df["metric"]) >= {"clip_score", "fid", "lpips", "generation_time"}
    assert len(df["cell_id"].unique()) == 5  # reference + 2 methods x 2 rates
    mag = df[(df.pruning_method == "magnitude")].groupby("pruning_rate")["sparsity"].first()
    assert mag[0.3] == pytest.approx(0.3, abs=0.01) and mag[0.6] == pytest.approx(0.6, abs=0.01)
    ref_params = int(df[df.pruning_method == "none"]["num_params"].iloc[0])
    struct = df[df.pruning_method == "structured"].groupby("pruning_rate")[["num_params", "macs"]].first()
    assert struct.loc[0.6, "num_params"] < struct.loc[0.3, "num_params"] < ref_params
    ref_lpips = df[(df.pruning_method == "none") & (df.metric == "lpips")]["value"].iloc[0]
    assert ref_lpips == pytest.approx(0.0, abs=1e-6)  # the reference against itself
    # the reference model's weights were not copied into the cache (only pruned variants)
    again = runner.run(matrix, [], results_dir=str(tmp_path / "results"), stream=io.StringIO(), interactive=False)
    assert again.skipped == again.total


@pytest.mark.parametrize("name, cells, pruned", [("pruning_sd", 42, 20), ("cfg_sweep_sd", 16, 0)])
def test_the_stable_diffusion_matrices_plan_with_local_weights_and_data(
    tmp_path: Path, tiny_sd_dir: Path, name: str, cells: int, pruned: int
) -> None:
    from harness.config import load_matrix
    from harness.planner import plan_cells

    coco = make_coco(tmp_path / "coco", ids=tuple(range(1, 9)))
    matrix = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.toml"
    cfg = load_matrix(matrix, [f'model.pretrained="{tiny_sd_dir}"', f'dataset.root="{coco}"'])
    planned = plan_cells(cfg)
    assert len(planned) == cells
    assert len({c.variant for c in planned if c.axes["pruning_method"] != "none"}) == pruned
    assert cfg.model.name == "diffusers" and {c.axes["steps"] for c in planned} == {25}
