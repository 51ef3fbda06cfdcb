"""What the built-in plots call each metric, which way it is better, and the scales
figures put it on (not a plugin).

- **Names**: :func:`label` (with the unit, for axes and titles) and :func:`short_label`
  (radar spokes, panel titles); numbers are written by :func:`harness.fmt_num`.
- **Direction**: :func:`higher_is_better` reads the rows' ``higher_is_better`` column,
  falling back on :data:`LOWER_IS_BETTER`; :data:`DESCRIPTIVE` metrics have none.
- **Normalisation** (:func:`normalise`) to [0, 1] with 1 = as close to the teacher as
  possible, used by the heatmaps and radars:

  * similarities already in [0, 1] (``path_length_similarity``,
    ``distribution_similarity``, ``label_accuracy``): kept as they are (clipped to [0, 1]);
  * cosines in [-1, 1] (``directional_consistency``, ``eps_agreement``): ``max(cos, 0)``
    (a negative cosine is "no agreement", shown as 0);
  * lower-is-better errors (``trajectory_mse`` and any other lower-is-better metric):
    ``1 - v / max v``, the maximum taken over the values shown in the figure (0 = the
    worst cell shown, 1 = identical to the teacher). The figure prints that maximum,
    so the raw value can be recovered: ``v = (1 - n) * max v``.

- **Inversion** (:func:`better_up`) for curves where every metric should read "higher is
  better" (the pruning figures, as the seed asks): lower-is-better metrics (FID, LPIPS,
  feature distance, times) are **negated**, ``-v``, and the axis label says so
  (":func:`better_up_label`"). Negation keeps the scale linear and the numbers readable
  (``-12.3`` is FID 12.3), unlike ``1 / (1 + v)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: the four trajectory metrics of the seed's heatmaps and radars, in the seed's order
TRAJECTORY_METRICS = (
    "path_length_similarity",
    "trajectory_mse",
    "directional_consistency",
    "distribution_similarity",
)
#: file-name stems the seed used where they differ from the metric name
SEED_FILE_NAMES = {"directional_consistency": "mean_directional_consistency"}
#: cost metrics: not "quality" (left out of Pareto quality axes and of the summary budget)
COST_METRICS = ("generation_time", "peak_memory_mb")

#: lower-is-better metrics, used only when a frame lacks the ``higher_is_better`` column
LOWER_IS_BETTER = frozenset(
    {
        "trajectory_mse",
        "noise_prediction_mse",
        "fid_digits",
        "fid",
        "lpips",
        "feature_distance",
        "generation_time",
        "peak_memory_mb",
    }
)
_COSINES = frozenset({"directional_consistency", "eps_agreement"})
_UNIT_SIMILARITIES = frozenset({"path_length_similarity", "distribution_similarity", "label_accuracy"})

#: human-readable names with units, for axis labels and titles
LABELS = {
    "path_length_similarity": "path length similarity",
    "trajectory_mse": "trajectory MSE",
    "directional_consistency": "directional consistency",
    "distribution_similarity": "distribution similarity",
    "noise_prediction_mse": "noise prediction MSE",
    "eps_agreement": "ε agreement (cosine)",
    "effective_dim_95": "effective dim. (95% var.)",
    "participation_ratio": "participation ratio",
    "fid_digits": "FID (digit features)",
    "fid": "FID (Inception)",
    "label_accuracy": "label accuracy",
    "feature_distance": "feature distance (LPIPS analogue)",
    "generation_time": "generation time (s / image)",
    "peak_memory_mb": "peak memory (MB)",
    "clip_score": "CLIP score",
    "lpips": "LPIPS",
    "synthetic_quality": "synthetic quality (SYNTHETIC)",
}
#: short names for crowded places (radar spokes, panel titles)
SHORT_LABELS = {
    "path_length_similarity": "path length\nsimilarity",
    "trajectory_mse": "trajectory\nMSE",
    "directional_consistency": "directional\nconsistency",
    "distribution_similarity": "distribution\nsimilarity",
    "eps_agreement": "ε agreement",
    "label_accuracy": "label\naccuracy",
}


#: metrics with no better direction (their ``higher_is_better`` is nominal)
DESCRIPTIVE = frozenset({"effective_dim_95", "participation_ratio"})


def direction_mark(df: pd.DataFrame, metric: str) -> str:
    """``↑`` (higher is better), ``↓`` (lower is better) or ``(descriptive)``."""
    if metric in DESCRIPTIVE:
        return "(descriptive)"
    return "↑" if higher_is_better(df, metric) else "↓"


def label(metric: str) -> str:
    """A metric's readable name (with unit where it has one)."""
    if metric.endswith("_t") and metric[:-2] in LABELS:
        return LABELS[metric[:-2]] + " per step"
    return LABELS.get(metric, metric.replace("_", " "))


def short_label(metric: str) -> str:
    return SHORT_LABELS.get(metric, label(metric))


def higher_is_better(df: pd.DataFrame, metric: str) -> bool:
    """Which way ``metric`` is better: the rows' ``higher_is_better``, else the known list."""
    base = metric[:-2] if metric.endswith("_t") else metric
    if "higher_is_better" in df and len(df):
        vals = df.loc[df["metric"] == metric, "higher_is_better"].dropna()
        if len(vals):
            return bool(vals.iloc[0])
    return base not in LOWER_IS_BETTER


# ---------------------------------------------------------------------------- transforms


def normalise(metric: str, values: Any, *, higher: bool | None = None, scale: float | None = None) -> tuple[Any, str]:
    """Map ``values`` of ``metric`` to [0, 1], 1 = closest to the teacher; also a note.

    See the module docstring for the rules. ``values`` may be a number, array, Series or
    DataFrame (the result has the same type). ``scale`` is the maximum for
    lower-is-better metrics (default: the maximum of ``values``).
    :returns: ``(normalised, note)`` where the note states the transform for the figure.
    """
    base = metric[:-2] if metric.endswith("_t") else metric
    if higher is None:
        higher = base not in LOWER_IS_BETTER
    arr = values.to_numpy(dtype=float) if hasattr(values, "to_numpy") else np.asarray(values, dtype=float)
    if base in _COSINES:
        out = np.clip(arr, 0.0, 1.0)
        note = f"{label(base)}: max(cos, 0)"
    elif not higher:
        if scale is None:
            finite = arr[np.isfinite(arr)]
            scale = float(finite.max()) if finite.size else float("nan")
        if not scale or not np.isfinite(scale) or scale <= 0:
            out = np.where(np.isfinite(arr), 1.0, np.nan)
        else:
            out = np.clip(1.0 - arr / scale, 0.0, 1.0)
        note = f"{label(base)}: 1 − v / max v (max v = {scale:.4g})"
    else:
        out = np.clip(arr, 0.0, 1.0)
        note = f"{label(base)}: as is (in [0, 1])"
    if hasattr(values, "to_numpy"):
        out = values.__class__(out, index=values.index, **({"columns": values.columns} if hasattr(values, "columns") else {}))
    elif np.ndim(values) == 0:
        out = float(out)
    return out, note


def better_up(values: Any, higher: bool) -> Any:
    """Values oriented so that higher is better: lower-is-better metrics are negated."""
    return values if higher else -values


def better_up_label(metric: str, higher: bool) -> str:
    """Axis label of :func:`better_up` values: ``"−FID (digit features)  (negated: higher is better)"``."""
    return label(metric) if higher else f"−{label(metric)}\n(negated: higher is better)"


__all__ = [
    "COST_METRICS",
    "DESCRIPTIVE",
    "LABELS",
    "LOWER_IS_BETTER",
    "SEED_FILE_NAMES",
    "SHORT_LABELS",
    "TRAJECTORY_METRICS",
    "better_up",
    "better_up_label",
    "direction_mark",
    "higher_is_better",
    "label",
    "normalise",
    "short_label",
]
