"""The built-in plots: every seed file is written, nothing is drawn without data, and the
numbers behind the figures (pivots, normalisation, inversion, Pareto front, budget and
cliff) are right on hand-made cases.

The frames are built by hand as the runner would store them (every column of
``harness.schema.COLUMNS``), written as a Parquet fragment and read back with
``harness.load_results``, so the plots see categoricals and nullable dtypes as in use.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from harness import seed_stats
from harness.schema import COLUMNS, size_tier
from harness.store import load_results, rows_to_table
from plugins.plots import _labels as lb
from plugins.plots import bench_register_plots
from plugins.plots.attention import AttentionPlot
from plugins.plots.latent_space import LatentSpacePlot
from plugins.plots.pruning import PruningCurves, pruning_groups
from plugins.plots.pruning_exports import (
    PruningJSON,
    PruningSummary,
    budget_and_cliff,
    quality_loss,
    summary_text,
)
from plugins.plots.pruning_pareto import PruningPareto, pareto_front
from plugins.plots.sample_size import SampleSizeBias
from plugins.plots.synthetic import SyntheticCurve
from plugins.plots.trajectory import (
    TrajectoryHeatmaps,
    TrajectoryRadar,
    cfg_size_table,
    normalised_tables,
    radar_table,
)
from plugins.plots.trajectory_curves import (
    DimensionalityPlot,
    FIDvsSize,
    NoisePredictionPlot,
    SizeDependent,
    TimeDependent,
)
from plugins.plots.visual import DenoisingPlot, SampleGrids

SIZES = (0.1, 0.5, 1.0)
CFGS = (1.0, 3.0, 7.5)
SEEDS = (0, 1)
STEP_T = (900, 700, 500, 300, 100)
NOISE_T = tuple(int(t) for t in np.linspace(0, 999, 6).round())
RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: relative loss of label_accuracy per rate: magnitude; random loses twice as much
MAGNITUDE_LOSS = {0.1: 0.01, 0.2: 0.02, 0.3: 0.04, 0.4: 0.08, 0.5: 0.12, 0.6: 0.20, 0.7: 0.30, 0.8: 0.50, 0.9: 0.70}
REF_ACCURACY = 0.9
TEACHER_PARAMS = 100_000

ALL_PLOTS = (
    TrajectoryHeatmaps,
    TrajectoryRadar,
    TimeDependent,
    NoisePredictionPlot,
    DimensionalityPlot,
    FIDvsSize,
    SizeDependent,
    PruningCurves,
    PruningPareto,
    PruningSummary,
    PruningJSON,
    SyntheticCurve,
    SampleSizeBias,
    SampleGrids,
    DenoisingPlot,
    LatentSpacePlot,
    AttentionPlot,
)


def _cell(benchmark: str, size: float | None, method: str, rate: float, cfg: float, seed: int, **cols) -> dict:
    name = f"{benchmark}[size={size},method={method},rate={rate},cfg={cfg},seed={seed}]"
    role = ("reference" if size is None else "student") if method == "none" else ("pruned" if size is None else "pruned_student")
    ratio = 1.0 if size is None else size
    return {
        "benchmark": benchmark,
        "run_id": "20260101-000000-abcd",
        "cell_id": f"{abs(hash(name)) % 16**8:08x}",
        "cell_name": name,
        "role": role,
        "model": "unet",
        "size_factor": math.nan if size is None else size,
        "size_tier": size_tier(size),
        "param_ratio": ratio,
        "pruning_method": method,
        "pruning_rate": rate,
        "sparsity": 0.0,
        "cfg_scale": cfg,
        "sampler": "ddim",
        "steps": len(STEP_T),
        "seed": seed,
        "dataset": "digits",
        "num_samples": 64,
        "num_params": int(TEACHER_PARAMS * ratio),
        "nonzero_params": int(TEACHER_PARAMS * ratio),
        "macs": 2.0e6 * ratio,
        "speedup": 1.0 / (0.3 + 0.7 * ratio),
        "status": "ok",
        "error": None,
        "duration_s": 0.5,
        **cols,
    }


def _metric_rows(cell: dict, values: dict[str, float], lower: frozenset[str] = lb.LOWER_IS_BETTER) -> list[dict]:
    rows = []
    for metric, value in values.items():
        if isinstance(value, dict):  # per-step rows: {timestep: value}
            for t, v in value.items():
                rows.append({**cell, "metric": metric, "value": v, "timestep": float(t),
                             "higher_is_better": metric[:-2] not in lower})
        else:
            rows.append({**cell, "metric": metric, "value": value, "timestep": math.nan,
                         "higher_is_better": metric not in lower})
    return rows


def distillation_rows() -> list[dict]:
    """Teacher + students 0.1/0.5/1.0 over CFG 1/3/7.5 and 2 seeds, every distillation metric."""
    rows = []
    for size in (None, *SIZES):
        s = 1.0 if size is None else size
        for cfg in CFGS:
            for seed in SEEDS:
                jitter = 0.01 * (seed - 0.5)  # mean over the two seeds = the noiseless value
                g = 0.02 * math.log(cfg)
                teacher = size is None
                traj = {
                    "path_length_similarity": 1.0 if teacher else 0.55 + 0.4 * s - g + jitter,
                    "trajectory_mse": 0.0 if teacher else 0.06 * (1.2 - s) + 0.5 * g + jitter / 10,
                    "directional_consistency": 1.0 if teacher else 0.5 + 0.45 * s - g + jitter,
                    "distribution_similarity": 1.0 if teacher else 0.35 + 0.5 * s - g + jitter,
                }
                values: dict = dict(traj)
                for name, v in traj.items():
                    values[name + "_t"] = {t: v * (0.9 + 0.1 * t / 1000) if "mse" not in name else v * (1 + t / 1000)
                                           for t in STEP_T}
                values.update({
                    "noise_prediction_mse": 0.1 + 0.2 * (1 - s) + jitter,
                    "noise_prediction_mse_t": {t: (0.1 + 0.2 * (1 - s)) * (1.5 - t / 1000) + jitter for t in NOISE_T},
                    "eps_agreement": 1.0 if teacher else 0.7 + 0.28 * s + jitter,
                    "eps_agreement_t": {t: 1.0 if teacher else (0.7 + 0.28 * s) * (0.8 + 0.2 * t / 1000) for t in NOISE_T},
                    "effective_dim_95": 20 + 10 * s - 3 * g + seed,
                    "participation_ratio": 5 + 3 * s + jitter,
                    "effective_dim_95_t": {t: 60 - 40 * (1 - t / 1000) + 10 * s for t in STEP_T},
                    "participation_ratio_t": {t: 30 - 20 * (1 - t / 1000) + 3 * s for t in STEP_T},
                    "fid_digits": 4.0 if teacher else 5 + 30 * (1 - s) + 20 * g + jitter,
                    "label_accuracy": 0.95 if teacher else 0.6 + 0.33 * s + g + jitter,
                    "feature_distance": 0.0 if teacher else 0.3 * (1.1 - s) + jitter,
                    "generation_time": 0.002 * (0.3 + 0.7 * s),
                    "peak_memory_mb": 50 + 100 * s,
                })
                cell = _cell("trajectory_distillation", size, "none", 0.0, cfg, seed)
                rows += _metric_rows(cell, values)
    return rows


def pruning_rows() -> list[dict]:
    """Teacher + magnitude/random pruning at rates 0.1..0.9, CFG 1/7.5, 2 seeds, known decline."""
    rows = []
    for method, rates in (("none", (0.0,)), ("magnitude", RATES), ("random", RATES)):
        for rate in rates:
            loss = 0.0 if method == "none" else min(0.95, MAGNITUDE_LOSS[rate] * (1 if method == "magnitude" else 2))
            for cfg in (1.0, 7.5):
                for seed in SEEDS:
                    jitter = 0.004 * (seed - 0.5)
                    c = 1.0 if cfg == 1.0 else 1.05  # guidance helps a little
                    structured = method == "random"
                    kept = 1 - rate if structured else 1.0
                    cell = _cell("pruning", None, method, rate, cfg, seed,
                                 sparsity=rate, param_ratio=kept,
                                 num_params=int(TEACHER_PARAMS * kept),
                                 nonzero_params=int(TEACHER_PARAMS * (1 - rate)),
                                 macs=2.0e6 * kept,
                                 speedup=1.0 / (1 - 0.6 * rate) if structured else 1.0 + 0.05 * rate)
                    values = {
                        "label_accuracy": REF_ACCURACY * c * (1 - loss) + jitter,
                        "fid_digits": 5 * (1 + 3 * loss) / c + jitter,
                        "feature_distance": 0.5 * loss + abs(jitter),
                        "generation_time": 0.002 / cell["speedup"],
                        "synthetic_quality": 1 / (1 + math.exp((rate - 0.6) / 0.08)) * c + jitter,
                    }
                    rows += _metric_rows(cell, values)
    return rows


def load(rows: list[dict], folder: Path) -> pd.DataFrame:
    """Store ``rows`` as one fragment and read them back as ``bench`` would."""
    run = folder / "bench" / "run"
    run.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table(rows), run / "cells.parquet")
    return load_results(folder)


@pytest.fixture(scope="module")
def distill_df(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return load(distillation_rows(), tmp_path_factory.mktemp("distill"))


@pytest.fixture(scope="module")
def pruning_df(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return load(pruning_rows(), tmp_path_factory.mktemp("pruning"))


@pytest.fixture(scope="module")
def drawn(distill_df: pd.DataFrame, pruning_df: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Path]]]:
    """Every plot drawn once from the frame it is meant for."""
    out = tmp_path_factory.mktemp("figures")
    written: dict[str, list[Path]] = {}
    for cls in ALL_PLOTS:
        opts = {"compare": True} if cls is PruningCurves else {}
        written[cls.name] = cls(**opts).draw(distill_df if cls in DISTILLATION else pruning_df, out)
    return out, written


DISTILLATION = {TrajectoryHeatmaps, TrajectoryRadar, TimeDependent, NoisePredictionPlot, DimensionalityPlot, FIDvsSize, SizeDependent}

# ------------------------------------------------------------------------------ files

SEED_MODEL_COMPARISONS = [
    "radar_plot_grid.png",
    "composite_radar_plot.png",
    "cfg_heatmap_path_length_similarity.png",
    "cfg_heatmap_trajectory_mse.png",
    "cfg_heatmap_mean_directional_consistency.png",
    "cfg_heatmap_distribution_similarity.png",
    "cfg_heatmap_combined.png",
]

EXPECTED = {
    "trajectory_heatmaps": [f"model_comparisons/{n}" for n in SEED_MODEL_COMPARISONS if n.startswith("cfg_")],
    "trajectory_radar": ["model_comparisons/radar_plot_grid.png", "model_comparisons/composite_radar_plot.png"],
    "time_dependent": [f"time_dependent/trajectory_metrics_vs_timestep_cfg{c:g}.png" for c in CFGS],
    "noise_prediction": ["noise_prediction/noise_prediction_vs_timestep.png", "noise_prediction/noise_prediction_vs_size.png"],
    "dimensionality": [*(f"dimensionality/dimensionality_vs_timestep_cfg{c:g}.png" for c in CFGS),
                       "dimensionality/dimensionality_vs_size.png"],
    "fid_vs_size": ["fid/fid_digits_vs_size.png"],
    "size_dependent": ["size_dependent/metrics_vs_size_factor.png", "size_dependent/metrics_vs_param_ratio.png"],
    "pruning_curves": ["pruning/pruning_curves_magnitude.png", "pruning/pruning_curves_random.png",
                       *(f"pruning/compare_{m}.png" for m in ("label_accuracy", "fid_digits", "feature_distance",
                                                             "synthetic_quality", "generation_time"))],
    "pruning_pareto": [f"pruning/pareto_{m}.png" for m in ("label_accuracy", "fid_digits", "feature_distance", "synthetic_quality")],
    "pruning_summary": ["pruning/summary_magnitude.txt", "pruning/summary_random.txt"],
    "pruning_json": ["pruning/results_magnitude.json", "pruning/results_random.json"],
    "synthetic_curve": ["synthetic/expected_pruning_curve.png"],
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_plot_writes_the_expected_files(drawn: tuple[Path, dict[str, list[Path]]], name: str) -> None:
    out, written = drawn
    assert sorted(str(p.relative_to(out)) for p in written[name]) == sorted(EXPECTED[name])
    for p in written[name]:
        data = p.read_bytes()
        assert len(data) > 1000
        if p.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_file_names_of_model_comparisons(drawn: tuple[Path, dict[str, list[Path]]]) -> None:
    out, _ = drawn
    assert sorted(p.name for p in (out / "model_comparisons").iterdir()) == sorted(SEED_MODEL_COMPARISONS)


def test_several_benchmarks_are_drawn_apart(distill_df: pd.DataFrame, pruning_df: pd.DataFrame, tmp_path: Path) -> None:
    # each benchmark has its own teacher: no averaging across them, one folder each
    both = pd.concat([distill_df, pruning_df], ignore_index=True)
    json_paths = PruningJSON().draw(both, tmp_path)
    assert [str(p.relative_to(tmp_path)) for p in json_paths] == ["pruning/pruning/results_magnitude.json",
                                                                   "pruning/pruning/results_random.json"]
    records = json.loads(json_paths[0].read_text())
    assert {r["benchmark"] for r in records} == {"pruning"}
    fid = FIDvsSize().draw(both, tmp_path)
    assert [str(p.relative_to(tmp_path)) for p in fid] == ["trajectory_distillation/fid/fid_digits_vs_size.png"]


def test_registration_lists_every_plot_once() -> None:
    registered: list[type] = []
    bench_register_plots(register=registered.append)
    assert [c.name for c in registered] == [c.name for c in ALL_PLOTS]
    assert all(c.describe() for c in registered)


def test_cli_plot_compare(tmp_path: Path) -> None:
    from harness.cli import main

    load([r for r in pruning_rows() if r["metric"] == "label_accuracy"], tmp_path / "results")
    out = tmp_path / "figs"
    assert main(["plot", str(tmp_path / "results"), "--kind", "pruning_curves", "--compare", "--out", str(out)]) == 0
    assert (out / "pruning" / "compare_label_accuracy.png").exists()
    assert (out / "pruning" / "pruning_curves_random.png").exists()


@pytest.fixture(scope="module")
def pruning_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder of the pruning benchmark with two quality metrics (enough for a summary)."""
    folder = tmp_path_factory.mktemp("pruning_results")
    load([r for r in pruning_rows() if r["metric"] in ("label_accuracy", "fid_digits")], folder)
    return folder


def test_cli_plot_set_option(pruning_results: Path, tmp_path: Path) -> None:
    from harness.cli import main

    def primary_line(*extra: str) -> str:
        out = tmp_path / f"figs{len(extra)}"
        assert main(["plot", str(pruning_results), "--kind", "pruning_summary", *extra, "--out", str(out)]) == 0
        text = (out / "pruning" / "summary_magnitude.txt").read_text()
        return next(line for line in text.splitlines() if line.startswith("Primary metric:"))

    assert primary_line().startswith("Primary metric: label_accuracy (higher is better)")
    assert primary_line("--set", "pruning_summary.primary=fid_digits").startswith(
        "Primary metric: fid_digits (lower is better)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "pruning_summary.primary"],
         "--set pruning_summary.primary: expected PLOT.OPTION=VALUE, e.g. --set pruning_summary.primary=fid_digits"),
        (["--set", "primary=fid_digits"],
         "--set primary=fid_digits: expected PLOT.OPTION=VALUE, e.g. --set pruning_summary.primary=fid_digits"),
        (["--set", "pruning_sumary.primary=fid_digits"],
         "--set pruning_sumary.primary: unknown plot 'pruning_sumary' (did you mean 'pruning_summary'?); valid: "),
        (["--set", "pruning_summary.primry=fid_digits"],
         "--set pruning_summary.primry: unknown option of 'pruning_summary' (did you mean 'primary'?); "
         "valid: primary, budget, cliff"),
        (["--set", "pruning_summary.budget=abc"], "--set pruning_summary.budget: expected float, got str 'abc'"),
        (["--set", "pruning_summary.budget=-1"], "--set pruning_summary: budget = -1 is not a relative loss"),
        (["--kind", "pruning_curves", "--set", "pruning_summary.primary=fid_digits"],
         "--set pruning_summary.primary: plot 'pruning_summary' is not selected by --kind, so the option would have "
         "no effect (selected: 'pruning_curves'); add --kind pruning_summary or drop this --set"),
    ],
    ids=["no equals sign", "no plot name", "unknown plot", "unknown option", "wrong type", "invalid value",
         "plot not selected"],
)
def test_cli_plot_set_mistakes(args: list[str], message: str, pruning_results: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    kind = [] if "--kind" in args else ["--kind", "pruning_summary"]
    out = tmp_path / "figs"
    assert main(["plot", str(pruning_results), *kind, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    if "unknown plot" in message:
        assert "'pruning_summary'" in err and "'sample_grids'" in err  # the valid plot names
    assert not out.exists()  # nothing drawn


# ------------------------------------------------------------------------ no data, no figure


@pytest.mark.parametrize("cls", ALL_PLOTS, ids=lambda c: c.name)
def test_empty_frame_draws_nothing(cls: type, tmp_path: Path) -> None:
    empty = pd.DataFrame({c: [] for c in COLUMNS})
    assert cls().draw(empty, tmp_path) == []
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("cls", ALL_PLOTS, ids=lambda c: c.name)
def test_only_error_rows_draw_nothing(cls: type, distill_df: pd.DataFrame, pruning_df: pd.DataFrame, tmp_path: Path) -> None:
    both = pd.concat([distill_df, pruning_df], ignore_index=True)
    both["status"] = "error"
    assert cls().draw(both, tmp_path) == []


@pytest.mark.parametrize("cls", ALL_PLOTS, ids=lambda c: c.name)
def test_frame_lacking_the_metrics_draws_nothing(cls: type, distill_df: pd.DataFrame, pruning_df: pd.DataFrame, tmp_path: Path) -> None:
    # distillation figures get a pruning study (no students), pruning figures a distillation study
    other = pruning_df if cls in DISTILLATION else distill_df
    assert cls().draw(other, tmp_path) == []


def test_radar_needs_three_metrics(distill_df: pd.DataFrame, tmp_path: Path) -> None:
    two = distill_df[distill_df["metric"].isin(["trajectory_mse", "path_length_similarity"])]
    assert TrajectoryRadar().draw(two, tmp_path) == []


def test_heatmaps_without_trajectory_metrics_draw_nothing(distill_df: pd.DataFrame, tmp_path: Path) -> None:
    rest = distill_df[~distill_df["metric"].isin(lb.TRAJECTORY_METRICS)]
    assert TrajectoryHeatmaps().draw(rest, tmp_path) == []


# ------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize("metric", lb.TRAJECTORY_METRICS)
def test_heatmap_data_is_the_pandas_pivot(distill_df: pd.DataFrame, metric: str) -> None:
    d = distill_df[(distill_df["metric"] == metric) & distill_df["size_factor"].notna()]
    d = d.astype({"metric": object})
    expected = d.pivot_table(index="size_factor", columns="cfg_scale", values="value", aggfunc="mean")
    table = cfg_size_table(distill_df, metric)
    pd.testing.assert_frame_equal(table, expected, check_names=False)
    assert list(table.index) == list(SIZES) and list(table.columns) == list(CFGS)


def test_heatmap_ignores_error_rows_and_per_step_rows(distill_df: pd.DataFrame) -> None:
    bad = distill_df.copy()
    bad["status"] = bad["status"].astype(object)
    sel = (bad["metric"] == "trajectory_mse") & (bad["seed"] == 1)
    bad.loc[sel, "status"] = "error"
    bad.loc[sel, "value"] = 1e9
    table = cfg_size_table(bad, "trajectory_mse")
    seed0 = distill_df[(distill_df["metric"] == "trajectory_mse") & (distill_df["seed"] == 0) & distill_df["size_factor"].notna()]
    expected = seed0.astype({"metric": object}).pivot_table(index="size_factor", columns="cfg_scale", values="value")
    pd.testing.assert_frame_equal(table, expected, check_names=False)


def test_normalised_heatmap_tables(distill_df: pd.DataFrame) -> None:
    tables = normalised_tables(distill_df)
    raw, norm, note = tables["trajectory_mse"]
    np.testing.assert_allclose(norm.to_numpy(), 1 - raw.to_numpy() / raw.to_numpy().max())
    assert f"{raw.to_numpy().max():.4g}" in note
    raw, norm, _ = tables["path_length_similarity"]
    np.testing.assert_allclose(norm.to_numpy(), raw.to_numpy())


def test_normalise_small_cases() -> None:
    mse, note = lb.normalise("trajectory_mse", np.array([0.0, 1.0, 2.0, 4.0]))
    np.testing.assert_allclose(mse, [1.0, 0.75, 0.5, 0.0])
    assert "1 − v / max v (max v = 4)" in note
    scaled, _ = lb.normalise("trajectory_mse", np.array([1.0, 2.0]), scale=8.0)
    np.testing.assert_allclose(scaled, [0.875, 0.75])
    cos, note = lb.normalise("directional_consistency", pd.Series([-0.5, 0.3, 1.0], index=[1, 2, 3]))
    assert list(cos.index) == [1, 2, 3]
    np.testing.assert_allclose(cos.to_numpy(), [0.0, 0.3, 1.0])
    assert "max(cos, 0)" in note
    same, note = lb.normalise("path_length_similarity", np.array([0.2, 0.9]))
    np.testing.assert_allclose(same, [0.2, 0.9])
    assert "as is" in note
    zero, _ = lb.normalise("trajectory_mse", np.array([0.0, 0.0]))  # all identical to the teacher
    np.testing.assert_allclose(zero, [1.0, 1.0])
    assert lb.normalise("trajectory_mse", 1.0, scale=2.0)[0] == 0.5


def test_inversion_makes_higher_better() -> None:
    fid = pd.Series([10.0, 20.0])
    np.testing.assert_allclose(lb.better_up(fid, higher=False), [-10.0, -20.0])
    np.testing.assert_allclose(lb.better_up(fid, higher=True), [10.0, 20.0])
    assert lb.better_up_label("fid_digits", False) == "−FID (digit features)\n(negated: higher is better)"
    assert lb.better_up_label("label_accuracy", True) == "label accuracy"


def test_radar_values(distill_df: pd.DataFrame) -> None:
    table, notes = radar_table(distill_df)
    assert list(table.columns) == [*lb.TRAJECTORY_METRICS, "eps_agreement", "label_accuracy"]
    assert list(table.index) == list(SIZES)
    assert ((table >= 0) & (table <= 1)).all().all()
    # path length similarity, mean over CFG scales and seeds, as is
    d = distill_df[(distill_df["metric"] == "path_length_similarity") & (distill_df["size_factor"] == 0.5)]
    assert table.loc[0.5, "path_length_similarity"] == pytest.approx(d["value"].mean())
    # trajectory_mse with the heatmap's maximum
    mse = cfg_size_table(distill_df, "trajectory_mse")
    assert table.loc[1.0, "trajectory_mse"] == pytest.approx(1 - mse.loc[1.0].mean() / mse.to_numpy().max())
    one_cfg, _ = radar_table(distill_df, cfg_scale=7.5)
    assert one_cfg.loc[1.0, "trajectory_mse"] == pytest.approx(1 - mse.loc[1.0, 7.5] / mse.to_numpy().max())


def test_seed_stats_mean_and_sd_over_seeds() -> None:
    df = pd.DataFrame({"size_factor": [0.1, 0.1, 0.1, 0.1, np.nan, np.nan], "seed": [0, 0, 1, 1, 0, 1],
                       "value": [1.0, 3.0, 4.0, 6.0, 7.0, 9.0]})
    stats = seed_stats(df, ["size_factor"])  # seed 0 mean 2, seed 1 mean 5
    row = stats[stats["size_factor"] == 0.1].iloc[0]
    assert (row["mean"], row["n"]) == (3.5, 2)
    assert row["std"] == pytest.approx(np.std([2.0, 5.0], ddof=1))
    assert stats["size_factor"].isna().sum() == 1  # the teacher's NaN group is kept


def test_pareto_front() -> None:
    x = [1.0, 2.0, 2.0, 3.0, 1.5, np.nan]
    y = [5.0, 4.0, 3.0, 1.0, 4.0, 9.0]
    assert pareto_front(x, y).tolist() == [True, True, False, True, False, False]


def test_quality_loss_directions() -> None:
    assert quality_loss(0.81, 0.9, higher=True) == pytest.approx(0.1)
    assert quality_loss(12.0, 10.0, higher=False) == pytest.approx(0.2)
    assert quality_loss(8.0, 10.0, higher=False) == pytest.approx(-0.2)
    assert math.isnan(quality_loss(0.3, 0.0, higher=False))  # LPIPS-to-itself reference


def test_budget_and_cliff_on_constructed_curve() -> None:
    rates = list(MAGNITUDE_LOSS)
    acc = [REF_ACCURACY * (1 - MAGNITUDE_LOSS[r]) for r in rates]
    res = budget_and_cliff(rates, acc, REF_ACCURACY, higher=True)
    assert (res.best_rate, res.cliff_rate) == (0.4, 0.7)
    fid = [10 * (1 + MAGNITUDE_LOSS[r]) for r in rates]  # lower is better
    res = budget_and_cliff(rates, fid, 10.0, higher=False, budget=0.05, cliff=0.5)
    assert (res.best_rate, res.cliff_rate) == (0.3, 0.9)
    res = budget_and_cliff([0.5], [0.1], 1.0, higher=True)
    assert (res.best_rate, res.cliff_rate) == (None, 0.5)


def test_summary_reports_best_rate_and_cliff(drawn: tuple[Path, dict[str, list[Path]]]) -> None:
    out, _ = drawn
    text = (out / "pruning" / "summary_magnitude.txt").read_text()
    assert "Primary metric: label_accuracy (higher is better)" in text
    assert text.count("Best rate within 10%: 0.4 ") == 2  # one per CFG scale
    assert text.count("Cliff (> 25% loss): 0.7 ") == 2
    random = (out / "pruning" / "summary_random.txt").read_text()
    assert "Best rate within 10%: 0.3 " in random and "Cliff (> 25% loss): 0.6 " in random
    # the per-rate table: the reference and every rate, with measured speed-up
    assert "0 (ref)" in text and all(f"\n{r:g} " in text.replace("  ", " ") or f" {r:g} " in text for r in RATES)
    assert "speed-up" in text and "label_accuracy ↑" in text and "fid_digits ↓" in text


def test_summary_options(pruning_df: pd.DataFrame) -> None:
    (g,) = pruning_groups(pruning_df)
    text = summary_text(g, "magnitude", primary="fid_digits", budget=0.2, cliff=0.5)
    assert "Primary metric: fid_digits (lower is better)" in text
    # fid loss = 3 * accuracy loss: within 20% up to 0.3 (0.12); above 50% from 0.6 (0.6)
    assert "Best rate within 20%: 0.3 " in text and "Cliff (> 50% loss): 0.6 " in text
    text = summary_text(g, "magnitude", primary="nope")
    assert "Primary metric 'nope' has no rows" in text
    assert f"({len(SEEDS)} seeds: {', '.join(map(str, SEEDS))})" in text  # same seeds everywhere: said once


def test_summary_names_the_seeds_of_the_method_and_of_the_reference(pruning_df: pd.DataFrame) -> None:
    one_seed = pruning_df[(pruning_df["pruning_method"] == "none") | (pruning_df["seed"] == SEEDS[0])]
    (g,) = pruning_groups(one_seed)
    text = summary_text(g, "magnitude")
    assert f"(magnitude: 1 seed: {SEEDS[0]}; reference: {len(SEEDS)} seeds: " in text
    with pytest.raises(Exception, match="budget"):
        PruningSummary(budget=-1.0)


def test_json_export_holds_the_raw_rows(drawn: tuple[Path, dict[str, list[Path]]], pruning_df: pd.DataFrame) -> None:
    out, _ = drawn
    records = json.loads((out / "pruning" / "results_magnitude.json").read_text())
    methods = pd.Series([r["pruning_method"] for r in records]).value_counts().to_dict()
    expected = pruning_df["pruning_method"].astype(object).value_counts().to_dict()
    assert methods == {"magnitude": expected["magnitude"], "none": expected["none"]}
    assert set(records[0]) == set(pruning_df.columns) - {"blob"}  # arrays are not exported
    assert records[0]["num_params"] == TEACHER_PARAMS and isinstance(records[0]["num_params"], int)
    first = next(r for r in records if r["pruning_method"] == "magnitude" and r["metric"] == "label_accuracy")
    assert first["value"] == pytest.approx(
        pruning_df[(pruning_df["cell_name"] == first["cell_name"]) & (pruning_df["metric"] == "label_accuracy")]["value"].iloc[0]
    )


def test_pruned_students_get_their_own_reference_and_suffix(tmp_path: Path) -> None:
    rows = []
    for method, rate in (("none", 0.0), ("magnitude", 0.5)):
        for seed in SEEDS:
            cell = _cell("pruning", 0.5, method, rate, 1.0, seed)
            rows += _metric_rows(cell, {"label_accuracy": 0.8 if rate == 0 else 0.6})
    df = load(rows, tmp_path / "r")
    (g,) = pruning_groups(df)
    assert g.base == 0.5 and g.suffix == "_size0.5" and len(g.reference) == 2
    paths = PruningSummary().draw(df, tmp_path / "o")
    assert [p.name for p in paths] == ["summary_magnitude_size0.5.txt"]
    assert "Cliff (> 25% loss): 0.5 " in paths[0].read_text()
