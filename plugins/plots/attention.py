"""The attention figures: self-attention of the centre query of the teacher and its
students, drawn from the ``attention_maps`` diagnostic rows (see
:mod:`plugins.plots._variants`).

Writes ``attention/attention_cfg<scale>.png`` (attention per timestep, mean over heads)
and ``attention/attention_heads_cfg<scale>.png`` (per head, one timestep).
"""

from __future__ import annotations

import math
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

__all__ = ["AttentionPlot", "centre_query_map"]


def _grid_side(n: int) -> tuple[int, int]:
    """(H', W') of n row-major positions: square if possible, else the most square factors."""
    side = int(round(math.sqrt(n)))
    if side * side == n:
        return side, side
    for h in range(int(math.sqrt(n)), 0, -1):
        if n % h == 0:
            return h, n // h
    return 1, n  # pragma: no cover


def centre_query_map(weights: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(heads, Q, K) weights -> the centre query's attention over the key grid (H' x W'), mean
    over heads, times K (1 = uniform attention), and the centre's (row, col)."""
    w = np.asarray(weights, dtype=np.float64).mean(axis=0)
    hq, wq = _grid_side(w.shape[0])
    hk, wk = _grid_side(w.shape[1])
    centre = (hq // 2, wq // 2)
    q = centre[0] * wq + centre[1]
    return w[q].reshape(hk, wk) * w.shape[1], centre


def _gridspec_with_colorbar(fig: Any, rows: int, cols: int) -> Any:
    """A rows x cols panel grid plus a narrow last column for the colour bar.

    (``fig.colorbar(ax=[...])`` under constrained layout shifts fixed-aspect image
    panels after placing their row labels, which then get cut at the figure's edge.)
    """
    return fig.add_gridspec(rows, cols + 1, width_ratios=[1.0] * cols + [0.07])


def _colorbar(fig: Any, gs: Any, im: Any) -> None:
    rows = gs.get_geometry()[0]
    lo, hi = (rows // 4, rows - rows // 4) if rows >= 4 else (0, rows)
    fig.colorbar(im, cax=fig.add_subplot(gs[lo:hi, -1]), label="attention × keys\n(1 = uniform)")


class AttentionPlot(BenchmarkPlot):
    """Self-attention maps of the teacher and its students, from ``attention_maps``.

    Writes ``attention/attention_cfg<scale>.png`` (a row per variant, a column per
    timestep: the centre query's attention over the key grid, mean over heads) and
    ``attention/attention_heads_cfg<scale>.png`` (the same at the middle timestep, a
    column per head). Colour: weight x number of keys, so 1 = uniform attention at any
    resolution (students may attend over another grid).
    """

    name = "attention"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = vr.diagnostic_rows(df, "attention_maps")
        if not len(d) or "timestep" not in d:
            return []
        d = d[d["timestep"].notna()]
        if not len(d):
            return []
        names = vr.variants(d)
        out = Path(out_dir) / "attention"
        paths = []
        with plot_style():
            for suffix, cfg, part in vr.settings(d):
                seeds = part.groupby("_variant")["seed"].min()
                part = part[part["seed"] == part["_variant"].map(seeds)]
                shown = [v for v in names if v in set(part["_variant"])]
                cells: dict[tuple[Any, ...], dict[float, Any]] = {}
                for _, row in part.iterrows():
                    cells.setdefault(row["_variant"], {}).setdefault(float(row["timestep"]), row)
                seed_rows = {k: next(iter(cells[k].values())) for k in shown}
                timesteps = sorted({t for k in shown for t in cells[k]}, reverse=True)
                fig = self._by_timestep([names[k] for k in shown], cells, timesteps, cfg, suffix, seed_rows)
                paths.append(save_figure(fig, out / f"attention_cfg{fmt_num(cfg)}{suffix}.png"))
                mid = timesteps[len(timesteps) // 2]
                fig = self._by_head([names[k] for k in shown], cells, mid, cfg, suffix, seed_rows)
                if fig is not None:
                    paths.append(save_figure(fig, out / f"attention_heads_cfg{fmt_num(cfg)}{suffix}.png"))
        return paths

    @staticmethod
    def _panel(ax: Any, amap: np.ndarray, centre: tuple[int, int], vmax: float, fig: Any) -> Any:
        im = ax.imshow(amap, cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
        # the query, in query-grid coordinates scaled to the key grid
        ax.scatter([centre[1]], [centre[0]], marker="+", s=80, color="#4dd0e1", linewidths=1.8)
        st.bare(ax)
        return im

    def _by_timestep(self, shown: list[Variant], cells: dict[Any, dict[float, Any]], timesteps: list[float],
                     cfg: float, suffix: str, seed_rows: dict[Any, Any]) -> Any:
        maps = {}
        for v in shown:
            for t, row in cells[v.key].items():
                maps[v.key, t] = centre_query_map(decode_blob(row["blob"]))
        vmax = max(float(np.nanmax(m)) for m, _c in maps.values())
        notes = [
            "Self-attention of one attention block (the metric's option 'block', default: the first) for the centre "
            "query (+), mean over heads; colour = weight × number of keys (1 = uniform). Input: the teacher's sample, "
            "noised to timestep t with the same noise for every row, and its class (no guidance). "
            f"{vr.seed_note(seed_rows)}. In the corner: normalised attention entropy (1 = uniform).",
        ]
        width = 2.6 + 1.7 * len(timesteps) + 0.9
        lines = wrap_lines(notes, width)
        fig = new_figure(width, 1.7 * len(shown) + 1.0 + 0.17 * len(lines))
        gs = _gridspec_with_colorbar(fig, len(shown), len(timesteps))
        im = None
        for r, v in enumerate(shown):
            for c, t in enumerate(timesteps):
                ax = fig.add_subplot(gs[r, c])
                if (v.key, t) not in maps:
                    ax.set_visible(False)
                    continue
                amap, centre = maps[v.key, t]
                im = self._panel(ax, amap, centre, vmax, fig)
                ax.text(0.03, 0.04, f"{float(cells[v.key][t]['value']):.2f}", transform=ax.transAxes, fontsize=8,
                        color="white", ha="left", va="bottom")
                if r == 0:
                    ax.set_title(f"t = {t:g}", fontsize=11)
                if c == 0:
                    heads = decode_blob(cells[v.key][t]["blob"]).shape[0]
                    ax.set_ylabel(f"{v.label}\n{amap.shape[0]}×{amap.shape[1]}, {heads} heads", rotation=0,
                                  ha="right", va="center", fontsize=9)
        if im is not None:
            _colorbar(fig, gs, im)
        fig.suptitle(f"Attention of the centre query per timestep ({vr.title_setting(cfg, suffix)})")
        footnote(fig, notes)
        return fig

    def _by_head(self, shown: list[Variant], cells: dict[Any, dict[float, Any]], t: float, cfg: float,
                 suffix: str, seed_rows: dict[Any, Any]) -> Any:
        per_head = {}
        for v in shown:
            row = cells[v.key].get(t)
            if row is None:
                continue
            w = decode_blob(row["blob"])
            per_head[v.key] = [centre_query_map(w[h : h + 1]) for h in range(w.shape[0])]
        if not per_head:
            return None
        heads = max(len(h) for h in per_head.values())
        vmax = max(float(np.nanmax(m)) for hs in per_head.values() for m, _c in hs)
        notes = [f"As the per-timestep figure, at t = {t:g}, one column per head (students may have fewer heads). "
                 f"{vr.seed_note(seed_rows)}."]
        width = 2.6 + 1.7 * heads + 0.9
        lines = wrap_lines(notes, width)
        fig = new_figure(width, 1.7 * len(per_head) + 1.0 + 0.17 * len(lines))
        gs = _gridspec_with_colorbar(fig, len(per_head), heads)
        im = None
        for r, v in enumerate([v for v in shown if v.key in per_head]):
            for h in range(heads):
                ax = fig.add_subplot(gs[r, h])
                if h >= len(per_head[v.key]):
                    ax.set_visible(False)
                    continue
                amap, centre = per_head[v.key][h]
                im = self._panel(ax, amap, centre, vmax, fig)
                if r == 0:
                    ax.set_title(f"head {h}", fontsize=11)
                if h == 0:
                    ax.set_ylabel(v.label, rotation=0, ha="right", va="center", fontsize=9)
        if im is not None:
            _colorbar(fig, gs, im)
        fig.suptitle(f"Attention of the centre query per head (t = {t:g}, {vr.title_setting(cfg, suffix)})")
        footnote(fig, notes)
        return fig

