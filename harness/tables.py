"""Summaries of results: the table ``bench results`` prints, and exports to CSV / JSON.

Reading the results is :func:`harness.results.load_results`; this module only shapes
the DataFrame it returns (``bench report`` builds on :func:`summarize` too).

A metric may report its own uncertainty of each value in ``value_sd`` (KID: its s.d.
over subsets; FID-infinity: the standard error of its intercept). :func:`summarize`
carries it as the root mean square over seeds of the per-seed ``value_sd``,
``sqrt(mean(value_sd_i ** 2))``: the typical uncertainty of ONE value (the pooled s.d.
when every seed used as many subsets), to be read beside the s.d. over seeds. It is not
the uncertainty of the mean over seeds, which would shrink with more seeds.

:func:`mixed_sample_sizes` finds what a table should not be read as: values of a metric
whose expected value depends on the number of samples (``Metric.sample_size_biased``,
FID) computed at different ``num_samples`` or ``num_reference``, and
:func:`sample_size_warning` says so in one line (``bench results`` and ``bench report``
print it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
#: :func:`summarize`'s statistics columns (every other column is a group column)
STATS = ("metric", "higher_is_better", "mean", "std", "n", "errors", "delta_mean", "value_sd")


def is_diagnostic(df: pd.DataFrame) -> pd.Series:
    """Diagnostic rows: an array in ``blob`` and no ``value_sd``; their ``value`` is a count
    (images kept, states kept), not a score, so tables leave them out.

    A row with a blob AND a ``value_sd`` is a score that carries its working (``fid_inf``:
    FID-infinity with the FID-vs-n curve it was extrapolated from) and stays in tables.
    """
    import pandas as pd

    if "blob" not in df:
        return pd.Series(False, index=df.index)
    has_sd = df["value_sd"].notna() if "value_sd" in df else pd.Series(False, index=df.index)
    return df["blob"].notna() & ~has_sd


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
        rows), ``delta_mean`` when ``df`` has a ``delta`` column, and ``value_sd`` when it
        has a ``value_sd`` column: the root mean square of the rows' own ``value_sd``
        (NaN where no row has one; see the module docstring).
    """
    import pandas as pd

    if by is None:
        extras = sorted(c for c in df.columns if c not in COLUMNS and c not in ADDED_COLUMNS and c != "seed")
        by = [c for c in (*SUMMARY_AXES, *extras) if c in df.columns and df[c].notna().any()]
    by = [c for c in by if c not in ("metric", "seed", "timestep")]
    data = df[~is_diagnostic(df)].copy()  # sample grids, attention maps: their value is a count
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
    if "value_sd" in data:
        aggs["value_sd"] = ("_var", "mean")  # the mean variance; its root below
        data["_var"] = data["value_sd"].where(~is_error).astype(float) ** 2
    out = data.groupby([*by, "metric"], dropna=False, sort=True).agg(**aggs).reset_index()
    out["errors"] = out["errors"].astype(int)
    if "value_sd" in out:
        out["value_sd"] = out["value_sd"] ** 0.5
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


#: what the ``value_sd`` column of the summary holds (the caption of ``bench results``' table)
VALUE_SD_NOTE = ("value_sd: the metric's own uncertainty of one value (KID: s.d. over subsets; fid_inf: standard "
                 "error of the extrapolation), root mean square over seeds")


def format_table(summary: pd.DataFrame, title: str | None = None, *, notes: bool = True) -> Table:
    """A rich table of :func:`summarize`'s output; columns equal on every row are left out
    (and named in the caption). With ``notes``, the caption also says what the
    ``value_sd`` column holds, when the table shows one (:data:`VALUE_SD_NOTE`)."""
    import pandas as pd
    from rich.table import Table

    groups = [c for c in summary.columns if c not in STATS]
    shown = [c for c in groups if summary[c].nunique(dropna=False) > 1]
    constant = [c for c in groups if c not in shown and len(summary) and summary[c].notna().all()]
    caption = ", ".join(f"{c}={format_value(summary[c].iloc[0])}" for c in constant) or None
    has_sd = "value_sd" in summary and bool(summary["value_sd"].notna().any())
    if has_sd and notes:
        caption = "\n".join(filter(None, [caption, VALUE_SD_NOTE]))
    table = Table(title=title, caption=caption)
    for c in shown:
        table.add_column(c, justify="right" if pd.api.types.is_numeric_dtype(summary[c]) else "left")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    table.add_column("n", justify="right")
    if has_sd:
        table.add_column("value_sd", justify="right")
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
        if has_sd:
            cells.append(format_value(row["value_sd"]))
        if has_errors:
            cells.append(str(int(row["errors"])) if row["errors"] else "")
        if "delta_mean" in summary:
            cells.append(format_value(row["delta_mean"], signed=True))
        table.add_row(*cells)
    return table


# ----------------------------------------------------------------------------- sample sizes

#: the columns that hold a sample size a biased metric's value depends on
SAMPLE_SIZE_COLUMNS = ("num_samples", "num_reference")


@dataclass(frozen=True)
class MixedSampleSizes:
    """A sample-size-biased metric whose values in one table come from different sample sizes."""

    metric: str
    #: ``num_samples`` or ``num_reference``
    column: str
    #: the distinct sizes, ascending
    sizes: tuple[int, ...]
    #: the benchmark (the report's table), or None (``bench results``' one table)
    benchmark: str | None = None

    def __str__(self) -> str:
        where = f" (benchmark {self.benchmark})" if self.benchmark else ""
        return f"{self.metric}{where} at {self.column} {', '.join(map(str, self.sizes))}"


def biased_metric_names(names: Iterable[str], registry: Any = None) -> set[str]:
    """The ``names`` whose registered metric class has ``sample_size_biased = True``
    (names not registered, e.g. of an uninstalled plugin, are skipped).

    :param registry: a :class:`harness.registry.Registry`; default: the installed plugins'.
    """
    if registry is None:
        from harness.registry import build_registry

        registry = build_registry()
    registered = set(registry.names("metrics"))
    return {n for n in names if n in registered and getattr(registry.get("metrics", n), "sample_size_biased", False)}


def mixed_sample_sizes(df: pd.DataFrame, biased: Callable[[Iterable[str]], set[str]] = biased_metric_names,
                       by_benchmark: bool = False) -> list[MixedSampleSizes]:
    """Sample-size-biased metrics compared at different sample sizes in one table.

    :param df: result rows (error rows and NaN values are not compared, so not counted).
    :param biased: which of the given metric names are sample-size-biased (default:
        :func:`biased_metric_names` over the installed plugins); called only with the
        metrics whose rows hold more than one size, so a folder without any builds no
        registry.
    :param by_benchmark: one table per benchmark (the report) rather than one for all
        (``bench results``).
    """
    cols = [c for c in SAMPLE_SIZE_COLUMNS if c in df]
    if not len(df) or not cols:
        return []
    rows = df[(df["status"].astype(object) != "error") & df["value"].notna()] if "status" in df else df
    keys = ["benchmark", "metric"] if by_benchmark and "benchmark" in rows else ["metric"]
    found = []
    for key, part in rows.groupby([rows[k].astype(str) for k in keys], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for c in cols:
            sizes = tuple(sorted(int(v) for v in part[c].dropna().unique()))
            if len(sizes) > 1:
                found.append(MixedSampleSizes(key[-1], c, sizes, key[0] if len(key) > 1 else None))
    names = biased({m.metric for m in found}) if found else set()
    return [m for m in found if m.metric in names]


def sample_size_warning(found: Sequence[MixedSampleSizes]) -> str | None:
    """One line naming every metric of :func:`mixed_sample_sizes` and its sizes; None if none."""
    if not found:
        return None
    return (f"{'; '.join(map(str, found))} in one table, but the value depends on the number of samples (biased "
            "at small n): values at different n are not comparable; compare at equal n, or use kid (unbiased) or "
            "fid_inf (extrapolated to infinite n)")


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
