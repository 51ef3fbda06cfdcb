"""Contract tests for plugin authors (a pytest plugin shipped with diffbench).

diffbench registers this module as a pytest plugin (entry point ``pytest11``), so in any
project with diffbench installed a test module can check its own classes::

    from harness.testing import MetricContract, PrunerContract

    class TestMyPruner(PrunerContract):
        pruner_cls = MyPruner          # options: pruner_options = {...}

    class TestMyMetric(MetricContract):
        metric_cls = MyMetric

Every built-in plugin runs through the same checks (``tests/test_contracts.py``). The
checks use the ``synthetic`` stand-in model and dataset, so they need no training and no
downloads; a metric that needs pretrained weights it cannot find is skipped with the
reason. Fixtures: ``bench_registry`` (a fresh registry of the installed plugins),
``bench_tmp_cache`` (an empty artifact cache).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest


@pytest.fixture
def bench_registry() -> Any:
    """A fresh registry of every installed plugin (no state shared between tests)."""
    from harness.registry import build_registry, get_plugin_manager

    return build_registry(get_plugin_manager())


@pytest.fixture
def bench_tmp_cache(tmp_path: Path) -> Any:
    """An empty artifact cache in a temporary folder."""
    from harness.cache import ArtifactCache

    return ArtifactCache(tmp_path / ".cache")


# ----------------------------------------------------------------------------- helpers


def _builtin(kind: str, name: str) -> Any:
    # through the registry, as a third party would: harness never imports plugins/
    from harness.registry import build_registry

    return build_registry().get(kind, name)


def tiny_dataset(image_size: int = 16) -> Any:
    """The synthetic dataset at ``image_size`` (64 seeded images, 10 labels)."""
    return _builtin("datasets", "synthetic")(image_size=image_size, num_images=64)


def tiny_model(image_size: int = 16, hidden: int = 16, seed: int = 0) -> Any:
    """A synthetic stand-in DiffusionModel with real conv weights."""
    return _builtin("models", "synthetic")(hidden=hidden, seed=seed).build(tiny_dataset(image_size))


def prune_context(model: Any, seed: int = 0) -> Any:
    """A PruneContext over the synthetic dataset; ``finetune`` takes real optimizer steps."""
    import torch

    from harness.base import ImageBatch, PruneContext

    data = tiny_dataset(model.sample_shape[-1]).load("train")

    def finetune(m: Any, steps: int) -> Any:
        params = [p for p in m.net.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(int(steps)):
            x0 = data.images[:8]
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.zeros(8, dtype=torch.long)
            loss = ((m.predict_noise(m.add_noise(x0, noise, t), t, m.encode_conditions(data.conditions.slice(0, 8)))
                     - noise) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return m

    return PruneContext(
        calibration=ImageBatch(data.images[:16], data.conditions.slice(0, 16)),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        finetune=finetune,
        example_inputs=model.example_inputs(2),
        seed=seed,
    )


def metric_context(cache: Any = None, n: int = 16, image_size: int = 16, seed: int = 0) -> Any:
    """A MetricContext with every field filled from the synthetic model (same noise)."""
    import torch

    from harness.base import MetricContext
    from harness.planner import Cell, VariantSpec

    ds = tiny_dataset(image_size)
    model = tiny_model(image_size)
    ref = tiny_model(image_size, hidden=16, seed=1)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, image_size, image_size, generator=gen)
    cond = ds.sample_conditions(n, gen)
    out = model.sample(noise, cond, cfg_scale=1.0, sampler="ddim", steps=4, record_trajectory=True)
    ref_out = ref.sample(noise, cond, cfg_scale=1.0, sampler="ddim", steps=4, record_trajectory=True)
    axes = {"size_factor": None, "pruning_method": "none", "pruning_rate": 0.0, "cfg_scale": 1.0,
            "sampler": "ddim", "steps": 4, "seed": 0}
    cell = Cell(axes, "contract", "contract[]", VariantSpec(None, "none", 0.0), {"num_samples": n}, {})
    return MetricContext(
        cell=cell,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        dataset=ds,
        samples=out.images,
        reference_samples=ref_out.images,
        trajectories=out.trajectory,
        reference_trajectories=ref_out.trajectory,
        timesteps=out.timesteps,
        real_images=(ds.load("reference").images + 1) / 2,
        conditions=cond,
        model=model,
        reference_model=ref,
        sampling_stats={"generation_time": 0.01, "peak_memory_mb": 100.0},
        cache=cache,
    )


def _skip_if_missing_weights(exc: BaseException) -> None:
    from harness.errors import MissingFileError

    if isinstance(exc, MissingFileError):
        pytest.skip(f"needs pretrained weights: {exc}")


# ----------------------------------------------------------------------------- contracts


class _NameContract:
    plugin_kind: ClassVar[str] = ""

    def _cls(self) -> type:
        raise NotImplementedError

    def test_has_name_and_docstring(self) -> None:
        cls = self._cls()
        assert isinstance(cls.name, str) and cls.name, f"{cls.__name__} needs a class attribute 'name'"
        assert cls.describe(), f"{cls.__name__} needs a docstring whose first line says what it is for"

    def test_options_are_listable(self) -> None:
        from harness.base import option_fields

        fields = option_fields(getattr(self._cls(), "Options", None))
        assert all(len(f) == 4 for f in fields)


class PrunerContract(_NameContract):
    """Checks of the Pruner contract; set ``pruner_cls`` (and ``pruner_options``)."""

    pruner_cls: ClassVar[type] = None  # type: ignore[assignment]
    pruner_options: ClassVar[dict[str, Any]] = {}
    rates: ClassVar[tuple[float, ...]] = (0.3, 0.7)

    def _cls(self) -> type:
        return self.pruner_cls

    def make_model(self) -> Any:
        """The model pruned by the checks: the synthetic stand-in (two convs, an embedding).

        Override it for a pruner whose target is absent from the stand-in (attention
        heads, channels not tied to a protected embedding); return a fresh model per call.
        """
        return tiny_model()

    def _prune(self, rate: float, seed: int = 0) -> tuple[Any, Any]:
        model = self.make_model()
        pruned = self.pruner_cls(**self.pruner_options).prune(model, rate, prune_context(model, seed))
        return model, pruned

    def test_pruned_model_still_runs(self) -> None:
        import torch

        from harness.base import DiffusionModel

        for rate in self.rates:
            _, pruned = self._prune(rate)
            assert isinstance(pruned, DiffusionModel)
            x, t, c = pruned.example_inputs(2)
            with torch.no_grad():
                out = pruned.net(x, t, c)
            assert out.shape == x.shape
            assert torch.isfinite(out).all()

    def test_removes_something(self) -> None:
        from harness.modelio import count_params

        before = count_params(self.make_model().net)
        _, pruned = self._prune(max(self.rates))
        after = count_params(pruned.net)
        assert after[1] < before[1], "pruning at a high rate left every parameter in place"

    def test_deterministic_given_generator(self) -> None:
        import torch

        _, a = self._prune(0.5, seed=1)
        _, b = self._prune(0.5, seed=1)
        for (na, pa), (_, pb) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
            assert torch.equal(pa, pb), f"{na} differs between two runs with the same generator"


class MetricContract(_NameContract):
    """Checks of the Metric contract; set ``metric_cls`` (and ``metric_options``)."""

    metric_cls: ClassVar[type] = None  # type: ignore[assignment]
    metric_options: ClassVar[dict[str, Any]] = {}

    def _cls(self) -> type:
        return self.metric_cls

    def test_declares_requirements(self) -> None:
        from harness.base import METRIC_REQUIREMENTS

        cls = self.metric_cls
        assert isinstance(cls.higher_is_better, bool)
        assert isinstance(cls.cached, bool), "cached must be a bool (False: no cache entry, see harness.base.Metric)"
        assert isinstance(cls.requires, frozenset) and cls.requires <= METRIC_REQUIREMENTS, (
            f"requires must be a frozenset within {sorted(METRIC_REQUIREMENTS)}"
        )

    def _compute(self, cache: Any) -> list[dict[str, Any]]:
        from harness.metric_values import normalise_metric_result

        ctx = metric_context(cache)
        try:
            result = self.metric_cls(**self.metric_options).compute(ctx)
        except Exception as exc:
            _skip_if_missing_weights(exc)
            raise
        return normalise_metric_result(self.metric_cls.name, result)

    def test_returns_finite_rows(self, bench_tmp_cache: Any) -> None:
        rows = self._compute(bench_tmp_cache)
        assert rows, "compute returned no rows"
        for r in rows:
            assert math.isfinite(r["value"]), r

    def test_deterministic(self, bench_tmp_cache: Any) -> None:
        a = self._compute(bench_tmp_cache)
        b = self._compute(bench_tmp_cache)
        assert [r["metric"] for r in a] == [r["metric"] for r in b]
        for ra, rb in zip(a, b, strict=True):
            assert ra["value"] == pytest.approx(rb["value"], rel=1e-5, abs=1e-6), ra["metric"]


class ModelFamilyContract(_NameContract):
    """Checks of the ModelFamily contract; set ``family_cls`` (and ``family_options``)."""

    family_cls: ClassVar[type] = None  # type: ignore[assignment]
    family_options: ClassVar[dict[str, Any]] = {}
    image_size: ClassVar[int] = 16

    def _cls(self) -> type:
        return self.family_cls

    def _build(self) -> tuple[Any, Any, Any]:
        fam = self.family_cls(**self.family_options)
        ds = tiny_dataset(self.image_size)
        return fam, ds, fam.build(ds)

    def test_samples_in_unit_range(self) -> None:
        import torch

        _, ds, model = self._build()
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(4, *model.sample_shape, generator=gen)
        out = model.sample(noise, ds.sample_conditions(4, gen), cfg_scale=2.0, sampler=self.family_cls.samplers[0],
                           steps=3, record_trajectory=True, generator=torch.Generator().manual_seed(0))
        assert out.images.shape[0] == 4
        assert float(out.images.min()) >= 0.0 and float(out.images.max()) <= 1.0
        assert out.trajectory is not None and out.trajectory.shape[0] == 4  # K + 1 states

    def test_state_round_trip(self) -> None:
        import torch

        fam, ds, model = self._build()
        tensors, meta = fam.state(model)
        restored = fam.restore(tensors, meta, ds)
        x, t, c = model.example_inputs(2)
        with torch.no_grad():
            torch.testing.assert_close(model.net(x, t, c), restored.net(x, t, c))

    def test_student_is_smaller(self) -> None:
        from harness.modelio import count_params

        if not self.family_cls.supports_sizes:
            pytest.skip("family does not support size factors")
        _, _, model = self._build()
        student = model.make_student(0.3)
        assert count_params(student.net)[0] < count_params(model.net)[0]


class DatasetContract(_NameContract):
    """Checks of the Dataset contract; set ``dataset_cls`` (and ``dataset_options``)."""

    dataset_cls: ClassVar[type] = None  # type: ignore[assignment]
    dataset_options: ClassVar[dict[str, Any]] = {}

    def _cls(self) -> type:
        return self.dataset_cls

    def test_splits(self) -> None:
        ds = self.dataset_cls(**self.dataset_options)
        for split in ("train", "reference"):
            batch = ds.load(split)
            imgs = batch.images
            assert imgs.dim() == 4 and imgs.shape[1] == ds.channels
            assert imgs.shape[-1] == ds.image_size and imgs.shape[-2] == ds.image_size
            assert float(imgs.min()) >= -1.0 - 1e-6 and float(imgs.max()) <= 1.0 + 1e-6
            assert len(batch.conditions) == imgs.shape[0]

    def test_conditions_deterministic(self) -> None:
        import torch

        ds = self.dataset_cls(**self.dataset_options)
        a = ds.sample_conditions(20, torch.Generator().manual_seed(3))
        b = ds.sample_conditions(20, torch.Generator().manual_seed(3))
        assert len(a) == 20
        if a.labels is not None:
            assert torch.equal(a.labels, b.labels)
        assert a.prompts == b.prompts


class ExecutorContract(_NameContract):
    """Checks of the Executor contract; set ``executor_cls`` (and ``executor_options``)."""

    executor_cls: ClassVar[type] = None  # type: ignore[assignment]
    executor_options: ClassVar[dict[str, Any]] = {}

    def _cls(self) -> type:
        return self.executor_cls

    def test_runs_every_unit(self) -> None:
        units = [[1, 2], [3], [4, 5, 6]]
        got = list(self.executor_cls(**self.executor_options).run(units, _square_all))
        assert sorted(got) == [1, 4, 9, 16, 25, 36]


def _square_all(unit: list[int]) -> Iterator[int]:
    for x in unit:
        yield x * x


class PlotContract(_NameContract):
    """Checks of the Plot contract; set ``plot_cls`` (and ``plot_options``)."""

    plot_cls: ClassVar[type] = None  # type: ignore[assignment]
    plot_options: ClassVar[dict[str, Any]] = {}

    def _cls(self) -> type:
        return self.plot_cls

    def test_empty_frame_draws_nothing(self, tmp_path: Path) -> None:
        import pandas as pd

        from harness.schema import COLUMNS

        df = pd.DataFrame({c: [] for c in COLUMNS})
        assert self.plot_cls(**self.plot_options).draw(df, tmp_path) == []


CONTRACTS = {
    "pruners": (PrunerContract, "pruner_cls"),
    "metrics": (MetricContract, "metric_cls"),
    "models": (ModelFamilyContract, "family_cls"),
    "datasets": (DatasetContract, "dataset_cls"),
    "executors": (ExecutorContract, "executor_cls"),
    "plots": (PlotContract, "plot_cls"),
}


# ---------------------------------------------------------------------------- diffusers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table (the base alphabet of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tiny_sd_pipeline(folder: Path, seed: int = 0, sample_size: int = 8) -> Path:
    """Save a tiny, randomly initialised Stable Diffusion pipeline of the real classes.

    ``StableDiffusionPipeline`` with a 2-level ``UNet2DConditionModel`` (cross-attention,
    ~0.8M parameters), a 2-level ``AutoencoderKL`` (latents 4 x ``sample_size``^2, images
    8x larger), a 2-layer ``CLIPTextModel`` and a byte-level ``CLIPTokenizer`` built from
    scratch (no merges), and a ``DDIMScheduler`` with SD's betas. Nothing is downloaded;
    ``DiffusionPipeline.from_pretrained(folder, local_files_only=True)`` loads it. For
    tests of diffusers-based plugins (the ``diffusers`` model runs the same code path as
    on Stable Diffusion).
    """
    import json

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tok_dir = folder / "_tokenizer_src"
    tok_dir.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, projection_dim=32,
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"],
            )
        )  # fmt: skip
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=sample_size, in_channels=4,
            out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=8,
        )  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=[16, 32], in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
            latent_channels=4, norm_num_groups=8, sample_size=sample_size * 2,
        )  # fmt: skip
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(str(folder))
    return folder
