"""The model variants of the image figures, and the diagnostic rows they are drawn from
(not a plugin).

The image figures (:mod:`plugins.plots.visual`, :mod:`plugins.plots.latent_space`,
:mod:`plugins.plots.attention`) read the arrays that the visual diagnostic metrics
(:mod:`plugins.metrics.visual`) attach to their rows in ``blob``. Each figure shows one
seed per variant (the first, i.e. smallest, stored) and one CFG scale; with several
samplers or step counts in the frame, file names get a ``_<sampler><steps>`` suffix.

Variants (rows, colours) come from :func:`harness.variants`, ordered teacher, students
from the largest to the smallest, then pruned variants; ``<variant>`` in file names is
``teacher``, ``size<f>``, ``<method>_rate<r>`` or ``size<f>_<method>_rate<r>`` (plus
swept options).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import Variant, decode_blob, fmt_num, variant_groups, variant_of

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "diagnostic_rows",
    "first_seed",
    "label_lookup",
    "seed_note",
    "settings",
    "title_setting",
    "variants",
]


def variants(df: pd.DataFrame) -> dict[tuple[Any, ...], Variant]:
    """``variant key -> Variant`` for every model variant of ``df``, in figure order."""
    return {v.key: v for v, _rows in variant_groups(df)}


def diagnostic_rows(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The ok rows of ``metric`` that carry a blob, with a ``_variant`` key column."""
    if "blob" not in df or not len(df):
        return df.iloc[0:0]
    d = df[(df["metric"] == metric) & df["blob"].notna()]
    if not len(d):
        return d
    d = d.copy()
    d["_variant"] = [variant_of(row).key for _, row in d.iterrows()]
    return d


def settings(d: pd.DataFrame) -> Iterator[tuple[str, float, pd.DataFrame]]:
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


def first_seed(d: pd.DataFrame) -> dict[tuple[Any, ...], Any]:
    """``variant key -> its row`` of the smallest seed (one row per variant)."""
    out = {}
    for key, part in d.sort_values(["seed", "cell_id"] if "cell_id" in d else ["seed"]).groupby("_variant", sort=False):
        out[key] = part.iloc[0]
    return out


def seed_note(rows: dict[Any, Any]) -> str:
    seeds = sorted({int(r["seed"]) for r in rows.values()})
    return f"Seed {seeds[0]}" if len(seeds) == 1 else "Seeds " + ", ".join(map(str, seeds))


def title_setting(cfg: float, suffix: str) -> str:
    return f"CFG {fmt_num(cfg)}" + (f", {suffix[1:]}" if suffix else "")



def label_lookup(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """``cell_id -> condition strings`` from the ``sample_grid_conditions`` rows."""
    rows = diagnostic_rows(df, "sample_grid_conditions")
    return {str(r["cell_id"]): decode_blob(r["blob"]) for _, r in rows.iterrows()}
