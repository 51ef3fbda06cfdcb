"""What the contract checks of :mod:`harness.testing` build: a strict metric context, a
realistic results frame, and the executor check's stand-in units and worker."""

from __future__ import annotations

import dataclasses
import itertools
import zlib
from collections.abc import Iterator
from typing import Any

#: MetricContext field -> the ``requires`` entry that makes the runner fill it
GUARDED_FIELDS = {
    "samples": "samples", "reference_samples": "reference_samples", "trajectories": "trajectories",
    "reference_trajectories": "reference_trajectories", "real_images": "real_images",
    "conditions": "conditions", "model": "model", "reference_model": "model",
}


class UndeclaredFieldError(Exception):
    """A metric read a :class:`harness.MetricContext` field its ``requires`` does not name."""


def strict_metric_context(ctx: Any, metric: str, requires: frozenset[str]) -> Any:
    """A copy of ``ctx`` on which reading a field outside ``requires`` raises
    :class:`UndeclaredFieldError` naming the field (the runner leaves such fields empty)."""
    from harness.base import MetricContext

    class StrictMetricContext(MetricContext):
        def __getattribute__(self, name: str) -> Any:
            need = GUARDED_FIELDS.get(name)
            if need is not None and need not in requires:
                raise UndeclaredFieldError(
                    f"metric '{metric}' reads ctx.{name}, but its requires {sorted(requires)} does not "
                    f"name '{need}': add '{need}' to requires (the runner fills only declared fields)")
            return super().__getattribute__(name)

    return StrictMetricContext(**{f.name: getattr(ctx, f.name) for f in dataclasses.fields(MetricContext)})


def realistic_frame() -> Any:
    """A small results frame as ``load_results`` returns it: every schema column, a
    reference and three variants (one with a swept plugin option), two CFG scales, two
    seeds, scalar and per-step metrics, a NaN value, a metric missing for one variant, an
    error row, and a score that carries an array in ``blob`` with its ``value_sd``
    (``fid_inf``: FID-infinity, with the (4, K) FID / KID curve it was fitted on)."""
    import math

    import numpy as np
    import pandas as pd

    from harness.schema import CATEGORICAL, COLUMNS, encode_blob

    variants = [("reference", None, "none", 0.0, 0.0, 1.0), ("pruned", None, "magnitude", 0.5, 0.5, 1.0),
                ("pruned", None, "random", 0.5, 0.5, 1.0), ("student", 0.5, "none", 0.0, 0.0, 0.52)]
    rows = []
    for (role, size, method, rate, sparsity, ratio), cfg, seed in itertools.product(variants, (1.0, 3.0), (0, 1)):
        base = {"benchmark": "contract", "run_id": "run-1", "role": role, "model": "unet",
                "size_factor": math.nan if size is None else size, "size_tier": "teacher" if size is None else "medium",
                "param_ratio": ratio, "pruning_method": method, "pruning_rate": rate, "sparsity": sparsity,
                "cfg_scale": cfg, "sampler": "ddim", "steps": 10, "seed": seed, "dataset": "digits",
                "num_samples": 64, "num_params": 1000, "nonzero_params": int(1000 * (1 - sparsity)),
                "macs": 2e6 * ratio, "speedup": 1.0 / ratio, "status": "ok", "duration_s": 1.5,
                "timestamp": pd.Timestamp("2024-01-01", tz="UTC"), "pruners.random.scope": "all"}
        name = f"{role}[method={method},rate={rate},cfg={cfg},seed={seed}]"
        value = 10.0 + 20.0 * rate + seed - cfg
        metrics = [("fid_digits", value, False, math.nan), ("label_accuracy", 0.9 - rate / 2, True, math.nan)]
        metrics += [("trajectory_mse", value / (t + 1), False, float(t)) for t in (0, 5, 9)]
        if method == "random":
            metrics = metrics[1:]  # fid missing for one variant
        for metric, v, hib, t in metrics:
            rows.append({**base, "cell_id": f"{zlib.crc32(name.encode()):08x}", "cell_name": name, "metric": metric,
                         "value": math.nan if (method, metric, seed) == ("magnitude", "fid_digits", 1) else v,
                         "timestep": t, "higher_is_better": hib})
        if method in ("none", "magnitude"):  # rows 0-3: n, FID at n, KID at n, KID's s.d. at n
            n = np.array([32.0, 48.0, 64.0])
            curve = np.stack([n, value - 2.0 + 256.0 / n, 0.01 + 0 * n, 0.005 + 0 * n])
            rows.append({**rows[-1], "metric": "fid_inf", "value": value - 2.0, "value_sd": 0.5, "timestep": math.nan,
                         "higher_is_better": False, "blob": encode_blob(curve)})
    rows.append({**rows[-1], "metric": "clip_score", "value": math.nan, "status": "error",
                 "error": "RuntimeError: out of memory", "higher_is_better": True})
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df:
            df[col] = None
    df = df[[*COLUMNS, "pruners.random.scope"]]
    for col in CATEGORICAL:
        df[col] = df[col].astype("category")
    return df


# ------------------------------------------------------------- the executor check's stand-ins


@dataclasses.dataclass(frozen=True)
class StandInVariant:
    """A stand-in variant: hashable, with the ``parent()`` executors schedule by."""

    name: str
    parent_name: str | None = None

    def parent(self) -> StandInVariant | None:
        return None if self.parent_name is None else StandInVariant(self.parent_name)


@dataclasses.dataclass
class StandInUnit:
    variant: StandInVariant
    cells: list[int]

    @property
    def name(self) -> str:
        return self.variant.name


class SquareWorker:
    """A stand-in worker (the ``harness.Worker`` protocol, picklable): squares each cell."""

    device = "cpu"
    identity = "harness.testing.square"

    def __call__(self, unit: StandInUnit) -> Iterator[int]:
        for x in unit.cells:
            yield x * x

    def error_results(self, unit: StandInUnit, message: str, duration: float = 0.0) -> list[Any]:
        return [f"error: {message}" for _ in unit.cells]
