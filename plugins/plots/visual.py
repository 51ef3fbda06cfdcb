"""Image figures of the distillation study, drawn from the diagnostic metrics' ``blob`` arrays.

They read only the results DataFrame: the arrays that the visual diagnostic metrics
(:mod:`plugins.metrics.visual`) attach to their rows. Each figure shows one seed per
variant (the first, i.e. smallest, stored) and one CFG scale; with several samplers or
step counts in the frame, file names get a ``_<sampler><steps>`` suffix.

- ``samples/``: ``samples_<variant>_cfg<scale>.png`` (grid of the first samples of one
  variant) and ``comparison_cfg<scale>.png`` (the first samples of every variant, row by
  row: the same noise and class in each column);
- ``denoising/``: ``denoising_cfg<scale>.png`` (x_t over the sampler steps, a row per
  variant, the same sample);
- ``latent_space/``: ``latent_pca_cfg<scale>.png`` (final samples in the teacher's PCA plane);
- ``attention/``: ``attention_cfg<scale>.png`` (attention of the centre query per
  timestep, mean over heads) and ``attention_heads_cfg<scale>.png`` (per head, one timestep).

Variants (rows, colours) are ordered teacher, students from the largest to the
smallest, then pruned variants; ``<variant>`` in file names is ``teacher``,
``size<f>``, ``<method>_rate<r>`` or ``size<f>_<method>_rate<r>`` (plus swept options).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import COLUMNS, decode_blob
from plugins.plots import _data as dt
from plugins.plots import _labels as lb
from plugins.plots import _style as st

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["AttentionPlot", "DenoisingPlot", "LatentSpacePlot", "SampleGrids", "Variant", "variants"]

_ROLE_ORDER = {"reference": 0, "student": 1, "pruned": 2, "pruned_student": 3}


# ------------------------------------------------------------------------------ data


@dataclass
class Variant:
    """One model variant of the frame, with how figures name and order it."""

    key: tuple[Any, ...]
    role: str
    size_factor: float | None
    label: str
    slug: str
    order: tuple[Any, ...]

    @property
    def is_reference(self) -> bool:
        return self.role == "reference"


def _option_columns(df: pd.DataFrame) -> list[str]:
    """Swept plugin-option columns (dotted names) that tell variants apart."""
    return sorted(c for c in df.columns if c not in COLUMNS and "." in c and not c.startswith("metrics."))


def _variant_of(row: Any, options: list[str]) -> Variant:
    size = row["size_factor"]
    size = None if size is None or (isinstance(size, float) and math.isnan(size)) else float(size)
    method = row.get("pruning_method")
    method = "none" if method is None or (isinstance(method, float) and math.isnan(method)) else str(method)
    rate = float(row.get("pruning_rate", 0.0) or 0.0)
    role = str(row.get("role") or ("reference" if size is None and method == "none" else "student"))
    parts, slugs = [], []
    if size is None and method == "none":
        parts, slugs = ["teacher"], ["teacher"]
    if size is not None:
        parts.append(f"student {lb.fmt_num(size)}")
        slugs.append(f"size{lb.fmt_num(size)}")
    if method != "none":
        parts.append(f"{method} rate {lb.fmt_num(rate)}")
        slugs.append(f"{method}_rate{lb.fmt_num(rate)}")
    extra = [(c, row.get(c)) for c in options if row.get(c) is not None and row.get(c) == row.get(c)]
    for c, v in extra:
        short = c.rsplit(".", 1)[-1]
        parts.append(f"{short}={v}")
        slugs.append(f"{short}{v}")
    key = (size, method, rate, *(str(v) for _c, v in extra))
    order = (_ROLE_ORDER.get(role, 9), -(size or 0.0), method, rate, tuple(str(v) for _c, v in extra))
    return Variant(key, role, size, " + ".join(parts), "_".join(slugs).replace("/", "-"), order)


def variants(df: pd.DataFrame) -> dict[tuple[Any, ...], Variant]:
    """The variants of ``df`` (ok rows), in figure order."""
    options = _option_columns(df)
    seen: dict[tuple[Any, ...], Variant] = {}
    cols = [c for c in ("size_factor", "pruning_method", "pruning_rate", "role", *options) if c in df]
    for _, row in df[cols].drop_duplicates().iterrows():
        v = _variant_of(row, options)
        seen.setdefault(v.key, v)
    return dict(sorted(seen.items(), key=lambda kv: kv[1].order))


def _diagnostic_rows(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The ok rows of ``metric`` that carry a blob, with a ``_variant`` key column."""
    if "blob" not in df or not len(df):
        return df.iloc[0:0]
    d = df[(df["metric"] == metric) & df["blob"].notna()]
    if not len(d):
        return d
    options = _option_columns(d)
    d = d.copy()
    d["_variant"] = [_variant_of(row, options).key for _, row in d.iterrows()]
    return d


def _settings(d: pd.DataFrame) -> Iterator[tuple[str, float, pd.DataFrame]]:
    """``(file suffix, cfg scale, rows)`` per (sampler, steps, CFG scale)."""
    keys = [c for c in ("sampler", "steps") if c in d]
    combos = d[keys].drop_duplicates() if keys else None
    several = combos is not None and len(combos) > 1
    groups = d.groupby(keys, dropna=False, sort=True) if keys else [((), d)]
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        suffix = ("_" + "".join(str(k) for k in key)) if several else ""
        for cfg in sorted(part["cfg_scale"].dropna().unique()):
            yield suffix, float(cfg), part[np.isclose(part["cfg_scale"], cfg)]


def _first_seed(d: pd.DataFrame) -> dict[tuple[Any, ...], Any]:
    """``variant key -> its row`` of the smallest seed (one row per variant)."""
    out = {}
    for key, part in d.sort_values(["seed", "cell_id"] if "cell_id" in d else ["seed"]).groupby("_variant", sort=False):
        out[key] = part.iloc[0]
    return out


def _seed_note(rows: dict[Any, Any]) -> str:
    seeds = sorted({int(r["seed"]) for r in rows.values()})
    return f"Seed {seeds[0]}" if len(seeds) == 1 else "Seeds " + ", ".join(map(str, seeds))


def _title_setting(cfg: float, suffix: str) -> str:
    return f"CFG {lb.fmt_num(cfg)}" + (f", {suffix[1:]}" if suffix else "")


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


def _label_lookup(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """``cell_id -> condition strings`` from the ``sample_grid_conditions`` rows."""
    rows = _diagnostic_rows(df, "sample_grid_conditions")
    return {str(r["cell_id"]): decode_blob(r["blob"]) for _, r in rows.iterrows()}


# ------------------------------------------------------------------------------ samples


class SampleGrids(dt.BenchmarkPlot):
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
        d = _diagnostic_rows(df, "sample_grid")
        if not len(d):
            return []
        names = variants(d)
        texts = _label_lookup(df)
        out = Path(out_dir) / "samples"
        paths = []
        with st.plot_style():
            for suffix, cfg, part in _settings(d):
                rows = _first_seed(part)
                shown = [(names[k], rows[k]) for k in names if k in rows]
                for v, row in shown:
                    images = decode_blob(row["blob"]).astype(np.float32) / 255.0
                    fig = _grid_figure(images, texts.get(str(row["cell_id"])),
                                       f"Samples: {v.label} ({_title_setting(cfg, suffix)}, seed {int(row['seed'])})")
                    paths.append(st.save(fig, out, f"samples_{v.slug}_cfg{lb.fmt_num(cfg)}{suffix}.png"))
                if len(shown) > 1:
                    fig = self._comparison(shown, texts, cfg, suffix)
                    paths.append(st.save(fig, out, f"comparison_cfg{lb.fmt_num(cfg)}{suffix}.png"))
        return paths

    def _comparison(self, shown: list[tuple[Variant, Any]], texts: dict[str, np.ndarray], cfg: float,
                    suffix: str) -> Any:
        arrays = [decode_blob(row["blob"]).astype(np.float32) / 255.0 for _v, row in shown]
        n = min(self.comparison_columns, *(len(a) for a in arrays))
        labels = texts.get(str(shown[0][1]["cell_id"]))
        width = 1.6 + 0.62 * n
        notes = [
            f"Row: a model variant; column i: sample i, from the same initial noise and requested class in every "
            f"row (paired design). {_seed_note(dict(enumerate(r for _v, r in shown)))}.",
        ]
        lines = st.wrap_lines(notes, width)
        fig = st.new_figure(width, 0.62 * len(shown) + 1.1 + 0.17 * len(lines))
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
        fig.suptitle(f"Samples of every variant ({_title_setting(cfg, suffix)})")
        st.footnote(fig, notes + (["Column titles: requested class."] if labels is not None else []))
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
    fig = st.new_figure(6.2, 6.6 + 0.17 * len(st.wrap_lines(notes, 6.2)))
    ax = fig.add_subplot()
    ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    st.bare(ax)
    if short:
        for i in range(n):
            r, k = divmod(i, cols)
            ax.text(k * (w + pad) + 0.6, r * (h + pad) + 0.4, str(texts[i]), ha="left", va="top", fontsize=7.5,
                    color="#ffd54f", path_effects=[pe.withStroke(linewidth=1.6, foreground="black")])
    ax.set_title(title)
    st.footnote(fig, notes)
    return fig


# ------------------------------------------------------------------------------ denoising


class DenoisingPlot(dt.BenchmarkPlot):
    """Denoising strips: x_t over the sampler steps, a row per variant, from ``denoising_strip``.

    Writes ``denoising/denoising_cfg<scale>.png``: columns are evenly spaced sampler
    states from the initial noise x_K to the sample x_0, rows the teacher, its students
    (largest first) and pruned variants, all from the same initial noise and condition.
    """

    name = "denoising"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        from plugins.metrics.visual import kept_states

        d = _diagnostic_rows(df, "denoising_strip")
        if not len(d):
            return []
        names = variants(d)
        out = Path(out_dir) / "denoising"
        paths = []
        with st.plot_style():
            for suffix, cfg, part in _settings(d):
                rows = _first_seed(part)
                shown = [(names[k], decode_blob(rows[k]["blob"]).astype(np.float32), rows[k]) for k in names if k in rows]
                cols = max(len(s) for _v, s, _r in shown)
                steps = int(shown[0][2]["steps"])
                notes = [
                    "Sampler states decoded to images, from the initial noise x_K (left) to the final sample x_0 "
                    f"(right), K = {steps} steps; every row starts from the same noise and condition (paired design).",
                    f"One sample. {_seed_note({v.key: r for v, _s, r in shown})}.",
                ]
                width = 2.2 + 1.05 * cols
                lines = st.wrap_lines(notes, width)
                fig = st.new_figure(width, 1.05 * len(shown) + 1.0 + 0.17 * len(lines))
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
                fig.suptitle(f"Denoising trajectories ({_title_setting(cfg, suffix)})")
                st.footnote(fig, notes)
                paths.append(st.save(fig, out, f"denoising_cfg{lb.fmt_num(cfg)}{suffix}.png"))
        return paths


# ------------------------------------------------------------------------------ latent space


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


class LatentSpacePlot(dt.BenchmarkPlot):
    """Final samples in the teacher's 2-D PCA plane, coloured by size, from ``latent_pca``.

    Writes ``latent_space/latent_pca_cfg<scale>.png``: a panel with every variant, then
    one panel per variant against the teacher (grey), on shared axes. The basis is the
    teacher's (reference) samples' first two principal components.
    """

    name = "latent_space"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = _diagnostic_rows(df, "latent_pca")
        if not len(d):
            return []
        names = variants(d)
        out = Path(out_dir) / "latent_space"
        paths = []
        with st.plot_style():
            for suffix, cfg, part in _settings(d):
                rows = _first_seed(part)
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
                    f"PCA basis: the teacher's samples at {_title_setting(cfg, suffix)} (flattened pixels); its first two "
                    f"components explain {100 * ratio:.1f}% of their variance. Every variant's first {npts} samples "
                    "are projected into that basis (same initial noise and classes in every variant); "
                    "crosses: means; in the pairwise panels the teacher is light grey and a thin line joins "
                    f"each sample to the teacher's sample of the same noise and class. {_seed_note(rows)}.",
                ]
                max_cols = 2 if len(panels) in (2, 4) else 3
                nrow, ncol = st.grid_shape(len(panels), max_cols)
                width = 4.3 * ncol + 2.4
                lines = st.wrap_lines(notes, width)
                fig = st.new_figure(width, 4.0 * nrow + 0.6 + 0.17 * len(lines))
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
                fig.suptitle(f"Final samples in the teacher's PCA plane ({_title_setting(cfg, suffix)})")
                st.footnote(fig, notes)
                paths.append(st.save(fig, out, f"latent_pca_cfg{lb.fmt_num(cfg)}{suffix}.png"))
        return paths


# ------------------------------------------------------------------------------ attention


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


class AttentionPlot(dt.BenchmarkPlot):
    """Self-attention maps of the teacher and its students, from ``attention_maps``.

    Writes ``attention/attention_cfg<scale>.png`` (a row per variant, a column per
    timestep: the centre query's attention over the key grid, mean over heads) and
    ``attention/attention_heads_cfg<scale>.png`` (the same at the middle timestep, a
    column per head). Colour: weight x number of keys, so 1 = uniform attention at any
    resolution (students may attend over another grid).
    """

    name = "attention"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = _diagnostic_rows(df, "attention_maps")
        if not len(d) or "timestep" not in d:
            return []
        d = d[d["timestep"].notna()]
        if not len(d):
            return []
        names = variants(d)
        out = Path(out_dir) / "attention"
        paths = []
        with st.plot_style():
            for suffix, cfg, part in _settings(d):
                seeds = part.groupby("_variant")["seed"].min()
                part = part[part["seed"] == part["_variant"].map(seeds)]
                shown = [v for v in names if v in set(part["_variant"])]
                cells: dict[tuple[Any, ...], dict[float, Any]] = {}
                for _, row in part.iterrows():
                    cells.setdefault(row["_variant"], {}).setdefault(float(row["timestep"]), row)
                seed_rows = {k: next(iter(cells[k].values())) for k in shown}
                timesteps = sorted({t for k in shown for t in cells[k]}, reverse=True)
                fig = self._by_timestep([names[k] for k in shown], cells, timesteps, cfg, suffix, seed_rows)
                paths.append(st.save(fig, out, f"attention_cfg{lb.fmt_num(cfg)}{suffix}.png"))
                mid = timesteps[len(timesteps) // 2]
                fig = self._by_head([names[k] for k in shown], cells, mid, cfg, suffix, seed_rows)
                if fig is not None:
                    paths.append(st.save(fig, out, f"attention_heads_cfg{lb.fmt_num(cfg)}{suffix}.png"))
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
            f"{_seed_note(seed_rows)}. In the corner: normalised attention entropy (1 = uniform).",
        ]
        width = 2.6 + 1.7 * len(timesteps) + 0.9
        lines = st.wrap_lines(notes, width)
        fig = st.new_figure(width, 1.7 * len(shown) + 1.0 + 0.17 * len(lines))
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
        fig.suptitle(f"Attention of the centre query per timestep ({_title_setting(cfg, suffix)})")
        st.footnote(fig, notes)
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
                 f"{_seed_note(seed_rows)}."]
        width = 2.6 + 1.7 * heads + 0.9
        lines = st.wrap_lines(notes, width)
        fig = st.new_figure(width, 1.7 * len(per_head) + 1.0 + 0.17 * len(lines))
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
        fig.suptitle(f"Attention of the centre query per head (t = {t:g}, {_title_setting(cfg, suffix)})")
        st.footnote(fig, notes)
        return fig
