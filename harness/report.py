"""``bench report``: one readable document (Markdown or HTML) of a results folder.

For every benchmark under the folder the report gives the runs' manifest facts (run
ids, matrix file, device, versions, git commit, start and end, cells ok / failed), the
summary table of ``bench results`` (:func:`harness.tables.summarize`: per variant and CFG
scale, the mean over seeds with its 95% confidence interval, the s.d. and the number of
values, and the mean paired delta to the reference with its interval), the failed cells
with their error messages, and the figures of every plot plugin that applies, drawn into
``<out>/figures/``. A plot that raises is listed with its error; the others still run.

The Markdown report links the figures by relative path (keep ``report.md`` and
``figures/`` together); the HTML report is one self-contained file: the images are
embedded as base64 ``data:`` URIs, text outputs (``pruning_summary``) are inlined, and
only other data files (``pruning_json``'s JSON) are linked. Its tables sort by a click
on a column header (a small inline script; nothing is fetched from the network).

Two steps, one module each: :mod:`harness.report_data` gathers the facts and statistics
(:func:`collect`), :mod:`harness.report_render` renders them through the jinja2
templates in ``harness/templates/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from harness.errors import UserError
from harness.report_data import BenchmarkSection, Report, ci_halfwidth, collect
from harness.report_render import FEW_VALUES_TEXT, SUMMARY_TEXT, render_html, render_markdown
from harness.fsio import write_bytes

log = logging.getLogger(__name__)

FORMATS = ("md", "html")


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


__all__ = ["FEW_VALUES_TEXT", "SUMMARY_TEXT", "BenchmarkSection", "Report", "ci_halfwidth", "collect",
           "render_html", "render_markdown", "write_report"]
