"""The latent-space figure: final samples of every variant in the teacher's PCA plane,
drawn from the ``latent_pca`` diagnostic rows (see :mod:`plugins.plots._variants`).

Writes ``latent_space/latent_pca_cfg<scale>.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import (
    BenchmarkPlot,
    Variant,
    decode_blob,
    fmt_num,
    footnote,
    new_figure,
    plot_style,
    save_figure,
    wrap_lines,
)
from plugins.plots import _style as st
from plugins.plots import _variants as vr

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["LatentSpacePlot"]


def _pair_lines(ax: Any, teacher: np.ndarray, other: np.ndarray, color: Any) -> None:
    """Thin segments from each teacher point to the same sample's point of another variant."""
    from matplotlib.collections import LineCollection

    n = min(len(teacher), len(other))
    segments = np.stack([teacher[:n], other[:n]], axis=1)
    ax.add_collection(LineCollection(segments, colors=[color], linewidths=0.6, alpha=0.3, zorder=0))


def _variant_colors(shown: list[Variant]) -> dict[tuple[Any, ...], Any]:
    """Teacher dark grey; students by size (viridis); other variants a colour-blind palette."""
    import seaborn as sns

    colors: dict[tuple[Any, ...], Any] = {}
    students = [v for v in shown if v.role == "student"]
    sizes = st.size_colors([v.size_factor for v in students if v.size_factor is not None])
    others = [v for v in shown if v.role not in ("reference", "student")]
    # orange, red, purple, brown, pink, ... first: blues and greens are the students' viridis
    full = sns.color_palette("colorblind", 10)
    palette = [full[i] for i in (1, 3, 4, 5, 6, 7, 8, 9, 0, 2)]
    for v in shown:
        if v.is_reference:
            colors[v.key] = st.TEACHER_COLOR
        elif v.role == "student":
            colors[v.key] = sizes[v.size_factor]
    for i, v in enumerate(others):
        colors[v.key] = palette[i % len(palette)]
    return colors


class LatentSpacePlot(BenchmarkPlot):
    """Final samples in the teacher's 2-D PCA plane, coloured by size, from ``latent_pca``.

    Writes ``latent_space/latent_pca_cfg<scale>.png``: a panel with every variant, then
    one panel per variant against the teacher (grey), on shared axes. The basis is the
    teacher's (reference) samples' first two principal components.
    """

    name = "latent_space"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = vr.diagnostic_rows(df, "latent_pca")
        if not len(d):
            return []
        names = vr.variants(d)
        out = Path(out_dir) / "latent_space"
        paths = []
        with plot_style():
            for suffix, cfg, part in vr.settings(d):
                rows = vr.first_seed(part)
                shown = [names[k] for k in names if k in rows]
                points = {v.key: decode_blob(rows[v.key]["blob"]).astype(np.float64) for v in shown}
                colors = _variant_colors(shown)
                ref = next((v for v in shown if v.is_reference), None)
                others = [v for v in shown if not v.is_reference]
                panels: list[tuple[str, list[Variant]]] = [("all variants", shown)]
                if ref is not None and len(others) > 1:
                    panels += [(f"{v.label} vs teacher", [ref, v]) for v in others]
                ratio = float((rows[ref.key] if ref is not None else next(iter(rows.values())))["value"])
                npts = max(len(p) for p in points.values())
                notes = [
                    f"PCA basis: the teacher's samples at {vr.title_setting(cfg, suffix)} (flattened pixels); its first two "
                    f"components explain {100 * ratio:.1f}% of their variance. Every variant's first {npts} samples "
                    "are projected into that basis (same initial noise and classes in every variant); "
                    "crosses: means; in the pairwise panels the teacher is light grey and a thin line joins "
                    f"each sample to the teacher's sample of the same noise and class. {vr.seed_note(rows)}.",
                ]
                max_cols = 2 if len(panels) in (2, 4) else 3
                nrow, ncol = st.grid_shape(len(panels), max_cols)
                width = 4.3 * ncol + 2.4
                lines = wrap_lines(notes, width)
                fig = new_figure(width, 4.0 * nrow + 0.6 + 0.17 * len(lines))
                axes = st.panel_grid(fig, len(panels), max_cols)
                allp = np.concatenate(list(points.values()))
                lo, hi = allp.min(axis=0), allp.max(axis=0)
                margin = 0.06 * np.maximum(hi - lo, 1e-9)
                for ax, (title, members) in zip(axes, panels):
                    if len(members) == 2 and ref is not None:
                        _pair_lines(ax, points[ref.key], points[members[1].key], colors[members[1].key])
                    for v in members:
                        p = points[v.key]
                        grey = v.is_reference and len(members) == 2
                        ax.scatter(p[:, 0], p[:, 1], s=11, alpha=0.35 if grey else 0.6, linewidths=0,
                                   color=colors[v.key], label=v.label, zorder=1 if v.is_reference else 2)
                        ax.scatter(*p.mean(axis=0), marker="X", s=90, color=colors[v.key], edgecolors="white",
                                   linewidths=1.0, zorder=3)
                    ax.set_xlim(lo[0] - margin[0], hi[0] + margin[0])
                    ax.set_ylim(lo[1] - margin[1], hi[1] + margin[1])
                    ax.set_xlabel("PC 1 of the teacher's samples")
                    ax.set_ylabel("PC 2")
                    ax.set_title(title, fontsize=11)
                handles, labels = axes[0].get_legend_handles_labels()
                legend = fig.legend(handles, labels, loc="outside right center", markerscale=2.0)
                for h in legend.legend_handles:
                    h.set_alpha(1.0)
                fig.suptitle(f"Final samples in the teacher's PCA plane ({vr.title_setting(cfg, suffix)})")
                footnote(fig, notes)
                paths.append(save_figure(fig, out / f"latent_pca_cfg{fmt_num(cfg)}{suffix}.png"))
        return paths

