"""Feature extractors: the three built-ins' contracts, the look-up, the cached reference features, fid over any of them.

The contract checks of ``inception`` and ``clip`` run on the random weights their
``contract_fixtures`` write (no download); ``digits`` trains its classifier on the
stand-in dataset. A third-party extractor registered through a plugin is listed by
``bench list features`` and used by ``fid`` in a small ``bench run``.
"""

from __future__ import annotations

import io
import re
from typing import Any, ClassVar

import pytest
import torch

import harness
from harness import FeatureExtractor, hookimpl, runner
from harness.base import MetricContext
from harness.cache import ArtifactCache
from harness.cli import main
from harness.errors import ConfigError, PluginError
from harness.features import clear_memo, get_feature_extractor, reference_features
from harness.testing import FeatureExtractorContract, tiny_dataset
from plugins.datasets.digits import DigitsDataset
from plugins.features.clip import CLIPFeatures
from plugins.features.digits import DigitsFeatures
from plugins.features.inception import InceptionFeatures
from plugins.metrics.fid import FID
from plugins.metrics.fid_digits import FIDDigits
from _matrices import SMALL, SYNTHETIC


@pytest.fixture(autouse=True)
def _fresh_memo() -> None:
    clear_memo()  # every test loads its own extractors


class TestDigitsFeatures(FeatureExtractorContract):
    extractor_cls = DigitsFeatures
    extractor_options: ClassVar[dict[str, Any]] = {"epochs": 2}  # a quick classifier: the contract needs no accuracy


class TestInceptionFeatures(FeatureExtractorContract):
    extractor_cls = InceptionFeatures


class TestCLIPFeatures(FeatureExtractorContract):
    extractor_cls = CLIPFeatures


class Moments(FeatureExtractor):
    """Per-image pixel mean, standard deviation, minimum and maximum (a third party's extractor)."""

    name = "mine"
    dim = 4
    calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        flat = images.flatten(1).double()
        if not len(flat):
            return torch.zeros(0, self.dim, dtype=torch.float64)
        return torch.stack([flat.mean(1), flat.std(1), flat.min(1).values, flat.max(1).values], dim=1)


class MinePlugin:
    @hookimpl
    def bench_register_features(self, register: Any) -> None:
        register(Moments)


def context(dataset: Any, cache: Any, samples: torch.Tensor | None = None) -> MetricContext:
    return MetricContext(cell=None, device="cpu", generator=torch.Generator().manual_seed(0), dataset=dataset,
                         samples=samples, cache=cache)


def list_features(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # one table row per line
    code = main(["list", "features"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_bench_list_features_lists_the_builtins(capsys, monkeypatch):
    out = list_features(capsys, monkeypatch)
    for name in ("digits", "inception", "clip"):
        assert re.search(rf"│ {name} +│", out), name


def test_one_extractor_per_process_for_equal_arguments(tmp_path):
    dataset, cache = tiny_dataset(16), ArtifactCache(tmp_path)
    first = get_feature_extractor("digits", context(dataset, cache), epochs=1)
    assert get_feature_extractor("digits", context(dataset, cache), epochs=1) is first
    assert get_feature_extractor("digits", context(dataset, cache), epochs=2) is not first
    assert get_feature_extractor("digits", context(dataset, None), epochs=1) is not first  # another cache


def test_digits_features_without_a_dataset_use_the_builtin_digits():
    extractor = get_feature_extractor("digits", epochs=1)  # no context: CPU, no cache, no dataset
    assert isinstance(extractor.dataset, DigitsDataset) and extractor.dataset.image_size == 16
    assert extractor.classifier.meta["num_train"] == len(DigitsDataset().load("train").images)
    assert tuple(extractor(torch.rand(3, 1, 16, 16)).shape) == (3, 64)


def test_unknown_extractor_is_one_line_with_the_valid_names():
    with pytest.raises(PluginError) as exc:
        get_feature_extractor("incepton")
    msg = str(exc.value)
    assert "\n" not in msg and "incepton" in msg
    assert all(name in msg for name in ("digits", "inception", "clip")), msg


def test_reference_features_are_computed_once_then_read_from_the_cache(tmp_path, extra_plugins):
    extra_plugins(MinePlugin())
    dataset, cache = tiny_dataset(16), ArtifactCache(tmp_path)
    Moments.calls = 0
    extractor = get_feature_extractor("mine", context(dataset, cache))
    feats, label = reference_features(context(dataset, cache), extractor)
    assert Moments.calls == 1 and tuple(feats.shape) == (64, 4)
    assert reference_features(context(dataset, cache), extractor)[1] == label and Moments.calls == 1  # memo
    clear_memo()  # a fresh process: the features come from the artifact
    again = get_feature_extractor("mine", context(dataset, cache))
    assert again is not extractor
    feats2, label2 = reference_features(context(dataset, cache), again)
    assert Moments.calls == 1 and torch.equal(feats2, feats) and label2 == label
    assert label.startswith("stand_in:reference@16px/mine:")
    assert len(list((tmp_path / "reference_features").glob("*/meta.json"))) == 1


def test_fid_with_digits_features_is_fid_digits(tmp_path):
    dataset, cache = DigitsDataset(), ArtifactCache(tmp_path)
    train = ((dataset.load("train").images[:100] + 1) / 2).clamp(0, 1)
    ctx = context(dataset, cache, train)
    [named] = FID(features="digits").compute(ctx)
    [default] = FID().compute(ctx)  # the digits dataset's default_features
    [embedded] = FIDDigits().compute(ctx)
    assert named == default == {**embedded, "metric": "fid"}
    assert 0 < named["value"] < 100 and named["num_reference"] == len(dataset.load("reference").images)
    # an Inception file for fid on the digits dataset (default features: digits): one line naming fid's option
    with pytest.raises(ConfigError, match=r"^metrics\.fid\.weights: the 'digits' features take no weights option "
                                          r"\(theirs: epochs, seed\); for clean-fid's Inception set features = "):
        FID(weights="inception-2015-12-05.pt").compute(ctx)


def test_a_third_party_extractor_is_listed_and_works_with_fid(tmp_path, extra_plugins, capsys, monkeypatch):
    extra_plugins(MinePlugin())
    assert re.search(r"│ mine +│", list_features(capsys, monkeypatch))
    overrides = [*SMALL, 'metrics.names=["fid"]', 'metrics.fid.features="mine"']
    summary = runner.run(SYNTHETIC, overrides, results_dir=str(tmp_path), stream=io.StringIO(), interactive=False)
    assert (summary.ok, summary.error) == (4, 0), summary.errors
    df = harness.load_results(tmp_path)
    assert len(df) == 4 and set(df["metric"]) == {"fid"} and (df["status"] == "ok").all()
    assert (df["value"] >= 0).all() and df["value"].nunique() > 1
    assert df["reference"].str.contains("/mine:").all() and df["reference"].nunique() == 1
    assert len(list((tmp_path / ".cache" / "reference_features").glob("*/meta.json"))) == 1


@pytest.mark.parametrize("cls", [DigitsFeatures, InceptionFeatures, CLIPFeatures], ids=lambda c: c.name)
def test_kid_of_two_real_subsets_is_within_its_spread_of_zero(cls, tmp_path):
    """Two disjoint halves of the real training digits come from one distribution: on every
    built-in extractor (its kernel scaling included) KID lies within 2 s.d. of 0, while a
    real half against the other half upside down lies clearly above it."""
    from harness.testing import contract_fixtures
    from plugins.metrics._kernels import kid

    options = contract_fixtures(cls).get("options", {})
    extractor = cls(**options)
    extractor.setup(device="cpu", cache=ArtifactCache(tmp_path), dataset=DigitsDataset(image_size=16))
    images = ((DigitsDataset(image_size=16).load("train").images[:192] + 1) / 2).clamp(0, 1)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    a, b = images[perm[:96]], images[perm[96:]]
    flipped = b.flip(-2)
    fa, fb, fflip = (extractor.kernel_features(extractor(x)).double().numpy() for x in (a, b, flipped))
    mean, sd = kid(fa, fb, num_subsets=50, subset_size=48, seed=0)
    assert abs(mean) <= 2 * sd, (cls.name, mean, sd)
    if cls is DigitsFeatures:  # random weights (inception, clip) need not tell digits apart
        shifted, shifted_sd = kid(fa, fflip, num_subsets=50, subset_size=48, seed=0)
        # the s.d. is one subset's spread (clean-fid's, torch-fidelity's convention), not the mean's error
        assert shifted > max(shifted_sd, 10 * abs(mean)), (shifted, shifted_sd, mean)
