"""Trajectory-distillation curves: metrics per sampling step and vs student size.

They read only the results DataFrame (rows of the teacher and its students, i.e.
``pruning_method == "none"``, ``status == "ok"``), average over seeds and show ±1 s.d.
over seeds. Output folders follow the seed's ``output/analysis/`` layout:
``time_dependent/``, ``noise_prediction/``, ``dimensionality/``, ``fid/``,
``size_dependent/``: see each class. The size x CFG heatmaps and radars are in
:mod:`plugins.plots.trajectory`.
"""
from __future__ import annotations

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
    "DimensionalityPlot",
    "FIDvsSize",
    "NoisePredictionPlot",
    "SizeDependent",
    "TimeDependent",
]


# ---------------------------------------------------------------------- per-step curves


def _step_figure(
    d: pd.DataFrame,
    metrics: list[str],
    title: str,
    include_teacher: bool,
    extra_notes: list[str],
) -> Any:
    """Panels per ``*_t`` metric: value vs timestep, one line (± s.d. band) per size."""
    sizes = sorted(d["size_factor"].dropna().unique())
    colors = st.size_colors(sizes)
    rows, cols = st.grid_shape(len(metrics), 2)
    fig = new_figure(5.4 * cols + 1.6, 3.7 * rows + 0.5)
    axes = st.panel_grid(fig, len(metrics), 2)
    stats_all = []
    for ax, m in zip(axes, metrics):
        rows_m = d[d["metric"] == m]
        stats = seed_stats(rows_m, ["size_factor", "timestep"])
        stats_all.append(stats)
        for s in sizes:
            part = stats[np.isclose(stats["size_factor"], s)].sort_values("timestep")
            if len(part):
                st.errorbar(ax, part["timestep"], part["mean"], part["std"], band=True, color=colors[s],
                            label=f"size {fmt_num(s)}")
        teacher = stats[stats["size_factor"].isna()].sort_values("timestep")
        if include_teacher and len(teacher):
            st.errorbar(ax, teacher["timestep"], teacher["mean"], teacher["std"], band=True,
                        color=st.TEACHER_COLOR, linestyle="--", label="teacher")
        ax.set_title(lb.label(m[:-2] if m.endswith("_t") else m))
        ax.set_xlabel("timestep t (sampling runs left → right, noise → data)")
        ax.set_ylabel(lb.label(m[:-2] if m.endswith("_t") else m))
        if len(stats):
            ax.set_xlim(stats["timestep"].max(), stats["timestep"].min())
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="model")
    fig.suptitle(title)
    import pandas as pd

    footnote(fig, [spread_note(pd.concat(stats_all), "bands"), *extra_notes])
    return fig


class TimeDependent(BenchmarkPlot):
    """How the trajectory metrics evolve over the sampling steps, per student size.

    Writes ``time_dependent/trajectory_metrics_vs_timestep_cfg<scale>.png``: one figure
    per CFG scale, one panel per ``<metric>_t`` row family, one line per size factor.
    """

    name = "time_dependent"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = dt.unpruned(ok_rows(df))
        metrics = dt.metrics_in(d, [m + "_t" for m in lb.TRAJECTORY_METRICS])
        d = d[d["metric"].isin(metrics) & d["timestep"].notna() & d["size_factor"].notna()]
        if not metrics or not len(d):
            return []
        out = Path(out_dir) / "time_dependent"
        paths = []
        with plot_style():
            for cfg in sorted(d["cfg_scale"].unique()):
                part = d[np.isclose(d["cfg_scale"], cfg)]
                fig = _step_figure(part, metrics, f"Trajectory metrics per step vs teacher (CFG {fmt_num(cfg)})",
                                   False, [averaged_note(part, ["size_factor", "cfg_scale"])])
                paths.append(save_figure(fig, out / f"trajectory_metrics_vs_timestep_cfg{fmt_num(cfg)}.png"))
        return paths


class NoisePredictionPlot(BenchmarkPlot):
    """Noise-prediction error and agreement with the teacher per timestep and size.

    Writes ``noise_prediction/noise_prediction_vs_timestep.png`` (``noise_prediction_mse_t``
    and ``eps_agreement_t`` vs timestep, a line per size, the teacher dashed) and
    ``noise_prediction/noise_prediction_vs_size.png`` (the overall values vs size factor).
    No guidance is involved, so CFG cells are averaged.
    """

    name = "noise_prediction"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = dt.unpruned(ok_rows(df))
        step_metrics = dt.metrics_in(d, ["noise_prediction_mse_t", "eps_agreement_t"])
        overall = dt.metrics_in(dt.scalar_rows(d), ["noise_prediction_mse", "eps_agreement"])
        if not step_metrics and not overall:
            return []
        out = Path(out_dir) / "noise_prediction"
        paths = []
        note = "Real held-out images, no guidance: values are averaged over the CFG cells."
        with plot_style():
            if step_metrics:
                part = d[d["metric"].isin(step_metrics) & d["timestep"].notna()]
                fig = _step_figure(part, step_metrics, "Noise prediction per timestep", True,
                                   [note, averaged_note(part, ["size_factor", "cfg_scale"])])
                paths.append(save_figure(fig, out / "noise_prediction_vs_timestep.png"))
            if overall:
                fig = _vs_size_figure(dt.scalar_rows(d), overall, "Noise prediction vs student size",
                                      "size_factor", by_cfg=False, notes=[note])
                if fig is not None:
                    paths.append(save_figure(fig, out / "noise_prediction_vs_size.png"))
        return paths


class DimensionalityPlot(BenchmarkPlot):
    """Dimensionality of the sampling states per timestep, and of the samples vs size.

    Writes ``dimensionality/dimensionality_vs_timestep_cfg<scale>.png``
    (``effective_dim_95_t`` and ``participation_ratio_t``, a line per size, teacher
    dashed) and ``dimensionality/dimensionality_vs_size.png`` (``effective_dim_95`` and
    ``participation_ratio`` of the final samples vs size factor, a line per CFG scale).
    """

    name = "dimensionality"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = dt.unpruned(ok_rows(df))
        step_metrics = dt.metrics_in(d, ["effective_dim_95_t", "participation_ratio_t"])
        overall = dt.metrics_in(dt.scalar_rows(d), ["effective_dim_95", "participation_ratio"])
        if not step_metrics and not overall:
            return []
        out = Path(out_dir) / "dimensionality"
        paths = []
        desc = "Descriptive metrics (no better direction): compare with the teacher's."
        with plot_style():
            if step_metrics:
                part = d[d["metric"].isin(step_metrics) & d["timestep"].notna()]
                for cfg in sorted(part["cfg_scale"].unique()):
                    p = part[np.isclose(part["cfg_scale"], cfg)]
                    fig = _step_figure(p, step_metrics, f"Dimensionality of x_t per step (CFG {fmt_num(cfg)})", True,
                                       [desc, averaged_note(p, ["size_factor", "cfg_scale"])])
                    paths.append(save_figure(fig, out / f"dimensionality_vs_timestep_cfg{fmt_num(cfg)}.png"))
            if overall:
                fig = _vs_size_figure(dt.scalar_rows(d), overall, "Dimensionality of the final samples vs size",
                                      "size_factor", notes=[desc])
                if fig is not None:
                    paths.append(save_figure(fig, out / "dimensionality_vs_size.png"))
        return paths


# ------------------------------------------------------------------------ vs size


_X_LABELS = {
    "size_factor": "student size factor\n(requested share of teacher parameters)",
    "param_ratio": "parameter ratio\n(student / teacher parameters, measured)",
}


def _vs_size_figure(
    d: pd.DataFrame,
    metrics: list[str],
    title: str,
    x: str,
    *,
    by_cfg: bool = True,
    notes: list[str] | None = None,
    max_cols: int = 3,
) -> Any:
    """Panels per metric: value vs ``x`` (size factor or param ratio), a line per CFG
    scale (or one line), the teacher as a dashed horizontal line of the same colour."""
    students = d[d["size_factor"].notna()]
    if not len(students) or not metrics:
        return None
    if x == "param_ratio" and not np.isfinite(students["param_ratio"]).any():
        return None
    teacher = d[d["size_factor"].isna()]
    cfgs = sorted(d["cfg_scale"].unique()) if by_cfg else [None]
    colors = st.cfg_colors([c for c in cfgs if c is not None]) if by_cfg else {None: "C0"}
    rows, cols = st.grid_shape(len(metrics), max_cols)
    if len(metrics) == 1:
        fig = new_figure(7.0, 5.0)
    else:
        fig = new_figure(4.6 * cols + 2.2, 3.6 * rows + 0.8)
    axes = st.panel_grid(fig, len(metrics), max_cols)
    all_stats = []
    xs_all = students[x].dropna()
    log_x = len(xs_all) and xs_all.min() > 0 and xs_all.max() / xs_all.min() >= 8
    for ax, m in zip(axes, metrics):
        all_stats += _vs_size_lines(ax, students[students["metric"] == m], teacher[teacher["metric"] == m], cfgs,
                                    colors, x)
        if len(metrics) > 1:
            ax.set_title(lb.label(m))
        ax.set_xlabel(_X_LABELS[x] if len(metrics) == 1 else x.replace("_", " "))
        ax.set_ylabel(lb.label(m))
        if log_x:
            _log_size_axis(ax, xs_all)
    _vs_size_legend(fig, axes, has_teacher=bool(len(teacher)), per_cfg=by_cfg and len(cfgs) > 1,
                    inside=len(metrics) == 1)
    fig.suptitle(title)
    footnote(fig, _vs_size_notes(d, all_stats, x, len(metrics) > 1, by_cfg, notes))
    return fig


def _vs_size_lines(ax: Any, part_m: pd.DataFrame, teacher_m: pd.DataFrame, cfgs: list[Any], colors: dict[Any, Any],
                   x: str) -> list[pd.DataFrame]:
    """One metric's panel: per CFG scale (``None``: all), the students' mean ± s.d. vs ``x``
    and the teacher's mean as a dashed line; returns the seed statistics drawn."""
    drawn = []
    for cfg in cfgs:
        part, tpart = part_m, teacher_m
        if cfg is not None:
            part = part[np.isclose(part["cfg_scale"], cfg)]
            tpart = tpart[np.isclose(tpart["cfg_scale"], cfg)]
        if not len(part):
            continue
        stats = seed_stats(part, ["size_factor"])
        if x == "param_ratio":
            xs = dt.column_mean(part, ["size_factor"], "param_ratio").set_index("size_factor")["param_ratio"]
            stats["x"] = stats["size_factor"].map(xs)
        else:
            stats["x"] = stats["size_factor"]
        stats = stats.sort_values("x")
        drawn.append(stats)
        name = "students" if cfg is None else f"CFG {fmt_num(cfg)}"
        st.errorbar(ax, stats["x"], stats["mean"], stats["std"], color=colors[cfg], label=name)
        if len(tpart):
            tv = tpart.groupby("seed")["value"].mean().mean()
            ax.axhline(tv, color=colors[cfg] if cfg is not None else st.TEACHER_COLOR, linestyle="--",
                       linewidth=1.3, alpha=0.9)
    return drawn


def _log_size_axis(ax: Any, xs_all: pd.Series) -> None:
    """A log x axis over sizes that span 8x or more, with plain-number ticks."""
    ax.set_xscale("log")
    lo, hi = xs_all.min(), xs_all.max()
    if xs_all.nunique() <= 8:
        ticks = sorted(xs_all.unique())
    else:  # plain-number ticks (not 10^-2) on the sizes' range
        nice = [m * 10.0**e for e in range(-4, 1) for m in (1, 2, 5)] + [1.0]
        ticks = [t for t in nice if lo * 0.999 <= t <= hi * 1.001]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:.2g}" for t in ticks])
    ax.minorticks_off()


def _vs_size_legend(fig: Any, axes: list[Any], *, has_teacher: bool, per_cfg: bool, inside: bool) -> None:
    """The lines of the first panel plus the teacher's dashed line: inside a lone panel,
    else to the right of the figure."""
    from matplotlib.lines import Line2D

    handles, labels = axes[0].get_legend_handles_labels()
    if has_teacher:
        handles.append(Line2D([], [], color=st.TEACHER_COLOR, linestyle="--"))
        labels.append("teacher (dashed,\nsame colour)" if per_cfg else "teacher")
    if inside:
        axes[0].legend(handles, labels, loc="best", fontsize=9)
    else:
        fig.legend(handles, labels, loc="outside right center")


def _vs_size_notes(d: pd.DataFrame, all_stats: list[pd.DataFrame], x: str, several: bool, by_cfg: bool,
                   notes: list[str] | None) -> list[str]:
    """Footnote: the spread shown, the x axis (when panels carry a short x label), the
    caller's ``notes``, and what was averaged over."""
    import pandas as pd

    lines = [spread_note(pd.concat(all_stats)) if all_stats else ""]
    if several:
        lines.append(f"x axis: {_X_LABELS[x].replace(chr(10), ' ')}.")
    lines.extend(notes or [])
    lines.append(averaged_note(d, ["size_factor", "cfg_scale"] if by_cfg else ["size_factor"]))
    return lines


class FIDvsSize(BenchmarkPlot):
    """FID (fid_digits and/or fid) vs student size factor, a line per CFG scale.

    Writes ``fid/fid_digits_vs_size.png`` and/or ``fid/fid_vs_size.png``; the teacher's
    FID at each CFG scale is a dashed horizontal line of the same colour. Lower is better.
    """

    name = "fid_vs_size"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = dt.scalar_rows(dt.unpruned(ok_rows(df)))
        if not len(d) or not d["size_factor"].notna().any():
            return []
        paths = []
        with plot_style():
            for m in dt.metrics_in(d, ["fid_digits", "fid"]):
                fig = _vs_size_figure(d, [m], f"{lb.label(m)} vs student size (lower is better)", "size_factor")
                if fig is not None:
                    paths.append(save_figure(fig, Path(out_dir) / "fid" / f"{m}_vs_size.png"))
        return paths


class SizeDependent(BenchmarkPlot):
    """Every scalar metric vs student size factor and vs measured parameter ratio.

    Writes ``size_dependent/metrics_vs_size_factor.png`` and
    ``size_dependent/metrics_vs_param_ratio.png``: one panel per metric, a line per CFG
    scale, the teacher dashed.
    """

    name = "size_dependent"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = dt.scalar_rows(dt.unpruned(ok_rows(df)))
        if not len(d) or not d["size_factor"].notna().any():
            return []
        students = d[d["size_factor"].notna()]
        metrics = sorted(students["metric"].unique(), key=_metric_order)
        arrows = {m: lb.direction_mark(d, m) for m in metrics}
        paths = []
        with plot_style():
            for x in ("size_factor", "param_ratio"):
                fig = _vs_size_figure(d, metrics, f"Metrics vs student {x.replace('_', ' ')}", x, max_cols=4,
                                      notes=["↑ / ↓ in panel titles: higher / lower is better; dashed: the teacher."])
                if fig is None:
                    continue
                for ax, m in zip(fig.axes, metrics):
                    ax.set_title(f"{lb.label(m)} {arrows[m]}", fontsize=10)
                paths.append(save_figure(fig, Path(out_dir) / "size_dependent" / f"metrics_vs_{x}.png"))
        return paths


_ORDER = (*lb.TRAJECTORY_METRICS, "noise_prediction_mse", "eps_agreement", "fid_digits", "fid", "label_accuracy",
          "clip_score", "feature_distance", "lpips", "effective_dim_95", "participation_ratio", "generation_time",
          "peak_memory_mb")


def _metric_order(m: str) -> tuple[int, str]:
    return (_ORDER.index(m) if m in _ORDER else len(_ORDER), m)
