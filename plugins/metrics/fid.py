"""``fid``: the Frechet distance of any feature extractor's features (clean-fid's Inception by default).

The features come from a feature-extractor plugin (``bench list features``): the
``features`` option names it, else the dataset's ``default_features`` (``digits`` on
the digits dataset), else ``inception`` (clean-fid's Inception-V3, whose weights are
resolved as ``plugins/features/inception.py`` describes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness import ConfigError, MetricContext, build_registry
from plugins.features.inception import ENV_VAR, INCEPTION_FILE
from plugins.metrics._features import FeatureMetric, feature_options_field, features_field


def _option_names(cls: type) -> set[str]:
    """The option names of a plugin class (dataclass or pydantic ``Options``)."""
    options = getattr(cls, "Options", None)  # None: no class, or one without options
    if dataclasses.is_dataclass(options):
        return {f.name for f in dataclasses.fields(options)}
    return set(getattr(options, "model_fields", {}))


@dataclass
class FIDOptions:
    features: str | None = features_field()
    feature_options: dict[str, Any] = feature_options_field()
    weights: str | None = field(
        default=None,
        metadata={"help": f"the extractor's weights option: for inception a local {INCEPTION_FILE} (file or "
                          f"folder); else ${ENV_VAR}, the download caches, a download"},
    )
    batch_size: int | None = field(default=None, metadata={"help": "the extractor's batch_size (images per pass)"})


class FID(FeatureMetric):
    """Frechet distance between the features of the samples and of the dataset's real reference images.

    fid = ||mu_s - mu_r||^2 + Tr(C_s + C_r - 2 (C_s C_r)^(1/2)) (Heusel et al. 2017),
    mu / C the mean and unbiased covariance of the features of the samples (s) and of
    the real ``reference`` split (r, ``ctx.real_images``). Features: the extractor named
    by ``features`` (default: the dataset's ``default_features``, ``inception`` without a
    dataset: clean-fid's Inception-V3 pool features, "clean" resizing), built with
    ``feature_options`` (``weights`` and ``batch_size`` are shortcuts for those two
    options). The real images' features are cached per (dataset, extractor, options,
    n) by ``harness.reference_features``; each row names them in ``reference`` and their
    image count in ``num_reference``. Uses ``_frechet.frechet_distance`` (exact, agrees
    with clean-fid's to 1e-6 relative, 4-5x faster). Lower is better; strongly biased
    upwards for fewer than a few thousand images, so compare at equal ``num_samples``.
    """

    name = "fid"
    higher_is_better = False
    sample_size_biased = True
    requires: ClassVar[frozenset[str]] = frozenset({"samples", "real_images"})
    Options = FIDOptions
    #: 2: features from harness.get_feature_extractor (1: clean-fid's Inception only)
    cache_version: ClassVar[str] = "2"

    def extractor_options(self, name: str) -> dict[str, Any]:
        """``feature_options`` with the ``weights`` / ``batch_size`` shortcuts, when set.

        :raises harness.ConfigError: a shortcut the extractor ``name`` has no option for
            (e.g. ``weights`` for an Inception file on the digits dataset, whose default
            features are ``digits``): one line naming the metric's option.
        """
        opts = self._opts()
        shortcuts = {k: v for k, v in (("weights", opts.weights), ("batch_size", opts.batch_size)) if v is not None}
        cls = build_registry().get("features", name, where=f"metrics.{self.name}.features") if shortcuts else None
        valid = _option_names(cls)
        unknown = sorted(set(shortcuts) - valid)
        if unknown:
            raise ConfigError(
                f"metrics.{self.name}.{unknown[0]}: the '{name}' features take no {unknown[0]} option (theirs: "
                f"{', '.join(sorted(valid)) or 'none'}); for clean-fid's Inception set features = \"inception\"")
        return {**shortcuts, **opts.feature_options}

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        """One row; ``reference`` / ``num_reference`` say which real features it was measured against."""
        from plugins.metrics._frechet import feature_stats, frechet_distance

        f = self.cell_features(ctx)
        value = frechet_distance(*feature_stats(f.fake.numpy()), *feature_stats(f.real.numpy()))
        return [f.row(self.name, value)]
