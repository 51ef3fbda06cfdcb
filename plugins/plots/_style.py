"""Colours, markers and panel layouts of the built-in plots (not a plugin).

The house style itself (``plot_style``, ``new_figure``, ``footnote``, ``save_figure``)
is public, in :mod:`harness.plotting`. Here: colours and markers that tell sizes, CFG
scales and methods apart the same way in every figure, panel grids, error bars and
bare image panels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
    "TEACHER_COLOR",
    "bare",
    "cfg_colors",
    "errorbar",
    "grid_shape",
    "method_colors",
    "method_styles",
    "panel_grid",
    "size_colors",
]
