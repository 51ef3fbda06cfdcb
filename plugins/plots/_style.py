"""The shared look of the built-in plots (not a plugin).

Every built-in figure is drawn through this module so that they look alike: seaborn
"whitegrid" with paper-readable font sizes, saved at 150 dpi. :func:`plot_style`
applies it inside a ``matplotlib.rc_context``, so drawing a figure never changes the
caller's global matplotlib state, and figures are built as
:class:`matplotlib.figure.Figure` objects (no ``pyplot``, no display, no backend switch:
the Agg canvas is used to save). Colours and markers tell sizes, CFG scales and methods
apart the same way in every figure; :func:`footnote` puts the grey notes (normalisation,
seeds, what was averaged) under a figure.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

DPI = 150


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


def bare(ax: Axes) -> None:
    """An image panel: no grid, ticks or spines (labels may still be set)."""
    ax.grid(False)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


__all__ = [
    "DPI",
    "FOOTNOTE_SIZE",
    "TEACHER_COLOR",
    "bare",
    "cfg_colors",
    "errorbar",
    "footnote",
    "grid_shape",
    "method_colors",
    "method_styles",
    "new_figure",
    "panel_grid",
    "plot_style",
    "save",
    "size_colors",
    "wrap_lines",
]
