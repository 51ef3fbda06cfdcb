"""Trajectory-distillation comparison figures: students of several sizes vs their teacher,
as size x CFG heatmaps and radars of the normalised trajectory metrics.

They read only the results DataFrame (rows of the teacher and its students, i.e.
``pruning_method == "none"``, ``status == "ok"``) and average over seeds. Output folders
follow the seed's ``output/analysis/`` layout: ``model_comparisons/``
(``cfg_heatmap_<metric>.png`` (size factor x CFG scale), ``cfg_heatmap_combined.png``,
``radar_plot_grid.png``, ``composite_radar_plot.png``). The per-step and vs-size curves
of the same study are in :mod:`plugins.plots.trajectory_curves`.

Heatmaps and radars show metrics normalised to [0, 1] with 1 = closest to the teacher
(rules in :mod:`plugins.plots._labels`); each figure states its normalisation.
"""
from __future__ import annotations

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
    seeds_phrase,
    wrap_lines,
)
from plugins.plots import _data as dt
from plugins.plots import _labels as lb
from plugins.plots import _style as st

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
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
    d = dt.unpruned(ok_rows(df))
    return d[d["size_factor"].notna()] if "size_factor" in d else d.iloc[0:0]



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
    stats = seed_stats(d, ["size_factor", "cfg_scale"])
    table = stats.pivot(index="size_factor", columns="cfg_scale", values="mean")
    return table.sort_index().sort_index(axis=1)


def normalised_tables(df: pd.DataFrame, metrics: tuple[str, ...] = lb.TRAJECTORY_METRICS) -> dict[str, tuple[pd.DataFrame, pd.DataFrame, str]]:
    """``metric -> (raw table, normalised table, note)`` for the metrics present."""
    d = ok_rows(df)
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
    lines = wrap_lines(notes, width)
    fig = new_figure(width, max(3.4, 0.45 * rows + 2.0) + 0.17 * len(lines))
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
        xticklabels=[fmt_num(c) for c in shown.columns],
        yticklabels=[fmt_num(s) for s in shown.index],
    )
    ax.figure.axes[-1].yaxis.label.set_size(10)  # the colour bar's label
    ax.set_xlabel("CFG scale (1 = no guidance)")
    ax.set_ylabel("student size factor")
    ax.tick_params(axis="both", rotation=0)
    ax.set_title(title)
    footnote(fig, notes)
    return fig


class TrajectoryHeatmaps(BenchmarkPlot):
    """Size factor x CFG scale heatmaps of the trajectory metrics (normalised, 1 = teacher).

    Writes ``model_comparisons/cfg_heatmap_{path_length_similarity, trajectory_mse,
    mean_directional_consistency, distribution_similarity, combined}.png``; the combined
    one is the mean of the normalised metrics present.
    """

    name = "trajectory_heatmaps"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        import pandas as pd

        d = ok_rows(df)
        tables = normalised_tables(d)
        if not tables:
            return []
        out = Path(out_dir) / MODEL_COMPARISONS
        students = dt.scalar_rows(_students(d))
        seeds = seeds_phrase(seed_stats(students[students["metric"].isin(list(tables))],
                                              ["size_factor", "cfg_scale", "metric"]))
        avg = averaged_note(students, ["size_factor", "cfg_scale"])
        cbar = "normalised\n(1 = teacher)"
        paths = []
        with plot_style():
            for metric, (_raw, norm, note) in tables.items():
                stem = lb.SEED_FILE_NAMES.get(metric, metric)
                title = lb.label(metric)
                fig = _heatmap_figure(norm, f"{title[0].upper()}{title[1:]} vs teacher", cbar,
                                      [f"Normalised to [0, 1], 1 = teacher: {note}.", f"Cell: {seeds}.", avg])
                paths.append(save_figure(fig, out / f"cfg_heatmap_{stem}.png"))
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
            paths.append(save_figure(fig, out / "cfg_heatmap_combined.png"))
        return paths


def radar_table(df: pd.DataFrame, cfg_scale: float | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Normalised radar values: rows = student size factors, columns = metrics; + notes.

    Values are the mean over seeds (and over CFG scales unless ``cfg_scale`` is given).
    ``trajectory_mse`` is normalised with the maximum of the size x CFG table, as in the
    heatmaps, so both figures agree.
    """
    import pandas as pd

    d = ok_rows(df)
    students = dt.scalar_rows(_students(d))
    if cfg_scale is not None:
        students = students[np.isclose(students["cfg_scale"], float(cfg_scale))]
    metrics = dt.metrics_in(students, (*lb.TRAJECTORY_METRICS, *RADAR_EXTRAS))
    cols, notes = {}, []
    for m in metrics:
        rows = students[students["metric"] == m]
        per_size = seed_stats(rows, ["size_factor"]).set_index("size_factor")["mean"]
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


class TrajectoryRadar(BenchmarkPlot):
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
        students = dt.scalar_rows(_students(ok_rows(df)))
        if cfg is not None:
            where, averaged = f"CFG scale {fmt_num(cfg)}", ""
        else:
            where = "mean over CFG scales"
            averaged = " and over CFG scales " + ", ".join(fmt_num(c) for c in sorted(students["cfg_scale"].unique()))
        seeds = seeds_phrase(seed_stats(students[students["metric"].isin(metrics)], ["size_factor", "metric"]))
        notes_text = [
            "Normalised to [0, 1], 1 = teacher (outer ring): " + "; ".join(notes) + ".",
            f"Values: {seeds}{averaged}.",
        ]
        paths = []
        with plot_style():
            # Placed by hand (constrained layout does not see polar spoke labels), in inches: circle diameter D, room above it for the panel title and the
            # top spoke label, below it for the bottom spoke label, and a band for the suptitle.
            rows, cols = st.grid_shape(len(sizes), 4)
            diam, above, below, cell_w, head = 2.6, 1.1, 0.6, 4.0, 0.55
            cell_h = above + diam + below
            width, height = cell_w * cols, head + cell_h * rows
            fig = new_figure(width, height, layout=None)
            for i, s in enumerate(sizes):
                r, c = divmod(i, cols)
                left = c * cell_w + (cell_w - diam) / 2
                bottom = height - head - r * cell_h - above - diam
                ax = fig.add_axes((left / width, bottom / height, diam / width, diam / height), projection="polar")
                angles = _radar_axes(ax, metrics, 8.5)
                _radar_polygon(ax, angles, table.loc[s].to_numpy(dtype=float), colors[s], fmt_num(s))
                tier = _tier(students, s)
                ax.set_title(f"size {fmt_num(s)}" + (f" ({tier})" if tier else ""), pad=30, fontsize=12)
            fig.suptitle(f"Trajectory metrics vs teacher per student size ({where})", y=1 - 0.1 / height)
            footnote(fig, notes_text)
            paths.append(save_figure(fig, out / "radar_plot_grid.png"))

            fig = new_figure(8.6, 7.0, layout=None)
            ax = fig.add_axes((0.1, 0.12, 0.62, 0.72), projection="polar")
            angles = _radar_axes(ax, metrics, 10.5)
            ax.tick_params(axis="x", pad=18)
            fill = 0.06 if len(sizes) <= 4 else 0.0  # stacked fills of many sizes turn opaque
            for s in sizes:
                _radar_polygon(ax, angles, table.loc[s].to_numpy(dtype=float), colors[s], f"size {fmt_num(s)}",
                               fill=fill)
            ax.legend(title="student", loc="upper left", bbox_to_anchor=(1.15, 1.05))
            fig.suptitle(f"All student sizes vs teacher ({where})", y=0.98)
            footnote(fig, notes_text)
            paths.append(save_figure(fig, out / "composite_radar_plot.png"))
        return paths


def _tier(df: pd.DataFrame, size: float) -> str:
    if "size_tier" not in df:
        return ""
    tiers = df.loc[np.isclose(df["size_factor"], size), "size_tier"].dropna().unique()
    return str(tiers[0]) if len(tiers) else ""

