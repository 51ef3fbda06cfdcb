"""Summaries and exports of results (harness/tables.py): what ``bench results`` prints."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from test_store import reference_case, row

from harness.errors import UserError
from harness.store import ResultStore, load_results
from harness.tables import (
    VALUE_SD_NOTE,
    export,
    format_table,
    mixed_sample_sizes,
    sample_size_warning,
    summarize,
)


def test_summarize_means_over_seeds(tmp_path):
    df = load_results(reference_case(tmp_path), with_reference=True)
    s = summarize(df)
    assert {"role", "size_factor", "cfg_scale", "metric", "mean", "std", "n", "errors", "delta_mean"} <= set(s.columns)
    assert "seed" not in s.columns
    fid = s[(s["metric"] == "fid") & (s["role"] == "student") & (s["cfg_scale"] == 7.5)]
    assert fid["mean"].item() == 78.5 and fid["n"].item() == 2 and fid["delta_mean"].item() == 3.0
    assert math.isclose(fid["std"].item(), math.sqrt(0.5))
    # a metric stored only per step is averaged over its steps
    eps = s[(s["metric"] == "eps_mse (mean over t)") & (s["role"] == "student")]
    assert eps["mean"].tolist() == [2.75, 2.75]
    per_t = summarize(df, per_timestep=True)
    assert set(per_t.loc[per_t["metric"] == "eps_mse", "timestep"]) == {0.0, 500.0}


def test_summarize_counts_errors_and_format_table(tmp_path):
    run = ResultStore(tmp_path, "b").new_run({})
    run.write_cell("a0", [row("fid", 1.0, seed=0, pruning_method="magnitude", higher_is_better=False)])
    run.write_cell("a1", [row("fid", 3.0, seed=1, pruning_method="magnitude", higher_is_better=False)])
    run.write_cell("a2", [row("fid", float("nan"), status="error", error="x", seed=2, pruning_method="magnitude")])
    run.write_cell("b0", [row("fid", 7.0, seed=0, pruning_method="random", higher_is_better=False)])
    s = summarize(load_results(tmp_path))
    assert s[["pruning_method", "mean", "n", "errors"]].values.tolist() == [["magnitude", 2.0, 2, 1], ["random", 7.0, 1, 0]]

    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(format_table(s, title="b"))
    text = console.export_text()
    assert "magnitude" in text and "fid ↓" in text and "2 ± 1.414" in text and "errors" in text
    assert "benchmark=b" in text  # constant columns go to the caption


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_export_round_trips(tmp_path, fmt):
    run = ResultStore(tmp_path, "b").new_run({})
    run.write_cell("c1", [row("fid", 1.5, seed=0), row("acc", 0.5, seed=0, timestep=3.0)])
    df = load_results(tmp_path)
    out = export(df, fmt, tmp_path / "out" / f"rows.{fmt}")
    back = pd.read_json(out) if fmt == "json" else pd.read_csv(out)
    assert back["value"].tolist() == [1.5, 0.5] and back["metric"].tolist() == ["fid", "acc"]
    if fmt == "json":
        recs = json.loads(out.read_text())
        assert recs[0]["timestep"] is None and recs[0]["timestamp"].endswith("Z")


def test_export_refuses_an_unknown_format(tmp_path):
    with pytest.raises(UserError, match=r"--export: unknown format 'xlsx' \(valid: 'csv', 'json'\)"):
        export(pd.DataFrame(), "xlsx", tmp_path / "x")  # type: ignore[arg-type]


def test_summarize_carries_value_sd_as_the_root_mean_square_over_seeds(tmp_path):
    """KID-like rows: value_sd per seed -> sqrt(mean(value_sd ** 2)); NaN where no row has one."""
    from harness.schema import encode_blob

    run = ResultStore(tmp_path, "b").new_run({})
    for seed, sd in ((0, 0.003), (1, 0.004), (2, None)):
        run.write_cell(f"c{seed}", [
            row("kid", 0.01 * (seed + 1), seed=seed, value_sd=sd),
            row("fid", 10.0 + seed, seed=seed),
            # a score that carries its working (fid_inf's curve): kept; a diagnostic array: left out
            row("fid_inf", 5.0, seed=seed, value_sd=0.5, blob=encode_blob(np.ones((4, 3)))),
            row("sample_grid", 64.0, seed=seed, blob=encode_blob(np.zeros((2, 2), dtype=np.uint8))),
        ])
    s = summarize(load_results(tmp_path)).set_index("metric")
    assert sorted(s.index) == ["fid", "fid_inf", "kid"]
    assert s.loc["kid", "value_sd"] == pytest.approx(math.sqrt((0.003 ** 2 + 0.004 ** 2) / 2))  # seed 2 has none
    assert s.loc["kid", "n"] == 3 and s.loc["fid_inf", "value_sd"] == pytest.approx(0.5)
    assert math.isnan(s.loc["fid", "value_sd"])

    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(format_table(s.reset_index()))
    text = console.export_text()
    assert "value_sd" in text and f"{math.sqrt(0.0000125):.4g}" in text
    assert VALUE_SD_NOTE in " ".join(text.split())  # the caption says what it is (wrapped to the table)
    console = Console(record=True, width=160)
    console.print(format_table(s.reset_index().drop(columns="value_sd")))
    assert "value_sd" not in console.export_text()  # no column without values


def test_mixed_sample_sizes_names_biased_metrics_per_table(tmp_path):
    run = ResultStore(tmp_path, "b").new_run({})
    for i, (bench_n, n, status) in enumerate([(64, 64, "ok"), (64, 256, "ok"), (64, 1000, "error")]):
        run.write_cell(f"c{i}", [row("fid", 1.0 if status == "ok" else math.nan, status=status, seed=0,
                                     num_samples=n, num_reference=5000, pruning_method=f"m{i}"),
                                 row("acc", 0.5, seed=0, num_samples=n, pruning_method=f"m{i}")])
    df = load_results(tmp_path)
    asked: list[set[str]] = []

    def biased(names):
        asked.append(set(names))
        return {"fid"} & set(names)

    (found,) = mixed_sample_sizes(df, biased)
    assert (found.metric, found.column, found.sizes, found.benchmark) == ("fid", "num_samples", (64, 256), None)
    assert asked == [{"fid", "acc"}]  # the error row's n=1000 is not compared
    (found,) = mixed_sample_sizes(df, biased, by_benchmark=True)
    assert found.benchmark == "b" and str(found) == "fid (benchmark b) at num_samples 64, 256"
    line = sample_size_warning([found])
    assert "\n" not in line and "kid" in line and "fid_inf" in line
    assert sample_size_warning([]) is None
    asked.clear()
    assert mixed_sample_sizes(df[df["num_samples"] == 64], biased) == [] and asked == []  # no registry needed
