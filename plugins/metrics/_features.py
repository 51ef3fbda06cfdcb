"""What the distribution metrics (``fid``, ``kid``, ``prdc``, ``cmmd``, ``fid_inf``) share: the extractor option.

Each compares features of the cell's samples with features of the dataset's real
``reference`` split, computed by a feature extractor plugin (``bench list features``)
that the ``features`` option names; ``feature_options`` are that extractor's options.
By default the dataset's own choice (``Dataset.default_features``: ``digits`` on the
digits dataset, ``inception`` elsewhere) is used. Features come only through the public
API (:func:`harness.get_feature_extractor`, :func:`harness.reference_features`), as a
third-party metric would get them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness import FeatureExtractor, Metric, MetricContext, get_feature_extractor, reference_features

#: the ``features`` option: metadata ``plugin`` makes the matrix check the name against the registry
FEATURES_HELP = "feature extractor (bench list features); default: the dataset's (digits: digits, else inception)"


def features_field(default: str | None = None, help_text: str = FEATURES_HELP) -> Any:
    """The ``features`` option of a distribution metric (checked against ``bench list features``)."""
    return field(default=default, metadata={"help": help_text, "plugin": "features"})


def feature_options_field() -> Any:
    return field(default_factory=dict, metadata={"help": "options of the feature extractor, e.g. {weights = \"PATH\"}"})


@dataclass
class FeatureOptions:
    features: str | None = features_field()
    feature_options: dict[str, Any] = feature_options_field()


@dataclass
class CellFeatures:
    """The two feature sets a distribution metric compares (float64 CPU tensors), and their provenance."""

    fake: Any
    real: Any
    reference: str
    extractor: FeatureExtractor

    def row(self, metric: str, value: float, **extra: Any) -> dict[str, Any]:
        """A result row that names the reference features and their size."""
        return {"metric": metric, "value": float(value), "reference": self.reference,
                "num_reference": int(len(self.real)), **extra}


class FeatureMetric(Metric):
    """Base of the metrics that compare sample features with real reference features.

    The extractor's :meth:`~harness.FeatureExtractor.fingerprint` is the metric's
    fingerprint, so a value cached with other weights or another classifier is not reused.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"samples", "real_images"})
    Options = FeatureOptions

    def _opts(self) -> Any:
        return self.options or self.Options()

    def extractor_name(self, ctx: MetricContext) -> str:
        """The ``features`` option, else the dataset's default extractor (``inception`` without one)."""
        name = getattr(self._opts(), "features", None)
        if name:
            return name
        return getattr(ctx.dataset, "default_features", None) or "inception"

    def extractor_options(self, name: str) -> dict[str, Any]:
        """The options the extractor ``name`` is built with (``feature_options``)."""
        return dict(self._opts().feature_options)

    def extractor(self, ctx: MetricContext) -> FeatureExtractor:
        name = self.extractor_name(ctx)
        return get_feature_extractor(name, ctx, **self.extractor_options(name))

    def fingerprint(self, ctx: MetricContext) -> Any:
        return self.extractor(ctx).fingerprint()

    @classmethod
    def contract_fixtures(cls, folder: Any) -> dict[str, Any]:
        """The contract checks run on ``digits`` features with a one-epoch classifier (no weights to find)."""
        return {"options": {"features": "digits", "feature_options": {"epochs": 1}}}

    def cell_features(self, ctx: MetricContext) -> CellFeatures:
        extractor = self.extractor(ctx)
        real, label = reference_features(ctx, extractor)
        fake = extractor(ctx.samples)
        return CellFeatures(fake.double(), real.double(), label, extractor)
