"""Sample images of the distillation study: sample grids and denoising strips, drawn from
the ``sample_grid`` and ``denoising_strip`` diagnostic rows (:mod:`plugins.plots._variants`
says which seed, variant and setting each figure shows).

- ``samples/``: ``samples_<variant>_cfg<scale>.png`` (grid of the first samples of one
  variant) and ``comparison_cfg<scale>.png`` (the first samples of every variant, row by
  row: the same noise and class in each column);
- ``denoising/``: ``denoising_cfg<scale>.png`` (x_t over the sampler steps, a row per
  variant, the same sample).

The latent-space and attention figures are in :mod:`plugins.plots.latent_space` and
:mod:`plugins.plots.attention`.
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

__all__ = ["DenoisingPlot", "SampleGrids"]


def _image(arr: np.ndarray) -> tuple[np.ndarray, str | None]:
    """C x H x W in [0, 1] -> what ``imshow`` takes (H x W with a grey colour map, or H x W x 3)."""
    if arr.shape[0] == 1:
        return arr[0], "gray"
    if arr.shape[0] >= 3:
        return np.moveaxis(arr[:3], 0, -1), None
    return arr.mean(axis=0), "gray"


def _mosaic(images: np.ndarray, cols: int, pad: int = 1, fill: float = 0.45) -> np.ndarray:
    """N x C x H x W in [0, 1] -> one (rows*H) x (cols*W) [x 3] image with ``pad`` px gutters."""
    n, c, h, w = images.shape
    rows = math.ceil(n / cols)
    out = np.full((c, rows * (h + pad) - pad, cols * (w + pad) - pad), fill, dtype=np.float32)
    for i in range(n):
        r, k = divmod(i, cols)
        out[:, r * (h + pad) : r * (h + pad) + h, k * (w + pad) : k * (w + pad) + w] = images[i]
    return out



# ------------------------------------------------------------------------------ samples


class SampleGrids(BenchmarkPlot):
    """Sample grids per variant and CFG scale, from the ``sample_grid`` metric.

    Writes ``samples/samples_<variant>_cfg<scale>.png`` (the stored samples, 8 per row,
    each with its requested class in the corner) and ``samples/comparison_cfg<scale>.png``
    (the first 12 samples of every variant, a row per variant: same noise and class per
    column, so differences are the model's).
    """

    name = "sample_grids"
    #: samples per row of the comparison figure
    comparison_columns = 12

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = vr.diagnostic_rows(df, "sample_grid")
        if not len(d):
            return []
        names = vr.variants(d)
        texts = vr.label_lookup(df)
        out = Path(out_dir) / "samples"
        paths = []
        with plot_style():
            for suffix, cfg, part in vr.settings(d):
                rows = vr.first_seed(part)
                shown = [(names[k], rows[k]) for k in names if k in rows]
                for v, row in shown:
                    images = decode_blob(row["blob"]).astype(np.float32) / 255.0
                    fig = _grid_figure(images, texts.get(str(row["cell_id"])),
                                       f"Samples: {v.label} ({vr.title_setting(cfg, suffix)}, seed {int(row['seed'])})")
                    paths.append(save_figure(fig, out / f"samples_{v.slug}_cfg{fmt_num(cfg)}{suffix}.png"))
                if len(shown) > 1:
                    fig = self._comparison(shown, texts, cfg, suffix)
                    paths.append(save_figure(fig, out / f"comparison_cfg{fmt_num(cfg)}{suffix}.png"))
        return paths

    def _comparison(self, shown: list[tuple[Variant, Any]], texts: dict[str, np.ndarray], cfg: float,
                    suffix: str) -> Any:
        arrays = [decode_blob(row["blob"]).astype(np.float32) / 255.0 for _v, row in shown]
        n = min(self.comparison_columns, *(len(a) for a in arrays))
        labels = texts.get(str(shown[0][1]["cell_id"]))
        width = 1.6 + 0.62 * n
        notes = [
            f"Row: a model variant; column i: sample i, from the same initial noise and requested class in every "
            f"row (paired design). {vr.seed_note(dict(enumerate(r for _v, r in shown)))}.",
        ]
        lines = wrap_lines(notes, width)
        fig = new_figure(width, 0.62 * len(shown) + 1.1 + 0.17 * len(lines))
        gs = fig.add_gridspec(len(shown), n, wspace=0.04, hspace=0.04)
        for r, ((v, _row), images) in enumerate(zip(shown, arrays)):
            for c in range(n):
                ax = fig.add_subplot(gs[r, c])
                img, cmap = _image(images[c])
                ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
                st.bare(ax)
                if c == 0:
                    ax.set_ylabel(v.label, rotation=0, ha="right", va="center", fontsize=9)
                if r == 0 and labels is not None and c < len(labels) and len(str(labels[c])) <= 3:
                    ax.set_title(str(labels[c]), fontsize=9, fontweight="normal")
        fig.suptitle(f"Samples of every variant ({vr.title_setting(cfg, suffix)})")
        footnote(fig, notes + (["Column titles: requested class."] if labels is not None else []))
        return fig


def _grid_figure(images: np.ndarray, texts: np.ndarray | None, title: str) -> Any:
    """One variant's samples as a mosaic, the requested class in each tile's corner."""
    import matplotlib.patheffects as pe

    n, _c, h, w = images.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    pad = max(1, h // 16)
    mosaic = _mosaic(images, cols, pad)
    img, cmap = _image(mosaic)
    short = texts is not None and all(len(str(t)) <= 3 for t in texts[:n])
    notes = [f"The first {n} samples (sample i has the same initial noise and requested class in every variant)."]
    if short:
        notes.append("Corner number: the requested class.")
    elif texts is not None:
        notes.append("Conditions are prompts (not drawn).")
    fig = new_figure(6.2, 6.6 + 0.17 * len(wrap_lines(notes, 6.2)))
    ax = fig.add_subplot()
    ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    st.bare(ax)
    if short:
        for i in range(n):
            r, k = divmod(i, cols)
            ax.text(k * (w + pad) + 0.6, r * (h + pad) + 0.4, str(texts[i]), ha="left", va="top", fontsize=7.5,
                    color="#ffd54f", path_effects=[pe.withStroke(linewidth=1.6, foreground="black")])
    ax.set_title(title)
    footnote(fig, notes)
    return fig


# ------------------------------------------------------------------------------ denoising


class DenoisingPlot(BenchmarkPlot):
    """Denoising strips: x_t over the sampler steps, a row per variant, from ``denoising_strip``.

    Writes ``denoising/denoising_cfg<scale>.png``: columns are evenly spaced sampler
    states from the initial noise x_K to the sample x_0, rows the teacher, its students
    (largest first) and pruned variants, all from the same initial noise and condition.
    """

    name = "denoising"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        from plugins.metrics.visual import kept_states

        d = vr.diagnostic_rows(df, "denoising_strip")
        if not len(d):
            return []
        names = vr.variants(d)
        out = Path(out_dir) / "denoising"
        paths = []
        with plot_style():
            for suffix, cfg, part in vr.settings(d):
                rows = vr.first_seed(part)
                shown = [(names[k], decode_blob(rows[k]["blob"]).astype(np.float32), rows[k]) for k in names if k in rows]
                cols = max(len(s) for _v, s, _r in shown)
                steps = int(shown[0][2]["steps"])
                notes = [
                    "Sampler states decoded to images, from the initial noise x_K (left) to the final sample x_0 "
                    f"(right), K = {steps} steps; every row starts from the same noise and condition (paired design).",
                    f"One sample. {vr.seed_note({v.key: r for v, _s, r in shown})}.",
                ]
                width = 2.2 + 1.05 * cols
                lines = wrap_lines(notes, width)
                fig = new_figure(width, 1.05 * len(shown) + 1.0 + 0.17 * len(lines))
                gs = fig.add_gridspec(len(shown), cols, wspace=0.05, hspace=0.08)
                for r, (v, strip, row) in enumerate(shown):
                    idx = kept_states(int(row["steps"]) + 1, len(strip))
                    for c in range(len(strip)):
                        ax = fig.add_subplot(gs[r, c])
                        img, cmap = _image(strip[c])
                        ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
                        st.bare(ax)
                        if r == 0:
                            ax.set_title(f"$x_{{{int(row['steps']) - idx[c]}}}$", fontsize=11, fontweight="normal")
                        if c == 0:
                            ax.set_ylabel(v.label, rotation=0, ha="right", va="center", fontsize=9)
                fig.suptitle(f"Denoising trajectories ({vr.title_setting(cfg, suffix)})")
                footnote(fig, notes)
                paths.append(save_figure(fig, out / f"denoising_cfg{fmt_num(cfg)}{suffix}.png"))
        return paths

