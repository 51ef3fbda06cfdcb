"""The distribution metrics as plugins: ``kid``, ``prdc``, ``cmmd``, ``fid_inf`` over any feature extractor.

Their maths is checked against peer implementations in test_feature_metrics_math.py; here:
the plugins compute exactly that maths on the extractor's features, store ``value_sd`` and
the curve blob, take a third-party extractor by name, and a bad ``features`` name is a
one-line matrix error.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch

import harness
from harness import FeatureExtractor, hookimpl, runner
from harness.cli import main
from _matrices import SMALL, SYNTHETIC


class PooledPixels(FeatureExtractor):
    """Gray pixels pooled to 4 x 4 (a third-party extractor for the tests)."""

    name = "pooled_pixels"
    dim = 16

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images).float().mean(dim=1, keepdim=True)
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


class Plugins:
    @hookimpl
    def bench_register_features(self, register: Any) -> None:
        register(PooledPixels)


METRICS = ["kid", "prdc", "fid_inf"]
OVERRIDES = [*SMALL, f"metrics.names={METRICS}",
             *(f'metrics.{m}.features="pooled_pixels"' for m in METRICS), "sampling.num_samples=24"]


@pytest.fixture
def results(tmp_path, extra_plugins) -> Any:
    extra_plugins(Plugins())
    summary = runner.run(SYNTHETIC, OVERRIDES, results_dir=str(tmp_path), stream=io.StringIO(), interactive=False)
    assert summary.error == 0, summary
    return harness.load_results(tmp_path)


def test_a_third_party_extractor_drives_every_metric_by_name(results):
    ok = results[results["status"] == "ok"]
    assert set(ok["metric"]) == {"kid", "precision", "recall", "density", "coverage", "fid_inf"}
    assert ok["reference"].str.contains("/pooled_pixels:").all()
    assert (ok["num_reference"] > 0).all()
    kid = ok[ok["metric"] == "kid"]
    assert (kid["value_sd"] > 0).all(), "KID's s.d. over subsets is stored"
    assert ok.loc[ok["metric"] == "precision", "value_sd"].isna().all()
    prdc = ok[ok["metric"].isin(["precision", "recall", "coverage"])]["value"]
    assert ((prdc >= 0) & (prdc <= 1)).all()


def test_fid_inf_stores_its_curve_and_standard_error(results):
    rows = results[results["metric"] == "fid_inf"]
    for _, row in rows.iterrows():
        curve = harness.decode_blob(row["blob"])
        assert curve.shape[0] == 4 and curve.shape[1] >= 3
        sizes = curve[0]
        assert np.all(np.diff(sizes) >= 0) and sizes[0] < sizes[-1] == row["num_samples"]
        assert np.isfinite(curve).all() and row["value_sd"] > 0


def _ctx_with(extractor_images: torch.Tensor, real: torch.Tensor) -> Any:
    from harness.testing import metric_context

    ctx = metric_context(None, n=len(extractor_images))
    ctx.samples, ctx.real_images, ctx.dataset = extractor_images, real, None
    return ctx


def test_kid_plugin_is_the_kernel_maths_on_the_extractors_features(extra_plugins):
    from plugins.metrics._kernels import kid
    from plugins.metrics.distribution import KID, kid_subset_size

    extra_plugins(Plugins())
    g = torch.Generator().manual_seed(0)
    fake, real = torch.rand(40, 1, 8, 8, generator=g), torch.rand(60, 1, 8, 8, generator=g) ** 2
    row = KID(features="pooled_pixels").compute(_ctx_with(fake, real))[0]
    ext = PooledPixels()
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=_ctx_with(fake, real).generator))
    size = kid_subset_size(None, 40, 60)
    mean, sd = kid(ext(fake).double().numpy(), ext(real).double().numpy(), 100, size, seed)
    assert (row["value"], row["value_sd"]) == (mean, sd)
    assert size == 20, "default subsets: half the smaller set, so that they differ"
    assert row["value"] > 3 * row["value_sd"], "uniform vs squared-uniform pixels differ"


def test_prdc_and_cmmd_of_a_set_with_itself(extra_plugins):
    from plugins.metrics.distribution import CMMD, PRDC

    extra_plugins(Plugins())
    images = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    rows = {r["metric"]: r["value"] for r in PRDC(features="pooled_pixels").compute(_ctx_with(images, images))}
    assert rows["precision"] == rows["recall"] == rows["coverage"] == 1.0
    assert CMMD(features="pooled_pixels").compute(_ctx_with(images, images))[0]["value"] == 0.0


@pytest.mark.parametrize("metric", ["kid", "cmmd", "fid_inf", "prdc"])
def test_an_unknown_features_name_is_one_line_exit_2(tmp_path, capsys, metric):
    args = [a for o in [*SMALL, f'metrics.names=["{metric}"]', f'metrics.{metric}.features="incepton"']
            for a in ("--set", o)]
    assert main(["run", str(SYNTHETIC), "--results", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"metrics.{metric}.features: unknown feature extractor 'incepton' (did you mean 'inception'?)" in err
    assert "valid:" in err and not any(tmp_path.rglob("*.parquet"))

