"""``fid_digits``: Frechet distance of digit-classifier features (the embedded FID), i.e. ``fid`` with ``features = "digits"``."""

from __future__ import annotations

from typing import Any

from plugins.metrics.fid import FID, FIDOptions


class FIDDigits(FID):
    """Frechet distance between digit-classifier features of the samples and of the real digits.

    fid_digits = ||mu_s - mu_r||^2 + Tr(C_s + C_r - 2 (C_s C_r)^(1/2)), where (mu_s, C_s)
    are the mean and covariance of the classifier's penultimate-layer features (64 dims,
    the ``digits`` feature extractor) of the cell's samples and (mu_r, C_r) those of the
    dataset's real ``reference`` split: ``fid`` with ``features = "digits"``, kept as a
    name so that stored results and matrices keep working. The classifier
    (``plugins/metrics/digits_classifier.py``) and the reference features are cached
    artifacts. 0 for a sample set distributed like the real digits; lower is better.
    Like FID it is biased upwards for small sample counts, so compare values at equal
    ``num_samples``.
    """

    name = "fid_digits"
    Options = None

    @classmethod
    def contract_fixtures(cls, folder: Any) -> dict[str, Any]:
        return {}  # no options: the checks train the full classifier on the stand-in digits

    def _opts(self) -> FIDOptions:
        return FIDOptions(features="digits")
