"""``bench report``: Markdown and self-contained HTML reports of a results folder."""

from __future__ import annotations

import base64
import html
import io
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import pytest

from harness import hookimpl, report, report_data, runner
from harness.base import Metric, MetricContext, Plot
from harness.cli import main
from harness.errors import UserError
from _matrices import REPO, SMALL, SYNTHETIC

PNG = b"\x89PNG\r\n\x1a\n"
CHROMIUM = Path("/usr/bin/chromium")


class Flaky(Metric):
    """Fails on every cell of seed 1 (test plugin)."""

    name = "flaky"
    requires: ClassVar[frozenset[str]] = frozenset({"samples"})

    def compute(self, ctx: MetricContext) -> float:
        if ctx.cell.axes["seed"] == 1:
            raise ValueError("flaky fails on seed 1")
        return 0.5


class Broken(Plot):
    """Always raises (test plugin)."""

    name = "broken"

    def draw(self, df: Any, out_dir: Path) -> list[Path]:
        raise RuntimeError("boom")


class TestPlugins:
    @hookimpl
    def bench_register_metrics(self, register: Any) -> None:
        register(Flaky)

    @hookimpl
    def bench_register_plots(self, register: Any) -> None:
        register(Broken)


def _with_extra_plugins(mp: pytest.MonkeyPatch, *plugins: Any) -> None:
    """Every plugin manager the harness builds also registers ``plugins``."""
    from harness import registry

    original = registry.get_plugin_manager

    def get_plugin_manager(load_entrypoints: bool = True, extra: list[Any] | None = None) -> Any:
        return original(load_entrypoints, [*plugins, *(extra or [])])

    mp.setattr(registry, "get_plugin_manager", get_plugin_manager)
    mp.setattr(runner, "get_plugin_manager", get_plugin_manager)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """4 cells of the synthetic benchmark; the 2 of seed 1 failed (metric ``flaky``)."""
    root = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        _with_extra_plugins(mp, TestPlugins())
        summary = runner.run(SYNTHETIC, [*SMALL, 'metrics.names=["synthetic_quality", "flaky"]'],
                             results_dir=str(root), stream=io.StringIO(), interactive=False)
    assert (summary.ok, summary.error) == (2, 2)
    return root


@pytest.fixture(scope="module")
def md_report(results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report-md")
    assert main(["report", str(results), "--out", str(out)]) == 0
    return out / "report.md"


@pytest.fixture(scope="module")
def html_report(results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report-html")
    path = report.write_report(results, out, fmt="html")
    assert path == out / "report.html"
    return path


def _run_id(results: Path) -> str:
    (run_dir,) = [p for p in (results / "synthetic").iterdir() if not p.name.startswith(("_", "."))]
    return run_dir.name


# ----------------------------------------------------------------------------- markdown


def test_markdown_report_has_the_runs_facts_and_the_summary_table(md_report, results):
    text = md_report.read_text()
    assert text.startswith("# diffbench report")
    assert "## synthetic" in text
    # the manifest's facts
    assert _run_id(results) in text
    assert f"`{SYNTHETIC}`" in text  # matrix file
    assert "**device**: cpu" in text and "**git commit**" in text and "diffbench 0.1" in text
    assert "Live cells: 4 (2 ok, 2 failed), from 1 run." in text
    # the summary table of `bench results`, with confidence intervals and deltas vs the reference
    header = next(line for line in text.splitlines() if "mean ± 95% CI" in line)
    assert header.startswith("| ") and "metric" in header
    assert [h.strip() for h in header.split("|")[-6:-1]] == ["mean ± 95% CI", "s.d.", "n", "errors",
                                                              "Δ vs reference ± 95% CI"]
    rows = [line for line in text.splitlines() if line.startswith("| ") and "synthetic_quality ↑" in line]
    assert len(rows) == 2  # reference and magnitude@0.5 (seed 0 only: seed 1 failed)
    assert rows[0].split("|")[1].strip() == "reference"  # the reference comes first
    # one seed each: no interval, and the table says why
    assert all(re.search(r"\| [0-9.]+ \(n < 2, no CI\) \| - \| 1 \| 1 \| [+-][0-9.]+ \|$", r) for r in rows), rows
    assert report.FEW_VALUES_TEXT in text


def test_markdown_report_links_figures_that_exist(md_report):
    text = md_report.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links, text
    assert any(link.endswith("expected_pruning_curve.png") for link in links)
    for link in links:
        assert not Path(link).is_absolute() and link.startswith("figures/")
        target = md_report.parent / unquote(link)
        assert target.read_bytes()[:8] == PNG
    # text outputs are inlined, data files linked
    assert "Pruning summary: method 'magnitude'" in text
    assert "figures/pruning/results_magnitude.json" in text
    # written atomically: no temporary file left behind
    assert not [p for p in md_report.parent.iterdir() if p.name.startswith(".tmp")]


def test_failed_cells_are_listed_with_their_messages(md_report):
    text = md_report.read_text()
    section = text.split("### Failed cells", 1)[1].split("### Figures", 1)[0]
    failed = [line for line in section.splitlines() if line.startswith("| synthetic[")]
    assert len(failed) == 2
    assert {line.split("|")[1].strip() for line in failed} == {
        "synthetic[reference,cfg=1,seed=1]", "synthetic[method=magnitude,rate=0.5,cfg=1,seed=1]"}
    assert all("ValueError: flaky fails on seed 1" in line for line in failed)


# ----------------------------------------------------------------------------- html


def test_html_report_is_one_file_with_images_as_data_uris(html_report):
    text = html_report.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    sources = re.findall(r'<img src="([^"]+)"', text)
    drawn = sorted((html_report.parent / "figures").rglob("*.png"))
    assert sources and len(sources) == len(drawn)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    # the tables are HTML tables, sortable by an inline script (nothing fetched), the error
    # messages are in them, escaped
    assert text.count('<table class="sortable">') == 3  # runs, summary, failed cells
    assert text.count('<table class="compare">') == 2  # one compact table per metric: flaky, synthetic_quality
    assert "<th class=num>mean ± 95% CI</th>" in text and "<th class=num>Δ vs reference ± 95% CI</th>" in text
    scripts = re.findall(r"<script>(.*?)</script>", text, re.S)
    assert len(scripts) == 1 and 'querySelectorAll("table.sortable")' in scripts[0]
    assert not re.search(r"<script[^>]* src=|https?://", "".join(scripts) + "".join(re.findall(r"<link[^>]*>", text)))
    assert "ValueError: flaky fails on seed 1" in text
    assert "synthetic[method=magnitude,rate=0.5,cfg=1,seed=1]" in text


class _Outline(HTMLParser):
    """The headings of a page, checking on the way that every element is closed in order."""

    VOID = frozenset({"meta", "img", "br", "link", "hr", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.headings: list[tuple[str, str]] = []
        self.counts: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag not in self.VOID:
            self.open.append(tag)
        if tag in ("h2", "h3", "h4"):
            self.headings.append((tag, ""))

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        if self.open and self.open[-1] in ("h2", "h3", "h4"):
            tag, text = self.headings[-1]
            self.headings[-1] = (tag, text + data)


def test_html_report_parses_and_has_every_section(html_report):
    """Without a browser: the page is well nested and has every section of the Markdown report."""
    page = _Outline()
    page.feed(html_report.read_text())
    page.close()
    assert page.open == []
    assert [t for h, t in page.headings if h != "h4"] == ["synthetic", "Comparison", "Failed cells", "Figures", "Runs",
                                                          "Appendix: summary of every row"]
    h4 = [t for h, t in page.headings if h == "h4"]
    assert h4[:2] == ["flaky ↑", "synthetic_quality ↑"]  # the compact tables lead
    assert {"pruning_curves", "pruning_pareto", "pruning_summary", "pruning_json"} <= set(h4)
    assert (page.counts["style"], page.counts["script"], page.counts["table"], page.counts["dl"]) == (1, 1, 5, 1)


def _no_plots(results: Path, out: Path, mp: pytest.MonkeyPatch) -> report.Report:
    mp.setattr(report_data, "_draw_plots", lambda df, registry, fig_dir: [])  # the tables only: fast
    return report.collect(results, out)


def test_what_the_report_shows_is_escaped(results, tmp_path, monkeypatch):
    """Plugin errors and cell error messages are text: HTML escapes them, Markdown keeps tables whole."""
    rep = _no_plots(results, tmp_path, monkeypatch)
    rep.plugin_errors = ["plugin <script>alert(1)</script> failed"]
    rep.benchmarks[0].failed[0].errors = ['ValueError: a|b <b>"bold"</b> & more']
    html_text = report.render_html(rep)
    assert "<script>alert(1)" not in html_text and "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert '<td class=err>ValueError: a|b &lt;b&gt;&#34;bold&#34;&lt;/b&gt; &amp; more</td>' in html_text
    md_text = report.render_markdown(rep)
    assert "> **Warning:** plugin <script>alert(1)</script> failed" in md_text
    (row,) = [line for line in md_text.splitlines() if "ValueError: a" in line]
    assert row.endswith('| ValueError: a\\|b <b>"bold"</b> & more |')


def test_facts_that_differ_between_runs_are_listed_per_run(results, tmp_path, monkeypatch):
    import copy

    rep = _no_plots(results, tmp_path, monkeypatch)
    (section,) = rep.benchmarks
    other = copy.deepcopy(section.runs[0])
    other.run_id, other.manifest["device"] = "other-run", "cuda:0"
    section.runs.append(other)
    run_id = _run_id(results)
    md_text = report.render_markdown(rep)
    assert f"- **device**:\n  - cpu (runs {run_id})\n  - cuda:0 (runs other-run)\n" in md_text
    assert f"- **host**: {other.manifest['host']}\n" in md_text  # the same on both: said once
    assert f"<dt>device</dt><dd>cpu (runs {run_id})<br>cuda:0 (runs other-run)</dd>" in report.render_html(rep)
    assert "from 2 runs." in md_text


#: appended to a copy of the report: once loaded, make every image load (the report's are
#: lazy), wait for them, sort the summary by metric both ways, and report it all in the title
_PROBE = """
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  images.forEach(function (img) { img.loading = "eager"; });
  var summary = Array.prototype.filter.call(document.querySelectorAll("table.sortable"), function (t) {
    return t.tHead.textContent.indexOf("mean ± 95% CI") >= 0;
  })[0];
  var heads = Array.prototype.map.call(summary.tHead.rows[0].cells, function (th) { return th.textContent; });
  var col = heads.indexOf("metric");
  function column() {
    return Array.prototype.map.call(summary.tBodies[0].rows, function (r) { return r.cells[col].textContent; });
  }
  var before = column();
  summary.tHead.rows[0].cells[col].click();
  var ascending = column();
  summary.tHead.rows[0].cells[col].click();
  var descending = column();
  (function finish() {  // timers, not img.decode(): headless virtual time runs timers
    if (images.some(function (img) { return !img.complete; })) { return setTimeout(finish, 20); }
    document.title = JSON.stringify({
      images: images.length,
      decoded: images.filter(function (img) { return img.naturalWidth > 0 && img.naturalHeight > 0; }).length,
      tables: document.querySelectorAll("table").length, rows: document.querySelectorAll("tbody tr").length,
      compare: document.querySelectorAll("table.compare").length,
      best: document.querySelectorAll("table.compare td.best").length,
      bold: Array.prototype.filter.call(document.querySelectorAll("table.compare td.best"), function (td) {
        return parseInt(getComputedStyle(td.firstElementChild).fontWeight, 10) >= 600;
      }).length,
      beside: Array.prototype.filter.call(document.querySelectorAll("div.compare img"), function (img) {
        return img.naturalWidth > 0;
      }).length,
      before: before, ascending: ascending, descending: descending,
      sort: summary.tHead.rows[0].cells[col].getAttribute("aria-sort")
    });
  })();
});
</script>
"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_html_report_renders_in_headless_chromium(html_report, tmp_path):
    """Chromium loads the report offline: every table, every image decoded, headers sort."""
    page = tmp_path / "report.html"
    page.write_text(html_report.read_text().replace("</body>", _PROBE + "</body>"))
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )
    found = re.search(r"<title>(.*?)</title>", proc.stdout, re.S)
    assert found, proc.stderr[-2000:]
    import json

    title = html.unescape(found.group(1))
    assert title.startswith("{"), f"the probe did not finish: {title!r}\n{proc.stderr[-2000:]}"
    seen = json.loads(title)
    source = html_report.read_text()
    assert seen["images"] == source.count("<img ") > 0
    assert seen["decoded"] == seen["images"]  # every embedded PNG decodes to a real image
    assert seen["tables"] == source.count("<table") == 5  # runs, summary, failed cells + 2 compact tables
    assert seen["rows"] == source.count("<tr>") - 5  # every body row is rendered (one head row per table)
    assert seen["compare"] == 2 and seen["best"] == source.count('<td class="num best">') == 3
    assert seen["bold"] == seen["best"]  # the best entries are shown in bold
    assert seen["beside"] == 2  # each compact table's figure decoded beside it
    assert seen["ascending"] == sorted(seen["before"]) and seen["descending"] == sorted(seen["before"], reverse=True)
    assert seen["sort"] == "descending"


def test_confidence_intervals_over_seeds(tmp_path, monkeypatch):
    """The report's intervals are t-intervals over seeds, of the means and of the paired deltas."""
    import numpy as np
    from scipy import stats

    from harness import load_results

    overrides = [*SMALL[:3], "matrix.seed=[0, 1, 2]", 'metrics.names=["synthetic_quality"]']
    runner.run(SYNTHETIC, overrides, results_dir=str(tmp_path / "r"), stream=io.StringIO(), interactive=False)
    monkeypatch.setattr(report_data, "_draw_plots", lambda df, registry, fig_dir: [])  # the table only: fast
    (section,) = report.collect(tmp_path / "r", tmp_path / "out").benchmarks
    table = {row[section.summary.headers.index("pruning_method")]: dict(zip(section.summary.headers, row))
             for row in section.summary.rows}
    assert not section.summary.few_values

    df = load_results(tmp_path / "r", with_reference=True)
    t = stats.t.ppf(0.975, 2)
    for method, rows in df.groupby("pruning_method", observed=True):
        values, deltas = rows.sort_values("seed")["value"].to_numpy(), rows.sort_values("seed")["delta"].to_numpy()
        row = table[str(method)]
        assert row["n"] == "3"
        half = t * values.std(ddof=1) / np.sqrt(3)
        assert row["mean ± 95% CI"] == f"{values.mean():.4g} ± {half:.4g}"
        assert row["s.d."] == f"{values.std(ddof=1):.4g}"
        if method == "magnitude":
            d_half = t * deltas.std(ddof=1) / np.sqrt(3)
            assert row["Δ vs reference ± 95% CI"] == f"{deltas.mean():+.4g} ± {d_half:.4g}"
            assert d_half != half  # paired: the interval of the differences, not of the values
    assert report.ci_halfwidth(1.0, 1) != report.ci_halfwidth(1.0, 1)  # NaN: no interval from one value
    assert report.ci_halfwidth(2.0, 4) == pytest.approx(stats.t.ppf(0.975, 3) * 2.0 / 2.0)


# ----------------------------------------------------------------------------- compact tables

#: the variants of ``swept`` in the order the compact tables list them
SWEPT_ROWS = ["teacher (reference)",
              'magnitude rate 0.3 + protect=["out_conv"]', 'magnitude rate 0.3 + protect=["time_embed"]',
              'magnitude rate 0.6 + protect=["out_conv"]', 'magnitude rate 0.6 + protect=["time_embed"]',
              "random rate 0.3", "random rate 0.6"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """Reference, magnitude (a swept option) and random at two rates, two CFG scales, two seeds:
    28 cells of a higher-is-better (synthetic_quality) and a lower-is-better (generation_time) metric."""
    root = tmp_path_factory.mktemp("swept")
    overrides = ['matrix.pruning_method=["none", "magnitude", "random"]', "matrix.pruning_rate=[0.3, 0.6]",
                 "matrix.cfg_scale=[1.0, 3.0]", "matrix.seed=[0, 1]",
                 'matrix."pruners.magnitude.protect"=[["time_embed"], ["out_conv"]]']
    summary = runner.run(SYNTHETIC, overrides, results_dir=str(root), stream=io.StringIO(), interactive=False)
    assert (summary.ok, summary.error) == (28, 0)
    return root


def _expected_entries(swept: Path, metric: str) -> dict[tuple[str, float], tuple[float, str]]:
    """``(variant label, cfg) -> (mean, entry text)`` computed from the stored rows, not by the report."""
    import numpy as np
    from scipy import stats

    from harness import load_results

    df = load_results(swept)
    df = df[df["metric"] == metric]
    out = {}
    keys = ["pruning_method", "pruning_rate", "pruners.magnitude.protect", "cfg_scale"]
    for (method, rate, protect, cfg), rows in df.groupby(keys, dropna=False, observed=True):
        label = ("teacher (reference)" if method == "none" else f"{method} rate {rate:g}"
                 + (f" + protect={protect}" if isinstance(protect, str) else ""))
        v = rows["value"].to_numpy(dtype=float)
        half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
        out[(label, float(cfg))] = (v.mean(), f"{v.mean():.4g} ± {half:.4g}")
    return out


@pytest.mark.parametrize("metric, higher", [("synthetic_quality", True), ("generation_time", False)])
def test_compact_table_per_metric_variants_by_cfg_best_marked(metric, higher, swept, tmp_path, monkeypatch):
    """Rows: the variants in order (swept option included); columns: the CFG scales; entries: mean ± CI;
    the best mean of each column marked, the larger for ↑, the smaller for ↓."""
    monkeypatch.setattr(report_data, "_draw_plots", lambda df, registry, fig_dir: [])  # the tables only: fast
    (section,) = report.collect(swept, tmp_path).benchmarks
    assert [t.metric for t in section.compare] == ["generation_time", "synthetic_quality"]
    (table,) = [t for t in section.compare if t.metric == metric]
    assert table.higher_is_better is higher
    assert table.columns == ["CFG 1", "CFG 3"]
    assert [label for label, _ in table.rows] == SWEPT_ROWS
    assert table.caption == "model=synthetic, sampler=ddim, steps=4"
    expected = _expected_entries(swept, metric)
    for label, entries in table.rows:
        assert entries == [expected[(label, 1.0)][1], expected[(label, 3.0)][1]], label
    for j, cfg in enumerate((1.0, 3.0)):
        means = [expected[(label, cfg)][0] for label in SWEPT_ROWS]
        top = max(means) if higher else min(means)
        assert [row[j] for row in table.best] == [m == top for m in means]
        assert sum(row[j] for row in table.best) >= 1

    # rendered: bold in Markdown, class "best" and bold in HTML, nothing else marked
    marked = {(table.rows[i][0], table.columns[j]) for i, row in enumerate(table.best) for j, b in enumerate(row) if b}
    md_text = report.render_markdown(report.collect(swept, tmp_path / "md"))
    part = md_text.split(f"#### {metric} {'↑' if higher else '↓'}\n", 1)[1].split("\n#", 1)[0]
    lines = [line for line in part.splitlines() if line.startswith("| ")]
    assert lines[0] == "| variant | CFG 1 | CFG 3 |" and len(lines) == 2 + len(SWEPT_ROWS)
    bold = {(cells[0], table.columns[j]) for cells in (line.strip("| ").split(" | ") for line in lines[2:])
            for j, c in enumerate(cells[1:]) if c.startswith("**") and c.endswith("**")}
    assert bold == marked
    html_text = report.render_html(report.collect(swept, tmp_path / "html"))
    anchor = f'<h4 id="m-synthetic-{metric}">'
    block = html_text.split(anchor, 1)[1].split("</table>", 1)[0]
    best = re.findall(r'<tr><th scope=row>([^<]*)</th>(.*?)</tr>', block)
    seen = {(html.unescape(label), table.columns[j]) for label, tds in best
            for j, td in enumerate(re.findall(r"<td[^>]*>.*?</td>", tds)) if td.startswith('<td class="num best"><b>')}
    assert seen == marked
    assert block.count('class="num best"') == len(marked)


def test_compact_table_orders_students_and_marks_nothing_without_a_direction():
    """Students from the largest after the teacher, then pruned variants; a missing entry is "-";
    a metric without a direction has no best; ties are all marked."""
    import pandas as pd

    nan = float("nan")
    rows = []
    for role, size, method, rate in [("pruned", nan, "magnitude", 0.5), ("student", 0.25, "none", nan),
                                     ("reference", nan, "none", nan), ("student", 0.5, "none", nan)]:
        for cfg in (1.0, 7.5):
            if role == "student" and size == 0.25 and cfg == 7.5:
                continue  # not run: "-"
            for metric, hib, mean in [("fid", False, 10.0 if role == "student" else 12.0), ("dim", nan, 3.0)]:
                rows.append({"benchmark": "b", "role": role, "size_factor": size, "pruning_method": method,
                             "pruning_rate": rate, "cfg_scale": cfg, "metric": metric, "higher_is_better": hib,
                             "mean": mean, "std": 0.5, "n": 3 if role != "pruned" else 1, "errors": 0})
    dim, fid = report_data.compare_tables(pd.DataFrame(rows))
    assert [label for label, _ in fid.rows] == ["teacher (reference)", "student 0.5", "student 0.25",
                                                "magnitude rate 0.5"]
    assert fid.columns == ["CFG 1", "CFG 7.5"]
    assert fid.rows[2][1][1] == "-" and fid.rows[3][1][0] == "12 (n=1)"
    assert fid.best == [[False, False], [True, True], [True, False], [False, False]]
    assert dim.higher_is_better is None and not any(map(any, dim.best))


def test_the_figure_of_a_metric_stands_beside_its_table(md_report, html_report):
    """Markdown: the metric's figure right after its compact table; HTML: embedded beside it, once."""
    md_text = md_report.read_text()
    part = md_text.split("#### synthetic_quality ↑\n", 1)[1].split("### Failed cells", 1)[0]
    assert "![figures/pruning/compare_synthetic_quality.png](figures/pruning/compare_synthetic_quality.png)" in part
    html_text = html_report.read_text()
    block = html_text.split('<h4 id="m-synthetic-synthetic_quality">', 1)[1].split("<h4", 1)[0]
    assert re.search(r'<div class="compare">.*</table></div>\n<figure><img src="data:image/png;base64,[^"]+" '
                     r'alt="figures/pruning/compare_synthetic_quality.png"', block, re.DOTALL)
    figures = html_text.split("<h3>Figures</h3>", 1)[1]
    assert 'alt="figures/pruning/compare_synthetic_quality.png"' not in figures  # embedded once
    assert ('<code>figures/pruning/compare_synthetic_quality.png</code>: shown beside the table of '
            '<a href="#m-synthetic-synthetic_quality">synthetic_quality</a>') in figures


def test_the_appendix_holds_the_long_summary_table(md_report, html_report):
    md_text = md_report.read_text()
    sections = md_text.split("\n### ")
    assert [s.split("\n", 1)[0] for s in sections[1:]] == ["Comparison", "Failed cells", "Figures", "Runs",
                                                            "Appendix: summary of every row"]
    appendix = sections[-1]
    assert "mean ± 95% CI" not in md_text.split("### Appendix", 1)[0]
    assert len([line for line in appendix.splitlines() if "synthetic_quality ↑" in line]) == 2
    assert len([line for line in appendix.splitlines() if "flaky ↑" in line]) == 2
    html_text = html_report.read_text()
    appendix = html_text.split("<h3>Appendix: summary of every row</h3>", 1)[1]
    assert "<th class=num>mean ± 95% CI</th>" in appendix and appendix.count("synthetic_quality ↑</td>") == 2


# ----------------------------------------------------------------------------- plots, paths, errors


def test_a_failing_plot_is_listed_and_the_others_are_still_drawn(results, tmp_path, monkeypatch):
    _with_extra_plugins(monkeypatch, TestPlugins())
    text = report.write_report(results, tmp_path, fmt="md").read_text()
    assert "- **broken**: `RuntimeError: boom`" in text
    assert "expected_pruning_curve.png" in text


def test_bench_report_names_a_failing_plot_in_one_line_and_exits_1(results, tmp_path, monkeypatch, capsys):
    _with_extra_plugins(monkeypatch, TestPlugins())
    assert main(["report", str(results), "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: plot broken failed: RuntimeError: boom"]
    assert captured.out.strip() == str(tmp_path / "report.md")
    assert (tmp_path / "figures" / "synthetic" / "expected_pruning_curve.png").is_file()


# ----------------------------------------------------------------------------- --run, --latest


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, str, str]:
    """A synthetic benchmark folder with two runs: seeds 0 and 1 first, then seed 2."""
    root = tmp_path_factory.mktemp("two-runs")
    for seeds in ("[0, 1]", "[2]"):
        overrides = [*SMALL[:-1], f"matrix.seed={seeds}", 'metrics.names=["synthetic_quality"]']
        runner.run(SYNTHETIC, overrides, results_dir=str(root), stream=io.StringIO(), interactive=False)
    first, second = sorted(p.name for p in (root / "synthetic").iterdir() if not p.name.startswith(("_", ".")))
    return root / "synthetic", first, second


@pytest.mark.parametrize("select, seeds", [("latest", {2}), ("first", {0, 1}), ("both", {0, 1, 2}), ("none", {0, 1, 2})])
def test_runs_of_a_benchmark_folder_are_selected(select, seeds, two_runs, tmp_path, monkeypatch):
    from harness import load_results

    monkeypatch.setattr(report_data, "_draw_plots", lambda df, registry, fig_dir: [])  # facts only: fast
    bench, first, second = two_runs
    args = {"latest": ["--latest"], "first": ["--run", first], "both": ["--run", first, "--run", second],
            "none": []}[select]
    runs = [a for a in args if a != "--run" and a != "--latest"]
    df = load_results(bench, runs=runs, latest=select == "latest")
    assert set(df["seed"]) == seeds
    rep = report.collect(bench, tmp_path, runs=runs, latest=select == "latest")
    expected_runs = {"latest": [second], "first": [first]}.get(select, [first, second])
    assert [r.run_id for r in rep.benchmarks[0].runs] == expected_runs
    assert main(["report", str(bench), *args, "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert all(run in text for run in expected_runs)
    assert not any(run in text for run in {first, second} - set(expected_runs))


@pytest.mark.parametrize("command", ["report", "plot", "results"])
def test_unknown_run_or_a_folder_that_is_not_a_benchmark_is_one_line_exit_2(command, two_runs, tmp_path, capsys):
    bench, first, second = two_runs
    assert main([command, str(bench), "--run", first, "--run", "no-such-run", "--out", str(tmp_path / "o")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"error: --run no-such-run: no such run in {bench}; valid: '{first}', '{second}'"
    for path in (bench.parent, bench / first):
        assert main([command, str(path), "--latest", "--out", str(tmp_path / "o")]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"error: {path}: not a benchmark folder with runs (results/<benchmark>/<run_id>/)")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("where", ["root", "benchmark", "run"])
def test_a_results_benchmark_or_run_folder_can_be_reported(where, results, tmp_path, monkeypatch):
    monkeypatch.setattr(report_data, "_draw_plots", lambda df, registry, fig_dir: [])  # facts only: fast
    run_id = _run_id(results)
    path = {"root": results, "benchmark": results / "synthetic", "run": results / "synthetic" / run_id}[where]
    rep = report.collect(path, tmp_path)
    (section,) = rep.benchmarks
    assert section.name == "synthetic"
    assert [r.run_id for r in section.runs] == [run_id]
    assert section.runs[0].manifest["matrix_file"] == str(SYNTHETIC)
    assert (section.live_ok, section.live_error) == (2, 2)


def test_cells_of_different_num_samples_are_not_averaged_together(results):
    import pandas as pd

    from harness import load_results

    df = load_results(results, with_reference=True)
    other = df.assign(num_samples=8, run_id="other", value=df["value"] + 1)  # a second configuration
    both = pd.concat([df, other], ignore_index=True)
    summary = report_data._summarize(both)
    quality = summary[(summary.metric == "synthetic_quality") & (summary.role == "reference")]
    assert sorted(quality["num_samples"]) == [8, 16]
    assert (quality["n"] == 1).all()  # seed 0 of each configuration (seed 1 failed)


def test_missing_path_is_one_line_and_exit_code_2(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["report", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(missing) in err[0]
    assert not (tmp_path / "out").exists()


def test_a_folder_without_results_is_one_line_and_exit_code_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "synthetic").mkdir(parents=True)
    assert main(["report", str(empty), "--out", str(tmp_path / "out"), "--format", "html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(empty) in err[0] and "no results" in err[0]


def test_unknown_format_is_a_user_error(results, tmp_path):
    with pytest.raises(UserError, match="format pdf"):
        report.write_report(results, tmp_path, fmt="pdf")  # type: ignore[arg-type]


def test_the_report_modules_do_not_import_plugins():
    for name in ("report.py", "report_data.py", "report_render.py"):
        source = (REPO / "harness" / name).read_text()
        assert not re.search(r"^\s*(from|import)\s+plugins\b", source, re.MULTILINE), name



def test_a_metrics_figure_is_found_by_its_file_name():
    from harness.report_data import _figure_of

    figures = [Path("fid/fid_digits_vs_size.png"), Path("compare_label_accuracy.png"), Path("x/metrics_vs_size.png")]
    assert _figure_of("fid_digits", figures) == figures[0]
    assert _figure_of("label_accuracy", figures) == figures[1]
    assert _figure_of("feature_distance", figures) is None
    assert _figure_of("fid", figures) is None  # fid_digits is another metric
