"""``feature_distance``: paired perceptual distance in digit-classifier features (the LPIPS analogue)."""

from __future__ import annotations

from typing import ClassVar

from harness import Metric, MetricContext


class FeatureDistance(Metric):
    """Mean distance between unit-normalised classifier features of each sample and its reference.

    feature_distance = (1/N) sum_i || f(x_i)/||f(x_i)|| - f(r_i)/||f(r_i)|| ||_2, where x_i
    is sample i of the cell, r_i the reference model's sample for the same noise and
    condition (``ctx.reference_samples``), and f the penultimate-layer features (64
    dims) of the cached digit classifier. Normalising each feature vector to unit
    length, as LPIPS normalises its channels, makes the distance insensitive to
    feature magnitude; the value is sqrt(2 - 2 cos(f(x_i), f(r_i))) averaged, in
    [0, 2]. 0 when the samples equal the reference's; lower is better.
    """

    name = "feature_distance"
    higher_is_better = False
    requires: ClassVar[frozenset[str]] = frozenset({"samples", "reference_samples"})

    def compute(self, ctx: MetricContext) -> float:
        import numpy as np

        from plugins.metrics._common import check_paired
        from plugins.metrics.digits_classifier import get_classifier

        check_paired(ctx, self.name)
        clf = get_classifier(ctx)
        a = clf.features(ctx.samples, ctx.device)
        b = clf.features(ctx.reference_samples, ctx.device)
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return float(np.linalg.norm(a - b, axis=1).mean())
