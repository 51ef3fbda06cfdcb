"""Feature mean gap: a metric that gets its features from any registered extractor, by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from harness import Metric, MetricContext, get_feature_extractor, reference_features


class FeatureMeanGap(Metric):
    """Squared distance of the mean features, samples vs real images, unbiased at any n (0 = same means).

    ``||mu_samples - mu_real||^2 / d`` on the extractor's ``kernel_features`` (d: their
    width), estimated as the unbiased MMD^2 with the linear kernel ``k(x, y) = x.y / d``
    (Gretton et al. 2012, "A Kernel Two-Sample Test", JMLR 13, eq. 3): the plug-in
    ``||mean_s - mean_r||^2`` overshoots by ``(tr S_s / n_s + tr S_r / n_r) / d`` (S: the
    covariances), the U-statistic leaves out each vector's product with itself. Its
    expectation does not depend on the number of samples; a value may be slightly
    negative when the means agree. The real images' features come from
    ``harness.reference_features`` (cached per dataset, extractor, options and n), and
    the row names them in ``reference``.
    """

    name = "feature_mean_gap"
    higher_is_better = False
    requires: ClassVar[frozenset[str]] = frozenset({"samples", "real_images"})
    #: bump when what compute returns changes (the extractor's own changes: its version)
    cache_version: ClassVar[str] = "1"

    @dataclass
    class Options:
        features: str = field(default="", metadata={
            "help": "feature extractor (bench list features); '' = the dataset's default_features"})

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        extractor = get_feature_extractor(self.options.features or ctx.dataset.default_features, ctx)
        fake = extractor.kernel_features(extractor(ctx.samples))
        real, label = reference_features(ctx, extractor)
        value = linear_mmd2_unbiased(fake, extractor.kernel_features(real))
        return [{"metric": self.name, "value": value, "reference": label, "num_reference": len(real)}]

    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        """The contract checks run on this package's own extractor: no download, no training."""
        return {"options": {"features": "patch_stats"}}


def linear_mmd2_unbiased(x: Any, y: Any) -> float:
    """Unbiased MMD^2 of rows x (m x d) and y (n x d) with the kernel ``x.y / d``, in float64.

    ``sum_{i != j} x_i.x_j = |sum_i x_i|^2 - sum_i |x_i|^2``, so the U-statistic costs
    O((m + n) d) instead of the m x n kernel matrix.
    """
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"feature_mean_gap needs at least 2 samples and 2 real images, got {len(x)} and {len(y)}")
    x, y = x.double(), y.double()
    m, n, d = len(x), len(y), x.shape[1]
    sx, sy = x.sum(dim=0), y.sum(dim=0)
    xx = (sx @ sx - (x * x).sum()) / (m * (m - 1))
    yy = (sy @ sy - (y * y).sum()) / (n * (n - 1))
    return float((xx + yy - 2 * (sx @ sy) / (m * n)) / d)
