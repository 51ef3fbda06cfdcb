"""The public plot helpers (``harness.plotting``) and the example plot of
docs/writing_plugins.md, run as written on a realistic frame with swept options."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import types
from pathlib import Path

import matplotlib as mpl
import pandas as pd
import pytest

from harness import (
    averaged_note,
    new_figure,
    ok_rows,
    plot_style,
    save_figure,
    seed_stats,
    spread_note,
    variant_columns,
    variant_groups,
    variant_label,
)
from harness.testing import PlotContract
from harness.testing.checks import realistic_frame

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "writing_plugins.md"
EXAMPLE_HEADER = "# src/bench_tutorial/variant_bars.py"


def _example_module() -> types.ModuleType:
    """The ``variant_bars`` block of docs/writing_plugins.md, imported as a module."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    [source] = [b for b in blocks if b.startswith(EXAMPLE_HEADER)]
    module = types.ModuleType("bench_tutorial_variant_bars")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, str(DOC), "exec"), module.__dict__)  # noqa: S102 - the docs example, run as written
    return module


EXAMPLE = _example_module()


def swept_frame() -> pd.DataFrame:
    """The contract's realistic frame, with a pruner option swept for magnitude only
    (``pruners.magnitude.protect``, missing on other methods) and a metric option swept
    for every fid_digits row (``metrics.fid_digits.dims``). As in stored results, an
    option of one method is missing on the rows of the others."""
    df = realistic_frame()
    df["pruners.random.scope"] = df["pruners.random.scope"].where(df["pruning_method"].astype(str) == "random")
    magnitude = df["pruning_method"].astype(str) == "magnitude"
    parts = [df[~magnitude].assign(**{"pruners.magnitude.protect": None})]
    for i, protect in enumerate(("[]", "['out']")):
        part = df[magnitude].assign(**{"pruners.magnitude.protect": protect})
        parts.append(part.assign(value=part["value"] + i))
    df = pd.concat(parts, ignore_index=True)
    fid = df["metric"].astype(str) == "fid_digits"
    parts = [df[~fid].assign(**{"metrics.fid_digits.dims": math.nan})]
    parts += [df[fid].assign(**{"metrics.fid_digits.dims": dims}) for dims in (64.0, 2048.0)]
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------ the docs example


def test_the_docs_example_draws_a_bar_per_variant_and_names_what_it_averaged(tmp_path, monkeypatch):
    seen: dict[str, object] = {}

    def spy(fig, path):  # records what the figure says before it is saved
        seen["footnote"] = fig.get_supxlabel()
        seen["bars"] = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        return save_figure(fig, path)

    monkeypatch.setattr(EXAMPLE, "save_figure", spy)
    paths = EXAMPLE.VariantBars().draw(swept_frame(), tmp_path)
    assert paths == [tmp_path / "variant_bars_fid_digits.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the swept pruner option is shown (a bar per value), not averaged; random has no fid
    assert seen["bars"] == ["teacher", "student 0.5", "magnitude rate 0.5 + protect=['out']",
                            "magnitude rate 0.5 + protect=[]"]
    note = " ".join(str(seen["footnote"]).split())
    assert "Also averaged over cfg_scale ∈ {1, 3}; metrics.fid_digits.dims ∈ {64, 2048}." in note
    # magnitude lost its seed-1 fid to a NaN: the note says so
    assert "Values: mean over 1-2 seeds; error bars: ±1 s.d. over seeds." in note
    assert "pruners.magnitude.protect" not in note


def test_the_docs_example_draws_nothing_without_its_metric(tmp_path):
    plot = EXAMPLE.VariantBars(metric="lpips")
    assert plot.draw(swept_frame(), tmp_path) == []
    assert list(tmp_path.iterdir()) == []


class TestVariantBarsContract(PlotContract):
    plot_cls = EXAMPLE.VariantBars


# --------------------------------------------------------------------------- helpers


def test_variant_groups_split_swept_options_and_order_teacher_first():
    d = ok_rows(swept_frame())
    groups = variant_groups(d)
    labels = [v.label for v, _rows in groups]
    assert labels == ["teacher", "student 0.5", "magnitude rate 0.5 + protect=['out']",
                      "magnitude rate 0.5 + protect=[]", "random rate 0.5 + scope=all"]
    assert [v.slug for v, _rows in groups][2] == "magnitude_rate0.5_protect['out']"
    assert sum(len(rows) for _v, rows in groups) == len(d)  # a partition of the rows
    for variant, rows in groups:
        assert {variant_label(row) for _i, row in rows.iterrows()} == {variant.label}
    assert groups[0][0].is_reference and not groups[1][0].is_reference


def test_variant_groups_read_nullable_option_columns():
    """A swept integer option of one method is a nullable ``Int64`` column: missing on the
    other methods, and written without a decimal point."""
    df = pd.DataFrame({"pruning_method": ["none", "iterative", "iterative"], "pruning_rate": [0.0, 0.5, 0.5],
                       "size_factor": [math.nan] * 3, "pruners.iterative.rounds": pd.array([None, 1, 2], "Int64"),
                       "seed": [0, 0, 0], "metric": ["m"] * 3, "value": [1.0, 2.0, 3.0]})
    assert [v.label for v, _rows in variant_groups(df)] == [
        "teacher", "iterative rate 0.5 + rounds=1", "iterative rate 0.5 + rounds=2"]
    assert variant_columns(df) == ["size_factor", "pruning_method", "pruning_rate", "pruners.iterative.rounds"]


def test_averaged_note_names_every_swept_axis_not_shown():
    d = ok_rows(swept_frame())
    note = averaged_note(d, ["pruning_method", "pruning_rate", "size_factor"])
    assert note == ("Also averaged over cfg_scale ∈ {1, 3}; metrics.fid_digits.dims ∈ {64, 2048}; "
                    "pruners.magnitude.protect ∈ {['out'], []}.")
    # shown axes, seeds and single-valued columns (pruners.random.scope) are not named
    assert averaged_note(d, [*variant_columns(d), "cfg_scale", "metrics.fid_digits.dims"]) == ""


def test_seed_stats_count_each_seed_once_and_say_so():
    df = pd.DataFrame({"seed": [0, 0, 0, 1], "value": [1.0, 2.0, 3.0, 5.0], "g": ["a"] * 4})
    [row] = seed_stats(df, []).to_dict("records")  # seed 0 mean 2, seed 1 mean 5
    assert (row["mean"], row["n"]) == (3.5, 2) and row["std"] == pytest.approx(math.sqrt(4.5))
    assert seed_stats(df, ["g"])[["mean", "n"]].to_dict("records") == [{"mean": 3.5, "n": 2}]
    assert spread_note(seed_stats(df, ["g"])) == "Values: mean over 2 seeds; error bars / bands: ±1 s.d. over seeds."
    assert spread_note(seed_stats(df[df["seed"] == 0], ["g"])) == "Values: one seed per point (no spread shown)."


def test_plot_style_leaves_global_state_and_save_figure_makes_folders(tmp_path):
    before = dict(mpl.rcParams)
    with plot_style():
        assert mpl.rcParams["savefig.dpi"] == 150
        fig = new_figure(3, 2)
        fig.add_subplot().plot([0, 1], [1, 0])
        path = save_figure(fig, tmp_path / "a" / "b" / "line.png")
    assert path == tmp_path / "a" / "b" / "line.png" and path.stat().st_size > 0
    assert dict(mpl.rcParams) == before


def test_importing_the_helpers_loads_no_plotting_library():
    code = ("import sys, harness\nharness.variant_groups, harness.plot_style\n"
            "print(','.join(m for m in ('matplotlib', 'seaborn', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""
