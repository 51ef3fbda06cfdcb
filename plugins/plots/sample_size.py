"""The ``sample_size_bias`` figure: how FID, KID and FID-infinity move with the number of samples.

FID's estimator is biased upwards, and to first order its bias is linear in 1/n (Chong
and Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to find
them"); KID is unbiased (Binkowski et al. 2018, "Demystifying MMD GANs"). The
``fid_inf`` metric stores, beside its value (FID-infinity, the intercept of the
least-squares fit of FID against 1/n) and ``value_sd`` (the intercept's standard error),
the curve it was fitted on, in ``blob``: a float64 array of shape (4, K), row 0 the
subset sizes n (ascending, the last = the cell's ``num_samples``), row 1 FID at each n,
row 2 KID at each n, row 3 KID's s.d. over subsets at each n. This figure draws that
curve, so a reader sees the bias rather than being told about it.

Two variants are drawn: the teacher (reference) and the most compressed variant with
``fid_inf`` rows, i.e. the one with the fewest non-zero parameters (``nonzero_params``;
else ``param_ratio * (1 - sparsity)``), named in the title. Each variant's curve is the
mean over its seeds when every seed has the same subset sizes (KID's s.d. and the
standard error combined as the root mean square over seeds, as in ``bench report``),
else its first seed's; the footnote says which.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import (
    BenchmarkPlot,
    Variant,
    averaged_note,
    decode_blob,
    fmt_num,
    footnote,
    new_figure,
    plot_style,
    save_figure,
    variant_columns,
    variant_groups,
)
from plugins.plots import _style as st

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.axes import Axes

__all__ = ["FILE", "METRIC", "Curve", "SampleSizeBias", "mean_curve", "read_curve"]

log = logging.getLogger(__name__)

METRIC = "fid_inf"
#: where the figure goes, under the output folder (its stem ends with the metric's name, so
#: ``bench report`` shows it beside the ``fid_inf`` table)
FILE = Path("sample_size") / "sample_size_bias_fid_inf.png"
_COMPRESSED_COLOR = "#0072B2"  # colour-blind safe blue, against the teacher's near-black


@dataclass
class Curve:
    """One variant's FID and KID against the subset size n at one CFG scale."""

    n: np.ndarray
    fid: np.ndarray
    kid: np.ndarray
    kid_sd: np.ndarray
    #: FID-infinity and its standard error, as stored (``value``, ``value_sd``)
    fid_inf: float
    fid_inf_se: float
    #: the run's own number of samples
    num_samples: float
    seeds: list[int]
    #: True: the mean over ``seeds``; False: the first seed only (the sizes differ)
    averaged: bool


def read_curve(blob: Any) -> np.ndarray | None:
    """The (4, K) array of a ``fid_inf`` row, or None (logged) if it is not one."""
    try:
        arr = np.asarray(decode_blob(blob), dtype=np.float64)
    except (ValueError, TypeError, OSError) as exc:
        log.warning("sample_size_bias: skipping a fid_inf row whose blob cannot be read: %s", exc)
        return None
    if arr.ndim != 2 or arr.shape[0] != 4 or arr.shape[1] < 2 or not np.all(arr[0] > 0):
        log.warning("sample_size_bias: skipping a fid_inf blob of shape %s (want 4 x K, K >= 2, n > 0)", arr.shape)
        return None
    return arr


def mean_curve(rows: pd.DataFrame) -> Curve | None:
    """The mean curve over the seeds of ``rows`` (one variant, one CFG scale), or the first
    seed's when their subset sizes differ; None when no row holds a readable curve."""
    found = [(int(r["seed"]), arr, r) for _i, r in rows.sort_values("seed").iterrows()
             if (arr := read_curve(r["blob"])) is not None]
    if not found:
        return None
    averaged = all(a.shape == found[0][1].shape and np.array_equal(a[0], found[0][1][0]) for _s, a, _r in found)
    used = found if averaged else found[:1]
    stack = np.stack([a for _s, a, _r in used])
    se = np.array([float(r["value_sd"]) if "value_sd" in r else math.nan for _s, _a, r in used])
    n_run = [float(r["num_samples"]) for _s, _a, r in used if "num_samples" in r and not _missing(r["num_samples"])]
    return Curve(
        n=stack[0, 0], fid=stack[:, 1].mean(axis=0), kid=stack[:, 2].mean(axis=0),
        kid_sd=np.sqrt((stack[:, 3] ** 2).mean(axis=0)),
        fid_inf=float(np.mean([float(r["value"]) for _s, _a, r in used])),
        fid_inf_se=float(np.sqrt(np.nanmean(se ** 2))) if np.isfinite(se).any() else math.nan,
        num_samples=n_run[0] if n_run else float(stack[0, 0, -1]),
        seeds=[s for s, _a, _r in used], averaged=averaged and len(used) > 1,
    )


def _missing(v: Any) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))


def _compression(rows: pd.DataFrame) -> float:
    """How much of the model is left: the mean non-zero parameter count, else the
    parameter ratio times the share of non-zero weights (smaller = more compressed)."""
    import pandas as pd

    if "nonzero_params" in rows and rows["nonzero_params"].notna().any():
        return float(pd.to_numeric(rows["nonzero_params"], errors="coerce").mean())
    ratio = rows["param_ratio"].fillna(1.0) if "param_ratio" in rows else 1.0
    sparsity = rows["sparsity"].fillna(0.0) if "sparsity" in rows else 0.0
    return float(np.mean(ratio * (1.0 - sparsity)))


def _pick(groups: list[tuple[Variant, pd.DataFrame]]) -> list[tuple[Variant, pd.DataFrame]]:
    """The teacher (if it has rows) and the most compressed other variant (ties: the last
    in figure order, i.e. the most pruned of the smallest students)."""
    teacher = [g for g in groups if g[0].is_reference][:1]
    others = [g for g in groups if not g[0].is_reference]
    if not others:
        return teacher
    scores = [_compression(rows) for _v, rows in others]
    best = min(scores)
    return [*teacher, [g for g, s in zip(others, scores) if s == best][-1]]


# ------------------------------------------------------------------------------ figure


def _at(rows: pd.DataFrame, cfg: float) -> pd.DataFrame:
    """The rows of one CFG scale (NaN: the rows without one)."""
    return rows[rows["cfg_scale"].isna()] if math.isnan(cfg) else rows[np.isclose(rows["cfg_scale"], cfg)]


class SampleSizeBias(BenchmarkPlot):
    """FID and KID against 1/n with the FID-infinity extrapolation, for the teacher and the
    most compressed variant (from the curves ``fid_inf`` rows carry in ``blob``).

    Writes ``sample_size/sample_size_bias_fid_inf.png``: per CFG scale a row of two panels
    against 1/n, FID (at each subset size, the least-squares line extended to 1/n = 0 and
    the stored FID-infinity ± its standard error there) and KID ± its s.d. over subsets; a
    dashed line marks the run's own n.
    """

    name = "sample_size_bias"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        if "blob" not in df or not len(df):
            return []
        d = df[(df["metric"] == METRIC) & df["blob"].notna()]
        if not len(d):
            return []
        picked = _pick(variant_groups(d))
        cfgs = sorted({float(c) for c in d["cfg_scale"]}, key=lambda c: (math.isnan(c), c))
        curves = {(v.key, cfg): c for v, rows in picked for cfg in cfgs if (c := mean_curve(_at(rows, cfg))) is not None}
        if not curves:
            return []
        with plot_style():
            fig = new_figure(12.5, 3.9 * len(cfgs) + 1.9)
            grid = fig.add_gridspec(len(cfgs), 2)
            for i, cfg in enumerate(cfgs):
                ax_fid, ax_kid = fig.add_subplot(grid[i, 0]), fig.add_subplot(grid[i, 1])
                shown = [(v, curves[(v.key, cfg)]) for v, _rows in picked if (v.key, cfg) in curves]
                for j, (v, c) in enumerate(shown):
                    color = st.TEACHER_COLOR if v.is_reference else _COMPRESSED_COLOR
                    _draw_fid(ax_fid, c, color)
                    _draw_kid(ax_kid, c, color, dodge=(j - (len(shown) - 1) / 2) * 0.012)
                _finish_axes(ax_fid, ax_kid, [c for _v, c in shown], "" if math.isnan(cfg) else f"CFG {fmt_num(cfg)}: ")
            fig.legend(handles=_legend(picked), loc="outside right upper", fontsize=9)
            labels = [v.label for v, _rows in picked]
            fig.suptitle("Sample-size bias: FID and KID against 1/n, FID extrapolated to n = ∞\n"
                         + " vs ".join(labels), fontsize=13)
            footnote(fig, _notes(picked, curves, d))
            path = save_figure(fig, Path(out_dir) / FILE)
        return [path]


def _draw_fid(ax: Axes, c: Curve, color: Any) -> None:
    """FID at each n, its least-squares line in 1/n down to 0, FID-infinity ± s.e. at 0."""
    x = 1.0 / c.n
    ax.plot(x, c.fid, "o", color=color, markersize=4.5, alpha=0.85)
    if len(np.unique(x)) >= 2:
        slope, intercept = np.polyfit(x, c.fid, 1)
        xs = np.array([0.0, float(x.max())])
        ax.plot(xs, intercept + slope * xs, "-", color=color, linewidth=1.4, alpha=0.8)
    se = c.fid_inf_se if math.isfinite(c.fid_inf_se) else None
    ax.errorbar([0.0], [c.fid_inf], yerr=None if se is None else [[se], [se]], fmt="D", color=color, markersize=7,
                capsize=4, markeredgecolor="white", zorder=5)
    text = fmt_num(float(f"{c.fid_inf:.3g}")) + ("" if se is None else f" ± {se:.2g}")
    ax.annotate(text, (0.0, c.fid_inf), xytext=(9, 0), textcoords="offset points", va="center", fontsize=9,
                color=color, fontweight="bold")


def _draw_kid(ax: Axes, c: Curve, color: Any, dodge: float = 0.0) -> None:
    """KID ± its s.d. over subsets at each n (shifted by ``dodge`` times the largest 1/n, so
    two variants' error bars stand side by side)."""
    x = 1.0 / c.n
    ax.errorbar(x + dodge * x.max(), c.kid, yerr=c.kid_sd, fmt="o", color=color, markersize=4.5, capsize=2, elinewidth=0.9,
                alpha=0.85)


def _finish_axes(ax_fid: Axes, ax_kid: Axes, curves: list[Curve], prefix: str) -> None:
    """Shared x axis (ticks labelled ``1/n``, 0 = infinitely many samples), the run's n marked."""
    sizes = np.unique(np.concatenate([c.n for c in curves]))
    # three ticks evenly spread in 1/n (the sizes are evenly spread in n, so crowd at small 1/n)
    targets = np.linspace(1.0 / sizes.max(), 1.0 / sizes.min(), 3)
    chosen = np.unique(sizes[[int(np.abs(1.0 / sizes - t).argmin()) for t in targets]])[::-1]
    ticks = [0.0, *(1.0 / chosen)]
    labels = ["0\n(n = ∞)", *(f"1/{fmt_num(n)}" for n in chosen)]
    right = float(1.0 / sizes.min()) * 1.08
    for ax in (ax_fid, ax_kid):
        ax.set_xticks(ticks, labels)
        ax.set_xlim(-0.07 * right, right)
        ax.set_xlabel("1/n  (n: samples in the subset)")
        for n in sorted({c.num_samples for c in curves}):
            ax.axvline(1.0 / n, color="0.45", linestyle="--", linewidth=1.1)
            ax.text(1.0 / n, 0.97, f"this run: n = {fmt_num(n)} ", transform=ax.get_xaxis_transform(), ha="right",
                    va="top", fontsize=8.5, color="0.3")
    ax_kid.axhline(0.0, color="0.6", linestyle=":", linewidth=0.9)
    ax_fid.set_ylabel("FID")
    ax_kid.set_ylabel("KID")
    ax_fid.set_title(f"{prefix}FID, linear in 1/n, extrapolated to 0", fontsize=11)
    ax_kid.set_title(f"{prefix}KID ± 1 s.d. over subsets", fontsize=11)


def _legend(picked: list[tuple[Variant, pd.DataFrame]]) -> list[Any]:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=st.TEACHER_COLOR if v.is_reference else _COMPRESSED_COLOR, marker="o",
                      linestyle="-", label=v.label) for v, _rows in picked]
    return handles + [
        Line2D([], [], color="0.4", marker="o", linestyle="none", label="value at subset size n"),
        Line2D([], [], color="0.4", linestyle="-", label="FID: least-squares\nline in 1/n"),
        Line2D([], [], color="0.4", marker="D", linestyle="none", markeredgecolor="white",
               label="FID-infinity ± s.e.\n(as stored)"),
        Line2D([], [], color="0.45", linestyle="--", label="the run's own n"),
    ]


def _notes(picked: list[tuple[Variant, pd.DataFrame]], curves: dict[Any, Curve], d: pd.DataFrame) -> list[str]:
    """Footnote: which variant and why, what is drawn, which seeds, what was averaged over."""
    notes = []
    compressed = [v for v, _rows in picked if not v.is_reference]
    if compressed:
        notes.append(f"Compressed variant: {compressed[0].label}, the one with the fewest non-zero parameters among "
                     "the variants with fid_inf rows.")
    notes.append("FID and KID on random subsets of n of each cell's samples (the fid_inf metric's features, the "
                 "reference fixed). FID's bias is about linear in 1/n (Chong & Forsyth 2020): the line is the "
                 "least-squares fit of FID against 1/n, extended to 1/n = 0, where the diamond is the stored "
                 "FID-infinity ± its standard error. KID is unbiased (Binkowski et al. 2018): it should not trend "
                 "with 1/n.")
    seeds = []
    for v, rows in picked:
        mine = [c for (key, _cfg), c in curves.items() if key == v.key]
        if any(c.averaged for c in mine):
            used = sorted({s for c in mine for s in c.seeds})
            seeds.append(f"{v.label}: mean over seeds {', '.join(map(str, used))}")
        elif mine:
            several = rows["seed"].nunique() > 1
            seeds.append(f"{v.label}: seed {mine[0].seeds[0]}" + (" (the first: its seeds' subset sizes differ)"
                                                                   if several else ""))
    pooled = " Over seeds, KID's s.d. and the standard error are combined as their root mean square." \
        if any(c.averaged for c in curves.values()) else ""
    notes.append("Values: " + "; ".join(seeds) + "." + pooled)
    rows = d[d.index.isin(np.concatenate([r.index.to_numpy() for _v, r in picked]))]
    notes.append(averaged_note(rows, [*variant_columns(d), "cfg_scale"]))
    return notes
