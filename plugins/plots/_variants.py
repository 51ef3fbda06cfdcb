"""The model variants of the image figures, and the diagnostic rows they are drawn from
(not a plugin).

The image figures (:mod:`plugins.plots.visual`, :mod:`plugins.plots.latent_space`,
:mod:`plugins.plots.attention`) read the arrays that the visual diagnostic metrics
(:mod:`plugins.metrics.visual`) attach to their rows in ``blob``. Each figure shows one
seed per variant (the first, i.e. smallest, stored) and one CFG scale; with several
samplers or step counts in the frame, file names get a ``_<sampler><steps>`` suffix.

Variants (rows, colours) are ordered teacher, students from the largest to the
smallest, then pruned variants; ``<variant>`` in file names is ``teacher``,
``size<f>``, ``<method>_rate<r>`` or ``size<f>_<method>_rate<r>`` (plus swept options).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import COLUMNS, decode_blob
from plugins.plots import _labels as lb

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "Variant",
    "diagnostic_rows",
    "first_seed",
    "label_lookup",
    "seed_note",
    "settings",
    "title_setting",
    "variants",
]

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


def _missing(v: Any) -> bool:
    """None, NaN, NaT or ``pd.NA``: swept options of other methods are missing in nullable
    columns (``Int64``, ``boolean``), where ``v == v`` is ``pd.NA``, not a bool."""
    import pandas as pd

    return v is None or (not isinstance(v, (list, tuple, dict)) and bool(pd.isna(v)))


def _variant_of(row: Any, options: list[str]) -> Variant:
    size = row["size_factor"]
    size = None if _missing(size) else float(size)
    method = row.get("pruning_method")
    method = "none" if _missing(method) else str(method)
    rate = row.get("pruning_rate")
    rate = 0.0 if _missing(rate) else float(rate)
    role = row.get("role")
    role = ("reference" if size is None and method == "none" else "student") if _missing(role) else str(role)
    parts, slugs = [], []
    if size is None and method == "none":
        parts, slugs = ["teacher"], ["teacher"]
    if size is not None:
        parts.append(f"student {lb.fmt_num(size)}")
        slugs.append(f"size{lb.fmt_num(size)}")
    if method != "none":
        parts.append(f"{method} rate {lb.fmt_num(rate)}")
        slugs.append(f"{method}_rate{lb.fmt_num(rate)}")
    extra = [(c, row.get(c)) for c in options if not _missing(row.get(c))]
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


def diagnostic_rows(df: pd.DataFrame, metric: str) -> pd.DataFrame:
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
    return f"CFG {lb.fmt_num(cfg)}" + (f", {suffix[1:]}" if suffix else "")



def label_lookup(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """``cell_id -> condition strings`` from the ``sample_grid_conditions`` rows."""
    rows = diagnostic_rows(df, "sample_grid_conditions")
    return {str(r["cell_id"]): decode_blob(r["blob"]) for _, r in rows.iterrows()}
