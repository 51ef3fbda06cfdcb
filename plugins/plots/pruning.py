"""Pruning figures: metric vs pruning rate per method and the method comparison; also
the grouping of pruned rows by the model they were pruned from, which every pruning
output (:mod:`plugins.plots.pruning_pareto`, :mod:`plugins.plots.pruning_exports`,
:mod:`plugins.plots.synthetic`) shares.

Everything goes under ``<out>/pruning/``. The reference of a pruned variant is the model
it was pruned from, drawn at rate 0: the teacher (role ``reference``) for ``pruned`` rows
and the student of the same size for ``pruned_student`` rows; outputs about pruned
students carry a ``_size<factor>`` suffix. Only ``status == "ok"`` rows are used; values
are means over seeds with ±1 s.d. over seeds.

So that "up" always means "better" (as the seed asks), lower-is-better metrics (FID,
LPIPS, feature distance, times, memory) are **negated** on the curves and Pareto plots,
and the axis label says so ("−FID (digit features) (negated: higher is better)").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import (
    BenchmarkPlot,
    averaged_note,
    fmt_num,
    footnote,
    new_figure,
    ok_rows,
    plot_style,
    save_figure,
    seed_stats,
    spread_note,
)
from plugins.plots import _data as dt
from plugins.plots import _labels as lb
from plugins.plots import _style as st

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "FOLDER",
    "RATE_LABEL",
    "PruningCurves",
    "PruningGroup",
    "curve_stats",
    "group_metrics",
    "pruning_groups",
    "rate_ticks",
    "unique_legend",
]

FOLDER = "pruning"
_METRIC_ORDER = ("label_accuracy", "clip_score", "fid_digits", "fid", "feature_distance", "lpips", "synthetic_quality")


@dataclass
class PruningGroup:
    """The pruned rows derived from one parent model, with that parent's rows (rate 0).

    :ivar base: the parent's size factor (``None``: the teacher).
    :ivar suffix: file-name suffix (``""`` for the teacher, ``"_size0.5"`` otherwise).
    :ivar reference: the parent's rows (unpruned; drawn at pruning rate 0).
    :ivar pruned: the rows of the variants pruned from it (every method and rate).
    """

    base: float | None
    suffix: str
    reference: pd.DataFrame
    pruned: pd.DataFrame

    @property
    def methods(self) -> list[str]:
        return sorted(str(m) for m in self.pruned["pruning_method"].unique())

    @property
    def title(self) -> str:
        return "" if self.base is None else f" (student size {fmt_num(self.base)})"

    def rows(self, method: str | None = None) -> pd.DataFrame:
        """Reference rows (rate set to 0) plus the rows of ``method`` (all methods if None)."""
        import pandas as pd

        pruned = self.pruned if method is None else self.pruned[self.pruned["pruning_method"] == method]
        ref = self.reference.assign(pruning_rate=0.0)
        return pd.concat([ref, pruned], ignore_index=True)


def pruning_groups(df: pd.DataFrame) -> list[PruningGroup]:
    """Split ok rows into :class:`PruningGroup` s, one per parent model that was pruned."""
    d = ok_rows(df)
    if not len(d) or "pruning_method" not in d:
        return []
    method = d["pruning_method"].astype(object)
    is_pruned = method.notna() & (method != "none")
    if not is_pruned.any():
        return []
    groups = []
    pruned_all, unpruned = d[is_pruned], d[~is_pruned]
    bases = sorted({None if math.isnan(s) else float(s) for s in pruned_all["size_factor"]},
                   key=lambda s: -1.0 if s is None else s)
    for base in bases:
        if base is None:
            sel_p, sel_r = pruned_all["size_factor"].isna(), unpruned["size_factor"].isna()
        else:
            sel_p, sel_r = np.isclose(pruned_all["size_factor"], base), np.isclose(unpruned["size_factor"], base)
        suffix = "" if base is None else f"_size{fmt_num(base)}"
        groups.append(PruningGroup(base, suffix, unpruned[sel_r], pruned_all[sel_p]))
    return groups


def curve_stats(group: PruningGroup, method: str, metric: str) -> pd.DataFrame:
    """Mean/s.d./n over seeds of ``metric`` per (cfg_scale, pruning_rate), the reference at 0."""
    rows = dt.scalar_rows(group.rows(method))
    return seed_stats(rows[rows["metric"] == metric], ["cfg_scale", "pruning_rate"])


def group_metrics(group: PruningGroup, include_cost: bool = True) -> list[str]:
    """The metrics of the group's pruned rows, quality first (in a fixed order), then costs."""
    present = set(dt.scalar_rows(group.pruned)["metric"])
    out = sorted(present, key=lambda m: (m in lb.COST_METRICS, _METRIC_ORDER.index(m) if m in _METRIC_ORDER else 99, m))
    return [m for m in out if include_cost or m not in lb.COST_METRICS]


def rate_ticks(ax: Any, rates: Sequence[float]) -> None:
    """Pruning-rate x axis: a tick per rate (up to 11), room around 0 for the reference star."""
    rates = sorted(set(float(r) for r in rates))
    if len(rates) <= 11:
        ax.set_xticks(rates)
        ax.set_xticklabels([fmt_num(r) for r in rates])
    ax.set_xlim(-0.03, max(rates) + 0.03 if rates else 1)


RATE_LABEL = "pruning rate (0 = unpruned reference)"

# ------------------------------------------------------------------------------ curves


class PruningCurves(BenchmarkPlot):
    """Metric vs pruning rate per method (lower-is-better metrics negated: up = better).

    Writes ``pruning/pruning_curves_<method>.png`` (one panel per metric, a line per CFG
    scale, the unpruned reference at rate 0); with ``compare`` also
    ``pruning/compare_<metric>.png`` (every method as a line, a panel per CFG scale).
    """

    name = "pruning_curves"

    @dataclass
    class Options:
        compare: bool = field(default=False, metadata={"help": "also draw one figure per metric with every method"})

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        groups = pruning_groups(df)
        out = Path(out_dir) / FOLDER
        paths: list[Path] = []
        compare = bool(self.options.compare) if self.options is not None else False
        with plot_style():
            for g in groups:
                metrics = group_metrics(g)
                if not metrics:
                    continue
                for method in g.methods:
                    paths.append(self._per_method(g, method, metrics, out))
                if compare:
                    for metric in metrics:
                        paths.append(self._compare(g, metric, out))
        return paths

    def _per_method(self, g: PruningGroup, method: str, metrics: list[str], out: Path) -> Path:
        import pandas as pd

        rows = g.rows(method)
        cfgs = sorted(rows["cfg_scale"].unique())
        colors = st.cfg_colors(cfgs) if len(cfgs) > 1 else {cfgs[0]: st.method_colors([method])[method]}
        # the y labels of negated metrics take two lines: leave them room
        nrows, ncols = st.grid_shape(len(metrics), 3)
        fig = new_figure(4.7 * ncols + (1.6 if len(cfgs) > 1 else 0.4), 3.7 * nrows + 0.6)
        axes = st.panel_grid(fig, len(metrics), 3)
        all_stats = []
        for ax, m in zip(axes, metrics):
            higher = lb.higher_is_better(rows, m)
            stats = curve_stats(g, method, m)
            all_stats.append(stats)
            for cfg in cfgs:
                part = stats[np.isclose(stats["cfg_scale"], cfg)].sort_values("pruning_rate")
                if not len(part):
                    continue
                st.errorbar(ax, part["pruning_rate"], lb.better_up(part["mean"], higher), part["std"],
                            color=colors[cfg], label=f"CFG {fmt_num(cfg)}")
                ref = part[part["pruning_rate"] == 0.0]
                if len(ref):
                    ax.plot([0.0], lb.better_up(ref["mean"], higher), marker="*", markersize=13, color="black",
                            linestyle="none", zorder=5, label="unpruned reference")
            ax.set_title(f"{lb.label(m)}")
            ax.set_ylabel(lb.better_up_label(m, higher))
            ax.set_xlabel(RATE_LABEL)
            rate_ticks(ax, stats["pruning_rate"])
        handles, labels = unique_legend(axes)
        if len(cfgs) > 1:
            fig.legend(handles, labels, loc="outside right center")
        else:
            axes[0].legend(handles, labels, loc="best", fontsize=8)
        fig.suptitle(f"{method} pruning: metrics vs pruning rate{g.title}")
        footnote(fig, [
            "Up = better on every panel: lower-is-better metrics are negated (−v).",
            spread_note(pd.concat(all_stats)),
            averaged_note(rows, ["cfg_scale", "pruning_rate", "pruning_method"]),
        ])
        return save_figure(fig, out / f"pruning_curves_{method}{g.suffix}.png")

    def _compare(self, g: PruningGroup, metric: str, out: Path) -> Path:
        import pandas as pd

        rows = g.rows()
        higher = lb.higher_is_better(rows, metric)
        cfgs = sorted(rows.loc[rows["metric"] == metric, "cfg_scale"].unique())
        styles = st.method_styles(g.methods)
        fig = new_figure(5.2 * len(cfgs) + 2.2, 4.6)
        axes = st.panel_grid(fig, len(cfgs), len(cfgs))
        all_stats = []
        for ax, cfg in zip(axes, cfgs):
            for method in g.methods:
                stats = curve_stats(g, method, metric)
                part = stats[np.isclose(stats["cfg_scale"], cfg)].sort_values("pruning_rate")
                if len(part) <= 1 and (part["pruning_rate"] == 0).all():
                    continue  # only the reference: this method has no row of this metric
                all_stats.append(part)
                st.errorbar(ax, part["pruning_rate"], lb.better_up(part["mean"], higher), part["std"],
                            label=method, **styles[method])
            ref = dt.scalar_rows(g.reference)
            ref = ref[(ref["metric"] == metric) & np.isclose(ref["cfg_scale"], cfg)]
            if len(ref):
                ref_mean = ref.groupby("seed")["value"].mean().mean()
                ax.plot([0.0], [lb.better_up(ref_mean, higher)], marker="*", markersize=13, color="black",
                        linestyle="none", zorder=5, label="unpruned reference")
            ax.set_title(f"CFG {fmt_num(cfg)}" if len(cfgs) > 1 else lb.label(metric))
            ax.set_xlabel(RATE_LABEL)
            ax.set_ylabel(lb.better_up_label(metric, higher))
            rate_ticks(ax, rows["pruning_rate"])
        handles, labels = unique_legend(axes)
        fig.legend(handles, labels, loc="outside right center", title="method")
        fig.suptitle(f"{lb.label(metric)} vs pruning rate: all methods{g.title}")
        footnote(fig, [
            "Up = better" + ("" if higher else " (lower-is-better metric negated: −v)") + ".",
            spread_note(pd.concat(all_stats)) if all_stats else "",
            averaged_note(rows[rows["metric"] == metric], ["cfg_scale", "pruning_rate", "pruning_method"]),
        ])
        return save_figure(fig, out / f"compare_{metric}{g.suffix}.png")


def unique_legend(axes: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """One legend entry per label over ``axes``, the unpruned reference last."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    ref = seen.pop("unpruned reference", None)
    if ref is not None:
        seen["unpruned reference"] = ref
    return list(seen.values()), list(seen)

