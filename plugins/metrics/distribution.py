"""Sample-size-robust distribution metrics: ``kid``, ``prdc``, ``cmmd`` and ``fid_inf``.

FID's estimator is biased upwards, by an amount that depends on the number of samples n
(Binkowski et al. 2018; Chong and Forsyth 2020), so two FIDs are comparable only at equal
n. These metrics answer the same question ("how far are the samples from the real
images?") in ways that hold at small n or say how uncertain they are. The maths is in
``_kernels.py``, ``_prdc.py`` and ``_fid_inf.py`` (each checked against its peer
implementation in tests/test_feature_metrics_math.py); here each is a plugin over any
feature extractor (``features`` option, see ``_features.py``). docs/metrics.md says which
to use when.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness import MetricContext, encode_blob
from plugins.metrics._features import FeatureMetric, feature_options_field, features_field


def _seed(ctx: MetricContext) -> int:
    """A subset-drawing seed from the cell's metric generator (same cell, same subsets)."""
    import torch

    return int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator))


@dataclass
class KIDOptions:
    features: str | None = features_field()
    feature_options: dict[str, Any] = feature_options_field()
    num_subsets: int = field(default=100, metadata={"help": "random subsets the MMD is averaged over"})
    subset_size: int | None = field(
        default=None,
        metadata={"help": "rows per subset; default min(1000, n // 2) so that subsets differ and the s.d. means something"},
    )


def kid_subset_size(option: int | None, n_fake: int, n_real: int) -> int:
    """The subset size KID uses: the option, else ``min(1000, n // 2)`` (at least 2).

    clean-fid and torch-fidelity use 1,000 (capped at n). With n <= 1,000 every subset
    would then be the whole set, and the standard deviation over subsets would be 0
    however uncertain the estimate; half the smaller set keeps the subsets different.
    """
    n = min(n_fake, n_real)
    size = option if option is not None else min(1000, n // 2)
    return max(2, min(size, n))


class KID(FeatureMetric):
    """Kernel Inception Distance: unbiased MMD^2 with the cubic kernel (x.y/d + 1)^3, mean and s.d. over subsets.

    Binkowski et al. 2018, "Demystifying MMD GANs": unlike FID its estimator is unbiased,
    so its expected value does not depend on n, and a stored ``value_sd`` (the standard
    deviation over ``num_subsets`` random subsets of ``subset_size`` rows) says how much
    one estimate varies. Same estimator as clean-fid's ``kernel_distance`` and
    torch-fidelity's ``kid`` (tests agree to 1e-6), on the features as the extractor
    scales them for kernels (``FeatureExtractor.kernel_features``: raw Inception
    features; unit-length x sqrt(d) for ``digits`` and ``clip``). 0 for samples
    distributed like the real images (it can be slightly negative); lower is better.
    """

    name = "kid"
    higher_is_better = False
    Options = KIDOptions

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        from plugins.metrics._kernels import kid

        f = self.cell_features(ctx)
        fake, real = f.extractor.kernel_features(f.fake), f.extractor.kernel_features(f.real)
        size = kid_subset_size(self.options.subset_size, len(fake), len(real))
        mean, sd = kid(fake.double().numpy(), real.double().numpy(), self.options.num_subsets, size, _seed(ctx))
        return [f.row("kid", mean, value_sd=sd)]


@dataclass
class PRDCOptions:
    features: str | None = features_field()
    feature_options: dict[str, Any] = feature_options_field()
    k: int = field(default=5, metadata={"help": "nearest neighbours that define each point's ball"})


class PRDC(FeatureMetric):
    """Precision, recall, density and coverage of the samples' features against the real ones (four rows).

    Kynkaanniemi et al. 2019 (precision: share of samples inside some real point's
    k-NN ball; recall: share of real points inside some sample's ball) and Naeem et al.
    2020 (density: how many real balls hold each sample, / k; coverage: share of real
    points whose ball holds a sample). Precision and density say "samples look real",
    recall and coverage "samples cover the real variety". Same values as the authors'
    ``prdc`` package (tests agree to 1e-6). All higher is better; density can exceed 1.
    """

    name = "prdc"
    higher_is_better = True
    Options = PRDCOptions

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        from plugins.metrics._prdc import prdc

        f = self.cell_features(ctx)
        values = prdc(f.real.numpy(), f.fake.numpy(), k=self.options.k)
        return [f.row(name, values[name]) for name in ("precision", "recall", "density", "coverage")]


@dataclass
class CMMDOptions:
    features: str | None = features_field("clip", "feature extractor (bench list features); default clip, the paper's")
    feature_options: dict[str, Any] = feature_options_field()
    sigma: float = field(default=10.0, metadata={"help": "bandwidth of the Gaussian RBF kernel"})
    scale: float = field(default=1000.0, metadata={"help": "factor the MMD is multiplied by"})


class CMMD(FeatureMetric):
    """CMMD: MMD with a Gaussian RBF kernel (sigma 10) on CLIP image embeddings, x 1000.

    Jayasumana et al. 2024, "Rethinking FID: Towards a Better Evaluation Metric for Image
    Generation": no Gaussian assumption on the features, an unbiased-in-n kernel
    estimate, and CLIP embeddings that see more than ImageNet classes. Computed as the
    paper's reference code does (``_kernels.rbf_mmd``). Lower is better; 0 for equal sets.
    """

    name = "cmmd"
    higher_is_better = False
    Options = CMMDOptions

    def extractor_name(self, ctx: MetricContext) -> str:
        return self.options.features or "clip"

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        from plugins.metrics._kernels import rbf_mmd

        f = self.cell_features(ctx)
        value = rbf_mmd(f.fake.numpy(), f.real.numpy(), sigma=self.options.sigma, scale=self.options.scale)
        return [f.row("cmmd", value)]


@dataclass
class FIDInfOptions:
    features: str | None = features_field()
    feature_options: dict[str, Any] = feature_options_field()
    num_points: int = field(default=15, metadata={"help": "subset sizes the FID is computed at"})
    min_size: int | None = field(default=None, metadata={"help": "smallest subset size; default see _fid_inf.py"})
    kid_subsets: int = field(default=20, metadata={"help": "subsets per size for the KID curve in the blob"})


class FIDInfinity(FeatureMetric):
    """FID-infinity: FID at several sample counts, extrapolated linearly in 1/n to n = infinity.

    Chong and Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to
    find them": FID's bias is close to linear in 1/n, so the intercept of a least-squares
    line through FID(n) at ``num_points`` subset sizes estimates the FID of infinitely
    many samples; ``value_sd`` is the intercept's standard error. The row's blob holds the
    curve (float64 4 x K: sizes n, FID(n), KID(n), KID's s.d.(n) over ``kid_subsets``
    subsets of n samples and n real images), which the ``sample_size_bias`` plot draws.
    Lower is better.
    """

    name = "fid_inf"
    higher_is_better = False
    Options = FIDInfOptions

    def compute(self, ctx: MetricContext) -> list[dict[str, Any]]:
        import numpy as np

        from plugins.metrics._fid_inf import fid_infinity
        from plugins.metrics._frechet import feature_stats
        from plugins.metrics._kernels import kid

        f = self.cell_features(ctx)
        opts, seed = self.options, _seed(ctx)
        mu, sigma = feature_stats(f.real.numpy())
        fit = fid_infinity(f.fake.numpy(), mu, sigma, num_points=opts.num_points, min_size=opts.min_size, seed=seed)
        kf, kr = (f.extractor.kernel_features(x).double().numpy() for x in (f.fake, f.real))
        kids = [kid(kf, kr, opts.kid_subsets, min(n, len(kr)), seed + i) for i, n in enumerate(fit.sizes)]
        curve = np.array([fit.sizes, fit.fids, [k[0] for k in kids], [k[1] for k in kids]], dtype=np.float64)
        return [f.row("fid_inf", fit.value, value_sd=fit.stderr, blob=encode_blob(curve))]


DISTRIBUTION_METRICS: tuple[type[FeatureMetric], ...] = (KID, PRDC, CMMD, FIDInfinity)
