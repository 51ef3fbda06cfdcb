"""Which rows the built-in plots draw and how they average them (not a plugin).

- **Rows**: :func:`ok_rows` keeps ``status == "ok"`` rows with a finite value and turns
  categorical columns into plain objects (so group-bys do not invent empty groups);
  :func:`unpruned` and :func:`scalar_rows` pick the teacher and students, and the
  overall (not per-step, not diagnostic) rows.
- **Seeds**: :func:`seed_stats` averages over seeds: first the mean per seed of
  everything else that is averaged, then ``mean``, ``std`` (sample s.d., NaN for one
  seed) and ``n`` over seeds. Figures show mean ± 1 s.d. over seeds (a 95% t-interval over
  two seeds would be 12.7 s.d. wide and tell nothing), and say so in a footnote
  (:func:`spread_note`, :func:`averaged_note`).
- **Benchmarks**: :class:`BenchmarkPlot` draws each benchmark of a results folder apart,
  since each has its own teacher.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness import Plot
from plugins.plots import _labels as lb

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: axes that a figure averages over silently only when they hold one value
_OTHER_AXES = ("sampler", "steps", "size_factor", "pruning_method", "pruning_rate", "cfg_scale")


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``status == "ok"`` and a finite value; categoricals as plain objects."""
    import pandas as pd

    if df is None or len(df) == 0 or "metric" not in df or "value" not in df:
        return pd.DataFrame(columns=list(df.columns) if df is not None else [])
    out = df
    if "status" in out:
        out = out[out["status"].astype(object) == "ok"]
    out = out.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.CategoricalDtype):
            out[col] = out[col].astype(object)
    # (integer columns such as num_params keep their dtype: the JSON export writes these rows)
    for col in ("value", "size_factor", "cfg_scale", "pruning_rate", "timestep", "param_ratio", "speedup",
                "macs", "sparsity"):
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    if "seed" in out:
        out["seed"] = pd.to_numeric(out["seed"], errors="coerce").fillna(-1).astype(int)
    else:
        out["seed"] = 0
    out["metric"] = out["metric"].astype(object)
    out = out[np.isfinite(out["value"].to_numpy(dtype=float))]
    return out.reset_index(drop=True)


def unpruned(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the teacher and its students (no pruning), for the distillation figures."""
    if "pruning_method" not in df:
        return df
    method = df["pruning_method"].astype(object)
    return df[method.isna() | (method == "none")]


def scalar_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Overall rows (``timestep`` NaN), not the per-step ``_t`` rows nor the diagnostic rows
    that carry an array in ``blob`` (sample grids, strips, PCA, attention maps)."""
    if "blob" in df:
        df = df[df["blob"].isna()]
    if "timestep" not in df:
        return df
    return df[df["timestep"].isna()]


def metrics_in(df: pd.DataFrame, names: Iterable[str]) -> list[str]:
    """The ``names`` that have rows in ``df``, in the order given."""
    present = set(df["metric"]) if len(df) else set()
    return [n for n in names if n in present]


def seed_stats(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Mean, s.d. and count over seeds of ``value``, per group ``by``.

    Everything not in ``by`` (other than ``seed``) is averaged first, per seed, so each
    seed counts once. Groups with NaN keys (the teacher's ``size_factor``) are kept.
    :returns: columns ``*by, mean, std, n``.
    """
    import pandas as pd

    by = list(by)
    if not len(df):
        return pd.DataFrame(columns=[*by, "mean", "std", "n"])
    per_seed = df.groupby([*by, "seed"], dropna=False, sort=True)["value"].mean().reset_index()
    out = (
        per_seed.groupby(by, dropna=False, sort=True)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
    return out


def column_mean(df: pd.DataFrame, by: Sequence[str], column: str) -> pd.DataFrame:
    """Mean of a per-cell column (``speedup``, ``macs``, ...) per group, over seeds."""
    cells = df.drop_duplicates([*by, "seed", "cell_id"] if "cell_id" in df else [*by, "seed"])
    return cells.groupby(list(by), dropna=False, sort=True)[column].mean().reset_index()


def seeds_phrase(stats: pd.DataFrame) -> str:
    """"mean over 2 seeds" / "one seed" (from a :func:`seed_stats` frame)."""
    if not len(stats):
        return ""
    lo, hi = int(stats["n"].min()), int(stats["n"].max())
    if hi <= 1:
        return "one seed"
    return f"mean over {lo if lo == hi else f'{lo}-{hi}'} seeds"


def spread_note(stats: pd.DataFrame, spread: str = "error bars / bands") -> str:
    """"Values: mean over 2 seeds; error bars: ±1 s.d. over seeds." (from :func:`seed_stats`)."""
    phrase = seeds_phrase(stats)
    if not phrase:
        return ""
    if phrase == "one seed":
        return "Values: one seed per point (no spread shown)."
    return f"Values: {phrase}; {spread}: ±1 s.d. over seeds."


def averaged_note(df: pd.DataFrame, shown: Iterable[str]) -> str:
    """Name the axes that vary in ``df`` but are not shown (so they were averaged over)."""
    shown = set(shown) | {"seed", "metric", "value", "timestep"}
    from harness import COLUMNS

    axes = [a for a in _OTHER_AXES if a in df and a not in shown]
    axes += sorted(c for c in df.columns if c not in COLUMNS and c not in shown and c not in ("reference_value", "delta"))
    parts = []
    for a in axes:
        vals = df[a].dropna().unique()
        if len(vals) > 1:
            try:
                listed = ", ".join(lb.fmt_num(v) for v in sorted(vals))
            except (TypeError, ValueError):
                listed = ", ".join(str(v) for v in sorted(map(str, vals)))
            parts.append(f"{a} ∈ {{{listed}}}")
    return ("Also averaged over " + "; ".join(parts) + ".") if parts else ""


class BenchmarkPlot(Plot):
    """A built-in plot drawn once per benchmark of the frame.

    A results folder may hold several benchmarks (``bench plot results/``), each with its
    own teacher: mixing them would average unrelated models. With one benchmark the
    figures go to ``out_dir``; with several, to ``out_dir/<benchmark>/``. Subclasses
    implement :meth:`draw_one` on the ok rows of one benchmark.
    """

    def draw(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        d = ok_rows(df)
        if not len(d):
            return []
        out_dir = Path(out_dir)
        names = sorted(map(str, d["benchmark"].dropna().unique())) if "benchmark" in d else []
        if len(names) <= 1:
            return self.draw_one(d, out_dir)
        paths: list[Path] = []
        for name in names:
            paths += self.draw_one(d[d["benchmark"].astype(str) == name].reset_index(drop=True), out_dir / name)
        return paths

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        raise NotImplementedError


__all__ = [
    "BenchmarkPlot",
    "averaged_note",
    "column_mean",
    "metrics_in",
    "ok_rows",
    "scalar_rows",
    "seed_stats",
    "seeds_phrase",
    "spread_note",
    "unpruned",
]
