"""The contract tests' own stand-in dataset and model, and contexts built from them.

They belong to ``harness.testing``, not to any plugin, so the contract tests run where
the built-in plugins are blocked (``DIFFBENCH_BLOCK_PLUGINS``) or absent: a seeded
dataset of small grey images with 10 labels, and a real (untrained) diffusion model,
:class:`harness.diffusion.ScheduledDiffusionModel` over a two-convolution network with
time and class embeddings, so pruners find real weights and samplers run the real code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.base import Conditions, Dataset, ImageBatch, MetricContext, PruneContext
from harness.diffusion import NoiseSchedule, ScheduledDiffusionModel

#: timesteps of the stand-in model's noise schedule (sampling uses a few of them)
TIMESTEPS = 10


class StandInDataset(Dataset):
    """Seeded grey images (tanh of Gaussian noise) with labels ``i % 10``: the contracts' dataset."""

    name = "stand_in"

    @dataclass
    class Options:
        image_size: int = 16
        num_images: int = 64
        seed: int = 0

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.image_size = self.options.image_size
        self.channels = 1
        self.num_classes = 10

    def load(self, split: str) -> ImageBatch:
        # the reference split differs from the train split: seed + 1
        gen = torch.Generator().manual_seed(self.options.seed + (split == "reference"))
        n, s = self.options.num_images, self.image_size
        images = torch.randn(n, 1, s, s, generator=gen).tanh()
        return ImageBatch(images, self._conditions(n))

    def sample_conditions(self, n: int, generator: torch.Generator) -> Conditions:
        return self._conditions(n)

    @staticmethod
    def _conditions(n: int) -> Conditions:
        labels = torch.arange(n) % 10
        return Conditions(labels=labels, prompts=[f"stand-in {i}" for i in labels.tolist()])


class StandInNet(nn.Module):
    """``eps(x_t, t, label)``: conv -> + time and class embeddings -> tanh -> conv."""

    def __init__(self, channels: int = 1, hidden: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        self.time_embed = nn.Embedding(TIMESTEPS, hidden)
        self.class_embed = nn.Embedding(num_classes + 1, hidden)  # + the null class
        self.out_conv = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(t.long()) + self.class_embed(cond)
        return self.out_conv(torch.tanh(self.inp(x) + emb[:, :, None, None]))

    def ignored_layers(self) -> list[nn.Module]:
        """The embeddings: pruners leave them alone (``ScheduledDiffusionModel.protected_modules``)."""
        return [self.time_embed, self.class_embed]


def tiny_dataset(image_size: int = 16, num_images: int = 64, seed: int = 0) -> StandInDataset:
    """The stand-in dataset: ``num_images`` seeded 1 x ``image_size``^2 images, 10 labels."""
    return StandInDataset(image_size=image_size, num_images=num_images, seed=seed)


def tiny_model(image_size: int = 16, hidden: int = 16, seed: int = 0) -> ScheduledDiffusionModel:
    """The stand-in model: an untrained :class:`StandInNet` (weights from ``seed``), 10 timesteps."""
    gen = torch.Generator().manual_seed(seed)
    net = StandInNet(1, hidden)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)

    def student(size_factor: float) -> ScheduledDiffusionModel:
        return tiny_model(image_size, max(1, round(hidden * size_factor)), seed)

    return ScheduledDiffusionModel(net, NoiseSchedule("cosine", TIMESTEPS), (1, image_size, image_size), 10,
                                   student_builder=student, arch={"hidden": hidden})


def prune_context(model: Any, seed: int = 0) -> PruneContext:
    """A PruneContext over the stand-in dataset; ``finetune`` takes real optimizer steps."""
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


def metric_context(cache: Any = None, n: int = 16, image_size: int = 16, seed: int = 0) -> MetricContext:
    """A MetricContext with every field filled from two stand-in models (same noise)."""
    from harness.config import SamplingSection
    from harness.planner import Cell, SamplingSettings, VariantSpec

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
    settings = {k: v for k, v in SamplingSection(num_samples=n).model_dump().items() if k not in axes}
    cell = Cell(axes, "contract", "contract[]", VariantSpec(None, "none", 0.0), SamplingSettings(**settings), {})
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
