"""Pruning figures and exports: metric vs pruning rate per method, method comparison,
quality vs measured cost (Pareto), text summaries and JSON exports.

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

from plugins.plots import _data as dt
from plugins.plots import _labels as lb
from plugins.plots import _style as st

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "BudgetResult",
    "PruningCurves",
    "PruningGroup",
    "PruningJSON",
    "PruningPareto",
    "PruningSummary",
    "budget_and_cliff",
    "curve_stats",
    "pareto_front",
    "pruning_groups",
    "quality_loss",
    "summary_text",
]

FOLDER = "pruning"
#: default primary metric of the summaries: the first of these present
PRIMARY_ORDER = ("label_accuracy", "clip_score", "synthetic_quality", "fid_digits", "fid", "lpips", "feature_distance")
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
        return "" if self.base is None else f" (student size {lb.fmt_num(self.base)})"

    def rows(self, method: str | None = None) -> pd.DataFrame:
        """Reference rows (rate set to 0) plus the rows of ``method`` (all methods if None)."""
        import pandas as pd

        pruned = self.pruned if method is None else self.pruned[self.pruned["pruning_method"] == method]
        ref = self.reference.assign(pruning_rate=0.0)
        return pd.concat([ref, pruned], ignore_index=True)


def pruning_groups(df: pd.DataFrame) -> list[PruningGroup]:
    """Split ok rows into :class:`PruningGroup` s, one per parent model that was pruned."""
    d = dt.ok_rows(df)
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
        suffix = "" if base is None else f"_size{lb.fmt_num(base)}"
        groups.append(PruningGroup(base, suffix, unpruned[sel_r], pruned_all[sel_p]))
    return groups


def curve_stats(group: PruningGroup, method: str, metric: str) -> pd.DataFrame:
    """Mean/s.d./n over seeds of ``metric`` per (cfg_scale, pruning_rate), the reference at 0."""
    rows = dt.scalar_rows(group.rows(method))
    return dt.seed_stats(rows[rows["metric"] == metric], ["cfg_scale", "pruning_rate"])


def _metrics(group: PruningGroup, include_cost: bool = True) -> list[str]:
    present = set(dt.scalar_rows(group.pruned)["metric"])
    out = sorted(present, key=lambda m: (m in lb.COST_METRICS, _METRIC_ORDER.index(m) if m in _METRIC_ORDER else 99, m))
    return [m for m in out if include_cost or m not in lb.COST_METRICS]


def _rate_ticks(ax: Any, rates: Sequence[float]) -> None:
    rates = sorted(set(float(r) for r in rates))
    if len(rates) <= 11:
        ax.set_xticks(rates)
        ax.set_xticklabels([lb.fmt_num(r) for r in rates])
    ax.set_xlim(-0.03, max(rates) + 0.03 if rates else 1)


_RATE_LABEL = "pruning rate (0 = unpruned reference)"


# ------------------------------------------------------------------------------ curves


class PruningCurves(dt.BenchmarkPlot):
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
        with st.plot_style():
            for g in groups:
                metrics = _metrics(g)
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
        fig = st.new_figure(4.7 * ncols + (1.6 if len(cfgs) > 1 else 0.4), 3.7 * nrows + 0.6)
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
                            color=colors[cfg], label=f"CFG {lb.fmt_num(cfg)}")
                ref = part[part["pruning_rate"] == 0.0]
                if len(ref):
                    ax.plot([0.0], lb.better_up(ref["mean"], higher), marker="*", markersize=13, color="black",
                            linestyle="none", zorder=5, label="unpruned reference")
            ax.set_title(f"{lb.label(m)}")
            ax.set_ylabel(lb.better_up_label(m, higher))
            ax.set_xlabel(_RATE_LABEL)
            _rate_ticks(ax, stats["pruning_rate"])
        handles, labels = _unique_legend(axes)
        if len(cfgs) > 1:
            fig.legend(handles, labels, loc="outside right center")
        else:
            axes[0].legend(handles, labels, loc="best", fontsize=8)
        fig.suptitle(f"{method} pruning: metrics vs pruning rate{g.title}")
        st.footnote(fig, [
            "Up = better on every panel: lower-is-better metrics are negated (−v).",
            dt.spread_note(pd.concat(all_stats)),
            dt.averaged_note(rows, ["cfg_scale", "pruning_rate", "pruning_method"]),
        ])
        return st.save(fig, out, f"pruning_curves_{method}{g.suffix}.png")

    def _compare(self, g: PruningGroup, metric: str, out: Path) -> Path:
        import pandas as pd

        rows = g.rows()
        higher = lb.higher_is_better(rows, metric)
        cfgs = sorted(rows.loc[rows["metric"] == metric, "cfg_scale"].unique())
        styles = st.method_styles(g.methods)
        fig = st.new_figure(5.2 * len(cfgs) + 2.2, 4.6)
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
            ax.set_title(f"CFG {lb.fmt_num(cfg)}" if len(cfgs) > 1 else lb.label(metric))
            ax.set_xlabel(_RATE_LABEL)
            ax.set_ylabel(lb.better_up_label(metric, higher))
            _rate_ticks(ax, rows["pruning_rate"])
        handles, labels = _unique_legend(axes)
        fig.legend(handles, labels, loc="outside right center", title="method")
        fig.suptitle(f"{lb.label(metric)} vs pruning rate: all methods{g.title}")
        st.footnote(fig, [
            "Up = better" + ("" if higher else " (lower-is-better metric negated: −v)") + ".",
            dt.spread_note(pd.concat(all_stats)) if all_stats else "",
            dt.averaged_note(rows[rows["metric"] == metric], ["cfg_scale", "pruning_rate", "pruning_method"]),
        ])
        return st.save(fig, out, f"compare_{metric}{g.suffix}.png")


def _unique_legend(axes: Sequence[Any]) -> tuple[list[Any], list[str]]:
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    ref = seen.pop("unpruned reference", None)
    if ref is not None:
        seen["unpruned reference"] = ref
    return list(seen.values()), list(seen)


# ------------------------------------------------------------------------------ pareto


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
    stats = dt.seed_stats(rows[rows["metric"] == metric], keys)
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
        ax.annotate(lb.fmt_num(rates[i]), (x[i], y[i]), textcoords="offset points", xytext=(6, 5), fontsize=8)


class PruningPareto(dt.BenchmarkPlot):
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
        with st.plot_style():
            for g in pruning_groups(df):
                axes_spec = _cost_axes(g)
                if not axes_spec:
                    continue
                for metric in _metrics(g, include_cost=False):
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
        fig = st.new_figure(4.6 * ncols + 1.8, 3.9 * nrows + 0.6)
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
                title = f"CFG {lb.fmt_num(cfg)}" if len(cfgs) > 1 else ""
                if title:
                    ax.set_title(title, fontsize=10)
        handles, labels = _unique_legend(fig.axes)
        fig.legend(handles, labels, loc="outside right center")
        fig.suptitle(f"{lb.label(metric)} vs cost reduction{g.title}")
        st.footnote(fig, [
            "Up and right = better" + ("" if higher else f"; {lb.label(metric)} negated (−v)") + ". "
            "Ringed points: the Pareto front (no other point is better on both axes), labelled with the pruning "
            "rate where there is room.",
            "Points: mean over seeds. Speed-up = reference generation time / variant's (measured).",
            dt.averaged_note(g.rows(), ["cfg_scale", "pruning_rate", "pruning_method"]),
        ])
        return st.save(fig, out, f"pareto_{metric}{g.suffix}.png")


# ------------------------------------------------------------------------------ summary


def quality_loss(value: float, reference: float, higher: bool) -> float:
    """Relative quality loss vs the reference (0.1 = 10% worse; negative = better).

    ``(ref - v) / |ref|`` for higher-is-better metrics, ``(v - ref) / |ref|`` for
    lower-is-better ones; NaN when the reference is 0 (e.g. LPIPS to itself).
    """
    if not np.isfinite(reference) or reference == 0 or not np.isfinite(value):
        return math.nan
    return ((reference - value) if higher else (value - reference)) / abs(reference)


@dataclass
class BudgetResult:
    """What a summary reports on the primary metric.

    :ivar best_rate: the highest rate whose loss is within the budget (None: none is).
    :ivar cliff_rate: the first (lowest) rate whose loss exceeds ``cliff`` (None: none does).
    :ivar losses: rate -> relative loss vs the reference.
    """

    best_rate: float | None
    cliff_rate: float | None
    losses: dict[float, float]


def budget_and_cliff(
    rates: Sequence[float],
    values: Sequence[float],
    reference: float,
    higher: bool,
    budget: float = 0.10,
    cliff: float = 0.25,
) -> BudgetResult:
    """Best rate within a quality budget and the "cliff" rate, from mean values per rate."""
    pairs = sorted((float(r), float(v)) for r, v in zip(rates, values) if float(r) > 0)
    losses = {r: quality_loss(v, reference, higher) for r, v in pairs}
    within = [r for r, loss in losses.items() if np.isfinite(loss) and loss <= budget]
    beyond = [r for r, loss in losses.items() if np.isfinite(loss) and loss > cliff]
    return BudgetResult(max(within) if within else None, min(beyond) if beyond else None, losses)


def _primary(g: PruningGroup, requested: str | None) -> str | None:
    metrics = _metrics(g, include_cost=False)
    if requested is not None:
        return requested if requested in metrics else None
    ref = dt.scalar_rows(g.reference)
    usable = [m for m in metrics if np.isfinite(ref.loc[ref["metric"] == m, "value"].mean())
              and ref.loc[ref["metric"] == m, "value"].mean() != 0]
    for m in PRIMARY_ORDER:
        if m in usable:
            return m
    return usable[0] if usable else None


def _cell(mean: float, sd: float) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.4g}" if not np.isfinite(sd) else f"{mean:.4g} ± {sd:.2g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def summary_text(
    g: PruningGroup,
    method: str,
    primary: str | None = None,
    budget: float = 0.10,
    cliff: float = 0.25,
) -> str:
    """The text of ``summary_<method>.txt`` (see :class:`PruningSummary`)."""
    rows = dt.scalar_rows(g.rows(method))
    metrics = _metrics(g)
    prim = _primary(g, primary)
    lines = [f"Pruning summary: method '{method}'{g.title}"]
    info = []
    for col in ("benchmark", "model", "dataset"):
        if col in rows and rows[col].notna().any():
            info.append(f"{col} {', '.join(sorted(map(str, rows[col].dropna().unique())))}")
    if info:
        lines.append("; ".join(info))
    def seed_list(part: pd.DataFrame) -> str:
        seeds = sorted(part["seed"].dropna().unique())
        return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}: {', '.join(map(str, seeds))}"

    method_seeds = seed_list(rows[rows["pruning_method"] == method])
    ref_seeds = seed_list(g.reference)
    seeds_text = method_seeds if method_seeds == ref_seeds else f"{method}: {method_seeds}; reference: {ref_seeds}"
    lines += [
        f"Values: mean ± s.d. over seeds ({seeds_text}); rate 0 = the unpruned reference.",
        "↑ / ↓ after a metric: higher / lower is better. Loss = relative quality loss vs the reference.",
    ]
    if primary is not None and prim is None:
        lines.append(f"Primary metric '{primary}' has no rows for this method: no budget or cliff computed.")
    elif prim is None:
        lines.append("No quality metric with a non-zero reference value: no budget or cliff computed.")
    else:
        lines.append(
            f"Primary metric: {prim} ({'higher' if lb.higher_is_better(rows, prim) else 'lower'} is better); "
            f"budget: within {budget:.0%} of the reference; cliff: first rate losing more than {cliff:.0%}."
        )
    if (rows["metric"] == "synthetic_quality").any():
        lines.append("synthetic_quality is SYNTHETIC (a parametric curve plus noise), not a measurement.")
    avg = dt.averaged_note(rows, ["cfg_scale", "pruning_rate", "pruning_method"])
    if avg:
        lines.append(avg)
    for cfg in sorted(rows["cfg_scale"].unique()):
        part = rows[np.isclose(rows["cfg_scale"], cfg)]
        lines += ["", f"== CFG scale {lb.fmt_num(cfg)} =="]
        keys = ["pruning_rate"]
        cells = part.drop_duplicates([*keys, "seed"])
        per_rate = cells.groupby(keys)[["sparsity", "speedup", "param_ratio"]].mean()
        header = ["rate", "sparsity", "speed-up", "param ratio"]
        shown = [m for m in metrics if (part["metric"] == m).any()]
        header += [f"{m} {'↑' if lb.higher_is_better(part, m) else '↓'}" for m in shown]
        stats = {m: dt.seed_stats(part[part["metric"] == m], keys).set_index("pruning_rate") for m in shown}
        table_rows = []
        for rate in sorted(part["pruning_rate"].unique()):
            r = [lb.fmt_num(rate) + (" (ref)" if rate == 0 else "")]
            for col in ("sparsity", "speedup", "param_ratio"):
                v = per_rate.loc[rate, col] if rate in per_rate.index else math.nan
                r.append(f"{v:.3g}" if np.isfinite(v) else "-")
            for m in shown:
                s = stats[m]
                r.append(_cell(s.loc[rate, "mean"], s.loc[rate, "std"]) if rate in s.index else "-")
            table_rows.append(r)
        lines += _table(header, table_rows)
        if prim is None or prim not in stats:
            continue
        s = stats[prim]
        higher = lb.higher_is_better(part, prim)
        if 0.0 not in s.index:
            lines.append(f"No reference row of {prim} at CFG {lb.fmt_num(cfg)}: no budget or cliff computed.")
            continue
        lines += _budget_lines(s, prim, higher, budget, cliff)
    return "\n".join(lines) + "\n"


def _budget_lines(s: pd.DataFrame, prim: str, higher: bool, budget: float, cliff: float) -> list[str]:
    """The loss per rate, the best rate within ``budget`` and the cliff, from ``prim``'s per-rate stats ``s``."""
    ref = float(s.loc[0.0, "mean"])
    res = budget_and_cliff(s.index, s["mean"], ref, higher, budget, cliff)

    def at(rate: float) -> str:
        # the best rate and the cliff are reported alike: the rate, its value, the reference's, the loss
        return (f"{lb.fmt_num(rate)} ({prim} {float(s.loc[rate, 'mean']):.4g} vs reference {ref:.4g}, "
                f"loss {res.losses[rate]:+.1%})")

    lines = ["", "Loss of " + prim + " vs reference: " +
             ", ".join(f"{lb.fmt_num(r)}: {loss:+.1%}" for r, loss in res.losses.items())]
    if res.best_rate is None:
        lines.append(f"Best rate within {budget:.0%}: none (every rate loses more than {budget:.0%}).")
    else:
        lines.append(f"Best rate within {budget:.0%}: {at(res.best_rate)}")
    if res.cliff_rate is None:
        lines.append(f"Cliff (> {cliff:.0%} loss): none up to rate {lb.fmt_num(max(res.losses, default=0))}.")
    else:
        lines.append(f"Cliff (> {cliff:.0%} loss): {at(res.cliff_rate)}")
    return lines


class PruningSummary(dt.BenchmarkPlot):
    """Text summary per pruning method: per-rate table, best rate within budget, cliff.

    Writes ``pruning/summary_<method>.txt``: per CFG scale, a table of mean ± s.d. (over
    seeds) of every metric plus measured sparsity, speed-up and parameter ratio per rate
    (rate 0 = the unpruned reference); the highest rate whose primary metric stays within
    ``budget`` (relative) of the reference; and the cliff, the first rate that loses more
    than ``cliff``.
    """

    name = "pruning_summary"

    @dataclass
    class Options:
        primary: str | None = field(
            default=None,
            metadata={"help": "metric judged against the budget (default: the first of "
                              + ", ".join(PRIMARY_ORDER) + " present)"},
        )
        budget: float = field(default=0.10, metadata={"help": "allowed relative loss vs the reference"})
        cliff: float = field(default=0.25, metadata={"help": "relative loss that marks the cliff"})

        def __post_init__(self) -> None:
            for name in ("budget", "cliff"):
                if not 0 <= getattr(self, name) < 10:
                    raise ValueError(f"{name} = {getattr(self, name)} is not a relative loss (e.g. 0.1 for 10%)")

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        o = self.options
        out = Path(out_dir) / FOLDER
        paths = []
        for g in pruning_groups(df):
            for method in g.methods:
                text = summary_text(g, method, o.primary, o.budget, o.cliff)
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"summary_{method}{g.suffix}.txt"
                path.write_text(text, encoding="utf-8")
                paths.append(path)
        return paths


class PruningJSON(dt.BenchmarkPlot):
    """JSON export of the raw rows per pruning method (records orient).

    Writes ``pruning/results_<method>.json``: every ok row of the method (all rates, CFG
    scales, seeds, per-step rows) plus the rows of the unpruned models it was pruned from
    (``pruning_method = "none"``), so each file holds its own reference.
    """

    name = "pruning_json"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        import pandas as pd

        groups = pruning_groups(df)
        methods = sorted({m for g in groups for m in g.methods})
        out = Path(out_dir) / FOLDER
        paths = []
        for method in methods:
            parts = []
            for g in groups:
                if method in g.methods:
                    parts += [g.reference, g.pruned[g.pruned["pruning_method"] == method]]
            rows = pd.concat(parts, ignore_index=True)
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"results_{method}.json"
            rows = rows.drop(columns="blob", errors="ignore")  # diagnostic arrays are not JSON
            text = rows.to_json(orient="records", date_format="iso", date_unit="us", indent=1)
            path.write_text(text, encoding="utf-8")
            paths.append(path)
        return paths
