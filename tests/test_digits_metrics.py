"""Known-answer tests of the embedded-default metrics and their digit classifier.

The classifier is trained once per session into a temporary artifact cache; every
other test loads it from there (or from the in-process memo).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.base import Conditions, MetricContext
from harness.cache import ArtifactCache
from harness.errors import CellError
from plugins.datasets.digits import DigitsDataset
from plugins.metrics import digits_classifier as dc
from plugins.metrics._frechet import feature_stats, frechet_distance
from plugins.metrics.feature_distance import FeatureDistance
from plugins.metrics.fid_digits import FIDDigits
from plugins.metrics.label_accuracy import LabelAccuracy
from plugins.metrics.timing import GenerationTime, PeakMemory


def to01(images: torch.Tensor) -> torch.Tensor:
    return ((images + 1) / 2).clamp(0, 1)


def make_ctx(env: dict, samples: torch.Tensor, labels: torch.Tensor | None = None, **kw) -> MetricContext:
    return MetricContext(
        cell=None,
        device="cpu",
        generator=torch.Generator().manual_seed(0),
        dataset=env["dataset"],
        samples=samples,
        conditions=Conditions(labels=labels) if labels is not None else None,
        cache=env["cache"],
        **kw,
    )


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The digits dataset, a cache holding the trained classifier, and the real splits in [0, 1]."""
    dc.clear_memo()
    dataset = DigitsDataset()
    cache = ArtifactCache(tmp_path_factory.mktemp("cache"))
    ref, train = dataset.load("reference"), dataset.load("train")
    out = {
        "dataset": dataset,
        "cache": cache,
        "ref": to01(ref.images),
        "ref_labels": ref.conditions.labels,
        "train": to01(train.images),
    }
    out["classifier"] = dc.get_classifier(make_ctx(out, out["ref"]))
    return out


# ----------------------------------------------------------------- Frechet distance


def test_frechet_distance_of_known_gaussians() -> None:
    # diagonal covariances: d^2 = |mu1 - mu2|^2 + sum_j (sqrt(a_j) - sqrt(b_j))^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("n", [8, 200])  # singular (n < D) and full-rank covariances
def test_frechet_distance_agrees_with_cleanfids_sqrtm(n: int) -> None:
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, 64)) @ rng.standard_normal((64, 64)) * 0.3
    b = rng.standard_normal((n, 64)) + 0.2
    stats = (*feature_stats(a), *feature_stats(b))
    ours = frechet_distance(*stats)
    theirs = frechet_distance(*stats, method="cleanfid")
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert frechet_distance(*stats[:2], *stats[:2]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="valid: eigh, cleanfid"):
        frechet_distance(*stats, method="scipy")


def test_feature_stats_is_mean_and_unbiased_covariance() -> None:
    x = np.random.default_rng(0).normal(size=(50, 4))
    mu, sigma = feature_stats(x)
    assert mu == pytest.approx(x.mean(0))
    assert sigma == pytest.approx(np.cov(x, rowvar=False))
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_stats(x[:1])


# ------------------------------------------------------------------------ classifier


def test_classifier_artifact_has_held_out_accuracy(env: dict) -> None:
    clf = env["classifier"]
    assert clf.meta["reference_accuracy"] > 0.95
    assert (env["cache"].path("classifier", clf.key) / "tensors.safetensors").is_file()
    meta = env["cache"].load_meta("classifier", clf.key)
    assert meta["reference_accuracy"] == clf.meta["reference_accuracy"]
    assert meta["config"]["dataset"] == env["dataset"].config_key()
    assert clf.features(env["ref"][:5]).shape == (5, 64)


def test_classifier_is_loaded_from_the_cache_not_retrained(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("the classifier was retrained although it is cached")

    monkeypatch.setattr(dc, "train_classifier", no_training)
    dc.clear_memo()  # forget the in-process copy: the next call must read the artifact
    loaded = dc.get_classifier(make_ctx(env, env["ref"]))
    assert loaded.key == env["classifier"].key
    assert loaded is not env["classifier"]
    assert torch.equal(loaded.predict(env["ref"]), env["classifier"].predict(env["ref"]))
    assert dc.get_classifier(make_ctx(env, env["ref"])) is loaded  # memoised in-process


def test_classifier_without_cache_trains_in_memory(env: dict, tmp_path) -> None:
    ctx = make_ctx(env, env["ref"])
    ctx.cache = None
    quick = dc.ClassifierConfig(epochs=1)
    clf = dc.get_classifier(ctx, quick)
    assert dc.get_classifier(ctx, quick) is clf
    assert clf.predict(env["ref"][:8]).shape == (8,)


# ------------------------------------------------------------------------ fid_digits


def blur(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).view(1, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)


def test_fid_digits_known_answers(env: dict) -> None:
    metric = FIDDigits()
    ref, train = env["ref"], env["train"]
    g = torch.Generator().manual_seed(0)

    def fd(samples: torch.Tensor) -> float:
        [row] = metric.compute(make_ctx(env, samples))
        return row["value"]

    identical = fd(ref)
    real_vs_real = fd(train)
    noised = fd((ref + 0.3 * torch.randn(ref.shape, generator=g)).clamp(0, 1))
    shifted = fd(torch.roll(ref, shifts=(2, 2), dims=(2, 3)))
    blurred = fd(blur(blur(ref)))
    noise = fd(torch.rand(ref.shape, generator=g))
    # measured: ~1e-9, 2.5 (train vs reference), 172 / 143 / 84 (noised / shifted / blurred), 530
    assert identical < 1e-3 * real_vs_real
    assert 0 < real_vs_real < 10
    for degraded in (noised, shifted, blurred):
        assert degraded > 10 * real_vs_real
    assert noise > max(noised, shifted, blurred) and noise > 100 * real_vs_real
    # the real digits' features: one cached artifact, named in each row's `reference`
    [row] = metric.compute(make_ctx(env, train))
    [stored] = list((env["cache"].root / "reference_features").glob("*/meta.json"))
    assert row["reference"].startswith("digits:reference@16px/digits:") and row["num_reference"] == len(ref)
    assert row["reference"].endswith(stored.parent.name[:12])


# -------------------------------------------------------------------- label_accuracy


def test_label_accuracy_on_real_digits_and_shuffled_labels(env: dict) -> None:
    metric = LabelAccuracy()
    labels = env["ref_labels"]
    assert metric.compute(make_ctx(env, env["ref"], labels)) >= 0.97
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    assert 0.03 <= metric.compute(make_ctx(env, env["ref"], shuffled)) <= 0.2


def test_label_accuracy_needs_labels(env: dict) -> None:
    with pytest.raises(ValueError, match="ctx.conditions.labels"):
        LabelAccuracy().compute(make_ctx(env, env["ref"]))


# ------------------------------------------------------------------ feature_distance


def test_feature_distance_zero_for_identical_and_grows_with_noise(env: dict) -> None:
    metric = FeatureDistance()
    ref = env["ref"][:200]
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(ref.shape, generator=g)

    def dist(samples: torch.Tensor) -> float:
        return metric.compute(make_ctx(env, samples, reference_samples=ref))

    assert dist(ref.clone()) == pytest.approx(0.0, abs=1e-6)
    values = [dist((ref + s * eps).clamp(0, 1)) for s in (0.05, 0.2, 0.5)]
    assert 0 < values[0] < values[1] < values[2] <= 2.0


def test_feature_distance_rejects_mismatched_shapes(env: dict) -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        FeatureDistance().compute(make_ctx(env, env["ref"][:4], reference_samples=env["ref"][:5]))


# --------------------------------------------------------------------------- timing


def test_timing_metrics_read_the_sampling_stats(env: dict) -> None:
    ctx = make_ctx(env, env["ref"][:2], sampling_stats={"generation_time": 0.0125, "peak_memory_mb": 321.5})
    assert GenerationTime().compute(ctx) == 0.0125
    assert PeakMemory().compute(ctx) == 321.5
    assert not GenerationTime.higher_is_better and not PeakMemory.higher_is_better


def test_timing_metrics_name_the_missing_stat(env: dict) -> None:
    ctx = make_ctx(env, env["ref"][:2], sampling_stats={"generation_time": 0.01})
    expected = r"peak_memory_mb.*sampling_stats\['peak_memory_mb'\].*recorded: generation_time"
    with pytest.raises(CellError, match=expected):
        PeakMemory().compute(ctx)


def test_metrics_are_registered() -> None:
    import plugins.metrics
    from harness.registry import build_registry, get_plugin_manager

    registry = build_registry(get_plugin_manager(load_entrypoints=False, extra=[plugins.metrics]))
    names = set(registry.names("metrics"))
    assert {"fid_digits", "label_accuracy", "feature_distance", "generation_time", "peak_memory_mb"} <= names
    assert {"fid", "clip_score", "lpips"} <= names
