"""Built-in metrics plugins (registered through the `bench` entry-point group)."""

from __future__ import annotations

from harness import hookimpl


@hookimpl
def bench_register_metrics(register):  # noqa: ANN001, ANN201 - signature fixed by the hook spec
    """Register the built-in metrics; modules are imported here, not at import time."""
    from plugins.metrics import (
        clip_score,
        feature_distance,
        fid,
        fid_digits,
        label_accuracy,
        lpips_metric,
        timing,
    )

    for cls in (
        fid_digits.FIDDigits,
        label_accuracy.LabelAccuracy,
        feature_distance.FeatureDistance,
        timing.GenerationTime,
        timing.PeakMemory,
        fid.FID,
        clip_score.CLIPScore,
        lpips_metric.LPIPS,
    ):
        register(cls)

    from plugins.metrics.trajectory import TRAJECTORY_METRICS
    from plugins.models.synthetic import SyntheticQuality

    for cls in (*TRAJECTORY_METRICS, SyntheticQuality):
        register(cls)

    from plugins.metrics.distribution import DISTRIBUTION_METRICS
    from plugins.metrics.visual import VISUAL_METRICS

    for cls in DISTRIBUTION_METRICS:
        register(cls)

    for cls in VISUAL_METRICS:
        register(cls)
