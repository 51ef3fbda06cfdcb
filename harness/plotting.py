"""What every plot needs: the house style, rows grouped by variant, honest footnotes.

Public through ``harness`` (``from harness import plot_style, variant_groups, ...``);
the built-in plots use exactly these helpers. matplotlib, seaborn and pandas are
imported inside the functions, so ``import harness`` stays cheap.

- **Style**: :func:`plot_style` applies the house look (seaborn "whitegrid", paper-readable
  sizes, 150 dpi) inside a ``matplotlib.rc_context``, so drawing never changes the
  caller's global matplotlib state. :func:`new_figure` makes a pyplot-free
  :class:`~matplotlib.figure.Figure` (no display, no backend switch), :func:`footnote`
  puts small grey notes under it (wrapped by :func:`wrap_lines`) and :func:`save_figure`
  writes it.
- **Rows**: :func:`ok_rows` keeps the rows worth drawing; :class:`BenchmarkPlot` draws
  each benchmark of a results folder apart (each has its own teacher).
- **Variants**: a model variant is its role, student size, pruning method and rate plus
  every swept plugin option (columns named ``pruners.<name>.<option>`` and the like).
  :func:`variant_groups` yields each variant with its rows, in figure order (teacher,
  students from the largest, pruned variants); :func:`variant_label` and :class:`Variant`
  give the readable label (``"magnitude rate 0.5 + rounds=2"``) and a file-name slug;
  :func:`variant_columns` names the columns that tell variants apart.
- **Seeds and footnotes**: :func:`seed_stats` averages over seeds (mean per seed first,
  then mean, sample s.d. and count over seeds); :func:`spread_note` and
  :func:`seeds_phrase` say so, and :func:`averaged_note` names every axis that varies in
  the rows but is not shown, swept plugin and metric options included, so a figure never
  silently averages over one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.base import Plot
from harness.schema import COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

#: resolution of saved figures (dots per inch)
DPI = 150
#: font size of :func:`footnote` text, in points
FOOTNOTE_SIZE = 8.5

# ------------------------------------------------------------------------------ style


@contextlib.contextmanager
def plot_style() -> Iterator[None]:
    """The house style, inside a ``matplotlib.rc_context`` (no global change).

    Seaborn "whitegrid" with the "paper" context at font scale 1.35, bold titles,
    framed legends and 150 dpi. Draw and save figures inside ``with plot_style():``.
    """
    import matplotlib as mpl
    import seaborn as sns

    rc: dict[str, Any] = {}
    rc.update(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("paper", font_scale=1.35))
    rc.update(
        {
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "axes.titleweight": "bold",
            "figure.titlesize": 15,
            "figure.titleweight": "bold",
            "legend.frameon": True,
            "legend.framealpha": 0.9,
            "lines.linewidth": 1.8,
            "lines.markersize": 5.5,
        }
    )
    with mpl.rc_context(rc):
        yield


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A pyplot-free figure of ``width`` x ``height`` inches (call inside :func:`plot_style`).

    Constrained layout by default; ``layout=None`` for figures placed by hand (polar
    axes, whose spoke labels constrained layout does not see): :func:`save_figure` then
    crops to a tight bounding box.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def wrap_lines(lines: Iterable[str], width_in: float) -> list[str]:
    """Footnote ``lines`` wrapped to a figure ``width_in`` inches wide (empty lines dropped).

    About 14.5 characters per inch at :data:`FOOTNOTE_SIZE`; continuation lines are
    indented by two spaces.
    """
    import textwrap

    chars = max(40, int(width_in * 14.5))
    out: list[str] = []
    for line in lines:
        if line:
            out.extend(textwrap.wrap(line, chars, subsequent_indent="  ") or [""])
    return out


def footnote(fig: Figure, lines: Iterable[str]) -> None:
    """Small grey text under ``fig``: normalisation, seeds, what was averaged over.

    Empty lines are skipped (pass :func:`averaged_note` as is, even when it is ``""``).
    """
    wrapped = wrap_lines(lines, fig.get_figwidth())
    if not wrapped:
        return
    text = "\n".join(wrapped)
    if fig.get_layout_engine() is not None:
        # a figure-level x label, so constrained layout makes room for it below the axes
        fig.supxlabel(text, x=0.01, ha="left", fontsize=FOOTNOTE_SIZE, color="0.3", fontweight="normal",
                      linespacing=1.4)
    else:
        fig.text(0.01, 0.0, text, ha="left", va="top", fontsize=FOOTNOTE_SIZE, color="0.3", linespacing=1.4)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` at :data:`DPI` (folders made as needed), clear it; return the path.

    The format follows the suffix (``.png``, ``.pdf``, ``.svg``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # constrained layout already fits every label, legend and footnote into the figure,
    # so no bbox_inches="tight" there (it would draw the figure a second time)
    tight = fig.get_layout_engine() is None
    fig.savefig(path, dpi=DPI, bbox_inches="tight" if tight else None, pad_inches=0.15)
    fig.clear()
    log.info("wrote %s", path)
    return path


def fmt_num(v: float) -> str:
    """A number as figures write it: ``0.1``, ``7.5``, ``12`` (file names, ticks, legends)."""
    return f"{float(v):g}"


# ------------------------------------------------------------------------------- rows

#: numeric columns of the schema that :func:`ok_rows` makes float
_FLOAT_COLUMNS = ("value", "size_factor", "cfg_scale", "pruning_rate", "timestep", "param_ratio", "speedup",
                  "macs", "sparsity")


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows worth drawing: ``status == "ok"`` and a finite ``value``.

    Categorical columns become plain objects (so group-bys invent no empty groups), the
    numeric schema columns floats, and ``seed`` an int (missing seeds are -1; a frame
    without the column gets seed 0). Integer columns such as ``num_params`` keep their
    dtype. A frame without ``metric`` or ``value`` gives an empty frame.
    """
    import pandas as pd

    if df is None or len(df) == 0 or "metric" not in df or "value" not in df:
        return pd.DataFrame(columns=list(df.columns) if df is not None else [])
    out = df
    if "status" in out:
        out = out[out["status"].astype(object) == "ok"]
    out = out.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.CategoricalDtype):
            out[col] = out[col].astype(object)
    for col in _FLOAT_COLUMNS:
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    if "seed" in out:
        out["seed"] = pd.to_numeric(out["seed"], errors="coerce").fillna(-1).astype(int)
    else:
        out["seed"] = 0
    out["metric"] = out["metric"].astype(object)
    out = out[np.isfinite(out["value"].to_numpy(dtype=float))]
    return out.reset_index(drop=True)


class BenchmarkPlot(Plot):
    """A plot drawn once per benchmark of the frame; subclasses implement :meth:`draw_one`.

    A results folder may hold several benchmarks (``bench plot results/``), each with its
    own teacher: mixing them would average unrelated models. :meth:`draw` keeps the
    :func:`ok_rows`; with one benchmark the figures go to ``out_dir``, with several to
    ``out_dir/<benchmark>/``. An empty frame draws nothing.
    """

    def draw(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        """Call :meth:`draw_one` per benchmark on its ok rows; return every path written."""
        d = ok_rows(df)
        if not len(d):
            return []
        out_dir = Path(out_dir)
        names = sorted(map(str, d["benchmark"].dropna().unique())) if "benchmark" in d else []
        if len(names) <= 1:
            return self.draw_one(d, out_dir)
        paths: list[Path] = []
        for name in names:
            paths += self.draw_one(d[d["benchmark"].astype(str) == name].reset_index(drop=True), out_dir / name)
        return paths

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        """Draw the ok rows ``df`` of one benchmark into ``out_dir``; return the paths written."""
        raise NotImplementedError


# --------------------------------------------------------------------------- variants

_ROLE_ORDER = {"reference": 0, "student": 1, "pruned": 2, "pruned_student": 3}
#: the columns (besides swept options) that tell model variants apart
_VARIANT_COLUMNS = ("size_factor", "pruning_method", "pruning_rate", "role")


@dataclass
class Variant:
    """One model variant: how figures name (``label``, file-name ``slug``) and order it.

    ``key`` is ``(size_factor or None, method, rate, *swept option values)``; ``role``
    is ``reference``, ``student``, ``pruned`` or ``pruned_student``.
    """

    key: tuple[Any, ...]
    role: str
    size_factor: float | None
    label: str
    slug: str
    order: tuple[Any, ...]

    @property
    def is_reference(self) -> bool:
        """Whether this is the teacher (the reference model)."""
        return self.role == "reference"


def _option_names(names: Iterable[Any]) -> list[str]:
    """Swept plugin-option columns (dotted names, not metric options) that tell variants apart."""
    return sorted(c for c in names if isinstance(c, str) and c not in COLUMNS and "." in c
                  and not c.startswith("metrics."))


def _missing(v: Any) -> bool:
    """None, NaN, NaT or ``pd.NA``: swept options of other methods are missing in nullable
    columns (``Int64``, ``boolean``), where ``v == v`` is ``pd.NA``, not a bool."""
    import pandas as pd

    return v is None or (not isinstance(v, (list, tuple, dict)) and bool(pd.isna(v)))


def variant_of(row: Mapping[str, Any]) -> Variant:
    """The :class:`Variant` of one result row (a ``Series`` or a dict of its columns).

    Missing ``size_factor`` is the full-size model, missing ``pruning_method`` is
    ``"none"``; swept options that are missing (another method's option) are left out.
    """
    options = _option_names(row.keys())
    size = row.get("size_factor")
    size = None if _missing(size) else float(size)
    method = row.get("pruning_method")
    method = "none" if _missing(method) else str(method)
    rate = row.get("pruning_rate")
    rate = 0.0 if _missing(rate) else float(rate)
    role = row.get("role")
    role = ("reference" if size is None and method == "none" else "student") if _missing(role) else str(role)
    parts, slugs = [], []
    if size is None and method == "none":
        parts, slugs = ["teacher"], ["teacher"]
    if size is not None:
        parts.append(f"student {fmt_num(size)}")
        slugs.append(f"size{fmt_num(size)}")
    if method != "none":
        parts.append(f"{method} rate {fmt_num(rate)}")
        slugs.append(f"{method}_rate{fmt_num(rate)}")
    extra = [(c, row.get(c)) for c in options if not _missing(row.get(c))]
    for c, v in extra:
        short = c.rsplit(".", 1)[-1]
        parts.append(f"{short}={v}")
        slugs.append(f"{short}{v}")
    key = (size, method, rate, *(str(v) for _c, v in extra))
    order = (_ROLE_ORDER.get(role, 9), -(size or 0.0), method, rate, tuple(str(v) for _c, v in extra))
    return Variant(key, role, size, " + ".join(parts), "_".join(slugs).replace("/", "-"), order)


def variant_label(row: Mapping[str, Any]) -> str:
    """The readable label of a row's variant: ``"teacher"``, ``"student 0.5"``,
    ``"magnitude rate 0.3 + protect=[]"`` (swept options as ``<option>=<value>``)."""
    return variant_of(row).label


def variant_columns(df: pd.DataFrame) -> list[str]:
    """The columns of ``df`` that tell model variants apart: ``size_factor``,
    ``pruning_method``, ``pruning_rate``, ``role`` and every swept plugin-option column.

    A figure with a bar or line per variant shows these axes: pass them to
    :func:`averaged_note` as ``shown``.
    """
    return [c for c in (*_VARIANT_COLUMNS, *_option_names(df.columns)) if c in df]


def variant_groups(df: pd.DataFrame) -> list[tuple[Variant, pd.DataFrame]]:
    """``(variant, its rows)`` for every model variant of ``df``, in figure order.

    Rows differing in any swept plugin option (``pruners.<name>.<option>`` columns) are
    different variants. Figure order: teacher, students from the largest to the smallest,
    then pruned variants by method, rate and option values.
    """
    cols = variant_columns(df)
    found: dict[tuple[Any, ...], tuple[Variant, list[int]]] = {}
    for pos, values in enumerate(df[cols].itertuples(index=False, name=None)):
        v = variant_of(dict(zip(cols, values)))
        found.setdefault(v.key, (v, []))[1].append(pos)
    ordered = sorted(found.values(), key=lambda vp: vp[0].order)
    return [(v, df.iloc[positions]) for v, positions in ordered]


# ------------------------------------------------------------------ seeds, footnotes

#: schema axes a figure may average over (named by :func:`averaged_note` when they vary)
_OTHER_AXES = ("sampler", "steps", "size_factor", "pruning_method", "pruning_rate", "cfg_scale")
#: columns never reported as averaged over
_NOT_AXES = {"seed", "metric", "value", "timestep", "reference_value", "delta"}


def seed_stats(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Mean, sample s.d. and count over seeds of ``value``, per group ``by``.

    Everything not in ``by`` (other than ``seed``) is averaged first, per seed, so each
    seed counts once. Groups with NaN keys (the teacher's ``size_factor``) are kept; the
    s.d. of one seed is NaN. ``by=[]`` gives one row over all of ``df``.
    :returns: columns ``*by, mean, std, n``.
    """
    import pandas as pd

    by = list(by)
    if not len(df):
        return pd.DataFrame(columns=[*by, "mean", "std", "n"])
    if not by:
        per_seed = df.groupby("seed", sort=True)["value"].mean()
        return pd.DataFrame({"mean": [per_seed.mean()], "std": [per_seed.std()], "n": [per_seed.count()]})
    per_seed = df.groupby([*by, "seed"], dropna=False, sort=True)["value"].mean().reset_index()
    return (
        per_seed.groupby(by, dropna=False, sort=True)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )


def seeds_phrase(stats: pd.DataFrame) -> str:
    """``"mean over 2 seeds"``, ``"mean over 2-3 seeds"`` or ``"one seed"`` from a
    :func:`seed_stats` frame (``""`` when it is empty)."""
    if not len(stats):
        return ""
    lo, hi = int(stats["n"].min()), int(stats["n"].max())
    if hi <= 1:
        return "one seed"
    return f"mean over {lo if lo == hi else f'{lo}-{hi}'} seeds"


def spread_note(stats: pd.DataFrame, spread: str = "error bars / bands") -> str:
    """A footnote on the seeds behind a :func:`seed_stats` frame:
    ``"Values: mean over 2 seeds; error bars / bands: ±1 s.d. over seeds."``."""
    phrase = seeds_phrase(stats)
    if not phrase:
        return ""
    if phrase == "one seed":
        return "Values: one seed per point (no spread shown)."
    return f"Values: {phrase}; {spread}: ±1 s.d. over seeds."


def averaged_note(df: pd.DataFrame, shown: Iterable[str]) -> str:
    """A footnote naming every axis that varies in ``df`` but is not in ``shown``.

    Those axes were averaged over: the schema's sampler, steps, size, method, rate and
    CFG scale, and every extra column (swept plugin and metric options such as
    ``pruners.iterative.rounds``). Seeds are left to :func:`spread_note`.
    :returns: e.g. ``"Also averaged over pruners.iterative.rounds ∈ {1, 2}."``, or ``""``.
    """
    shown = set(shown) | _NOT_AXES
    axes = [a for a in _OTHER_AXES if a in df and a not in shown]
    axes += sorted(c for c in df.columns if c not in COLUMNS and c not in shown)
    parts = []
    for a in axes:
        vals = df[a].dropna().unique()
        if len(vals) > 1:
            try:
                listed = ", ".join(fmt_num(v) for v in sorted(vals))
            except (TypeError, ValueError):
                listed = ", ".join(str(v) for v in sorted(map(str, vals)))
            parts.append(f"{a} ∈ {{{listed}}}")
    return ("Also averaged over " + "; ".join(parts) + ".") if parts else ""


__all__ = [
    "DPI",
    "FOOTNOTE_SIZE",
    "BenchmarkPlot",
    "Variant",
    "averaged_note",
    "fmt_num",
    "footnote",
    "new_figure",
    "ok_rows",
    "plot_style",
    "save_figure",
    "seed_stats",
    "seeds_phrase",
    "spread_note",
    "variant_columns",
    "variant_groups",
    "variant_label",
    "variant_of",
    "wrap_lines",
]
