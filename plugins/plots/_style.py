"""Shared look and data helpers of the built-in plots (not a plugin).

Every built-in figure goes through this module so that they look alike and say the same
things the same way:

- **Style**: seaborn "whitegrid" with paper-readable font sizes, saved at 150 dpi with a
  tight bounding box. :func:`plot_style` applies it inside a ``matplotlib.rc_context``,
  so drawing a figure never changes the caller's global matplotlib state, and figures
  are built as :class:`matplotlib.figure.Figure` objects (no ``pyplot``, no display, no
  backend switch: the Agg canvas is used to save).
- **Rows**: :func:`ok_rows` keeps ``status == "ok"`` rows with a finite value and turns
  categorical columns into plain objects (so group-bys do not invent empty groups).
- **Seeds**: :func:`seed_stats` averages over seeds: first the mean per seed of
  everything else that is averaged, then ``mean``, ``std`` (sample s.d., NaN for one
  seed) and ``n`` over seeds. Figures show mean ± 1 s.d. over seeds (a 95% t-interval over
  two seeds would be 12.7 s.d. wide and tell nothing), and say so in a footnote.
- **Normalisation** (:func:`normalise`) to [0, 1] with 1 = as close to the teacher as
  possible, used by the heatmaps and radars:

  * similarities already in [0, 1] (``path_length_similarity``,
    ``distribution_similarity``, ``label_accuracy``): kept as they are (clipped to [0, 1]);
  * cosines in [-1, 1] (``directional_consistency``, ``eps_agreement``): ``max(cos, 0)``
    (a negative cosine is "no agreement", shown as 0);
  * lower-is-better errors (``trajectory_mse`` and any other lower-is-better metric):
    ``1 - v / max v``, the maximum taken over the values shown in the figure (0 = the
    worst cell shown, 1 = identical to the teacher). The figure prints that maximum,
    so the raw value can be recovered: ``v = (1 - n) * max v``.

- **Inversion** (:func:`better_up`) for curves where every metric should read "higher is
  better" (the pruning figures, as the seed asks): lower-is-better metrics (FID, LPIPS,
  feature distance, times) are **negated**, ``-v``, and the axis label says so
  (":func:`better_up_label`"). Negation keeps the scale linear and the numbers readable
  (``-12.3`` is FID 12.3), unlike ``1 / (1 + v)``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import Plot

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

DPI = 150

#: the four trajectory metrics of the seed's heatmaps and radars, in the seed's order
TRAJECTORY_METRICS = (
    "path_length_similarity",
    "trajectory_mse",
    "directional_consistency",
    "distribution_similarity",
)
#: file-name stems the seed used where they differ from the metric name
SEED_FILE_NAMES = {"directional_consistency": "mean_directional_consistency"}
#: cost metrics: not "quality" (left out of Pareto quality axes and of the summary budget)
COST_METRICS = ("generation_time", "peak_memory_mb")

#: lower-is-better metrics, used only when a frame lacks the ``higher_is_better`` column
LOWER_IS_BETTER = frozenset(
    {
        "trajectory_mse",
        "noise_prediction_mse",
        "fid_digits",
        "fid",
        "lpips",
        "feature_distance",
        "generation_time",
        "peak_memory_mb",
    }
)
_COSINES = frozenset({"directional_consistency", "eps_agreement"})
_UNIT_SIMILARITIES = frozenset({"path_length_similarity", "distribution_similarity", "label_accuracy"})

#: human-readable names with units, for axis labels and titles
LABELS = {
    "path_length_similarity": "path length similarity",
    "trajectory_mse": "trajectory MSE",
    "directional_consistency": "directional consistency",
    "distribution_similarity": "distribution similarity",
    "noise_prediction_mse": "noise prediction MSE",
    "eps_agreement": "ε agreement (cosine)",
    "effective_dim_95": "effective dim. (95% var.)",
    "participation_ratio": "participation ratio",
    "fid_digits": "FID (digit features)",
    "fid": "FID (Inception)",
    "label_accuracy": "label accuracy",
    "feature_distance": "feature distance (LPIPS analogue)",
    "generation_time": "generation time (s / image)",
    "peak_memory_mb": "peak memory (MB)",
    "clip_score": "CLIP score",
    "lpips": "LPIPS",
    "synthetic_quality": "synthetic quality (SYNTHETIC)",
}
#: short names for crowded places (radar spokes, panel titles)
SHORT_LABELS = {
    "path_length_similarity": "path length\nsimilarity",
    "trajectory_mse": "trajectory\nMSE",
    "directional_consistency": "directional\nconsistency",
    "distribution_similarity": "distribution\nsimilarity",
    "eps_agreement": "ε agreement",
    "label_accuracy": "label\naccuracy",
}

#: axes that a figure averages over silently only when they hold one value
_OTHER_AXES = ("sampler", "steps", "size_factor", "pruning_method", "pruning_rate", "cfg_scale")


#: metrics with no better direction (their ``higher_is_better`` is nominal)
DESCRIPTIVE = frozenset({"effective_dim_95", "participation_ratio"})


def direction_mark(df: pd.DataFrame, metric: str) -> str:
    """``↑`` (higher is better), ``↓`` (lower is better) or ``(descriptive)``."""
    if metric in DESCRIPTIVE:
        return "(descriptive)"
    return "↑" if higher_is_better(df, metric) else "↓"


def label(metric: str) -> str:
    """A metric's readable name (with unit where it has one)."""
    if metric.endswith("_t") and metric[:-2] in LABELS:
        return LABELS[metric[:-2]] + " per step"
    return LABELS.get(metric, metric.replace("_", " "))


def short_label(metric: str) -> str:
    return SHORT_LABELS.get(metric, label(metric))


def fmt_num(v: float) -> str:
    """``0.1``, ``7.5``, ``12`` (for file names, tick labels and legends)."""
    return f"{float(v):g}"


# ------------------------------------------------------------------------------- style


@contextlib.contextmanager
def plot_style() -> Iterator[None]:
    """Seaborn whitegrid + paper-readable sizes, inside an rc_context (no global change)."""
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
    """A pyplot-free figure, constrained layout by default (call inside :func:`plot_style`).

    ``layout=None`` for figures placed by hand (polar axes, whose spoke labels
    constrained layout does not see); :func:`save` then crops with a tight bounding box.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, cols) of a panel grid holding ``n`` panels."""
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def panel_grid(fig: Figure, n: int, max_cols: int = 3, **kw: Any) -> list[Axes]:
    """``n`` axes on a grid; unused cells of the grid are not created."""
    rows, cols = grid_shape(n, max_cols)
    gs = fig.add_gridspec(rows, cols)
    axes = []
    for i in range(n):
        axes.append(fig.add_subplot(gs[i // cols, i % cols], **kw))
    return axes


FOOTNOTE_SIZE = 8.5


def wrap_lines(lines: Iterable[str], width_in: float) -> list[str]:
    """Wrap footnote lines to the figure's width (about 15 characters per inch at 8.5 pt)."""
    import textwrap

    chars = max(40, int(width_in * 14.5))
    out: list[str] = []
    for line in lines:
        if line:
            out.extend(textwrap.wrap(line, chars, subsequent_indent="  ") or [""])
    return out


def footnote(fig: Figure, lines: Iterable[str]) -> None:
    """Small grey text under the figure: normalisation, seeds, what was averaged."""
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


def save(fig: Figure, out_dir: Path, name: str) -> Path:
    """Save ``fig`` as ``out_dir/name`` (folders made as needed); return the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    # constrained layout already fits every label, legend and footnote into the figure,
    # so no bbox_inches="tight" there (it would draw the figure a second time)
    tight = fig.get_layout_engine() is None
    fig.savefig(path, dpi=DPI, bbox_inches="tight" if tight else None, pad_inches=0.15)
    fig.clear()
    log.info("wrote %s", path)
    return path


def size_colors(sizes: Sequence[float]) -> dict[float, Any]:
    """Size factor -> colour (viridis, small = dark purple, large = yellow-green)."""
    import seaborn as sns

    ordered = sorted(sizes)
    palette = sns.color_palette("viridis", max(len(ordered), 1))
    return {s: palette[i] for i, s in enumerate(ordered)}


def cfg_colors(scales: Sequence[float]) -> dict[float, Any]:
    """CFG scale -> colour (sequential, light = weak guidance, dark = strong)."""
    import seaborn as sns

    ordered = sorted(scales)
    palette = sns.color_palette("flare", max(len(ordered), 1))
    return {s: palette[i] for i, s in enumerate(ordered)}


def method_colors(methods: Sequence[str]) -> dict[str, Any]:
    """Pruning method -> colour (colour-blind safe)."""
    import seaborn as sns

    palette = sns.color_palette("colorblind", max(len(methods), 1))
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
_DASHES = ("-", "--", "-.", ":")


def method_styles(methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Pruning method -> colour, marker and line style, so that lines that coincide
    (and prints in grey) stay distinguishable."""
    colors = method_colors(methods)
    return {
        m: {"color": colors[m], "marker": _MARKERS[i % len(_MARKERS)], "linestyle": _DASHES[i % len(_DASHES)]}
        for i, m in enumerate(methods)
    }


TEACHER_COLOR = "0.15"


def errorbar(ax: Axes, x: Any, mean: Any, sd: Any, *, band: bool = False, **kw: Any) -> None:
    """A mean line with ±1 s.d.: error bars (few x values) or a shaded band (many)."""
    x, mean, sd = (np.asarray(a, dtype=float) for a in (x, mean, sd))
    sd = np.where(np.isfinite(sd), sd, 0.0)
    if band:
        (line,) = ax.plot(x, mean, **kw)
        if np.any(sd > 0):
            ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.18, linewidth=0)
    else:
        kw.setdefault("marker", "o")
        ax.errorbar(x, mean, yerr=sd if np.any(sd > 0) else None, capsize=3, **kw)


# ------------------------------------------------------------------------------- rows


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``status == "ok"`` and a finite value; categoricals as plain objects."""
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
    # (integer columns such as num_params keep their dtype: the JSON export writes these rows)
    for col in ("value", "size_factor", "cfg_scale", "pruning_rate", "timestep", "param_ratio", "speedup",
                "macs", "sparsity"):
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    if "seed" in out:
        out["seed"] = pd.to_numeric(out["seed"], errors="coerce").fillna(-1).astype(int)
    else:
        out["seed"] = 0
    out["metric"] = out["metric"].astype(object)
    out = out[np.isfinite(out["value"].to_numpy(dtype=float))]
    return out.reset_index(drop=True)


def unpruned(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the teacher and its students (no pruning), for the distillation figures."""
    if "pruning_method" not in df:
        return df
    method = df["pruning_method"].astype(object)
    return df[method.isna() | (method == "none")]


def scalar_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Overall rows (``timestep`` NaN), not the per-step ``_t`` rows nor the diagnostic rows
    that carry an array in ``blob`` (sample grids, strips, PCA, attention maps)."""
    if "blob" in df:
        df = df[df["blob"].isna()]
    if "timestep" not in df:
        return df
    return df[df["timestep"].isna()]


def metrics_in(df: pd.DataFrame, names: Iterable[str]) -> list[str]:
    """The ``names`` that have rows in ``df``, in the order given."""
    present = set(df["metric"]) if len(df) else set()
    return [n for n in names if n in present]


def higher_is_better(df: pd.DataFrame, metric: str) -> bool:
    """Which way ``metric`` is better: the rows' ``higher_is_better``, else the known list."""
    base = metric[:-2] if metric.endswith("_t") else metric
    if "higher_is_better" in df and len(df):
        vals = df.loc[df["metric"] == metric, "higher_is_better"].dropna()
        if len(vals):
            return bool(vals.iloc[0])
    return base not in LOWER_IS_BETTER


def seed_stats(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Mean, s.d. and count over seeds of ``value``, per group ``by``.

    Everything not in ``by`` (other than ``seed``) is averaged first, per seed, so each
    seed counts once. Groups with NaN keys (the teacher's ``size_factor``) are kept.
    :returns: columns ``*by, mean, std, n``.
    """
    import pandas as pd

    by = list(by)
    if not len(df):
        return pd.DataFrame(columns=[*by, "mean", "std", "n"])
    per_seed = df.groupby([*by, "seed"], dropna=False, sort=True)["value"].mean().reset_index()
    out = (
        per_seed.groupby(by, dropna=False, sort=True)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
    return out


def column_mean(df: pd.DataFrame, by: Sequence[str], column: str) -> pd.DataFrame:
    """Mean of a per-cell column (``speedup``, ``macs``, ...) per group, over seeds."""
    cells = df.drop_duplicates([*by, "seed", "cell_id"] if "cell_id" in df else [*by, "seed"])
    return cells.groupby(list(by), dropna=False, sort=True)[column].mean().reset_index()


def seeds_phrase(stats: pd.DataFrame) -> str:
    """"mean over 2 seeds" / "one seed" (from a :func:`seed_stats` frame)."""
    if not len(stats):
        return ""
    lo, hi = int(stats["n"].min()), int(stats["n"].max())
    if hi <= 1:
        return "one seed"
    return f"mean over {lo if lo == hi else f'{lo}-{hi}'} seeds"


def spread_note(stats: pd.DataFrame, spread: str = "error bars / bands") -> str:
    """"Values: mean over 2 seeds; error bars: ±1 s.d. over seeds." (from :func:`seed_stats`)."""
    phrase = seeds_phrase(stats)
    if not phrase:
        return ""
    if phrase == "one seed":
        return "Values: one seed per point (no spread shown)."
    return f"Values: {phrase}; {spread}: ±1 s.d. over seeds."


def averaged_note(df: pd.DataFrame, shown: Iterable[str]) -> str:
    """Name the axes that vary in ``df`` but are not shown (so they were averaged over)."""
    shown = set(shown) | {"seed", "metric", "value", "timestep"}
    from harness import COLUMNS

    axes = [a for a in _OTHER_AXES if a in df and a not in shown]
    axes += sorted(c for c in df.columns if c not in COLUMNS and c not in shown and c not in ("reference_value", "delta"))
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


class BenchmarkPlot(Plot):
    """A built-in plot drawn once per benchmark of the frame.

    A results folder may hold several benchmarks (``bench plot results/``), each with its
    own teacher: mixing them would average unrelated models. With one benchmark the
    figures go to ``out_dir``; with several, to ``out_dir/<benchmark>/``. Subclasses
    implement :meth:`draw_one` on the ok rows of one benchmark.
    """

    def draw(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
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
        raise NotImplementedError


# ---------------------------------------------------------------------------- transforms


def normalise(metric: str, values: Any, *, higher: bool | None = None, scale: float | None = None) -> tuple[Any, str]:
    """Map ``values`` of ``metric`` to [0, 1], 1 = closest to the teacher; also a note.

    See the module docstring for the rules. ``values`` may be a number, array, Series or
    DataFrame (the result has the same type). ``scale`` is the maximum for
    lower-is-better metrics (default: the maximum of ``values``).
    :returns: ``(normalised, note)`` where the note states the transform for the figure.
    """
    base = metric[:-2] if metric.endswith("_t") else metric
    if higher is None:
        higher = base not in LOWER_IS_BETTER
    arr = values.to_numpy(dtype=float) if hasattr(values, "to_numpy") else np.asarray(values, dtype=float)
    if base in _COSINES:
        out = np.clip(arr, 0.0, 1.0)
        note = f"{label(base)}: max(cos, 0)"
    elif not higher:
        if scale is None:
            finite = arr[np.isfinite(arr)]
            scale = float(finite.max()) if finite.size else float("nan")
        if not scale or not np.isfinite(scale) or scale <= 0:
            out = np.where(np.isfinite(arr), 1.0, np.nan)
        else:
            out = np.clip(1.0 - arr / scale, 0.0, 1.0)
        note = f"{label(base)}: 1 − v / max v (max v = {scale:.4g})"
    else:
        out = np.clip(arr, 0.0, 1.0)
        note = f"{label(base)}: as is (in [0, 1])"
    if hasattr(values, "to_numpy"):
        out = values.__class__(out, index=values.index, **({"columns": values.columns} if hasattr(values, "columns") else {}))
    elif np.ndim(values) == 0:
        out = float(out)
    return out, note


def better_up(values: Any, higher: bool) -> Any:
    """Values oriented so that higher is better: lower-is-better metrics are negated."""
    return values if higher else -values


def better_up_label(metric: str, higher: bool) -> str:
    """Axis label of :func:`better_up` values: ``"−FID (digit features)  (negated: higher is better)"``."""
    return label(metric) if higher else f"−{label(metric)}\n(negated: higher is better)"


__all__ = [
    "BenchmarkPlot",
    "COST_METRICS",
    "TRAJECTORY_METRICS",
    "averaged_note",
    "better_up",
    "better_up_label",
    "cfg_colors",
    "errorbar",
    "footnote",
    "higher_is_better",
    "label",
    "metrics_in",
    "new_figure",
    "normalise",
    "ok_rows",
    "panel_grid",
    "plot_style",
    "save",
    "scalar_rows",
    "seed_stats",
    "size_colors",
    "unpruned",
]
