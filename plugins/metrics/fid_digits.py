"""``fid_digits``: Frechet distance of digit-classifier features (the embedded FID)."""

from __future__ import annotations

from typing import ClassVar

from harness import Metric, MetricContext


class FIDDigits(Metric):
    """Frechet distance between digit-classifier features of the samples and of the real digits.

    fid_digits = ||mu_s - mu_r||^2 + Tr(C_s + C_r - 2 (C_s C_r)^(1/2)), where (mu_s, C_s)
    are the mean and covariance of the classifier's penultimate-layer features (64 dims)
    of the cell's samples and (mu_r, C_r) those of the dataset's real ``reference``
    split (``plugins/metrics/_frechet.py``, the same function as ``fid``).
    The classifier (``plugins/metrics/digits_classifier.py``) and the reference
    statistics are cached artifacts. 0 for a sample set distributed like the real
    digits; lower is better. Like FID it is biased upwards for small sample counts, so
    compare values at equal ``num_samples``.
    """

    name = "fid_digits"
    higher_is_better = False
    requires: ClassVar[frozenset[str]] = frozenset({"samples"})

    def compute(self, ctx: MetricContext) -> float:
        from plugins.metrics._frechet import feature_stats, frechet_distance
        from plugins.metrics.digits_classifier import get_classifier, get_reference_stats

        clf = get_classifier(ctx)
        mu_r, sigma_r = get_reference_stats(ctx, clf)
        mu_s, sigma_s = feature_stats(clf.features(ctx.samples, ctx.device))
        return frechet_distance(mu_s, sigma_s, mu_r, sigma_r)
