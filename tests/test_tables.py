"""Summaries and exports of results (harness/tables.py): what ``bench results`` prints."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from test_store import reference_case, row

from harness.errors import UserError
from harness.store import ResultStore, load_results
from harness.tables import export, format_table, summarize


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
