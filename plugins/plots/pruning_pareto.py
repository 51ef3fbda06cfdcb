"""Pruning Pareto figures: quality vs measured cost reduction, with the Pareto front.

Everything goes under ``<out>/pruning/`` (see :mod:`plugins.plots.pruning` for the
groups and the reference at rate 0). The quality axis reads "up = better":
lower-is-better metrics are negated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import (
    BenchmarkPlot,
    averaged_note,
    fmt_num,
    footnote,
    new_figure,
    plot_style,
    save_figure,
    seed_stats,
)
from plugins.plots import _data as dt
from plugins.plots import _labels as lb
from plugins.plots import _style as st
from plugins.plots.pruning import (
    FOLDER,
    PruningGroup,
    group_metrics,
    pruning_groups,
    unique_legend,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["PruningPareto", "pareto_front", "pareto_points"]


def pareto_front(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """Mask of the points not dominated when both ``x`` and ``y`` are maximised.

    A point is dominated when another is at least as good on both and better on one.
    NaN points are never on the front.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    front = ok.copy()
    for i in np.flatnonzero(ok):
        others = ok & (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        if others.any():
            front[i] = False
    return front


@dataclass
class _Axis:
    column: str
    label: str


def _cost_axes(g: PruningGroup) -> list[_Axis]:
    """The x axes with data: measured speed-up, parameter reduction, MAC reduction."""
    rows = g.rows()
    axes = []
    if np.isfinite(rows["speedup"]).any():
        axes.append(_Axis("speedup", "measured speed-up (× vs reference)"))
    nz = rows["nonzero_params"] if "nonzero_params" in rows else None
    if nz is not None and np.isfinite(nz.astype(float)).any():
        axes.append(_Axis("param_reduction", "parameter reduction\n(reference / remaining non-zero params, ×)"))
    elif np.isfinite(rows["param_ratio"]).any():
        axes.append(_Axis("param_reduction", "parameter reduction (1 / param_ratio, ×)"))
    if "macs" in rows and np.isfinite(rows["macs"]).any():
        axes.append(_Axis("mac_reduction", "MAC reduction (reference / variant MACs, ×)"))
    return axes


def pareto_points(g: PruningGroup, metric: str) -> pd.DataFrame:
    """Per (method, rate, cfg_scale) incl. the reference: mean quality and the cost axes."""
    rows = dt.scalar_rows(g.rows())
    rows = rows.assign(pruning_method=rows["pruning_method"].where(rows["pruning_rate"] > 0, "reference"))
    keys = ["pruning_method", "pruning_rate", "cfg_scale"]
    stats = seed_stats(rows[rows["metric"] == metric], keys)
    cells = rows.drop_duplicates([*keys, "seed"])
    ref_cells = cells[cells["pruning_method"] == "reference"]
    ref_nz = ref_cells["nonzero_params"].astype(float).mean() if "nonzero_params" in cells else math.nan
    ref_macs = ref_cells["macs"].mean() if "macs" in cells else math.nan
    cost = cells.assign(
        param_reduction=(ref_nz / cells["nonzero_params"].astype(float)) if np.isfinite(ref_nz)
        else 1.0 / cells["param_ratio"],
        mac_reduction=ref_macs / cells["macs"] if "macs" in cells else math.nan,
    )
    cost = cost.groupby(keys, dropna=False)[["speedup", "param_reduction", "mac_reduction"]].mean().reset_index()
    return stats.merge(cost, on=keys, how="left")


def _label_rates(ax: Any, x: np.ndarray, y: np.ndarray, rates: np.ndarray, min_gap: float = 0.045) -> None:
    """Label front points with their rate, skipping a label that would sit on another.

    Distances are measured in axes fractions, after the data limits are final.
    """
    ax.autoscale_view()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    placed: list[tuple[float, float]] = []
    for i in np.argsort(-rates):  # high rates first: they are the spread-out ones
        if rates[i] <= 0:
            continue
        fx, fy = (x[i] - x0) / ((x1 - x0) or 1), (y[i] - y0) / ((y1 - y0) or 1)
        if any(abs(fx - px) < min_gap * 1.6 and abs(fy - py) < min_gap for px, py in placed):
            continue
        placed.append((fx, fy))
        ax.annotate(fmt_num(rates[i]), (x[i], y[i]), textcoords="offset points", xytext=(6, 5), fontsize=8)


class PruningPareto(BenchmarkPlot):
    """Quality vs measured cost reduction with the Pareto front, per metric.

    Writes ``pruning/pareto_<metric>.png``: columns = measured speed-up, parameter
    reduction, MAC reduction (those with data); rows = CFG scales; a point per (method,
    rate), the unpruned reference as a star, the front as a line with its points ringed
    and labelled with their rate. Quality axes: lower-is-better metrics negated.
    """

    name = "pruning_pareto"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        out = Path(out_dir) / FOLDER
        paths = []
        with plot_style():
            for g in pruning_groups(df):
                axes_spec = _cost_axes(g)
                if not axes_spec:
                    continue
                for metric in group_metrics(g, include_cost=False):
                    paths.append(self._figure(g, metric, axes_spec, out))
        return paths

    def _figure(self, g: PruningGroup, metric: str, axes_spec: list[_Axis], out: Path) -> Path:
        points = pareto_points(g, metric)
        # an axis on which every variant costs the same (MACs of unstructured pruning) says nothing
        varying = [a for a in axes_spec if np.nanmax(points[a.column]) - np.nanmin(points[a.column]) > 1e-9]
        axes_spec = varying or axes_spec[:1]
        higher = lb.higher_is_better(g.rows(), metric)
        points["quality"] = lb.better_up(points["mean"], higher)
        cfgs = sorted(points["cfg_scale"].unique())
        methods = g.methods
        styles = st.method_styles(methods)
        nrows, ncols = len(cfgs), len(axes_spec)
        fig = new_figure(4.6 * ncols + 1.8, 3.9 * nrows + 0.6)
        gs = fig.add_gridspec(nrows, ncols)
        for r, cfg in enumerate(cfgs):
            pc = points[np.isclose(points["cfg_scale"], cfg)]
            for c, spec in enumerate(axes_spec):
                ax = fig.add_subplot(gs[r, c])
                x, y = pc[spec.column].to_numpy(float), pc["quality"].to_numpy(float)
                front = pareto_front(x, y)
                for method in methods:
                    sel = (pc["pruning_method"] == method).to_numpy()
                    ax.scatter(x[sel], y[sel], color=styles[method]["color"], marker=styles[method]["marker"], s=34,
                               label=method, zorder=3)
                ref = (pc["pruning_method"] == "reference").to_numpy()
                ax.scatter(x[ref], y[ref], marker="*", s=170, color="black", label="unpruned reference", zorder=4)
                order = np.argsort(x[front])
                ax.plot(x[front][order], y[front][order], color="0.2", linewidth=1.2, linestyle="-", zorder=2,
                        label="Pareto front")
                ax.scatter(x[front], y[front], s=110, facecolors="none", edgecolors="black", linewidths=1.2, zorder=5)
                _label_rates(ax, x[front], y[front], pc["pruning_rate"].to_numpy(float)[front])
                ax.set_xlabel(spec.label)
                if c == 0:
                    ax.set_ylabel(lb.better_up_label(metric, higher))
                title = f"CFG {fmt_num(cfg)}" if len(cfgs) > 1 else ""
                if title:
                    ax.set_title(title, fontsize=10)
        handles, labels = unique_legend(fig.axes)
        fig.legend(handles, labels, loc="outside right center")
        fig.suptitle(f"{lb.label(metric)} vs cost reduction{g.title}")
        footnote(fig, [
            "Up and right = better" + ("" if higher else f"; {lb.label(metric)} negated (−v)") + ". "
            "Ringed points: the Pareto front (no other point is better on both axes), labelled with the pruning "
            "rate where there is room.",
            "Points: mean over seeds. Speed-up = reference generation time / variant's (measured).",
            averaged_note(g.rows(), ["cfg_scale", "pruning_rate", "pruning_method"]),
        ])
        return save_figure(fig, out / f"pareto_{metric}{g.suffix}.png")

