"""``bench report``: one readable document (Markdown or HTML) of a results folder.

For every benchmark under the folder the report gives the runs' manifest facts (run
ids, matrix file, device, versions, git commit, start and end, cells ok / failed), the
summary table of ``bench results`` (:func:`harness.store.summarize`: per variant and CFG
scale, the mean over seeds with its 95% confidence interval, the s.d. and the number of
values, and the mean paired delta to the reference with its interval), the failed cells
with their error messages, and the figures of every plot plugin that applies, drawn into
``<out>/figures/``. A plot that raises is listed with its error; the others still run.

Confidence intervals are Student t intervals over seeds, ``mean ± t(0.975, n - 1) *
s.d. / sqrt(n)`` with ``n`` the values averaged (one per seed); for the delta to the
reference, the same over the per-seed paired differences. With ``n < 2`` there is no
interval, and the table says so.

The Markdown report links the figures by relative path (keep ``report.md`` and
``figures/`` together); the HTML report is one self-contained file: the images are
embedded as base64 ``data:`` URIs, text outputs (``pruning_summary``) are inlined, and
only other data files (``pruning_json``'s JSON) are linked. Its tables sort by a click
on a column header (a small inline script; nothing is fetched from the network).

Plots are found through the plugin registry, as ``bench plot`` does: the core knows
no plot by name.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from harness.base import option_fields
from harness.errors import UserError
from harness.fsio import write_bytes
from harness.results import add_reference, fragment_files, load_results
from harness.store import MANIFEST
from harness.tables import format_table, summarize
from harness.tables import format_value as _fmt

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

FORMATS = ("md", "html")
FIGURES_DIR = "figures"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".svg": "image/svg+xml", ".webp": "image/webp"}
TEXT_TYPES = (".txt", ".md")
#: text outputs longer than this are linked, not inlined
MAX_INLINE_TEXT = 20_000
#: manifest versions shown first (the rest follow alphabetically)
_MAIN_VERSIONS = ("python", "diffbench", "torch", "numpy", "pandas", "pyarrow")


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
    """:func:`harness.store.format_table` as plain text cells (for Markdown and HTML)."""

    headers: list[str]
    right: list[bool]
    rows: list[list[str]]
    caption: str | None
    #: some row has fewer than two values, so no confidence interval
    few_values: bool = False


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


@dataclass
class Report:
    """A results folder's report, before rendering."""

    source: Path
    out_dir: Path
    created: _dt.datetime
    benchmarks: list[BenchmarkSection]
    plugin_errors: list[str]


# ----------------------------------------------------------------------------- collecting


def write_report(path: Path, out: Path, fmt: Literal["md", "html"] = "md") -> Path:
    """Write ``out/report.md`` or ``out/report.html`` of the results under ``path``; return it.

    :param path: a results folder, a benchmark folder, a run folder or one fragment.
    :param out: the report folder (created); figures go to ``out/figures/``.
    :param fmt: ``"md"`` (figures linked by relative path) or ``"html"`` (one
        self-contained file, figures embedded).
    :raises UserError: ``path`` is missing or holds no results, or ``fmt`` is unknown.
    """
    if fmt not in FORMATS:
        raise UserError(f"bench report --format {fmt}: unknown format; valid: 'html', 'md'")
    report = collect(Path(path), Path(out))
    text = render_markdown(report) if fmt == "md" else render_html(report)
    target = report.out_dir / f"report.{fmt}"
    write_bytes(target, text.encode("utf-8"))
    log.info("wrote %s", target)
    return target


def collect(path: Path, out: Path) -> Report:
    """Read the results under ``path``, draw the figures into ``out/figures/``, gather the facts."""
    if not path.exists():
        raise UserError(f"{path}: no such file or folder (give a results folder, a benchmark folder or a run folder)")
    files = fragment_files(path)
    if not files:
        raise UserError(f"{path}: no results here (no <cell_id>.parquet fragments under it; give a results folder, "
                        "a benchmark folder or a run folder)")
    from harness.registry import build_registry

    df = load_results(path)
    with_ref = add_reference(df)
    out.mkdir(parents=True, exist_ok=True)
    registry = build_registry()
    runs = _runs(path, files)
    names = sorted(map(str, df["benchmark"].dropna().unique()))
    sections = []
    for name in names:
        mask = (df["benchmark"].astype(str) == name).to_numpy()
        part = df[mask].reset_index(drop=True)
        fig_dir = out / FIGURES_DIR if len(names) == 1 else out / FIGURES_DIR / name
        sections.append(_section(name, part, with_ref[mask].reset_index(drop=True), runs.get(name, []),
                                 registry, fig_dir))
    return Report(path, out, _dt.datetime.now(_dt.timezone.utc), sections, list(registry.load_errors))


def _runs(path: Path, files: Sequence[Path]) -> dict[str, list[RunFacts]]:
    """Run folders by benchmark: those holding the live fragments, plus (for a benchmark or
    results folder) runs whose cells were all superseded or that stored nothing."""
    dirs = {f.parent for f in files}
    if path.is_dir():
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
    cells = df.drop_duplicates("cell_id")
    status = cells["status"].astype(str)
    # Diagnostic rows (an array in ``blob``) hold a count in ``value``, not a score: they
    # are figures, not table rows.
    diagnostic = sorted(map(str, df.loc[df["blob"].notna(), "metric"].unique())) if "blob" in df else []
    table_rows = with_ref[~with_ref["metric"].astype(str).isin(diagnostic)]
    summary = _plain_table(_summarize(table_rows)) if len(table_rows) else SummaryTable([], [], [], None)
    return BenchmarkSection(
        name=name,
        runs=runs,
        live_ok=int((status == "ok").sum()),
        live_error=int((status == "error").sum()),
        summary=summary,
        diagnostics=diagnostic,
        failed=_failed_cells(df),
        plots=_draw_plots(df, registry, fig_dir),
    )


_STATS = ("metric", "higher_is_better", "mean", "std", "n", "errors", "delta_mean")
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
        by = [*(c for c in summary.columns if c not in _STATS), "num_samples"]
        summary = summarize(df, by=by)
    if "delta" in df:
        # the deltas summarised as values: the same groups in the same order
        deltas = summarize(df.drop(columns="delta").assign(value=df["delta"]), by=by)
        keys = [c for c in summary.columns if c not in _STATS]
        if len(deltas) == len(summary) and deltas[keys].reset_index(drop=True).equals(summary[keys]):
            summary = summary.assign(delta_std=deltas["std"].to_numpy(), delta_n=deltas["n"].to_numpy())
    return summary


def ci_halfwidth(std: float, n: int, level: float = 0.95) -> float:
    """Half-width of the Student t confidence interval of a mean of ``n`` values with s.d. ``std``.

    ``t(1 - (1 - level) / 2, n - 1) * std / sqrt(n)``; NaN for ``n < 2``.
    """
    import math

    from scipy import stats

    if n is None or n < 2 or std is None or math.isnan(std):
        return math.nan
    return float(stats.t.ppf(1 - (1 - level) / 2, n - 1) * std / math.sqrt(n))


def _with_ci(mean: Any, std: Any, n: Any, signed: bool = False, note: str = " (n < 2, no CI)") -> str:
    """``"0.512 ± 0.031"``; ``"0.512"`` + ``note`` for a single value; ``"-"`` for none."""
    import math

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
    table = format_table(summary.drop(columns=extra))
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
    return SummaryTable(headers, right, rows, caption, few)


def _failed_cells(df: pd.DataFrame) -> list[FailedCell]:
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
    """Every registered plot on ``df``; a plot that raises is recorded, not fatal."""
    outcomes = []
    for name in registry.names("plots"):
        cls = registry.get("plots", name)
        outcome = PlotOutcome(name, cls.describe())
        try:
            # the report is the complete view: where a plot can also compare methods, do
            options = [f[0] for f in option_fields(getattr(cls, "Options", None))]
            opts = {"compare": True} if "compare" in options else {}
            outcome.files = sorted({Path(p) for p in (cls(**opts).draw(df, fig_dir) or [])})
        except Exception as exc:  # a broken (third-party) plot must not cost the whole report
            outcome.error = f"{type(exc).__name__}: {exc}".strip()
            log.warning("plot %s failed: %s", name, outcome.error, exc_info=log.isEnabledFor(logging.DEBUG))
        outcomes.append(outcome)
    return outcomes


# ----------------------------------------------------------------------------- facts


def _when(value: Any) -> str:
    if not value:
        return "-"
    try:
        t = _dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if t.tzinfo is not None:
        t = t.astimezone(_dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def _seconds(run: RunFacts) -> float | str:
    """The run's duration in seconds (its manifest's summary, else end - start); "" if unknown."""
    seconds = (run.get("summary") or {}).get("seconds")
    if seconds is None:
        try:
            start = _dt.datetime.fromisoformat(str(run.get("start_time")))
            end = _dt.datetime.fromisoformat(str(run.get("end_time")))
            seconds = (end - start).total_seconds()
        except (TypeError, ValueError):
            return ""
    return float(seconds)


def _duration(run: RunFacts) -> str:
    seconds = _seconds(run)
    if seconds == "":
        return "-"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run_rows(runs: Sequence[RunFacts]) -> tuple[list[str], list[list[str]]]:
    """The runs table: headers and one row per run."""
    headers = ["run", "start", "end", "duration", "status", "device", "cells ok", "cells failed",
               "superseded", "live cells"]
    rows = []
    for r in runs:
        summ = r.get("summary") or {}
        status = r.get("status") or "-"
        if status == "running":
            status = "running or interrupted"
        if r.manifest is None:
            status = "no _manifest.json"
        rows.append([
            r.run_id, _when(r.get("start_time")), _when(r.get("end_time")), _duration(r) if r.get("end_time") else "-",
            status, str(r.get("device") or "-"), _count(summ.get("ok")), _count(summ.get("error")),
            _count(summ.get("superseded")), str(r.live_cells),
        ])
    return headers, rows


#: the runs table's count columns are right-aligned
_RUN_RIGHT = [False] * 6 + [True] * 4


def _count(v: Any) -> str:
    return "-" if v is None else str(v)


def _versions_text(versions: dict[str, Any] | None) -> str:
    if not versions:
        return "-"
    keys = [k for k in _MAIN_VERSIONS if k in versions] + sorted(k for k in versions if k not in _MAIN_VERSIONS)
    return ", ".join(f"{k} {versions[k]}" for k in keys)


def _commit_text(commit: Any) -> str:
    if not commit:
        return "-"
    if not isinstance(commit, dict):
        return str(commit)
    parts = [f"{k} {v[:12] if isinstance(v, str) else '-'}" for k, v in commit.items()]
    return ", ".join(parts)


def facts(runs: Sequence[RunFacts]) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """``(fact, [(value, run ids), ...])``: one value when every run agrees, else each value
    with the runs that have it."""
    getters = {
        "description": lambda r: ((r.get("resolved") or {}).get("benchmark") or {}).get("description") or None,
        "matrix file": lambda r: r.get("matrix_file"),
        "device": lambda r: r.get("device"),
        "host": lambda r: r.get("host"),
        "git commit": lambda r: _commit_text(r.get("git_commit")) if r.get("git_commit") else None,
        "versions": lambda r: _versions_text(r.get("versions")) if r.get("versions") else None,
        "command": lambda r: " ".join(map(str, r.get("argv"))) if r.get("argv") else None,
    }
    out = []
    for label, get in getters.items():
        values: dict[str, list[str]] = {}
        for r in runs:
            if r.manifest is None:
                continue
            v = get(r)
            if v:
                values.setdefault(str(v), []).append(r.run_id)
        if values:
            out.append((label, list(values.items())))
    return out


def _figure_groups(section: BenchmarkSection) -> list[tuple[PlotOutcome, list[Path]]]:
    return [(p, p.files) for p in section.plots if p.files]


def _rel(report: Report, path: Path) -> str:
    """``path`` relative to the report folder, with ``/`` separators (for links)."""
    try:
        rel = Path(os.path.relpath(Path(path).resolve(), report.out_dir.resolve()))
    except ValueError:  # another drive (Windows)
        return Path(path).resolve().as_uri()
    return rel.as_posix()


def _read_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_INLINE_TEXT:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _plot_problems(section: BenchmarkSection) -> tuple[list[PlotOutcome], list[str]]:
    failed = [p for p in section.plots if p.error]
    not_applicable = [p.name for p in section.plots if not p.error and not p.files]
    return failed, not_applicable


# ----------------------------------------------------------------------------- text

SUMMARY_TEXT = (
    "Per variant and CFG scale (↑ higher is better, ↓ lower is better): the mean over seeds ± the half-width of "
    "its 95% confidence interval (Student t over seeds: t(0.975, n − 1) · s.d. / √n), the s.d. over seeds and n, "
    "the number of values; Δ vs reference is the mean paired difference to the reference model's value on the "
    "same seed, ± its 95% interval. Per-step metrics are averaged over their timesteps."
)
FEW_VALUES_TEXT = ("Rows marked “n < 2, no CI” rest on a single value (one seed), so they have no confidence "
                   "interval; sweep more seeds (matrix.seed) to get one.")

# ----------------------------------------------------------------------------- markdown


def _md_cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    right = right or [False] * len(headers)
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
             "| " + " | ".join("---:" if r else "---" for r in right) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_link(target: str) -> str:
    return quote(target, safe="/:#")


def render_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown, figures linked relative to the report."""
    out = [f"# diffbench report: `{report.source}`", ""]
    out.append(f"Generated {_when(report.created.isoformat())} from `{report.source}` "
               f"({len(report.benchmarks)} benchmark{'s' if len(report.benchmarks) != 1 else ''}: "
               + ", ".join(b.name for b in report.benchmarks) + ").")
    out.append("")
    for err in report.plugin_errors:
        out += [f"> **Warning:** {err}", ""]
    for b in report.benchmarks:
        out += [f"## {b.name}", ""]
        out.append(f"Live cells: {b.live_ok + b.live_error} ({b.live_ok} ok, {b.live_error} failed), "
                   f"from {len(b.runs)} run{'s' if len(b.runs) != 1 else ''}.")
        out.append("")
        out += ["### Runs", ""]
        headers, rows = run_rows(b.runs)
        out += [_md_table(headers, rows, _RUN_RIGHT), ""]
        for label, values in facts(b.runs):
            if len(values) == 1:
                out.append(f"- **{label}**: {_md_value(label, values[0][0])}")
            else:
                out.append(f"- **{label}**:")
                out += [f"  - {_md_value(label, v)} (runs {', '.join(ids)})" for v, ids in values]
        out.append("")

        out += ["### Summary", ""]
        out.append(SUMMARY_TEXT)
        out.append("")
        if b.summary.rows:
            out += [_md_table(b.summary.headers, b.summary.rows, b.summary.right), ""]
            if b.summary.caption:
                out += [f"Same on every row: {b.summary.caption}.", ""]
            if b.summary.few_values:
                out += [FEW_VALUES_TEXT, ""]
        else:
            out += ["No metric rows.", ""]
        if b.diagnostics:
            out += [f"Diagnostic metrics (arrays, shown as figures): {', '.join(b.diagnostics)}.", ""]

        out += ["### Failed cells", ""]
        if b.failed:
            out += [_md_table(["cell", "cell id", "run", "error"],
                              [[c.cell_name, c.cell_id, c.run_id, "; ".join(c.errors)] for c in b.failed]), ""]
        else:
            out += ["None.", ""]

        out += ["### Figures", ""]
        for plot, files in _figure_groups(b):
            out += [f"#### {plot.name}", ""]
            if plot.description:
                out += [plot.description, ""]
            for f in files:
                rel = _rel(report, f)
                suffix = f.suffix.lower()
                if suffix in IMAGE_TYPES:
                    out += [f"![{_md_cell(rel)}]({_md_link(rel)})", ""]
                elif suffix in TEXT_TYPES and (text := _read_text(f)) is not None:
                    out += [f"[`{rel}`]({_md_link(rel)}):", "", "```text", text.rstrip("\n"), "```", ""]
                else:
                    out += [f"- [`{rel}`]({_md_link(rel)})", ""]
        failed, not_applicable = _plot_problems(b)
        if failed:
            out += ["Plots that failed:", ""]
            out += [f"- **{p.name}**: `{_md_cell(p.error)}`" for p in failed]
            out.append("")
        if not_applicable:
            out += [f"Plots with nothing to draw for these results: {', '.join(not_applicable)}.", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _md_value(label: str, value: str) -> str:
    return f"`{value}`" if label in ("matrix file", "git commit", "command") else _md_cell(value)


# ----------------------------------------------------------------------------- html

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.5; }
h1 { font-size: 1.7rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.4rem; margin-top: 2.5rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
h3 { font-size: 1.15rem; margin-top: 1.8rem; }
h4 { font-size: 1rem; margin: 1.4rem 0 .3rem; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85em; }
code { background: #f6f8fa; padding: .1em .3em; border-radius: 4px; }
pre { background: #f6f8fa; padding: .8rem 1rem; border-radius: 6px; overflow-x: auto; }
.scroll { overflow-x: auto; margin: .6rem 0 1rem; }
table { border-collapse: collapse; font-size: .88rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.err { color: #b42318; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: .8rem 0; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; word-break: break-word; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: .8rem; color: #59636e; }
p.desc { color: #59636e; margin: .2rem 0 .6rem; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; padding: .4rem .8rem; border-radius: 6px; }
nav ul { margin: .3rem 0; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; font-size: .7em; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; font-size: .7em; }
"""


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool] | None = None,
                err_col: int | None = None, sort_keys: dict[int, Sequence[float | str]] | None = None) -> str:
    """A sortable table; ``sort_keys[col][row]`` (``data-sort``) replaces a cell's text as its sort key."""
    right = right or [False] * len(headers)
    head = "".join(f'<th{" class=num" if r else ""}>{_h(h)}</th>' for h, r in zip(headers, right))
    body = []
    for k, row in enumerate(rows):
        tds = []
        for i, (c, r) in enumerate(zip(row, right)):
            cls = "num" if r else "err" if i == err_col else ""
            key = f' data-sort="{_h(sort_keys[i][k])}"' if sort_keys and i in sort_keys else ""
            tds.append(f'<td{f" class={cls}" if cls else ""}{key}>{_h(c)}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n' + \
        "\n".join(body) + "\n</tbody></table></div>"


#: Sorts a table by the clicked column (again: the other way). Numbers (a cell that starts
#: with one: "0.51 ± 0.03", "+1.2e-03") compare as numbers when every filled cell of the
#: column is one, else as text; empty and "-" cells go last. Inline: nothing is fetched.
_SORT_SCRIPT = r"""
(function () {
  var NUM = /^[+\u2212-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?(\s|$)/i;
  function text(cell) { return cell ? (cell.getAttribute("data-sort") || cell.textContent).trim() : ""; }
  function missing(t) { return t === "" || t === "-"; }
  function number(t) { return parseFloat(t.replace("\u2212", "-")); }
  function sortBy(table, col, th) {
    var body = table.tBodies[0], heads = table.tHead.rows[0].cells;
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.map.call(body.rows, function (r, i) { return {row: r, key: text(r.cells[col]), i: i}; });
    var numeric = rows.every(function (r) { return missing(r.key) || NUM.test(r.key); });
    rows.sort(function (a, b) {
      if (missing(a.key) || missing(b.key)) { return missing(a.key) - missing(b.key) || a.i - b.i; }
      var c = numeric ? number(a.key) - number(b.key) : a.key.localeCompare(b.key, undefined, {numeric: true});
      return (asc ? c : -c) || a.i - b.i;
    });
    Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, col, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, col, th); }
      });
    });
  });
})();
"""


def _data_uri(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("cannot embed %s: %s", path, exc)
        return None
    return f"data:{IMAGE_TYPES[path.suffix.lower()]};base64,{base64.b64encode(data).decode('ascii')}"


def _anchor(name: str) -> str:
    return "b-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def render_html(report: Report) -> str:
    """The report as one self-contained HTML file: images embedded as base64 data URIs."""
    title = f"diffbench report: {report.source}"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_h(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>diffbench report: <code>{_h(report.source)}</code></h1>",
           f"<p>Generated {_h(_when(report.created.isoformat()))} from <code>{_h(report.source)}</code>.</p>"]
    for err in report.plugin_errors:
        out.append(f'<p class="warn"><b>Warning:</b> {_h(err)}</p>')
    if len(report.benchmarks) > 1:
        out.append("<nav><b>Benchmarks</b><ul>" + "".join(
            f'<li><a href="#{_anchor(b.name)}">{_h(b.name)}</a></li>' for b in report.benchmarks) + "</ul></nav>")
    for b in report.benchmarks:
        out.append(f'<h2 id="{_anchor(b.name)}">{_h(b.name)}</h2>')
        out.append(f"<p>Live cells: {b.live_ok + b.live_error} ({b.live_ok} ok, "
                   f"{b.live_error} failed), from {len(b.runs)} run{'s' if len(b.runs) != 1 else ''}.</p>")
        out.append("<h3>Runs</h3>")
        headers, rows = run_rows(b.runs)
        seconds = [_seconds(r) if r.get("end_time") else "" for r in b.runs]
        out.append(_html_table(headers, rows, _RUN_RIGHT, sort_keys={headers.index("duration"): seconds}))
        dl = []
        for label, values in facts(b.runs):
            if len(values) == 1:
                dd = _html_value(label, values[0][0])
            else:
                dd = "<br>".join(f"{_html_value(label, v)} (runs {_h(', '.join(ids))})" for v, ids in values)
            dl.append(f"<dt>{_h(label)}</dt><dd>{dd}</dd>")
        if dl:
            out.append('<dl class="facts">' + "".join(dl) + "</dl>")

        out.append("<h3>Summary</h3>")
        out.append(f'<p class="desc">{_h(SUMMARY_TEXT)} Click a column header to sort.</p>')
        if b.summary.rows:
            out.append(_html_table(b.summary.headers, b.summary.rows, b.summary.right))
            if b.summary.caption:
                out.append(f'<p class="desc">Same on every row: {_h(b.summary.caption)}.</p>')
            if b.summary.few_values:
                out.append(f'<p class="desc">{_h(FEW_VALUES_TEXT)}</p>')
        else:
            out.append("<p>No metric rows.</p>")
        if b.diagnostics:
            out.append('<p class="desc">Diagnostic metrics (arrays, shown as figures): '
                       f'{_h(", ".join(b.diagnostics))}.</p>')

        out.append("<h3>Failed cells</h3>")
        if b.failed:
            out.append(_html_table(["cell", "cell id", "run", "error"],
                                   [[c.cell_name, c.cell_id, c.run_id, "; ".join(c.errors)] for c in b.failed],
                                   err_col=3))
        else:
            out.append("<p>None.</p>")

        out.append("<h3>Figures</h3>")
        for plot, files in _figure_groups(b):
            out.append(f"<h4>{_h(plot.name)}</h4>")
            if plot.description:
                out.append(f'<p class="desc">{_h(plot.description)}</p>')
            for f in files:
                rel = _rel(report, f)
                suffix = f.suffix.lower()
                if suffix in IMAGE_TYPES and (uri := _data_uri(f)) is not None:
                    out.append(f'<figure><img src="{uri}" alt="{_h(rel)}" loading="lazy">'
                               f"<figcaption>{_h(rel)}</figcaption></figure>")
                elif suffix in TEXT_TYPES and (text := _read_text(f)) is not None:
                    out.append(f"<figure><pre>{_h(text.rstrip())}</pre><figcaption>{_h(rel)}</figcaption></figure>")
                else:
                    out.append(f'<p>Data file: <a href="{_h(quote(rel, safe="/:#"))}"><code>{_h(rel)}</code></a> '
                               "(next to this report)</p>")
        failed, not_applicable = _plot_problems(b)
        if failed:
            out.append('<p class="warn">Plots that failed:</p><ul>' + "".join(
                f"<li><b>{_h(p.name)}</b>: <code>{_h(p.error)}</code></li>" for p in failed) + "</ul>")
        if not_applicable:
            out.append('<p class="desc">Plots with nothing to draw for these results: '
                       f'{_h(", ".join(not_applicable))}.</p>')
    out.append(f"<script>{_SORT_SCRIPT}</script>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_value(label: str, value: str) -> str:
    return f"<code>{_h(value)}</code>" if label in ("matrix file", "git commit", "command") else _h(value)


__all__ = ["BenchmarkSection", "Report", "collect", "render_html", "render_markdown", "write_report"]
