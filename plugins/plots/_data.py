"""Which rows the built-in plots draw (not a plugin).

:func:`unpruned` and :func:`scalar_rows` pick the teacher and students, and the overall
(not per-step, not diagnostic) rows; :func:`metrics_in` and :func:`column_mean` help
with the pruning tables. The generic helpers every plot needs (``ok_rows``,
``seed_stats``, the footnotes, ``BenchmarkPlot``) are public, in :mod:`harness.plotting`.
Figures show mean ± 1 s.d. over seeds (a 95% t-interval over two seeds would be 12.7
s.d. wide and tell nothing), and say so in a footnote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


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


def column_mean(df: pd.DataFrame, by: Sequence[str], column: str) -> pd.DataFrame:
    """Mean of a per-cell column (``speedup``, ``macs``, ...) per group, over seeds."""
    cells = df.drop_duplicates([*by, "seed", "cell_id"] if "cell_id" in df else [*by, "seed"])
    return cells.groupby(list(by), dropna=False, sort=True)[column].mean().reset_index()


__all__ = [
    "column_mean",
    "metrics_in",
    "scalar_rows",
    "unpruned",
]
