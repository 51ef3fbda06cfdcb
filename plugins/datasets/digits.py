"""``digits``: scikit-learn's bundled handwritten digits (works offline).

1,797 real 8x8 grey images (UCI optical recognition of handwritten digits, values
0..16) in 10 classes, resized to ``image_size`` with bilinear interpolation (antialiased
when shrinking), scaled to [-1, 1], one channel. The train / reference split is
stratified by class and fixed by ``split_seed``: the same options always give the same
images in the same order. The conditions of generated samples are balanced labels
that depend only on the seeds and the sample index (see ``sample_conditions``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from harness import Conditions, Dataset, ImageBatch

SPLITS = ("train", "reference")
PROMPT = "a handwritten digit {}"
#: version of ``sample_conditions`` (``Dataset.conditions_version``, in the sample sets' keys):
#: 2 = per-block permutations, prefix-stable in n (1: one shuffle of ``i % 10`` over all n)
CONDITIONS_VERSION = 2


@dataclass
class Options:
    """Options of the ``digits`` dataset (``[dataset]`` keys)."""

    image_size: int = field(default=16, metadata={"help": "side length after resizing the 8x8 originals"})
    reference_fraction: float = field(default=0.2, metadata={"help": "share of each class held out as reference"})
    split_seed: int = field(default=0, metadata={"help": "seed of the fixed stratified split"})

    def __post_init__(self) -> None:
        if self.image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {self.image_size}")
        if not 0.0 < self.reference_fraction < 1.0:
            raise ValueError(f"reference_fraction must be in (0, 1), got {self.reference_fraction}")


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 handwritten digits, resized (default 16x16), 10 classes."""

    name = "digits"
    Options = Options
    channels = 1
    num_classes = 10
    conditions_version = CONDITIONS_VERSION
    default_features = "digits"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.image_size = int(self.options.image_size)
        self._splits: dict[str, ImageBatch] | None = None

    @staticmethod
    def prompt(label: int) -> str:
        return PROMPT.format(int(label))

    def _load_all(self) -> dict[str, ImageBatch]:
        if self._splits is not None:
            return self._splits
        from sklearn.datasets import load_digits

        raw = load_digits()
        images = torch.as_tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8
        labels = torch.as_tensor(raw.target, dtype=torch.long)
        if self.image_size != images.shape[-1]:
            images = F.interpolate(
                images,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=self.image_size < images.shape[-1],
            )
        images = (images.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()

        gen = torch.Generator().manual_seed(int(self.options.split_seed))
        ref_idx: list[torch.Tensor] = []
        train_idx: list[torch.Tensor] = []
        for c in range(self.num_classes):
            idx = torch.nonzero(labels == c).flatten()
            idx = idx[torch.randperm(idx.numel(), generator=gen)]
            n_ref = int(round(self.options.reference_fraction * idx.numel()))
            ref_idx.append(idx[:n_ref])
            train_idx.append(idx[n_ref:])
        splits = {}
        for name, parts in (("train", train_idx), ("reference", ref_idx)):
            sel = torch.sort(torch.cat(parts)).values
            lab = labels[sel]
            splits[name] = ImageBatch(
                images=images[sel],
                conditions=Conditions(labels=lab, prompts=[self.prompt(v) for v in lab.tolist()]),
            )
        self._splits = splits
        return splits

    def load(self, split: str) -> ImageBatch:
        """Images (N x 1 x S x S in [-1, 1]) with labels and prompts of ``split``.

        Returns copies, so callers may modify them.
        """
        if split not in SPLITS:
            raise ValueError(f"digits has no split {split!r}; valid: {', '.join(SPLITS)}")
        batch = self._load_all()[split]
        return ImageBatch(
            images=batch.images.clone(),
            conditions=Conditions(
                labels=batch.conditions.labels.clone(),  # type: ignore[union-attr]
                prompts=list(batch.conditions.prompts or []),
            ),
        )

    def sample_conditions(self, n: int, generator: torch.Generator) -> Conditions:
        """Balanced labels with their prompts: each block of 10 samples is a permutation of
        the 10 classes drawn from ``generator``, block after block.

        Sample i's label depends only on the generator's seed and i, not on ``n`` (the
        first k labels are the same for every ``n >= k``), like the per-sample noise.
        """
        blocks = -(-int(n) // self.num_classes)
        perms = [torch.randperm(self.num_classes, generator=generator) for _ in range(blocks)]
        labels = torch.cat(perms)[:n] if perms else torch.zeros(0, dtype=torch.long)
        return Conditions(labels=labels, prompts=[self.prompt(v) for v in labels.tolist()])
