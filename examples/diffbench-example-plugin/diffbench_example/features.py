"""Patch statistics: a feature extractor without a network (brightness layout and local contrast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness import ConfigError, FeatureExtractor

if TYPE_CHECKING:
    import torch

#: ITU-R BT.601 luma weights: RGB -> grey
LUMA = (0.299, 0.587, 0.114)


class PatchStats(FeatureExtractor):
    """Patch statistics: mean and standard deviation of the grey levels in each cell of a grid.

    Images N x C x H x W in [0, 1] become grey (3 channels: ITU-R BT.601 luma, 0.299 R +
    0.587 G + 0.114 B; any other count: the channel mean), then adaptive average pooling
    cuts them into ``grid`` x ``grid`` cells at any image size. Each cell gives its mean
    and its standard deviation ``sqrt(E[x^2] - E[x]^2)``: ``2 * grid^2`` features in
    [0, 1], row-major, the means first. No network and nothing to download;
    deterministic, and each image's features depend on that image only. The values are
    of order 1 per dimension, the scale KID's cubic kernel ``(x.y / d + 1)^3`` assumes,
    so kernel metrics use them unchanged (the default ``kernel_features``).
    """

    name = "patch_stats"

    @dataclass
    class Options:
        grid: int = field(default=4, metadata={"help": "cells per side; the features are 2 x grid^2 wide"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options.grid < 1:
            raise ConfigError(f"features.{self.name}.grid: must be >= 1, got {self.options.grid}")
        self.dim = 2 * self.options.grid ** 2  # the width depends on the options: set on the instance

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        # float64: sqrt(E[x^2] - E[x]^2) of a flat cell stays ~1e-8, not float32's ~3e-4
        x = images.detach().to(self.device, torch.float64)
        if x.shape[1] == 3:
            x = (x * torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        else:
            x = x.mean(dim=1, keepdim=True)
        grid = self.options.grid
        mean = F.adaptive_avg_pool2d(x, grid).flatten(1)
        square = F.adaptive_avg_pool2d(x * x, grid).flatten(1)
        std = (square - mean * mean).clamp_min(0).sqrt()
        return torch.cat([mean, std], dim=1).float().cpu()
