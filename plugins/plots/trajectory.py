"""Trajectory-distillation figures: students of several sizes vs their teacher.

They read only the results DataFrame (rows of the teacher and its students, i.e.
``pruning_method == "none"``, ``status == "ok"``), average over seeds and show ±1 s.d.
over seeds. Output folders follow the seed's ``output/analysis/`` layout:

- ``model_comparisons/``: ``cfg_heatmap_<metric>.png`` (size factor x CFG scale),
  ``cfg_heatmap_combined.png``, ``radar_plot_grid.png``, ``composite_radar_plot.png``;
- ``time_dependent/``, ``noise_prediction/``, ``dimensionality/``, ``fid/``,
  ``size_dependent/``: see each class.

Heatmaps and radars show metrics normalised to [0, 1] with 1 = closest to the teacher
(rules in :mod:`plugins.plots._style`); each figure states its normalisation.
"""

from __future__ import annotations

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
    "DimensionalityPlot",
    "FIDvsSize",
    "NoisePredictionPlot",
    "SizeDependent",
    "TimeDependent",
    "TrajectoryHeatmaps",
    "TrajectoryRadar",
    "cfg_size_table",
    "normalised_tables",
    "radar_table",
]

MODEL_COMPARISONS = "model_comparisons"
#: the radar's spokes: the four trajectory metrics, then these when present
RADAR_EXTRAS = ("eps_agreement", "label_accuracy")


def _students(df: pd.DataFrame) -> pd.DataFrame:
    d = dt.unpruned(dt.ok_rows(df))
    return d[d["size_factor"].notna()] if "size_factor" in d else d.iloc[0:0]


def _teacher(df: pd.DataFrame) -> pd.DataFrame:
    d = dt.unpruned(df)
    return d[d["size_factor"].isna()]


def cfg_size_table(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Raw mean over seeds of ``metric`` per (student size factor, CFG scale).

    Rows: size factors (ascending), columns: CFG scales (ascending); the teacher and the
    per-step rows are left out. For one row per (cell, seed) this equals
    ``df.pivot_table(index="size_factor", columns="cfg_scale", values="value")`` on the
    metric's overall rows.
    """
    import pandas as pd

    d = dt.scalar_rows(_students(df))
    d = d[d["metric"] == metric]
    if not len(d):
        return pd.DataFrame()
    stats = dt.seed_stats(d, ["size_factor", "cfg_scale"])
    table = stats.pivot(index="size_factor", columns="cfg_scale", values="mean")
    return table.sort_index().sort_index(axis=1)


def normalised_tables(df: pd.DataFrame, metrics: tuple[str, ...] = lb.TRAJECTORY_METRICS) -> dict[str, tuple[pd.DataFrame, pd.DataFrame, str]]:
    """``metric -> (raw table, normalised table, note)`` for the metrics present."""
    d = dt.ok_rows(df)
    out = {}
    for m in metrics:
        raw = cfg_size_table(d, m)
        if raw.empty:
            continue
        norm, note = lb.normalise(m, raw, higher=lb.higher_is_better(d, m))
        out[m] = (raw, norm, note)
    return out


def _heatmap_figure(table: pd.DataFrame, title: str, cbar_label: str, notes: list[str]) -> Any:
    """One annotated size x CFG heatmap on the fixed [0, 1] colour scale."""
    import seaborn as sns

    rows, cols = table.shape
    width = max(5.6, 0.85 * cols + 3.4)
    lines = st.wrap_lines(notes, width)
    fig = st.new_figure(width, max(3.4, 0.45 * rows + 2.0) + 0.17 * len(lines))
    ax = fig.add_subplot()
    shown = table.sort_index(ascending=False)  # largest student on top
    annot_size = 10 if shown.size <= 60 else 8 if shown.size <= 150 else 6
    sns.heatmap(
        shown,
        ax=ax,
        vmin=0.0,
        vmax=1.0,
        cmap="viridis",
        annot=True,
        fmt=".2f",
        annot_kws={"fontsize": annot_size},
        linewidths=0.5,
        linecolor="white",
        cbar_kws={"label": cbar_label, "shrink": 0.9},
        xticklabels=[lb.fmt_num(c) for c in shown.columns],
        yticklabels=[lb.fmt_num(s) for s in shown.index],
    )
    ax.figure.axes[-1].yaxis.label.set_size(10)  # the colour bar's label
    ax.set_xlabel("CFG scale (1 = no guidance)")
    ax.set_ylabel("student size factor")
    ax.tick_params(axis="both", rotation=0)
    ax.set_title(title)
    st.footnote(fig, notes)
    return fig


class TrajectoryHeatmaps(dt.BenchmarkPlot):
    """Size factor x CFG scale heatmaps of the trajectory metrics (normalised, 1 = teacher).

    Writes ``model_comparisons/cfg_heatmap_{path_length_similarity, trajectory_mse,
    mean_directional_consistency, distribution_similarity, combined}.png``; the combined
    one is the mean of the normalised metrics present.
    """

    name = "trajectory_heatmaps"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        import pandas as pd

        d = dt.ok_rows(df)
        tables = normalised_tables(d)
        if not tables:
            return []
        out = Path(out_dir) / MODEL_COMPARISONS
        students = dt.scalar_rows(_students(d))
        seeds = dt.seeds_phrase(dt.seed_stats(students[students["metric"].isin(list(tables))],
                                              ["size_factor", "cfg_scale", "metric"]))
        avg = dt.averaged_note(students, ["size_factor", "cfg_scale"])
        cbar = "normalised\n(1 = teacher)"
        paths = []
        with st.plot_style():
            for metric, (_raw, norm, note) in tables.items():
                stem = lb.SEED_FILE_NAMES.get(metric, metric)
                title = lb.label(metric)
                fig = _heatmap_figure(norm, f"{title[0].upper()}{title[1:]} vs teacher", cbar,
                                      [f"Normalised to [0, 1], 1 = teacher: {note}.", f"Cell: {seeds}.", avg])
                paths.append(st.save(fig, out, f"cfg_heatmap_{stem}.png"))
            stacked = pd.concat([norm for _r, norm, _n in tables.values()], keys=list(tables))
            combined = stacked.groupby(level=1).mean()
            fig = _heatmap_figure(
                combined,
                "Combined trajectory similarity vs teacher",
                "mean normalised\nscore (1 = teacher)",
                [
                    f"Cell = mean of the {len(tables)} normalised metrics ({seeds}). Normalised to [0, 1], "
                    "1 = teacher: " + "; ".join(note for _r, _n, note in tables.values()) + ".",
                    avg,
                ],
            )
            paths.append(st.save(fig, out, "cfg_heatmap_combined.png"))
        return paths


def radar_table(df: pd.DataFrame, cfg_scale: float | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Normalised radar values: rows = student size factors, columns = metrics; + notes.

    Values are the mean over seeds (and over CFG scales unless ``cfg_scale`` is given).
    ``trajectory_mse`` is normalised with the maximum of the size x CFG table, as in the
    heatmaps, so both figures agree.
    """
    import pandas as pd

    d = dt.ok_rows(df)
    students = dt.scalar_rows(_students(d))
    if cfg_scale is not None:
        students = students[np.isclose(students["cfg_scale"], float(cfg_scale))]
    metrics = dt.metrics_in(students, (*lb.TRAJECTORY_METRICS, *RADAR_EXTRAS))
    cols, notes = {}, []
    for m in metrics:
        rows = students[students["metric"] == m]
        per_size = dt.seed_stats(rows, ["size_factor"]).set_index("size_factor")["mean"]
        higher = lb.higher_is_better(d, m)
        scale = None
        if not higher:
            table = cfg_size_table(students, m)
            scale = float(np.nanmax(table.to_numpy())) if table.size else None
        norm, note = lb.normalise(m, per_size, higher=higher, scale=scale)
        cols[m] = norm
        notes.append(note)
    if not cols:
        return pd.DataFrame(), []
    return pd.DataFrame(cols).sort_index(), notes


def _radar_axes(ax: Any, metrics: list[str], label_size: float = 9.0) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, len(metrics), endpoint=False)
    ax.set_theta_offset(np.pi / 2)
    ax.set_theta_direction(-1)
    ax.set_xticks(angles)
    ax.set_xticklabels([lb.short_label(m) for m in metrics], fontsize=label_size)
    ax.tick_params(axis="x", pad=13)
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels(["0.25", "0.5", "0.75", "1"], fontsize=7, color="0.45")
    ax.set_rlabel_position(180 / len(metrics))
    return angles


def _radar_polygon(ax: Any, angles: np.ndarray, values: np.ndarray, color: Any, label: str, fill: float = 0.2) -> None:
    a = np.concatenate([angles, angles[:1]])
    v = np.concatenate([values, values[:1]])
    ax.plot(a, v, color=color, linewidth=2, label=label, marker="o", markersize=3.5)
    if fill:
        ax.fill(a, v, color=color, alpha=fill)


class TrajectoryRadar(dt.BenchmarkPlot):
    """Radar plots of the normalised trajectory metrics per student size (1 = teacher).

    Writes ``model_comparisons/radar_plot_grid.png`` (one radar per size factor) and
    ``model_comparisons/composite_radar_plot.png`` (all sizes on one radar). Spokes: the
    four trajectory metrics, plus ``eps_agreement`` and ``label_accuracy`` when present;
    at least three are needed.
    """

    name = "trajectory_radar"

    @dataclass
    class Options:
        cfg_scale: float | None = field(
            default=None, metadata={"help": "draw this CFG scale only (default: mean over CFG scales)"}
        )

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        cfg = self.options.cfg_scale if self.options is not None else None
        table, notes = radar_table(df, cfg)
        if table.empty or table.shape[1] < 3:
            return []
        out = Path(out_dir) / MODEL_COMPARISONS
        metrics = list(table.columns)
        sizes = list(table.index)
        colors = st.size_colors(sizes)
        students = dt.scalar_rows(_students(dt.ok_rows(df)))
        if cfg is not None:
            where, averaged = f"CFG scale {lb.fmt_num(cfg)}", ""
        else:
            where = "mean over CFG scales"
            averaged = " and over CFG scales " + ", ".join(lb.fmt_num(c) for c in sorted(students["cfg_scale"].unique()))
        seeds = dt.seeds_phrase(dt.seed_stats(students[students["metric"].isin(metrics)], ["size_factor", "metric"]))
        notes_text = [
            "Normalised to [0, 1], 1 = teacher (outer ring): " + "; ".join(notes) + ".",
            f"Values: {seeds}{averaged}.",
        ]
        paths = []
        with st.plot_style():
            # Placed by hand (constrained layout does not see polar spoke labels), in inches: circle diameter D, room above it for the panel title and the
            # top spoke label, below it for the bottom spoke label, and a band for the suptitle.
            rows, cols = st.grid_shape(len(sizes), 4)
            diam, above, below, cell_w, head = 2.6, 1.1, 0.6, 4.0, 0.55
            cell_h = above + diam + below
            width, height = cell_w * cols, head + cell_h * rows
            fig = st.new_figure(width, height, layout=None)
            for i, s in enumerate(sizes):
                r, c = divmod(i, cols)
                left = c * cell_w + (cell_w - diam) / 2
                bottom = height - head - r * cell_h - above - diam
                ax = fig.add_axes((left / width, bottom / height, diam / width, diam / height), projection="polar")
                angles = _radar_axes(ax, metrics, 8.5)
                _radar_polygon(ax, angles, table.loc[s].to_numpy(dtype=float), colors[s], lb.fmt_num(s))
                tier = _tier(students, s)
                ax.set_title(f"size {lb.fmt_num(s)}" + (f" ({tier})" if tier else ""), pad=30, fontsize=12)
            fig.suptitle(f"Trajectory metrics vs teacher per student size ({where})", y=1 - 0.1 / height)
            st.footnote(fig, notes_text)
            paths.append(st.save(fig, out, "radar_plot_grid.png"))

            fig = st.new_figure(8.6, 7.0, layout=None)
            ax = fig.add_axes((0.1, 0.12, 0.62, 0.72), projection="polar")
            angles = _radar_axes(ax, metrics, 10.5)
            ax.tick_params(axis="x", pad=18)
            fill = 0.06 if len(sizes) <= 4 else 0.0  # stacked fills of many sizes turn opaque
            for s in sizes:
                _radar_polygon(ax, angles, table.loc[s].to_numpy(dtype=float), colors[s], f"size {lb.fmt_num(s)}",
                               fill=fill)
            ax.legend(title="student", loc="upper left", bbox_to_anchor=(1.15, 1.05))
            fig.suptitle(f"All student sizes vs teacher ({where})", y=0.98)
            st.footnote(fig, notes_text)
            paths.append(st.save(fig, out, "composite_radar_plot.png"))
        return paths


def _tier(df: pd.DataFrame, size: float) -> str:
    if "size_tier" not in df:
        return ""
    tiers = df.loc[np.isclose(df["size_factor"], size), "size_tier"].dropna().unique()
    return str(tiers[0]) if len(tiers) else ""


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
    fig = st.new_figure(5.4 * cols + 1.6, 3.7 * rows + 0.5)
    axes = st.panel_grid(fig, len(metrics), 2)
    stats_all = []
    for ax, m in zip(axes, metrics):
        rows_m = d[d["metric"] == m]
        stats = dt.seed_stats(rows_m, ["size_factor", "timestep"])
        stats_all.append(stats)
        for s in sizes:
            part = stats[np.isclose(stats["size_factor"], s)].sort_values("timestep")
            if len(part):
                st.errorbar(ax, part["timestep"], part["mean"], part["std"], band=True, color=colors[s],
                            label=f"size {lb.fmt_num(s)}")
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

    st.footnote(fig, [dt.spread_note(pd.concat(stats_all), "bands"), *extra_notes])
    return fig


class TimeDependent(dt.BenchmarkPlot):
    """How the trajectory metrics evolve over the sampling steps, per student size.

    Writes ``time_dependent/trajectory_metrics_vs_timestep_cfg<scale>.png``: one figure
    per CFG scale, one panel per ``<metric>_t`` row family, one line per size factor.
    """

    name = "time_dependent"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = dt.unpruned(dt.ok_rows(df))
        metrics = dt.metrics_in(d, [m + "_t" for m in lb.TRAJECTORY_METRICS])
        d = d[d["metric"].isin(metrics) & d["timestep"].notna() & d["size_factor"].notna()]
        if not metrics or not len(d):
            return []
        out = Path(out_dir) / "time_dependent"
        paths = []
        with st.plot_style():
            for cfg in sorted(d["cfg_scale"].unique()):
                part = d[np.isclose(d["cfg_scale"], cfg)]
                fig = _step_figure(part, metrics, f"Trajectory metrics per step vs teacher (CFG {lb.fmt_num(cfg)})",
                                   False, [dt.averaged_note(part, ["size_factor", "cfg_scale"])])
                paths.append(st.save(fig, out, f"trajectory_metrics_vs_timestep_cfg{lb.fmt_num(cfg)}.png"))
        return paths


class NoisePredictionPlot(dt.BenchmarkPlot):
    """Noise-prediction error and agreement with the teacher per timestep and size.

    Writes ``noise_prediction/noise_prediction_vs_timestep.png`` (``noise_prediction_mse_t``
    and ``eps_agreement_t`` vs timestep, a line per size, the teacher dashed) and
    ``noise_prediction/noise_prediction_vs_size.png`` (the overall values vs size factor).
    No guidance is involved, so CFG cells are averaged.
    """

    name = "noise_prediction"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = dt.unpruned(dt.ok_rows(df))
        step_metrics = dt.metrics_in(d, ["noise_prediction_mse_t", "eps_agreement_t"])
        overall = dt.metrics_in(dt.scalar_rows(d), ["noise_prediction_mse", "eps_agreement"])
        if not step_metrics and not overall:
            return []
        out = Path(out_dir) / "noise_prediction"
        paths = []
        note = "Real held-out images, no guidance: values are averaged over the CFG cells."
        with st.plot_style():
            if step_metrics:
                part = d[d["metric"].isin(step_metrics) & d["timestep"].notna()]
                fig = _step_figure(part, step_metrics, "Noise prediction per timestep", True,
                                   [note, dt.averaged_note(part, ["size_factor", "cfg_scale"])])
                paths.append(st.save(fig, out, "noise_prediction_vs_timestep.png"))
            if overall:
                fig = _vs_size_figure(dt.scalar_rows(d), overall, "Noise prediction vs student size",
                                      "size_factor", by_cfg=False, notes=[note])
                if fig is not None:
                    paths.append(st.save(fig, out, "noise_prediction_vs_size.png"))
        return paths


class DimensionalityPlot(dt.BenchmarkPlot):
    """Dimensionality of the sampling states per timestep, and of the samples vs size.

    Writes ``dimensionality/dimensionality_vs_timestep_cfg<scale>.png``
    (``effective_dim_95_t`` and ``participation_ratio_t``, a line per size, teacher
    dashed) and ``dimensionality/dimensionality_vs_size.png`` (``effective_dim_95`` and
    ``participation_ratio`` of the final samples vs size factor, a line per CFG scale).
    """

    name = "dimensionality"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = dt.unpruned(dt.ok_rows(df))
        step_metrics = dt.metrics_in(d, ["effective_dim_95_t", "participation_ratio_t"])
        overall = dt.metrics_in(dt.scalar_rows(d), ["effective_dim_95", "participation_ratio"])
        if not step_metrics and not overall:
            return []
        out = Path(out_dir) / "dimensionality"
        paths = []
        desc = "Descriptive metrics (no better direction): compare with the teacher's."
        with st.plot_style():
            if step_metrics:
                part = d[d["metric"].isin(step_metrics) & d["timestep"].notna()]
                for cfg in sorted(part["cfg_scale"].unique()):
                    p = part[np.isclose(part["cfg_scale"], cfg)]
                    fig = _step_figure(p, step_metrics, f"Dimensionality of x_t per step (CFG {lb.fmt_num(cfg)})", True,
                                       [desc, dt.averaged_note(p, ["size_factor", "cfg_scale"])])
                    paths.append(st.save(fig, out, f"dimensionality_vs_timestep_cfg{lb.fmt_num(cfg)}.png"))
            if overall:
                fig = _vs_size_figure(dt.scalar_rows(d), overall, "Dimensionality of the final samples vs size",
                                      "size_factor", notes=[desc])
                if fig is not None:
                    paths.append(st.save(fig, out, "dimensionality_vs_size.png"))
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
    import pandas as pd

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
        fig = st.new_figure(7.0, 5.0)
    else:
        fig = st.new_figure(4.6 * cols + 2.2, 3.6 * rows + 0.8)
    axes = st.panel_grid(fig, len(metrics), max_cols)
    all_stats = []
    xs_all = students[x].dropna()
    log_x = len(xs_all) and xs_all.min() > 0 and xs_all.max() / xs_all.min() >= 8
    for ax, m in zip(axes, metrics):
        for cfg in cfgs:
            part = students[students["metric"] == m]
            tpart = teacher[teacher["metric"] == m]
            if cfg is not None:
                part = part[np.isclose(part["cfg_scale"], cfg)]
                tpart = tpart[np.isclose(tpart["cfg_scale"], cfg)]
            if not len(part):
                continue
            stats = dt.seed_stats(part, ["size_factor"])
            if x == "param_ratio":
                xs = dt.column_mean(part, ["size_factor"], "param_ratio").set_index("size_factor")["param_ratio"]
                stats["x"] = stats["size_factor"].map(xs)
            else:
                stats["x"] = stats["size_factor"]
            stats = stats.sort_values("x")
            all_stats.append(stats)
            name = "students" if cfg is None else f"CFG {lb.fmt_num(cfg)}"
            st.errorbar(ax, stats["x"], stats["mean"], stats["std"], color=colors[cfg], label=name)
            if len(tpart):
                tv = tpart.groupby("seed")["value"].mean().mean()
                ax.axhline(tv, color=colors[cfg] if cfg is not None else st.TEACHER_COLOR, linestyle="--",
                           linewidth=1.3, alpha=0.9)
        if len(metrics) > 1:
            ax.set_title(lb.label(m))
        ax.set_xlabel(_X_LABELS[x] if len(metrics) == 1 else x.replace("_", " "))
        ax.set_ylabel(lb.label(m))
        if log_x:
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
    handles, labels = axes[0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    if len(teacher):
        handles.append(Line2D([], [], color=st.TEACHER_COLOR, linestyle="--"))
        labels.append("teacher (dashed,\nsame colour)" if by_cfg and len(cfgs) > 1 else "teacher")
    if len(metrics) == 1:
        axes[0].legend(handles, labels, loc="best", fontsize=9)
    else:
        fig.legend(handles, labels, loc="outside right center")
    fig.suptitle(title)
    lines = [dt.spread_note(pd.concat(all_stats)) if all_stats else ""]
    if len(metrics) > 1:
        lines.append(f"x axis: {_X_LABELS[x].replace(chr(10), ' ')}.")
    lines.extend(notes or [])
    lines.append(dt.averaged_note(d, ["size_factor", "cfg_scale"] if by_cfg else ["size_factor"]))
    st.footnote(fig, lines)
    return fig


class FIDvsSize(dt.BenchmarkPlot):
    """FID (fid_digits and/or fid) vs student size factor, a line per CFG scale.

    Writes ``fid/fid_digits_vs_size.png`` and/or ``fid/fid_vs_size.png``; the teacher's
    FID at each CFG scale is a dashed horizontal line of the same colour. Lower is better.
    """

    name = "fid_vs_size"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = dt.scalar_rows(dt.unpruned(dt.ok_rows(df)))
        if not len(d) or not d["size_factor"].notna().any():
            return []
        paths = []
        with st.plot_style():
            for m in dt.metrics_in(d, ["fid_digits", "fid"]):
                fig = _vs_size_figure(d, [m], f"{lb.label(m)} vs student size (lower is better)", "size_factor")
                if fig is not None:
                    paths.append(st.save(fig, Path(out_dir) / "fid", f"{m}_vs_size.png"))
        return paths


class SizeDependent(dt.BenchmarkPlot):
    """Every scalar metric vs student size factor and vs measured parameter ratio.

    Writes ``size_dependent/metrics_vs_size_factor.png`` and
    ``size_dependent/metrics_vs_param_ratio.png``: one panel per metric, a line per CFG
    scale, the teacher dashed.
    """

    name = "size_dependent"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = dt.scalar_rows(dt.unpruned(dt.ok_rows(df)))
        if not len(d) or not d["size_factor"].notna().any():
            return []
        students = d[d["size_factor"].notna()]
        metrics = sorted(students["metric"].unique(), key=_metric_order)
        arrows = {m: lb.direction_mark(d, m) for m in metrics}
        paths = []
        with st.plot_style():
            for x in ("size_factor", "param_ratio"):
                fig = _vs_size_figure(d, metrics, f"Metrics vs student {x.replace('_', ' ')}", x, max_cols=4,
                                      notes=["↑ / ↓ in panel titles: higher / lower is better; dashed: the teacher."])
                if fig is None:
                    continue
                for ax, m in zip(fig.axes, metrics):
                    ax.set_title(f"{lb.label(m)} {arrows[m]}", fontsize=10)
                paths.append(st.save(fig, Path(out_dir) / "size_dependent", f"metrics_vs_{x}.png"))
        return paths


_ORDER = (*lb.TRAJECTORY_METRICS, "noise_prediction_mse", "eps_agreement", "fid_digits", "fid", "label_accuracy",
          "clip_score", "feature_distance", "lpips", "effective_dim_95", "participation_ratio", "generation_time",
          "peak_memory_mb")


def _metric_order(m: str) -> tuple[int, str]:
    return (_ORDER.index(m) if m in _ORDER else len(_ORDER), m)
