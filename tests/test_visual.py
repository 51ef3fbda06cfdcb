"""Visual diagnostics: the ``blob`` column, the four diagnostic metrics and their figures.

The blob round-trips through the store and every reader; the metrics give known answers
(PCA against numpy's SVD, attention rows that sum to 1); a tiny unet matrix run through
the CLI ends in the four figure folders.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.base import MetricContext
from harness.cli import main
from harness.metric_values import normalise_metric_result
from harness.errors import CellError
from harness.schema import COLUMNS, decode_blob, encode_blob
from harness.store import ResultStore, add_reference, load_results
from harness.tables import export, format_table, summarize
from harness.testing import metric_context, tiny_dataset
from plugins.metrics.visual import AttentionMaps, DenoisingStrip, LatentPCA, SampleGrid, kept_states, pca_basis
from plugins.plots.attention import AttentionPlot, centre_query_map
from plugins.plots.latent_space import LatentSpacePlot
from plugins.plots.visual import DenoisingPlot, SampleGrids

# ----------------------------------------------------------------------------- store


def _row(metric: str, value: float, blob: bytes | None = None, role: str = "reference", **kw) -> dict:
    return {"cell_name": "c", "role": role, "model": "unet", "size_factor": math.nan, "pruning_method": "none",
            "pruning_rate": 0.0, "cfg_scale": 1.0, "sampler": "ddim", "steps": 3, "seed": 0, "metric": metric,
            "value": value, "higher_is_better": True, "status": "ok", "blob": blob, **kw}


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    grid = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    attn = np.full((2, 3, 3), 1 / 3, dtype=np.float16)
    store = ResultStore(tmp_path / "results", "bench")
    with store.lock():
        run = store.new_run()
        run.write_cell("aaaa", [_row("sample_grid", 2.0, encode_blob(grid)), _row("fid_digits", 3.5)])
        run.write_cell("bbbb", [_row("attention_maps", 0.9, encode_blob(attn), timestep=5.0),
                                _row("fid_digits", 4.0, role="student", size_factor=0.5)])
        run.finish()
    return tmp_path / "results", grid, attn


def test_blob_is_a_binary_schema_column():
    import pyarrow as pa

    assert COLUMNS["blob"] == pa.binary()
    arr = np.array(["3", "a handwritten digit 7"])
    assert decode_blob(encode_blob(arr)).tolist() == arr.tolist()
    with pytest.raises(ValueError, match="object arrays"):
        encode_blob(np.array([{"a": 1}], dtype=object))


def test_blob_round_trips_through_the_store(stored):
    results, grid, attn = stored
    df = load_results(results)
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    blobs = df.set_index("metric")["blob"]
    np.testing.assert_array_equal(decode_blob(blobs["sample_grid"]), grid)
    got = decode_blob(blobs["attention_maps"])
    assert got.dtype == np.float16 and got.shape == (2, 3, 3)
    np.testing.assert_array_equal(got, attn)
    assert df.loc[df["metric"] == "fid_digits", "blob"].isna().all()


def test_other_readers_read_the_blob_column(stored):
    results, grid, _attn = stored
    df = pd.read_parquet(results)
    blob = df.loc[df["metric"] == "sample_grid", "blob"].iloc[0]
    np.testing.assert_array_equal(decode_blob(blob), grid)
    import duckdb
    import polars as pl

    pdf = pl.read_parquet(str(results / "**" / "*.parquet"))
    assert pdf.schema["blob"] == pl.Binary and pdf["blob"].null_count() == 2
    n = duckdb.sql(f"select count(blob) from read_parquet('{results}/**/*.parquet')").fetchall()[0][0]
    assert n == 2


def test_summaries_reference_and_exports_handle_the_blob(stored, tmp_path):
    results, _grid, _attn = stored
    df = load_results(results, with_reference=True)
    student = df[(df["role"] == "student")].iloc[0]
    assert student["reference_value"] == 3.5 and student["delta"] == pytest.approx(0.5)
    summary = summarize(df)
    assert "blob" not in summary.columns
    assert set(summary["metric"]) == {"fid_digits"}  # diagnostic rows (with a blob) are left out
    format_table(summary)  # renders
    csv = export(df, "csv", tmp_path / "out.csv").read_text()
    assert "blob" not in csv.splitlines()[0].split(",")
    records = json.loads(export(add_reference(load_results(results)), "json", tmp_path / "out.json").read_text())
    assert len(records) == 4 and all("blob" not in r for r in records)


def test_a_blob_that_is_not_bytes_is_a_clear_error():
    rows = normalise_metric_result("m", [{"metric": "m", "value": 1.0, "blob": b"\x93NUMPY"}])
    assert rows[0]["blob"] == b"\x93NUMPY"
    for bad in (np.zeros(3), b""):
        with pytest.raises(CellError, match=f"blob of type {type(bad).__name__} .*non-empty bytes .*encode_blob"):
            normalise_metric_result("m", [{"metric": "m", "value": 1.0, "blob": bad}])


# ----------------------------------------------------------------------------- metrics


def _tiny_unet(seed: int = 0, base: int = 8):
    from plugins.models.unet import UNetFamily

    family = UNetFamily(base_channels=base, channel_mults=[1, 2], num_heads=2, norm_groups=4, timesteps=10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return family.build(tiny_dataset(16))


def _unet_context(model) -> MetricContext:
    ctx = metric_context(n=4)
    ctx.model = model
    return ctx


def test_sample_grid_and_denoising_strip_on_the_contract_context():
    ctx = metric_context(n=16)
    rows = SampleGrid(num_images=10).compute(ctx)
    assert [r["metric"] for r in rows] == ["sample_grid", "sample_grid_conditions"]
    images = decode_blob(rows[0]["blob"])
    assert images.dtype == np.uint8 and images.shape == (10, 1, 16, 16) and rows[0]["value"] == 10
    np.testing.assert_array_equal(images, (ctx.samples[:10] * 255).round().to(torch.uint8).numpy())
    assert decode_blob(rows[1]["blob"]).tolist() == [str(v) for v in ctx.conditions.labels[:10].tolist()]

    (strip,) = DenoisingStrip(num_steps=3).compute(ctx)
    arr = decode_blob(strip["blob"])
    k = ctx.trajectories.shape[0]  # K + 1 states
    assert arr.dtype == np.float16 and arr.shape == (3, 1, 16, 16) and strip["value"] == 3
    expect = ((ctx.trajectories[kept_states(k, 3), 0] + 1) / 2).clamp(0, 1).numpy()
    np.testing.assert_allclose(arr.astype(np.float32), expect, atol=1e-3)
    assert kept_states(k, 3) == [0, k // 2, k - 1] and kept_states(4, 8) == [0, 1, 2, 3]
    with pytest.raises(CellError, match="trajectory_samples"):
        DenoisingStrip(sample_index=99).compute(ctx)


def test_latent_pca_of_the_reference_matches_numpy_svd():
    gen = torch.Generator().manual_seed(0)
    # anisotropic data, so the two leading components are well separated
    ref = torch.rand(64, 1, 4, 4, generator=gen) * torch.linspace(0.1, 2.0, 16).reshape(1, 1, 4, 4)
    ctx = metric_context(n=4)
    ctx.samples, ctx.reference_samples = ref, ref
    (row,) = LatentPCA(num_points=50).compute(ctx)
    x = ref.flatten(1).double().numpy()
    centred = x - x.mean(axis=0)
    u, s, _vt = np.linalg.svd(centred, full_matrices=False)
    assert row["value"] == pytest.approx((s[0] ** 2 + s[1] ** 2) / (s**2).sum(), rel=1e-9)
    points = decode_blob(row["blob"])
    assert points.dtype == np.float32 and points.shape == (50, 2)
    # the projection of the reference onto its own axes is U * S (up to each axis' sign)
    np.testing.assert_allclose(np.abs(points), np.abs(u[:50, :2] * s[:2]), rtol=1e-4, atol=1e-5)
    _mean, axes, _ratio = pca_basis(x)
    assert all(a[np.argmax(np.abs(a))] > 0 for a in axes)


def test_attention_maps_rows_are_distributions_over_keys():
    model = _tiny_unet()
    rows = AttentionMaps(timesteps=3).compute(_unet_context(model))
    assert [r["timestep"] for r in rows] == [9.0, 4.0, 0.0]  # T = 10: evenly spaced from T-1 to 0
    for r in rows:
        w = decode_blob(r["blob"])
        assert w.dtype == np.float16 and w.shape == (2, 64, 64)  # heads, Q = K = 8 x 8 positions
        np.testing.assert_allclose(w.astype(np.float32).sum(-1), 1.0, atol=5e-3)
        assert 0.0 < r["value"] <= 1.0
    again = AttentionMaps(timesteps=3).compute(_unet_context(model))
    assert [r["blob"] for r in again] == [r["blob"] for r in rows]  # deterministic
    with pytest.raises(CellError, match=r"block 9 does not exist; the model has 4 attention block\(s\)"):
        AttentionMaps(block=9).compute(_unet_context(model))


def test_attention_maps_of_a_model_without_attention_is_no_rows():
    assert AttentionMaps().compute(metric_context(n=4)) == []  # the synthetic stand-in


def test_attention_capture_leaves_the_network_unchanged():
    model = _tiny_unet()
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([3, 7]), torch.tensor([1, 2])
    with torch.inference_mode():
        before = model.net(x, t, c)
    maps = model.attention_maps(x, t, c)
    assert len(maps) == 4 and maps[0].shape == (2, 2, 64, 64)
    mha = model.net.attention_layers()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in mha)
    with torch.inference_mode():
        np.testing.assert_array_equal(model.net(x, t, c).numpy(), before.numpy())


# ----------------------------------------------------------------------------- plots


def test_centre_query_map_is_relative_to_uniform():
    w = np.full((2, 16, 16), 1 / 16)
    amap, centre = centre_query_map(w)
    assert amap.shape == (4, 4) and centre == (2, 2)
    np.testing.assert_allclose(amap, 1.0)


def test_plots_draw_nothing_without_their_metrics(tmp_path):
    df = pd.DataFrame({c: [] for c in COLUMNS})
    for cls in (SampleGrids, DenoisingPlot, LatentSpacePlot, AttentionPlot):
        assert cls().draw(df, tmp_path) == []


TINY = """
[benchmark]
name = "visual"
seed = 0

[dataset]
name = "digits"
image_size = 16

[model]
name = "unet"
base_channels = 8
channel_mults = [1, 2]
num_heads = 2
norm_groups = 4
timesteps = 10

[model.train]
epochs = 1
max_steps = 2

[model.distill]
epochs = 1
max_steps = 2

[sampling]
steps = 3
num_samples = 8
trajectory_samples = 1
warmup = false

[matrix]
size_factor = [0.25, 0.5]
cfg_scale = [1.0]
seed = [0]

[metrics]
names = ["sample_grid", "denoising_strip", "latent_pca", "attention_maps"]

[execution]
device = "cpu"
"""


def test_end_to_end_run_and_plot(tmp_path, capsys):
    matrix = tmp_path / "tiny.toml"
    matrix.write_text(TINY)
    results, figures = tmp_path / "results", tmp_path / "figures"
    assert main(["run", str(matrix), "--results", str(results)]) == 0
    df = load_results(results)
    assert (df["status"] == "ok").all()
    per_cell = df.groupby("metric", observed=True)["cell_id"].nunique()
    assert per_cell.to_dict() == {"attention_maps": 3, "denoising_strip": 3, "latent_pca": 3, "sample_grid": 3,
                                  "sample_grid_conditions": 3}
    assert df["blob"].notna().all()
    # paired design: the same conditions in every variant
    conds = {decode_blob(b).tobytes() for b in df.loc[df["metric"] == "sample_grid_conditions", "blob"]}
    assert len(conds) == 1
    # every variant is projected on the teacher's basis: the same variance ratio everywhere
    assert df.loc[df["metric"] == "latent_pca", "value"].nunique() == 1

    capsys.readouterr()
    kinds = [a for k in ("sample_grids", "denoising", "latent_space", "attention") for a in ("--kind", k)]
    assert main(["plot", str(results), *kinds, "--out", str(figures)]) == 0
    written = {Path(p).relative_to(figures).as_posix() for p in capsys.readouterr().out.split()}
    assert written == {
        "samples/samples_teacher_cfg1.png",
        "samples/samples_size0.5_cfg1.png",
        "samples/samples_size0.25_cfg1.png",
        "samples/comparison_cfg1.png",
        "denoising/denoising_cfg1.png",
        "latent_space/latent_pca_cfg1.png",
        "attention/attention_cfg1.png",
        "attention/attention_heads_cfg1.png",
    }
    for p in written:
        assert (figures / p).stat().st_size > 5_000

    # an export through the CLI leaves the bytes out
    assert main(["results", str(results), "--export", "csv", "--out", str(tmp_path / "rows.csv")]) == 0
    exported = pd.read_csv(tmp_path / "rows.csv")
    assert "blob" not in exported.columns and len(exported) == len(df)
