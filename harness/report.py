"""``bench report``: one readable document (Markdown or HTML) of a results folder.

For every benchmark under the folder the report leads with what a reader compares: per
metric, one compact table of the variants (rows) by CFG scale (columns), each entry the
mean over seeds with its 95% confidence interval, the best entry of each column marked
(bold; in HTML also the class ``best``), and the metric's figure beside it
(:func:`harness.report_data.compare_tables`). Then come the failed cells with their error
messages, the figures, the runs' manifest facts (run ids, matrix file, device, versions,
git commit, start and end, cells ok / failed) and, as an appendix, the summary table of
``bench results`` (:func:`harness.tables.summarize`: per variant and CFG scale, the mean
over seeds with its 95% confidence interval, the s.d. and the number of values, and the
mean paired delta to the reference with its interval). The figures are those of every
plot plugin that applies, drawn into ``<out>/figures/``. A plot that raises is listed
with its error; the others still run (``bench report`` then names it in one line on
stderr and exits with code 1, as ``bench plot``).

A metric that reports its own uncertainty of each value (``value_sd``: KID's s.d. over
subsets, FID-infinity's standard error of the extrapolation) shows it in its compact
table as ``mean ± value_sd``, then ``(seeds ± half-width)``, the 95% interval over seeds,
when there are two seeds or more. Over several seeds ``value_sd`` is combined as the
root mean square of the per-seed values, ``sqrt(mean(value_sd_i ** 2))``: the typical
uncertainty of one value (the pooled s.d. when each seed used as many subsets), chosen
over the mean because variances, not s.d.s, average; it does not shrink with more seeds,
which is what the seeds' interval is for. The table's footnote says so; the summary
carries it in a ``value_sd`` column.

When one benchmark's tables hold values of a sample-size-biased metric
(``Metric.sample_size_biased``: FID, whose expected value depends on n) computed at
different ``num_samples`` or ``num_reference``, its section opens with a warning naming
the metric and the sizes and suggesting ``kid`` or ``fid_inf``, and ``bench report``
prints the same in one line on stderr (:func:`harness.tables.mixed_sample_sizes`).

The Markdown report links the figures by relative path (keep ``report.md`` and
``figures/`` together); the HTML report is one self-contained file: the images are
embedded as base64 ``data:`` URIs, text outputs (``pruning_summary``) are inlined, and
only other data files (``pruning_json``'s JSON) are linked. Its long tables (runs,
summary, failed cells) sort by a click on a column header (a small inline script;
nothing is fetched from the network).

Two steps, one module each: :mod:`harness.report_data` gathers the facts and statistics
(:func:`collect`), :mod:`harness.report_render` renders them through the jinja2
templates in ``harness/templates/``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from harness.errors import UserError
from harness.report_data import BenchmarkSection, Report, ci_halfwidth, collect
from harness.report_render import FEW_VALUES_TEXT, SUMMARY_TEXT, VALUE_SD_TEXT, render_html, render_markdown
from harness.fsio import write_bytes

log = logging.getLogger(__name__)

FORMATS = ("md", "html")


def write_report(path: Path, out: Path, fmt: Literal["md", "html"] = "md", *,
                 runs: Sequence[str] | None = None, latest: bool = False) -> Path:
    """Write ``out/report.md`` or ``out/report.html`` of the results under ``path``; return it.

    :param path: a results folder, a benchmark folder, a run folder or one fragment.
    :param out: the report folder (created); figures go to ``out/figures/``.
    :param fmt: ``"md"`` (figures linked by relative path) or ``"html"`` (one
        self-contained file, figures embedded).
    :param runs: only these runs of the benchmark folder ``path`` (run ids).
    :param latest: only the newest run of the benchmark folder ``path``.
    :raises UserError: ``path`` is missing or holds no results, a run id is unknown, or
        ``fmt`` is unknown.
    """
    return make_report(path, out, fmt, runs=runs, latest=latest)[0]


def make_report(path: Path, out: Path, fmt: Literal["md", "html"] = "md", *,
                runs: Sequence[str] | None = None, latest: bool = False) -> tuple[Path, Report]:
    """:func:`write_report`, also returning the :class:`Report` it rendered (for its
    failed plots: ``Report.plot_failures()``)."""
    if fmt not in FORMATS:
        raise UserError(f"bench report --format {fmt}: unknown format; valid: 'html', 'md'")
    report = collect(Path(path), Path(out), runs=runs, latest=latest)
    text = render_markdown(report) if fmt == "md" else render_html(report)
    target = report.out_dir / f"report.{fmt}"
    write_bytes(target, text.encode("utf-8"))
    log.info("wrote %s", target)
    return target, report


__all__ = ["FEW_VALUES_TEXT", "SUMMARY_TEXT", "VALUE_SD_TEXT", "BenchmarkSection", "Report", "ci_halfwidth", "collect",
           "make_report", "render_html", "render_markdown", "write_report"]
