"""``bench results`` and ``bench report`` on sample sizes and a metric's own uncertainty:
one warning line when a table mixes sample sizes of a sample-size-biased metric, and
``value_sd`` (KID's s.d. over subsets, FID-infinity's standard error) shown with its values."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from harness import hookimpl, report_data
from harness.base import Metric, MetricContext
from harness.cli import main
from harness.store import ResultStore


class BiasedFID(Metric):
    """A FID-like metric whose value depends on the number of samples (test plugin)."""

    name = "biased_fid"
    higher_is_better = False
    sample_size_biased = True

    def compute(self, ctx: MetricContext) -> float:
        raise NotImplementedError("only its class attributes are read")


class Accuracy(Metric):
    """A metric that does not depend on the number of samples (test plugin)."""

    name = "plain_accuracy"

    def compute(self, ctx: MetricContext) -> float:
        raise NotImplementedError("only its class attributes are read")


class Plugin:
    @hookimpl
    def bench_register_metrics(self, register: Any) -> None:
        register(BiasedFID)
        register(Accuracy)


@pytest.fixture(autouse=True)
def _plugins(extra_plugins: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    extra_plugins(Plugin())
    monkeypatch.setattr(report_data, "_draw_plots", lambda df, registry, fig_dir: [])  # the tables only: fast


def _store(root: Path, sizes: dict[str, int], num_reference: dict[str, int] | None = None,
           value_sd: dict[tuple[str, int], float] | None = None, seeds: tuple[int, ...] = (0, 1)) -> Path:
    """One benchmark: the reference and a pruned variant, each with ``biased_fid``,
    ``plain_accuracy`` and ``ghost_fid`` (a metric of no installed plugin), ``num_samples``
    per variant from ``sizes`` (role -> n), ``value_sd`` per (role, seed) on biased_fid."""
    run = ResultStore(root, "bias").new_run({})
    for role, method in (("reference", "none"), ("pruned", "magnitude")):
        for seed in seeds:
            base = {"role": role, "pruning_method": method, "pruning_rate": 0.0 if role == "reference" else 0.5,
                    "cfg_scale": 1.0, "seed": seed, "sampler": "ddim", "steps": 4, "num_samples": sizes[role]}
            value = 10.0 + seed + (5.0 if role == "pruned" else 0.0)
            fid = {"metric": "biased_fid", "value": value, "status": "ok", "higher_is_better": False,
                   "num_reference": (num_reference or {}).get(role, 1000),
                   "value_sd": (value_sd or {}).get((role, seed))}
            run.write_cell(f"{role}-{seed}", [
                {**base, **fid},
                {**base, "metric": "plain_accuracy", "value": 0.9, "status": "ok", "higher_is_better": True},
                {**base, "metric": "ghost_fid", "value": value, "status": "ok", "higher_is_better": False},
            ])
    return root


WARNING = re.compile(r"^warning: biased_fid (\(benchmark bias\) )?at (num_samples|num_reference) ([0-9, ]+) in one "
                     r"table, but the value depends on the number of samples .*not comparable.* kid .* fid_inf .*$")


# ----------------------------------------------------------------------------- bench results


def test_bench_results_warns_in_one_line_when_a_biased_metric_mixes_sample_sizes(tmp_path, capsys):
    root = _store(tmp_path, {"reference": 64, "pruned": 256})
    assert main(["results", str(root)]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    found = WARNING.match(line)
    assert found and found.group(2, 3) == ("num_samples", "64, 256"), line
    # plain_accuracy is not biased, ghost_fid is no installed metric: neither is named
    assert "plain_accuracy" not in line and "ghost_fid" not in line


def test_bench_results_warns_when_the_reference_statistics_differ_in_size(tmp_path, capsys):
    root = _store(tmp_path, {"reference": 64, "pruned": 64}, num_reference={"reference": 1000, "pruned": 5000})
    assert main(["results", str(root)]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    found = WARNING.match(line)
    assert found and found.group(2, 3) == ("num_reference", "1000, 5000"), line


def test_bench_results_is_silent_at_equal_sample_sizes(tmp_path, capsys):
    root = _store(tmp_path, {"reference": 64, "pruned": 64})
    assert main(["results", str(root)]) == 0
    assert capsys.readouterr().err == ""


def test_bench_results_shows_value_sd_as_the_rms_over_seeds(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps no cell
    root = _store(tmp_path, {"reference": 64, "pruned": 64},
                  value_sd={("reference", 0): 0.3, ("reference", 1): 0.4, ("pruned", 0): 1.0, ("pruned", 1): 2.0})
    assert main(["results", str(root)]) == 0
    out = capsys.readouterr().out
    assert "value_sd" in out and "root mean square over seeds" in out
    header = next(line for line in out.splitlines() if "value_sd" in line and "metric" in line)
    column = [c.strip() for c in header.split("┃")].index("value_sd")
    fid = {cells[1]: cells[column] for cells in ([c.strip() for c in line.split("│")]
                                                 for line in out.splitlines() if "biased_fid" in line)}
    assert fid == {"pruned": f"{math.sqrt((1.0 + 4.0) / 2):.4g}", "reference": f"{math.sqrt(0.125):.4g}"}


# ----------------------------------------------------------------------------- bench report


def test_bench_report_warns_in_one_line_and_in_the_document(tmp_path, capsys):
    root = _store(tmp_path / "r", {"reference": 64, "pruned": 256})
    for fmt in ("md", "html"):
        out = tmp_path / fmt
        assert main(["report", str(root), "--out", str(out), "--format", fmt]) == 0
        (line,) = capsys.readouterr().err.splitlines()
        found = WARNING.match(line)
        assert found and found.group(1, 2, 3) == ("(benchmark bias) ", "num_samples", "64, 256"), line
        text = (out / f"report.{fmt}").read_text()
        message = line.removeprefix("warning: ")
        if fmt == "md":
            assert f"> **Warning:** {message}\n" in text
            # the compact table keeps the two sizes apart
            table = text.split("#### biased_fid ↓\n", 1)[1].split("\n#", 1)[0]
            assert "num_samples=64" in table and "num_samples=256" in table
        else:
            import html

            notes = [html.unescape(p) for p in re.findall(r'<p class="warn"><b>Warning:</b> (.*?)</p>', text)]
            assert notes == [message]


def test_bench_report_is_silent_at_equal_sample_sizes(tmp_path, capsys):
    root = _store(tmp_path / "r", {"reference": 64, "pruned": 64})
    assert main(["report", str(root), "--out", str(tmp_path / "md")]) == 0
    assert capsys.readouterr().err == ""
    assert "Warning" not in (tmp_path / "md" / "report.md").read_text()


def _entry(table: str, label: str) -> str:
    (line,) = [x for x in table.splitlines() if x.startswith(f"| {label} |")]
    return line.split(" | ")[1].strip(" |*")


def test_bench_report_shows_a_metrics_own_interval(tmp_path, capsys):
    """Two seeds: ``mean ± RMS value_sd (seeds ± t-interval)``; one seed: ``mean ± value_sd (n=1)``."""
    sds = {("reference", 0): 0.3, ("reference", 1): 0.4, ("pruned", 0): 1.0, ("pruned", 1): 2.0}
    root = _store(tmp_path / "two", {"reference": 64, "pruned": 64}, value_sd=sds)
    assert main(["report", str(root), "--out", str(tmp_path / "md")]) == 0
    text = (tmp_path / "md" / "report.md").read_text()
    table = text.split("#### biased_fid ↓\n", 1)[1].split("\n#", 1)[0]
    half = stats.t.ppf(0.975, 1) * np.std([10.0, 11.0], ddof=1) / math.sqrt(2)
    assert _entry(table, "teacher (reference)") == f"10.5 ± {math.sqrt(0.125):.4g} (seeds ± {half:.4g})"
    assert _entry(table, "magnitude rate 0.5") == f"15.5 ± {math.sqrt(2.5):.4g} (seeds ± {half:.4g})"
    assert report_data.VALUE_SD_TEXT in table  # the footnote says what ± is
    # a metric without value_sd keeps the usual entry and no footnote
    plain = text.split("#### plain_accuracy ↑\n", 1)[1].split("\n#", 1)[0]
    assert _entry(plain, "teacher (reference)") == "0.9 ± 0" and report_data.VALUE_SD_TEXT not in plain
    # the appendix carries a value_sd column
    appendix = text.split("### Appendix", 1)[1]
    header = next(line for line in appendix.splitlines() if "mean ± 95% CI" in line)
    assert "| value_sd |" in header and "value_sd is the metric's own uncertainty" in appendix

    one = _store(tmp_path / "one", {"reference": 64, "pruned": 64}, value_sd=sds, seeds=(0,))
    assert main(["report", str(one), "--out", str(tmp_path / "md1")]) == 0
    table = (tmp_path / "md1" / "report.md").read_text().split("#### biased_fid ↓\n", 1)[1].split("\n#", 1)[0]
    assert _entry(table, "teacher (reference)") == "10 ± 0.3 (n=1)"
    assert capsys.readouterr().err == ""
