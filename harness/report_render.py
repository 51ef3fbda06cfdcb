"""Turning a collected :class:`~harness.report_data.Report` into Markdown or one HTML file.

The page layout lives in jinja2 templates in ``harness/templates/``: ``report.md.j2`` and
``report.html.j2``, which inlines the stylesheet ``report.css`` and the table-sorting script
``sort_tables.js`` so the HTML report stays one self-contained file. This module prepares
what both formats show the same way (the runs table, the manifests' facts, each figure's
relative path and inlined text) and holds the filters the templates use. The HTML template
is autoescaped; the Markdown one escapes its table cells with the ``md`` filter.

The Markdown report links the figures by relative path (keep ``report.md`` and ``figures/``
together); the HTML report embeds the images as base64 ``data:`` URIs, inlines text outputs
(``pruning_summary``) and links only other data files (``pruning_json``'s JSON).
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from harness.report_data import (
    BenchmarkSection,
    CompareTable,
    PlotOutcome,
    Report,
    RunFacts,
)
from harness.tables import ARROWS, VALUE_SD_NOTE

log = logging.getLogger(__name__)

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".svg": "image/svg+xml", ".webp": "image/webp"}
TEXT_TYPES = (".txt", ".md")
#: text outputs longer than this are linked, not inlined
MAX_INLINE_TEXT = 20_000
#: manifest versions shown first (the rest follow alphabetically)
_MAIN_VERSIONS = ("python", "diffbench", "torch", "numpy", "pandas", "pyarrow")
#: facts shown as code: paths, hashes, command lines
CODE_FACTS = ("matrix file", "git commit", "command")
#: the runs table's count columns are right-aligned
RUN_RIGHT = [False] * 6 + [True] * 4

SUMMARY_TEXT = (
    "Per variant and CFG scale (↑ higher is better, ↓ lower is better): the mean over seeds ± the half-width of "
    "its 95% confidence interval (Student t over seeds: t(0.975, n − 1) · s.d. / √n), the s.d. over seeds and n, "
    "the number of values; Δ vs reference is the mean paired difference to the reference model's value on the "
    "same seed, ± its 95% interval. Per-step metrics are averaged over their timesteps."
)
COMPARE_TEXT = (
    "Per metric, the variants (rows: the teacher or reference, students from the largest, pruned variants by "
    "method and rate, then any other setting that varies) at each CFG scale (columns): the mean over seeds ± "
    "the half-width of its 95% confidence interval (“(n=1)”: a single value, no interval). The best entry of "
    "each column is in bold (↑ higher is better, ↓ lower is better; the reference included; none for a metric "
    "without a direction). The figure drawn for the metric, when there is one, stands beside its table. The "
    "appendix holds every row of the summary."
)
VALUE_SD_TEXT = (VALUE_SD_NOTE.replace("value_sd: ", "value_sd is ", 1) + " of the per-seed values; the mean's 95% "
                 "interval is over seeds alone.")
FEW_VALUES_TEXT = ("Rows marked “n < 2, no CI” rest on a single value (one seed), so they have no confidence "
                   "interval; sweep more seeds (matrix.seed) to get one.")


@dataclass
class Figure:
    """One file a plot drew, as the report shows it."""

    path: Path
    #: relative to the report folder, ``/`` separators (a ``file:`` URI on another drive)
    rel: str
    image: bool
    #: a small text output's content, inlined; None for anything else
    text: str | None


@dataclass
class CompareView:
    """One metric's compact table, with its heading, anchor and figure."""

    table: CompareTable
    #: ``"synthetic_quality ↑"``
    title: str
    #: the HTML id of the table's heading
    anchor: str
    figure: Figure | None


@dataclass
class BenchmarkView:
    """One benchmark's section with what both templates show prepared once."""

    section: BenchmarkSection
    run_headers: list[str]
    run_rows: list[list[str]]
    #: ``{column: [key per row]}``: the duration column sorts by seconds, not by its text
    run_sort_keys: dict[int, list[float | str]]
    facts: list[tuple[str, list[tuple[str, list[str]]]]]
    failed_rows: list[list[str]]
    figures: list[tuple[PlotOutcome, list[Figure]]]
    failed_plots: list[PlotOutcome]
    #: plots that ran but drew nothing for these results
    not_applicable: list[str]
    compare: list[CompareView]
    #: figures shown beside a compact table: path -> its view (HTML embeds each image once)
    beside: dict[Path, CompareView]


def render_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown, figures linked relative to the report."""
    return _render("report.md.j2", report).rstrip("\n") + "\n"


def render_html(report: Report) -> str:
    """The report as one self-contained HTML file: images embedded as base64 data URIs."""
    return _render("report.html.j2", report)


def _render(template: str, report: Report) -> str:
    return _env().get_template(template).render(
        report=report,
        benchmarks=[_view(report, b) for b in report.benchmarks],
        created=_when(report.created.isoformat()),
        summary_text=SUMMARY_TEXT,
        compare_text=COMPARE_TEXT,
        few_values_text=FEW_VALUES_TEXT,
        value_sd_text=VALUE_SD_TEXT,
        code_facts=CODE_FACTS,
        run_right=RUN_RIGHT,
    )


@functools.cache
def _env() -> jinja2.Environment:
    """The templates' environment: loaded from the installed package (the wheel ships them),
    autoescaped for ``*.html.j2`` only, and strict, so a misspelt field fails loudly."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False, default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md=_md_cell, link=_link, anchor=_anchor, data_uri=_data_uri)
    return env


def _view(report: Report, b: BenchmarkSection) -> BenchmarkView:
    headers, rows = run_rows(b.runs)
    seconds = [_seconds(r) if r.get("end_time") else "" for r in b.runs]
    figures = [(p, [_figure(report, f) for f in p.files]) for p in b.plots if p.files]
    compare = [CompareView(t, t.metric + ARROWS.get(t.higher_is_better, ""), _anchor(f"{b.name}-{t.metric}", "m-"),
                           _figure(report, t.figure) if t.figure else None) for t in b.compare]
    return BenchmarkView(
        section=b,
        run_headers=headers,
        run_rows=rows,
        run_sort_keys={headers.index("duration"): seconds},
        facts=facts(b.runs),
        failed_rows=[[c.cell_name, c.cell_id, c.run_id, "; ".join(c.errors)] for c in b.failed],
        figures=figures,
        failed_plots=[p for p in b.plots if p.error],
        not_applicable=[p.name for p in b.plots if not p.error and not p.files],
        compare=compare,
        beside={c.figure.path: c for c in compare if c.figure},
    )


# ----------------------------------------------------------------------------- runs and facts


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


# ----------------------------------------------------------------------------- figures and filters


def _figure(report: Report, path: Path) -> Figure:
    suffix = path.suffix.lower()
    return Figure(path, _rel(report, path), suffix in IMAGE_TYPES,
                  _read_text(path) if suffix in TEXT_TYPES else None)


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


def _md_cell(text: Any) -> str:
    """One line of Markdown table cell: whitespace runs collapsed, ``|`` escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _link(target: str) -> str:
    return quote(target, safe="/:#")


def _anchor(name: str, prefix: str = "b-") -> str:
    return prefix + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _data_uri(path: Path) -> str | None:
    """The image as a ``data:`` URI; None (the template then links the file) if unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("cannot embed %s: %s", path, exc)
        return None
    return f"data:{IMAGE_TYPES[path.suffix.lower()]};base64,{base64.b64encode(data).decode('ascii')}"


__all__ = ["COMPARE_TEXT", "FEW_VALUES_TEXT", "SUMMARY_TEXT", "VALUE_SD_TEXT", "facts", "render_html", "render_markdown", "run_rows"]
