"""Brightness gap: how far the samples' mean intensity is from the real images'."""

from __future__ import annotations

from typing import ClassVar

from harness import Metric, MetricContext


class BrightnessGap(Metric):
    """Absolute difference of mean pixel intensity, samples vs real images (0 = same).

    ``|mean(samples) - mean(real)|`` over every pixel, images in [0, 1]. A cheap check
    that a compressed model has not drifted to washed-out or dark images.
    """

    name = "brightness_gap"
    higher_is_better = False
    requires: ClassVar[frozenset[str]] = frozenset({"samples", "real_images"})

    def compute(self, ctx: MetricContext) -> float:
        return float((ctx.samples.float().mean() - ctx.real_images.float().mean()).abs())
