"""Summaries of results: the table ``bench results`` prints, and exports to CSV / JSON.

Reading the results is :func:`harness.results.load_results`; this module only shapes
the DataFrame it returns (``bench report`` builds on :func:`summarize` too).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness import fsio
from harness.errors import UserError
from harness.results import ADDED_COLUMNS
from harness.schema import BINARY_COLUMNS, COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from rich.table import Table

#: axes over which :func:`summarize` groups (seed is what it averages over)
SUMMARY_AXES = (
    "benchmark",
    "role",
    "model",
    "size_factor",
    "pruning_method",
    "pruning_rate",
    "cfg_scale",
    "sampler",
    "steps",
)

#: the direction mark after a metric's name: higher or lower is better
ARROWS = {True: " ↑", False: " ↓"}


def summarize(df: pd.DataFrame, *, by: Sequence[str] | None = None, per_timestep: bool = False) -> pd.DataFrame:
    """Mean, std and count over seeds per (variant, metric): what ``bench results`` prints.

    :param by: the grouping columns; default: the axes (``SUMMARY_AXES`` plus swept
        option columns) that are not empty, i.e. every axis but ``seed``.
    :param per_timestep: keep one row per timestep of per-step metrics. Otherwise a
        metric stored only per step is first averaged over its timesteps (per seed) and
        reported as ``"<metric> (mean over t)"``; per-step rows of metrics that also have
        an overall row are left out.
    :returns: the group columns, ``metric``, ``higher_is_better``, ``mean``, ``std``
        (over seeds, NaN for one seed), ``n`` (values averaged), ``errors`` (errored
        rows), and ``delta_mean`` when ``df`` has a ``delta`` column.
    """
    import pandas as pd

    if by is None:
        extras = sorted(c for c in df.columns if c not in COLUMNS and c not in ADDED_COLUMNS and c != "seed")
        by = [c for c in (*SUMMARY_AXES, *extras) if c in df.columns and df[c].notna().any()]
    by = [c for c in by if c not in ("metric", "seed", "timestep")]
    data = df.copy()
    if "blob" in data:  # diagnostic rows (sample grids, attention maps): their value is a count
        data = data[data["blob"].isna()]
    for c in (*by, "metric"):
        if isinstance(data[c].dtype, pd.CategoricalDtype):
            data[c] = data[c].astype(object)
    if per_timestep:
        by = [*by, "timestep"]
    elif data["timestep"].notna().any():
        data = _mean_over_steps(data, by)
    is_error = data["status"].astype(object) == "error"
    aggs: dict[str, Any] = {
        "higher_is_better": ("higher_is_better", "first"),
        "mean": ("_v", "mean"),
        "std": ("_v", "std"),
        "n": ("_v", "count"),
        "errors": ("_err", "sum"),
    }
    data = data.assign(_v=data["value"].where(~is_error).astype(float), _err=is_error.astype(int))
    if "delta" in data:
        aggs["delta_mean"] = ("_d", "mean")
        data["_d"] = data["delta"].where(~is_error).astype(float)
    out = data.groupby([*by, "metric"], dropna=False, sort=True).agg(**aggs).reset_index()
    out["errors"] = out["errors"].astype(int)
    return out


def _mean_over_steps(data: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per-step rows of metrics stored only per step -> one ``(mean over t)`` row per seed;
    per-step rows of metrics that also have an overall row are dropped."""
    import pandas as pd

    stepped = data["timestep"].notna()
    overall = set(data.loc[~stepped, "metric"])
    only_steps = stepped & ~data["metric"].isin(overall)
    per_seed = (
        data[only_steps]
        .groupby([*by, "metric", "seed"], dropna=False, sort=False)
        .agg(
            value=("value", "mean"),
            higher_is_better=("higher_is_better", "first"),
            status=("status", lambda s: "error" if (s == "error").any() else "ok"),
            **({"delta": ("delta", "mean")} if "delta" in data else {}),
        )
        .reset_index()
    )
    per_seed["metric"] = per_seed["metric"].astype(str) + " (mean over t)"
    return pd.concat([data[~stepped], per_seed], ignore_index=True)


def format_table(summary: pd.DataFrame, title: str | None = None) -> Table:
    """A rich table of :func:`summarize`'s output; columns equal on every row are left out
    (and named in the caption)."""
    import pandas as pd
    from rich.table import Table

    stats = {"metric", "higher_is_better", "mean", "std", "n", "errors", "delta_mean"}
    groups = [c for c in summary.columns if c not in stats]
    shown = [c for c in groups if summary[c].nunique(dropna=False) > 1]
    constant = [c for c in groups if c not in shown and len(summary) and summary[c].notna().all()]
    caption = ", ".join(f"{c}={format_value(summary[c].iloc[0])}" for c in constant) or None
    table = Table(title=title, caption=caption)
    for c in shown:
        table.add_column(c, justify="right" if pd.api.types.is_numeric_dtype(summary[c]) else "left")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    table.add_column("n", justify="right")
    has_errors = bool(len(summary)) and int(summary["errors"].sum()) > 0
    if has_errors:
        table.add_column("errors", justify="right", style="red")
    if "delta_mean" in summary:
        table.add_column("Δ vs reference", justify="right")
    for _, row in summary.iterrows():
        hib = None if pd.isna(row["higher_is_better"]) else bool(row["higher_is_better"])
        cells = [format_value(row[c]) for c in shown]
        cells.append(f"{row['metric']}{ARROWS.get(hib, '')}")
        std = "" if pd.isna(row["std"]) else f" ± {format_value(row['std'])}"
        cells.append(f"{format_value(row['mean'])}{std}")
        cells.append(str(int(row["n"])))
        if has_errors:
            cells.append(str(int(row["errors"])) if row["errors"] else "")
        if "delta_mean" in summary:
            cells.append(format_value(row["delta_mean"], signed=True))
        table.add_row(*cells)
    return table


def format_value(v: Any, signed: bool = False) -> str:
    """A table cell: ``-`` for missing values, 4 significant digits for floats."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    try:
        import pandas as pd

        if pd.isna(v):
            return "-"
    except (TypeError, ValueError):
        pass
    if isinstance(v, float):
        return f"{v:+.4g}" if signed else f"{v:.4g}"
    return str(v)


def export(df: pd.DataFrame, fmt: Literal["json", "csv"], out: str | os.PathLike[str]) -> Path:
    """Write ``df`` as JSON records or CSV to ``out`` (atomically); return the path.

    The ``blob`` column (arrays of diagnostic rows, as bytes) is left out: text formats
    would need base64 of arrays nobody reads as text; the rows themselves (metric,
    value, ...) are kept. Read the arrays from the Parquet files.
    """
    out = Path(out)
    if fmt not in ("json", "csv"):
        raise UserError(f"--export: unknown format {fmt!r} (valid: 'csv', 'json')")
    df = df.drop(columns=[c for c in BINARY_COLUMNS if c in df.columns])
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        text = df.to_json(orient="records", date_format="iso", date_unit="us", indent=1)
    else:
        text = df.to_csv(index=False)
    return fsio.write_bytes(out, text.encode())
