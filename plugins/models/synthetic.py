"""SYNTHETIC model family and metric: a parametric quality curve, not a diffusion model.

The ``synthetic`` model makes the harness testable without training anything: its
"denoiser" is a two-layer convolution (so pruners have real weights to prune and
sparsity, parameter counts and MACs are measured as for any model) and its "samples"
are a fixed function of the initial noise. The ``synthetic_quality`` metric does not
look at the samples at all: it evaluates a parametric curve of the cell's pruning rate,
size factor and CFG scale plus seeded Gaussian noise. It produces the seeds' "expected
relationship" figure and is what the harness-overhead benchmark runs on. Never report
its numbers as measurements.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from harness import (
    Conditions,
    Dataset,
    DiffusionModel,
    ImageBatch,
    Metric,
    MetricContext,
    ModelFamily,
    SampleOutput,
    net_state,
    restore_net,
)


class _TinyNet(nn.Module):
    def __init__(self, channels: int = 1, hidden: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        self.out_conv = nn.Conv2d(hidden, channels, 3, padding=1)
        self.class_embed = nn.Embedding(num_classes + 1, hidden)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x) + self.class_embed(cond)[:, :, None, None])
        return self.out_conv(h)


class SyntheticModel(DiffusionModel):
    """A tiny stand-in model; see the module docstring (SYNTHETIC)."""

    protected_modules = ("class_embed",)

    def __init__(self, net: _TinyNet, shape: tuple[int, int, int], num_classes: int, cost_ms: float) -> None:
        self.net = net
        self.sample_shape = shape
        self.num_classes = num_classes
        self.cost_ms = cost_ms
        self.num_timesteps = 10

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return self.net(x_t, t, cond)

    def null_condition(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.num_classes, dtype=torch.long, device=self.device)

    def encode_conditions(self, conditions: Conditions) -> torch.Tensor:
        if conditions.labels is None:
            return self.null_condition(len(conditions))
        return conditions.labels.to(self.device).long().clamp(0, self.num_classes)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return ((x0 + 1) / 2).clamp(0, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = (1 - t.float() / self.num_timesteps).view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def sample(self, noise: torch.Tensor, conditions: Conditions, *, cfg_scale: float, sampler: str, steps: int,
               cfg_batching: str = "auto", record_trajectory: bool = False,
               generator: torch.Generator | None = None, batch_size: int = 256) -> SampleOutput:
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = noise.to(self.device)
            cond = self.encode_conditions(conditions)
            states = [x]
            for k in range(steps):
                eps = self.net(x, torch.full((x.shape[0],), k, device=x.device), cond)
                x = x - eps / max(steps, 1)
                if record_trajectory:
                    states.append(x)
            # simulated compute, so harness overhead can be measured against real-sized work
            while (time.perf_counter() - t0) * 1000 < self.cost_ms:
                torch.mm(torch.ones(64, 64), torch.ones(64, 64))
        traj = torch.stack(states).cpu() if record_trajectory else None
        return SampleOutput(self.decode(x).cpu(), traj, list(range(steps, 0, -1)) if record_trajectory else None)

    def make_student(self, size_factor: float) -> SyntheticModel:
        hidden = max(1, round(self.net.inp.out_channels * size_factor))
        net = _TinyNet(self.sample_shape[0], hidden, self.num_classes).to(self.device)
        return SyntheticModel(net, self.sample_shape, self.num_classes, self.cost_ms)


class SyntheticFamily(ModelFamily):
    """SYNTHETIC stand-in model (no training; for harness tests and the expected-curve figure)."""

    name = "synthetic"
    trainable = False
    supports_sizes = True
    samplers = ("ddpm", "ddim")

    @dataclass
    class Options:
        hidden: int = field(default=16, metadata={"help": "width of the tiny network"})
        cost_ms: float = field(default=0.0, metadata={"help": "simulated sampling work per cell, in ms"})
        seed: int = field(default=0, metadata={"help": "seed of the random weights"})

        def __post_init__(self) -> None:
            if self.hidden < 1:
                raise ValueError(f"hidden must be >= 1, got {self.hidden}")
            if not (math.isfinite(self.cost_ms) and self.cost_ms >= 0):
                raise ValueError(f"cost_ms must be a finite number >= 0, got {self.cost_ms}")

    def build(self, dataset: Dataset) -> SyntheticModel:
        gen = torch.Generator().manual_seed(self.options.seed)
        net = _TinyNet(dataset.channels, self.options.hidden, dataset.num_classes or 1)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        return SyntheticModel(net, (dataset.channels, dataset.image_size, dataset.image_size),
                              dataset.num_classes or 1, self.options.cost_ms)

    def state(self, model: DiffusionModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = net_state(model.net)
        return tensors, {**meta, "hidden": model.net.inp.out_channels}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], dataset: Dataset) -> SyntheticModel:
        model = self.build(dataset)
        model.net = _TinyNet(dataset.channels, int(meta["hidden"]), dataset.num_classes or 1)
        restore_net(model.net, tensors, meta)
        return model


class SyntheticDataset(Dataset):
    """SYNTHETIC images (seeded Gaussian blobs) with 10 labels, for harness tests."""

    name = "synthetic"

    @dataclass
    class Options:
        image_size: int = 4
        num_images: int = 64
        seed: int = 0

        def __post_init__(self) -> None:
            if self.image_size < 1:
                raise ValueError(f"image_size must be >= 1, got {self.image_size}")
            if self.num_images < 1:
                raise ValueError(f"num_images must be >= 1, got {self.num_images}")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.image_size = self.options.image_size
        self.channels = 1
        self.num_classes = 10

    def load(self, split: str) -> Any:
        gen = torch.Generator().manual_seed(self.options.seed + (split == "reference"))
        n = self.options.num_images
        images = torch.randn(n, 1, self.image_size, self.image_size, generator=gen).tanh()
        labels = torch.arange(n) % 10
        return ImageBatch(images, Conditions(labels=labels, prompts=[f"synthetic {i}" for i in labels.tolist()]))

    def sample_conditions(self, n: int, generator: torch.Generator) -> Conditions:
        labels = torch.arange(n) % 10
        return Conditions(labels=labels, prompts=[f"synthetic {i}" for i in labels.tolist()])


class SyntheticQuality(Metric):
    """SYNTHETIC quality: a parametric curve of pruning rate, size and CFG plus noise.

    ``q = s(rate) * size_factor**size_exponent * g(cfg) + N(0, noise^2)``, with
    ``s(r) = 1 / (1 + exp((r - cliff) / width))`` normalised so s(0) = 1, and
    ``g(c) = exp(-(log1p(c) - log1p(best_cfg))^2 / 2)``. The noise comes from the
    cell's seeded generator mixed with ``seed``. It never looks at the samples.
    """

    name = "synthetic_quality"
    higher_is_better = True
    requires: ClassVar[frozenset[str]] = frozenset({"samples"})

    @dataclass
    class Options:
        noise: float = 0.02
        seed: int = 42
        cliff: float = 0.6
        width: float = 0.08
        size_exponent: float = 0.3
        best_cfg: float = 3.0
        #: raise in compute (deterministically, in any process): exercises error handling
        fail: bool = False

        def __post_init__(self) -> None:
            for name in ("noise", "cliff", "width", "size_exponent", "best_cfg"):
                if not math.isfinite(getattr(self, name)):
                    raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
            if self.noise < 0:
                raise ValueError(f"noise must be >= 0, got {self.noise}")
            if self.width <= 0:
                raise ValueError(f"width must be > 0, got {self.width}")
            if self.best_cfg < 0:
                raise ValueError(f"best_cfg must be >= 0 (a CFG scale), got {self.best_cfg}")

    def compute(self, ctx: MetricContext) -> float:
        o = self.options
        if o.fail:
            raise RuntimeError("synthetic_quality: failing on purpose (fail = true)")
        axes = ctx.cell.axes if ctx.cell is not None else {}
        rate = float(axes.get("pruning_rate") or 0.0)
        size = axes.get("size_factor")
        size = 1.0 if size is None else float(size)
        cfg = float(axes.get("cfg_scale", o.best_cfg))
        s0 = 1 / (1 + math.exp((0 - o.cliff) / o.width))
        s = (1 / (1 + math.exp((rate - o.cliff) / o.width))) / s0
        g = math.exp(-((math.log1p(cfg) - math.log1p(o.best_cfg)) ** 2) / 2)
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=ctx.generator)) + o.seed)
        eps = float(torch.randn((), generator=gen)) * o.noise
        return s * size**o.size_exponent * g + eps
