"""What ``bench report`` says about a results folder, gathered before any rendering.

:func:`collect` reads the fragments under a path and, per benchmark, gathers the runs and
their manifests, the summary table with confidence intervals, the compact per-metric
tables of variants by CFG scale (:func:`compare_tables`), the failed cells and the figures
of every plot plugin (drawn into ``<out>/figures/``). The result, a :class:`Report`,
is plain data: :mod:`harness.report_render` turns it into Markdown or HTML.

Confidence intervals are Student t intervals over seeds, ``mean ± t(0.975, n - 1) *
s.d. / sqrt(n)`` with ``n`` the values averaged (one per seed); for the delta to the
reference, the same over the per-seed paired differences. With ``n < 2`` there is no
interval, and the table says so.

A metric with its own uncertainty (``value_sd``: KID's s.d. over subsets, FID-infinity's
standard error) shows it in its compact table: ``mean ± value_sd (seeds ± half-width)``,
the ``value_sd`` of several seeds combined as their root mean square (the typical
uncertainty of one value, :mod:`harness.tables`), as the table's footnote says
(:data:`VALUE_SD_TEXT`). A section warns (:attr:`BenchmarkSection.warnings`) when a table
mixes sample sizes of a sample-size-biased metric (:func:`harness.tables.mixed_sample_sizes`).

Plots are found through the plugin registry, as ``bench plot`` does: the core knows
no plot by name.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.options import option_fields
from harness.errors import UserError
from harness.results import add_reference, fragment_files, load_results, select_runs
from harness.store import MANIFEST
from harness.tables import (STATS, MixedSampleSizes, biased_metric_names, format_table, is_diagnostic,
                            mixed_sample_sizes, sample_size_warning, summarize)
from harness.tables import format_value as _fmt

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"
#: the footnote of a compact table whose metric reports its own uncertainty
VALUE_SD_TEXT = ("± is the metric's own uncertainty of one value, ±1 s.d. (value_sd: KID's s.d. over subsets, "
                 "FID-infinity's standard error; over several seeds, the root mean square of the per-seed values); "
                 "“seeds ± x”: the half-width of the 95% confidence interval of the mean over seeds.")

# ----------------------------------------------------------------------------- data


@dataclass
class RunFacts:
    """One run folder and what its ``_manifest.json`` says (``manifest`` None if it has none)."""

    run_id: str
    path: Path
    manifest: dict[str, Any] | None
    #: cells of this run that are live (not superseded) under the reported folder
    live_cells: int = 0

    def get(self, key: str, default: Any = None) -> Any:
        return (self.manifest or {}).get(key, default)


@dataclass
class FailedCell:
    """A live cell stored with ``status = "error"``."""

    cell_name: str
    cell_id: str
    run_id: str
    errors: list[str]
    metrics: list[str]


@dataclass
class PlotOutcome:
    """What one plot plugin produced for one benchmark: files, or the error it raised."""

    name: str
    description: str
    files: list[Path] = field(default_factory=list)
    error: str | None = None


@dataclass
class SummaryTable:
    """:func:`harness.tables.format_table` as plain text cells (for Markdown and HTML)."""

    headers: list[str]
    right: list[bool]
    rows: list[list[str]]
    caption: str | None
    #: some row has fewer than two values, so no confidence interval
    few_values: bool = False
    #: a ``value_sd`` column is shown (a metric reports its own uncertainty)
    value_sd: bool = False


@dataclass
class CompareTable:
    """One metric's variants (rows) by CFG scale (columns): the mean over seeds ± its 95%
    interval per entry, the best entry of each column marked."""

    metric: str
    #: True / False: which way is better (marks the best); None: descriptive, nothing marked
    higher_is_better: bool | None
    columns: list[str]
    #: ``(variant label, entries)``, teacher / reference first
    rows: list[tuple[str, list[str]]]
    #: ``best[i][j]``: row i holds the best entry of column j
    best: list[list[bool]]
    #: group columns the same on every row, ``"steps=4, sampler=ddim"``
    caption: str | None
    #: the figure drawn for this metric (a file of ``BenchmarkSection.plots``), if any
    figure: Path | None = None
    #: a footnote on what the entries show (:data:`VALUE_SD_TEXT`), if they differ from the default
    note: str | None = None


@dataclass
class BenchmarkSection:
    """Everything the report says about one benchmark."""

    name: str
    runs: list[RunFacts]
    live_ok: int
    live_error: int
    summary: SummaryTable
    diagnostics: list[str]
    failed: list[FailedCell]
    plots: list[PlotOutcome]
    #: per metric, the compact table the report leads with
    compare: list[CompareTable] = field(default_factory=list)
    #: sample-size-biased metrics whose tables mix sample sizes (:func:`harness.tables.mixed_sample_sizes`)
    mixed: list[MixedSampleSizes] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """What the section warns about, one line each (shown above its tables)."""
        line = sample_size_warning(self.mixed)
        return [line] if line else []


@dataclass
class Report:
    """A results folder's report, before rendering."""

    source: Path
    out_dir: Path
    created: _dt.datetime
    benchmarks: list[BenchmarkSection]
    plugin_errors: list[str]

    def plot_failures(self) -> list[str]:
        """One line per plot that raised, naming the plot (and its benchmark if several)."""
        several = len(self.benchmarks) > 1
        return [f"plot {p.name} failed" + (f" on benchmark {b.name}" if several else "") + f": {p.error}"
                for b in self.benchmarks for p in b.plots if p.error is not None]

    def sample_size_warning(self) -> str | None:
        """One line naming every sample-size-biased metric whose table mixes sample sizes
        (every benchmark's); None if no table does."""
        return sample_size_warning([m for b in self.benchmarks for m in b.mixed])


# ----------------------------------------------------------------------------- collecting


def collect(path: Path, out: Path, runs: Sequence[str] | None = None, latest: bool = False) -> Report:
    """Read the results under ``path``, draw the figures into ``out/figures/``, gather the facts.

    ``runs`` / ``latest`` select runs of the benchmark folder ``path``, as for
    :func:`harness.results.load_results`.
    """
    if not path.exists():
        raise UserError(f"{path}: no such file or folder (give a results folder, a benchmark folder or a run folder)")
    selected = bool(runs) or latest
    files = fragment_files(path, runs=runs, latest=latest)
    if not files and not selected:
        raise UserError(f"{path}: no results here (no <cell_id>.parquet fragments under it; give a results folder, "
                        "a benchmark folder or a run folder)")
    from harness.registry import build_registry

    df = load_results(path, runs=runs, latest=latest)
    with_ref = add_reference(df)
    out.mkdir(parents=True, exist_ok=True)
    registry = build_registry()
    by_bench = _runs(path, files, only=select_runs(path, runs, latest) if selected else None)
    names = sorted(map(str, df["benchmark"].dropna().unique()))
    sections = []
    for name in names:
        mask = (df["benchmark"].astype(str) == name).to_numpy()
        part = df[mask].reset_index(drop=True)
        fig_dir = out / FIGURES_DIR if len(names) == 1 else out / FIGURES_DIR / name
        sections.append(_section(name, part, with_ref[mask].reset_index(drop=True), by_bench.get(name, []),
                                 registry, fig_dir))
    return Report(path, out, _dt.datetime.now(_dt.timezone.utc), sections, list(registry.load_errors))


def _runs(path: Path, files: Sequence[Path], only: Sequence[Path] | None = None) -> dict[str, list[RunFacts]]:
    """Run folders by benchmark: those holding the live fragments, plus (for a benchmark or
    results folder) runs whose cells were all superseded or that stored nothing; with
    ``only``, just those run folders."""
    dirs = {f.parent for f in files}
    if only is not None:
        dirs = set(only)
    elif path.is_dir():
        if (path / MANIFEST).is_file():
            dirs.add(path)
        else:
            for pattern in (f"*/{MANIFEST}", f"*/*/{MANIFEST}"):
                for m in path.glob(pattern):
                    rel = m.parent.relative_to(path).parts
                    if not any(p.startswith(("_", ".")) for p in rel):
                        dirs.add(m.parent)
    live: dict[Path, int] = {}
    for f in files:
        live[f.parent] = live.get(f.parent, 0) + 1
    out: dict[str, list[RunFacts]] = {}
    for d in sorted(dirs):
        manifest = None
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", d / MANIFEST, exc)
        bench = str((manifest or {}).get("benchmark") or d.parent.name)
        out.setdefault(bench, []).append(RunFacts(d.name, d, manifest, live.get(d, 0)))
    return out


def _section(name: str, df: pd.DataFrame, with_ref: pd.DataFrame, runs: list[RunFacts], registry: Any,
             fig_dir: Path) -> BenchmarkSection:
    """One benchmark's rows (``with_ref``: the same rows with their delta to the reference)."""
    cells = df.drop_duplicates("cell_id")
    status = cells["status"].astype(str)
    # Diagnostic rows (an array in ``blob``) hold a count in ``value``, not a score: they
    # are figures, not table rows.
    diagnostic = sorted(map(str, df.loc[is_diagnostic(df), "metric"].unique()))
    table_rows = with_ref[~with_ref["metric"].astype(str).isin(diagnostic)]
    stats = _summarize(table_rows) if len(table_rows) else None
    summary = _plain_table(stats) if stats is not None else SummaryTable([], [], [], None)
    plots = _draw_plots(df, registry, fig_dir)
    figures = [f for p in plots for f in p.files if f.suffix.lower() in _FIGURE_TYPES]
    return BenchmarkSection(
        name=name,
        runs=runs,
        live_ok=int((status == "ok").sum()),
        live_error=int((status == "error").sum()),
        summary=summary,
        diagnostics=diagnostic,
        failed=_failed_cells(df),
        plots=plots,
        compare=compare_tables(stats, figures) if stats is not None else [],
        mixed=mixed_sample_sizes(table_rows, lambda names: biased_metric_names(names, registry), by_benchmark=True),
    )


#: the summary's headers in the report (``format_table``'s, then the ones this module adds)
MEAN_CI, SD, DELTA = "mean ± 95% CI", "s.d.", "Δ vs reference ± 95% CI"


def _summarize(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`summarize`, but cells of different ``num_samples`` (a folder holding runs of
    two configurations, docs/analysis.md) are kept apart rather than averaged together.

    With a ``delta`` column, also ``delta_std`` and ``delta_n``: the s.d. and count of the
    per-seed paired deltas, for their confidence interval.
    """
    by = None
    summary = summarize(df)
    if df["num_samples"].nunique() > 1:
        by = [*(c for c in summary.columns if c not in STATS), "num_samples"]
        summary = summarize(df, by=by)
    if "delta" in df:
        # the deltas summarised as values: the same groups in the same order
        deltas = summarize(df.drop(columns="delta").assign(value=df["delta"]), by=by)
        keys = [c for c in summary.columns if c not in STATS]
        if len(deltas) == len(summary) and deltas[keys].reset_index(drop=True).equals(summary[keys]):
            summary = summary.assign(delta_std=deltas["std"].to_numpy(), delta_n=deltas["n"].to_numpy())
    return summary


def ci_halfwidth(std: float, n: int, level: float = 0.95) -> float:
    """Half-width of the Student t confidence interval of a mean of ``n`` values with s.d. ``std``.

    ``t(1 - (1 - level) / 2, n - 1) * std / sqrt(n)``; NaN for ``n < 2``.
    """
    from scipy import stats

    if n is None or n < 2 or std is None or math.isnan(std):
        return math.nan
    return float(stats.t.ppf(1 - (1 - level) / 2, n - 1) * std / math.sqrt(n))


def _with_ci(mean: Any, std: Any, n: Any, signed: bool = False, note: str = " (n < 2, no CI)") -> str:
    """``"0.512 ± 0.031"``; ``"0.512"`` + ``note`` for a single value; ``"-"`` for none."""
    n = 0 if n is None or (isinstance(n, float) and math.isnan(n)) else int(n)
    if n == 0 or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    half = ci_halfwidth(float(std), n)
    if math.isnan(half):
        return f"{_fmt(float(mean), signed)}{note}"
    return f"{_fmt(float(mean), signed)} ± {_fmt(half)}"


def _plain_table(summary: pd.DataFrame) -> SummaryTable:
    """The cells of ``bench results``' table, so the report shows the very same numbers,
    with the mean and the delta given with their 95% confidence intervals."""
    if "role" in summary:  # the reference first: it is what every other row is read against
        order = (summary["role"].astype(str) != "reference").to_numpy().argsort(kind="stable")
        summary = summary.iloc[order].reset_index(drop=True)
    extra = [c for c in ("delta_std", "delta_n") if c in summary]
    table = format_table(summary.drop(columns=extra), notes=False)  # the report says it in SUMMARY_TEXT
    columns = list(table.columns)
    headers = [str(c.header) for c in columns]
    cells = [[str(v) for v in c.cells] for c in columns]
    right = [c.justify == "right" for c in columns]
    # format_table's rows follow the summary's order: put the intervals in
    i = headers.index("mean ± std")
    headers[i: i + 1] = [MEAN_CI, SD]
    cells[i: i + 1] = [[_with_ci(r.mean, r.std, r.n) for r in summary.itertuples()],
                       [_fmt(r.std) for r in summary.itertuples()]]
    right[i: i + 1] = [True, True]
    if "Δ vs reference" in headers and extra:
        j = headers.index("Δ vs reference")
        headers[j] = DELTA
        # (a single value is marked once, in the mean's column)
        cells[j] = [_with_ci(r.delta_mean, r.delta_std, r.delta_n, signed=True, note="")
                    for r in summary.itertuples()]
    rows = [list(r) for r in zip(*cells)] if cells else []
    caption = str(table.caption) if table.caption else None
    few = bool(((summary["n"] < 2) & (summary["n"] > 0)).any())
    return SummaryTable(headers, right, rows, caption, few, value_sd="value_sd" in headers)


# ----------------------------------------------------------------------------- compact tables

#: image files that can stand beside a metric's table
_FIGURE_TYPES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
#: what variants are ordered by: the reference, students, pruned variants, pruned students
_ROLE_ORDER = {"reference": 0, "student": 1, "pruned": 2, "pruned_student": 3}
#: columns that say what a variant is (labelled by the role, not as ``key=value``)
_VARIANT_COLUMNS = ("role", "size_factor", "pruning_method", "pruning_rate")


def compare_tables(summary: pd.DataFrame, figures: Sequence[Path] = ()) -> list[CompareTable]:
    """Per metric of :func:`_summarize`'s ``summary``, variants by CFG scale.

    A variant is a row's group columns but ``cfg_scale`` (role, size factor, pruning method
    and rate, and any other column that varies: swept options, sampler, steps, ...). The
    best entry of a column is the largest (higher is better) or smallest mean, ties all
    marked; the figure is the first of ``figures`` whose file stem is the metric's name or
    ends with ``_<metric>``.
    """
    stats = {*STATS, "delta_std", "delta_n", "benchmark", "cfg_scale"}
    groups = [c for c in summary.columns if c not in stats]
    tables = []
    for metric, part in summary.groupby(summary["metric"].astype(str), sort=True):
        part = part.reset_index(drop=True)
        shown = [c for c in groups if c not in _VARIANT_COLUMNS and part[c].nunique(dropna=False) > 1]
        constant = [c for c in groups if c not in _VARIANT_COLUMNS and c not in shown and part[c].notna().all()]
        caption = ", ".join(f"{c}={_fmt(part[c].iloc[0])}" for c in constant) or None
        hib = part["higher_is_better"].dropna()
        higher = bool(hib.iloc[0]) if len(hib) else None
        cfgs = sorted(part["cfg_scale"].dropna().unique()) if "cfg_scale" in part else []
        columns = [f"CFG {_fmt(float(c))}" for c in cfgs] or ["all"]
        rows: dict[tuple[Any, ...], tuple[str, list[Any], tuple[Any, ...]]] = {}
        for r in part.to_dict("records"):
            key = tuple(str(r.get(c)) for c in groups)
            label = _variant_label(r, shown)
            j = cfgs.index(r["cfg_scale"]) if cfgs and not _missing(r.get("cfg_scale")) else 0
            rows.setdefault(key, (label, [None] * len(columns), _variant_order(r, shown)))[1][j] = r
        ordered = sorted(rows.values(), key=lambda v: v[2])
        best = _best([cells for _l, cells, _o in ordered], higher)
        own = "value_sd" in part and bool(part["value_sd"].notna().any())
        entries = [(label, [_entry(r, own) for r in cells]) for label, cells, _o in ordered]
        tables.append(CompareTable(metric, higher, columns, entries, best, caption, _figure_of(metric, figures),
                                   VALUE_SD_TEXT if own else None))
    return tables


def _entry(r: dict[str, Any] | None, own: bool) -> str:
    """A compact-table entry: ``"0.512 ± 0.031"`` (± the 95% interval over seeds), or for a
    metric with its own uncertainty (``own``) ``"0.0123 ± 0.0045 (seeds ± 0.0031)"`` (± its
    ``value_sd``, then the seeds' interval); ``" (n=1)"`` marks a single value, ``"-"`` none."""
    text = _with_ci(r["mean"], r["std"], r["n"], note=" (n=1)") if r else "-"
    if not own or text == "-" or _missing(r.get("value_sd")):
        return text
    half = ci_halfwidth(float(r["std"]), int(r["n"]))
    seeds = " (n=1)" if math.isnan(half) else f" (seeds ± {_fmt(half)})"
    return f"{_fmt(float(r['mean']))} ± {_fmt(float(r['value_sd']))}{seeds}"


def _missing(v: Any) -> bool:
    import pandas as pd

    return v is None or (not isinstance(v, (list, tuple, dict)) and bool(pd.isna(v)))


def _variant_label(r: dict[str, Any], shown: Sequence[str]) -> str:
    """``teacher (reference)``, ``student 0.5``, ``magnitude rate 0.3``, ``... + sampler=ddim``."""
    size, method = r.get("size_factor"), r.get("pruning_method")
    parts = []
    if str(r.get("role")) == "reference":
        parts.append("teacher (reference)")
    if not _missing(size):
        parts.append(f"student {_fmt(float(size))}")
    if not _missing(method) and str(method) != "none":
        rate = r.get("pruning_rate")
        parts.append(f"{method}" + ("" if _missing(rate) else f" rate {_fmt(float(rate))}"))
    parts += [f"{c.rsplit('.', 1)[-1]}={_fmt(r.get(c))}" for c in shown if not _missing(r.get(c))]
    return " + ".join(parts) or "-"


def _variant_order(r: dict[str, Any], shown: Sequence[str]) -> tuple[Any, ...]:
    """Reference, students from the largest, pruned variants by method and rate, then the rest."""
    size, rate = r.get("size_factor"), r.get("pruning_rate")
    return (_ROLE_ORDER.get(str(r.get("role")), 9), -(0.0 if _missing(size) else float(size)),
            str(r.get("pruning_method")), 0.0 if _missing(rate) else float(rate),
            tuple((0, float(v)) if isinstance(v, (int, float)) and not _missing(v) else (1, str(v))
                  for v in (r.get(c) for c in shown)))


def _best(rows: list[list[dict[str, Any] | None]], higher: bool | None) -> list[list[bool]]:
    """``best[i][j]``: entry (i, j) has the column's best mean (every tie marked)."""
    marks = [[False] * len(cells) for cells in rows]
    if higher is None or not rows:
        return marks
    for j in range(len(rows[0])):
        means = [float(cells[j]["mean"]) if cells[j] and cells[j]["n"] else math.nan for cells in rows]
        valid = [m for m in means if not math.isnan(m)]
        if valid:
            top = max(valid) if higher else min(valid)
            for i, m in enumerate(means):
                marks[i][j] = m == top
    return marks


def _figure_of(metric: str, figures: Sequence[Path]) -> Path | None:
    """The first figure named after ``metric`` (``<metric>.png``, ``compare_<metric>.png``,
    ``<metric>_vs_size.png``)."""
    name = metric.removesuffix(" (mean over t)")
    for f in figures:
        if f.stem == name or f.stem.endswith("_" + name) or f.stem.startswith(name + "_vs_"):
            return f
    return None


def _failed_cells(df: pd.DataFrame) -> list[FailedCell]:
    """One entry per failed cell (a cell has a row per metric), its distinct messages once."""
    err = df[df["status"].astype(str) == "error"]
    out = []
    for cell_id, rows in err.groupby(err["cell_id"].astype(str), sort=False):
        messages = list(dict.fromkeys(str(e) for e in rows["error"] if isinstance(e, str) and e))
        out.append(FailedCell(
            cell_name=str(rows["cell_name"].iloc[0]) if rows["cell_name"].notna().any() else cell_id,
            cell_id=cell_id,
            run_id=str(rows["run_id"].iloc[0]),
            errors=messages or ["(no message)"],
            metrics=list(dict.fromkeys(map(str, rows["metric"]))),
        ))
    return sorted(out, key=lambda c: (c.cell_name, c.cell_id))


def _draw_plots(df: pd.DataFrame, registry: Any, fig_dir: Path) -> list[PlotOutcome]:
    """Every registered plot on ``df``, each in isolation (:func:`harness.drawing.draw_plots`):
    a plot that raises is recorded with its error, the others are drawn."""
    from harness.drawing import draw_plots

    plots, outcomes = {}, {}
    for name in registry.names("plots"):
        cls = registry.get("plots", name)
        # the report is the complete view: where a plot can also compare methods, do
        options = [f[0] for f in option_fields(getattr(cls, "Options", None))]
        plots[name] = cls(**({"compare": True} if "compare" in options else {}))
        outcomes[name] = PlotOutcome(name, cls.describe())
    paths, failures = draw_plots(plots, df, fig_dir)
    for name, files in paths.items():
        outcomes[name].files = sorted(set(files))
    for failure in failures:
        outcomes[failure.name].error = failure.error
    return list(outcomes.values())


__all__ = ["BenchmarkSection", "CompareTable", "FailedCell", "PlotOutcome", "Report", "RunFacts", "SummaryTable", "ci_halfwidth",
           "collect", "compare_tables"]
