"""The example plugin checks itself with diffbench's contract tests (and two known answers)."""

import re

import pytest
import torch

import diffbench_example
from diffbench_example.feature_gap import FeatureMeanGap, linear_mmd2_unbiased
from diffbench_example.features import PatchStats
from diffbench_example.metric import BrightnessGap
from diffbench_example.pruner import LayerMagnitudePruner

from harness import build_registry, get_feature_extractor, get_plugin_manager
from harness.testing import FeatureExtractorContract, MetricContract, PrunerContract, metric_context


class TestLayerMagnitude(PrunerContract):
    pruner_cls = LayerMagnitudePruner


class TestBrightnessGap(MetricContract):
    metric_cls = BrightnessGap


class TestPatchStats(FeatureExtractorContract):
    extractor_cls = PatchStats


class TestFeatureMeanGap(MetricContract):
    metric_cls = FeatureMeanGap  # its contract_fixtures choose features = "patch_stats"


def test_the_hooks_register_every_class():
    registry = build_registry(get_plugin_manager(load_entrypoints=False, extra=[diffbench_example]))
    assert registry.get("features", "patch_stats") is PatchStats
    assert registry.get("metrics", "feature_mean_gap") is FeatureMeanGap


def test_patch_stats_of_a_known_image():
    image = torch.zeros(1, 3, 8, 8)
    image[:, :, :4, :4] = 1.0  # top-left cell white, the rest black
    image[:, 0, 4:, 4:] = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).repeat(2, 2)  # red checkerboard cell
    feats = PatchStats(grid=2)(image)
    luma = 0.299 * 0.5  # the checkerboard cell: mean and s.d. of {0, 0.299}
    torch.testing.assert_close(feats, torch.tensor([[1.0, 0.0, 0.0, luma, 0.0, 0.0, 0.0, luma]]))


def test_feature_mean_gap_is_the_unbiased_linear_mmd():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=gen).double(), torch.randn(5, 3, generator=gen).double() + 1
    kxx, kyy, kxy = x @ x.T / 3, y @ y.T / 3, x @ y.T / 3  # the kernel matrices of k(a, b) = a.b / d
    direct = ((kxx.sum() - kxx.trace()) / (7 * 6) + (kyy.sum() - kyy.trace()) / (5 * 4) - 2 * kxy.mean())
    assert linear_mmd2_unbiased(x, y) == pytest.approx(float(direct), rel=1e-12)
    assert linear_mmd2_unbiased(x, y) < float(((x.mean(0) - y.mean(0)) ** 2).sum() / 3)  # the plug-in overshoots
    with pytest.raises(ValueError, match="at least 2 samples"):
        linear_mmd2_unbiased(x[:1], y)


def test_feature_mean_gap_reads_features_through_the_public_lookup(bench_tmp_cache):
    ctx = metric_context(bench_tmp_cache)
    (row,) = FeatureMeanGap(features="patch_stats").compute(ctx)
    extractor = get_feature_extractor("patch_stats", ctx)
    fake, real = extractor(ctx.samples), extractor(ctx.real_images)
    assert row["value"] == pytest.approx(linear_mmd2_unbiased(fake, real), rel=1e-9)
    assert re.fullmatch(r"\w+:reference@16px/patch_stats:[0-9a-f]{12}", row["reference"]), row["reference"]
    assert row["num_reference"] == len(ctx.real_images)
