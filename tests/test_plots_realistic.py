"""Every built-in plot on results as analysts have them, and plots drawn in isolation.

The frame mixes a real run of ``benchmarks/synthetic.toml`` (three pruning methods, two
rates, two seeds, the image diagnostics, a swept pruner option stored as a nullable
``Int64`` column, a swept string option and a swept metric option) with the hand-made
distillation and pruning studies of ``test_plots`` spoilt the way real folders are: NaN
values, metrics missing for some variants, failed cells and a swept ``boolean`` option.
``bench plot`` over it must draw every figure, and a crashing third-party plot costs
only its own figures: one line on stderr, exit code 1.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from _matrices import SYNTHETIC
from test_plots import distillation_rows, pruning_rows

from harness import Plot, hookimpl, load_results, runner
from harness.cli import main
from harness.drawing import PlotFailure, draw_plots
from harness.store import rows_to_table
from plugins.plots import bench_register_plots

#: the synthetic matrix with what makes plots trip: swept options of one method only
SWEEP = [
    'matrix.pruning_method=["none", "magnitude", "iterative"]',
    "matrix.pruning_rate=[0.3, 0.6]",
    "matrix.cfg_scale=[1.0]",
    "matrix.seed=[0, 1]",
    'matrix."pruners.iterative.rounds"=[1, 2]',
    'matrix."pruners.magnitude.protect"=[["out_conv"], []]',
    'matrix."metrics.synthetic_quality.noise"=[0.01, 0.02]',
    "pruners.iterative.finetune_steps=1",
    'metrics.names=["synthetic_quality", "generation_time", "sample_grid", "denoising_strip", "latent_pca"]',
]


def _spoilt(rows: list[dict[str, Any]], benchmark: str) -> list[dict[str, Any]]:
    """``rows`` as a real folder has them: a NaN value in every 7th row, one metric
    missing for one variant, a swept boolean option (missing on other methods) and every
    cell of one variant failed."""
    out = []
    for i, row in enumerate(rows):
        row = {**row, "benchmark": benchmark}
        variant = (row["size_factor"], row["pruning_method"], row["pruning_rate"])
        if variant[1] != "none" and row["metric"] == "fid_digits" and row["pruning_rate"] == 0.9:
            continue  # a metric missing for one variant
        if row["size_factor"] == 0.1 and row["metric"] == "trajectory_mse":
            continue
        if row["pruning_method"] == "random":
            row["pruners.random.balanced"] = row["seed"] == 0
        if i % 7 == 3:
            row["value"] = math.nan
        if variant[1] == "magnitude" and row["pruning_rate"] == 0.5 or variant[0] == 0.5 and row["cfg_scale"] == 3.0:
            row.update(status="error", value=math.nan, error="RuntimeError: out of memory\n(second line)")
        out.append(row)
    return out


@pytest.fixture(scope="module")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder of three benchmarks: a real swept synthetic run, and the hand-made
    distillation and pruning studies, spoilt."""
    root = tmp_path_factory.mktemp("realistic")
    summary = runner.run(SYNTHETIC, SWEEP, results_dir=str(root), stream=io.StringIO(), interactive=False)
    assert summary.error == 0 and summary.ok > 30
    for name, rows in (("distillation", distillation_rows()), ("pruning", pruning_rows())):
        run = root / name / "20260101-000000-abcd"
        run.mkdir(parents=True)
        pq.write_table(rows_to_table(_spoilt(rows, name)), run / "cells.parquet")
    return root


def _builtin_plots() -> list[type]:
    registered: list[type] = []
    bench_register_plots(register=registered.append)
    return registered


@pytest.fixture(scope="module")
def drawn(realistic: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Path]]]:
    """Every built-in plot drawn on the whole folder (``compare`` on where offered), in isolation."""
    out = tmp_path_factory.mktemp("figures")
    plots = {cls.name: cls(compare=True) if cls.name == "pruning_curves" else cls() for cls in _builtin_plots()}
    paths, failures = draw_plots(plots, load_results(realistic), out)
    assert failures == []
    return out, paths


def test_the_frame_is_as_realistic_as_claimed(realistic: Path) -> None:
    df = load_results(realistic)
    assert str(df["pruners.iterative.rounds"].dtype) == "Int64" and df["pruners.iterative.rounds"].isna().any()
    assert str(df["pruners.random.balanced"].dtype) == "boolean" and df["pruners.random.balanced"].isna().any()
    assert df["pruners.magnitude.protect"].isna().any() and df["metrics.synthetic_quality.noise"].nunique() == 2
    assert (df["status"] == "error").any() and df.loc[df["status"] == "ok", "value"].isna().any()
    assert df["seed"].nunique() == 2 and df["blob"].notna().any()


#: plots with nothing to draw here: no attention maps in the synthetic model, no fid_inf rows
NOTHING_TO_DRAW = {"attention", "sample_size_bias"}


@pytest.mark.parametrize("cls", _builtin_plots(), ids=lambda c: c.name)
def test_every_builtin_plot_draws_the_realistic_frame(cls: type, drawn: tuple[Path, dict[str, list[Path]]]) -> None:
    out, paths = drawn
    files = paths[cls.name]
    assert bool(files) == (cls.name not in NOTHING_TO_DRAW)
    for p in files:
        assert p.is_file() and p.stat().st_size > 100 and out in p.parents


def test_sample_grids_show_each_value_of_a_swept_option(drawn: tuple[Path, dict[str, list[Path]]]) -> None:
    # the bug was "boolean value of NA is ambiguous" on the Int64 option column
    names = {p.name for p in drawn[1]["sample_grids"]}
    for slug in ("iterative_rate0.3_rounds1", "iterative_rate0.3_rounds2", 'magnitude_rate0.6_protect["out_conv"]',
                 "magnitude_rate0.6_protect[]", "teacher"):
        assert f"samples_{slug}_cfg1.png" in names


# ------------------------------------------------------------------------- isolation


class Crashing(Plot):
    """Raises on any frame (test plugin)."""

    name = "crashing"

    def draw(self, df: Any, out_dir: Path) -> list[Path]:
        raise RuntimeError("plot bug\non two lines")


class CrashingPlugin:
    @hookimpl
    def bench_register_plots(self, register: Any) -> None:
        register(Crashing)


def test_bench_plot_draws_every_other_figure_and_exits_1_with_one_line(
    realistic: Path, drawn: tuple[Path, dict[str, list[Path]]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    extra_plugins: Any,
) -> None:
    extra_plugins(CrashingPlugin())
    out = tmp_path / "figs"
    assert main(["plot", str(realistic), "--compare", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: plot crashing failed: RuntimeError: plot bug on two lines"]
    expected = sorted(str(p.relative_to(drawn[0])) for files in drawn[1].values() for p in files)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == expected
    assert sorted(captured.out.split()) == sorted(str(out / p) for p in expected)


def test_draw_plots_records_the_failure_and_draws_the_rest(tmp_path: Path) -> None:
    class Fine(Plot):
        name = "fine"

        def draw(self, df: Any, out_dir: Path) -> list[Path]:
            path = Path(out_dir) / "fine.txt"
            path.write_text("ok")
            return [path]

    paths, failures = draw_plots({"crashing": Crashing(), "fine": Fine()}, pd.DataFrame(), tmp_path)
    assert paths == {"crashing": [], "fine": [tmp_path / "fine.txt"]}
    assert failures == [PlotFailure("crashing", "RuntimeError", "plot bug on two lines")]
    assert str(failures[0]) == "plot crashing failed: RuntimeError: plot bug on two lines"


def test_a_plot_that_succeeds_exits_0(realistic: Path, tmp_path: Path) -> None:
    assert main(["plot", str(realistic), "--kind", "synthetic_curve", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "synthetic" / "synthetic" / "expected_pruning_curve.png").is_file()
