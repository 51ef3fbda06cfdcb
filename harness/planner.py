"""Expand a matrix into cells, name and hash them, and group them by model variant.

A cell is one point of the matrix: a model variant (teacher, student of a size factor,
pruned model) sampled with one (sampler, steps, CFG scale, seed) and measured with the
benchmark's metrics. ``cell_id`` is a short hash of everything that identifies the cell
(its axis values and the benchmark's seed, dataset, model, training and sampling config);
the readable ``name`` sits next to it. What the cell is *measured* with (the metric list
and options) is its ``content_key``: changing the metrics keeps the ids, so the runner
recomputes the cell (from the caches: only new metrics run) and the new fragment
supersedes the old one instead of standing next to it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.cache import canonical_json, stable_hash
from harness.config import BUILTIN_AXES, BenchConfig

_SHORT = {
    "size_factor": "size",
    "pruning_method": "method",
    "pruning_rate": "rate",
    "cfg_scale": "cfg",
    "sampler": "sampler",
    "steps": "steps",
    "seed": "seed",
}
#: sampling options that change how fast, not what, is sampled: kept out of cell ids
_SAMPLING_NOT_IN_ID = ("batch_size", "cfg_batching", "warmup", "compile", "sampler", "steps", "cfg_scale")
#: sampling options added after results were first stored: hashed only when not default
_LATER_DEFAULTS: dict[str, Any] = {"dtype": "fp32", "compile": "none"}
_UNSET = object()


@dataclass(frozen=True)
class VariantSpec:
    """Which model a cell samples from: teacher, student and/or pruned, plus overrides.

    ``model_overrides`` holds swept ``model.*`` / ``dataset.*`` options (they change the
    teacher itself); ``pruner_options`` the pruner's resolved options.
    """

    size_factor: float | None
    pruning_method: str
    pruning_rate: float
    pruner_options: str = "{}"  # canonical JSON, so the spec stays hashable
    model_overrides: str = "{}"

    @property
    def role(self) -> str:
        if self.pruning_method == "none":
            return "reference" if self.size_factor is None else "student"
        return "pruned" if self.size_factor is None else "pruned_student"

    @property
    def is_reference(self) -> bool:
        return self.role == "reference"

    def reference(self) -> VariantSpec:
        """The variant every cell of this model config is compared with (the teacher)."""
        return VariantSpec(None, "none", 0.0, "{}", self.model_overrides)

    def parent(self) -> VariantSpec | None:
        """The variant this one is derived from (pruned <- student/teacher <- teacher)."""
        if self.pruning_method != "none":
            return VariantSpec(self.size_factor, "none", 0.0, "{}", self.model_overrides)
        if self.size_factor is not None:
            return self.reference()
        return None

    def sort_key(self) -> tuple[Any, ...]:
        return (
            not self.is_reference,
            self.model_overrides,
            -1.0 if self.size_factor is None else self.size_factor,
            self.pruning_method,
            self.pruning_rate,
            self.pruner_options,
        )


@dataclass(frozen=True)
class SamplingSettings:
    """How a cell's samples are drawn beyond its axes (sampler, steps, CFG scale): the
    ``[sampling]`` section's values (defaults live there, in
    :class:`harness.config.SamplingSection`), or a ``sampling.*`` axis's."""

    num_samples: int
    batch_size: int
    trajectory_samples: int
    cfg_batching: str
    warmup: bool
    dtype: str
    compile: str


@dataclass
class Cell:
    """One point of the matrix."""

    axes: dict[str, Any]
    cell_id: str
    name: str
    variant: VariantSpec
    sampling: SamplingSettings
    metric_options: dict[str, dict[str, Any]]
    #: hash of the metric list and options: a stored cell whose key differs is recomputed
    #: (from the caches: only the new metrics run) and its old fragment superseded
    content_key: str = ""

    @property
    def role(self) -> str:
        return self.variant.role

    def reference_axes(self) -> dict[str, Any]:
        """The axes of this cell's reference cell (the teacher under the same sampling)."""
        return reference_point(self.axes)

    def option_columns(self) -> dict[str, Any]:
        """The swept plugin options (dotted axes) of this cell, as result columns."""
        return {k: v for k, v in self.axes.items() if "." in k}


@dataclass
class WorkUnit:
    """Cells that share one model variant: built once, then sampled per cell."""

    variant: VariantSpec
    cells: list[Cell] = field(default_factory=list)

    @property
    def name(self) -> str:
        """For logs and dashboards: the first cell's name, and how many more."""
        if not self.cells:
            return "empty unit"
        first = self.cells[0].name
        return first if len(self.cells) == 1 else f"{first} +{len(self.cells) - 1} cells"


def reference_point(point: dict[str, Any]) -> dict[str, Any]:
    """``point`` with the variant axes of the reference: no student, no pruning."""
    ref = dict(point)
    ref.update(size_factor=None, pruning_method="none", pruning_rate=0.0)
    for key in ref:
        if key.startswith("pruners."):
            ref[key] = None
    return ref


def _defaults(cfg: BenchConfig) -> dict[str, Any]:
    return {
        "size_factor": None,
        "pruning_method": "none",
        "pruning_rate": 0.0,
        "cfg_scale": float(cfg.sampling.cfg_scale),
        "sampler": cfg.sampling.sampler,
        "steps": cfg.sampling.steps,
        "seed": 0,
    }


def _matches(point: dict[str, Any], entry: dict[str, Any]) -> bool:
    return all(_same(point.get(k), v) for k, v in entry.items())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) < 1e-12
    return a == b


def _normalise(point: dict[str, Any]) -> dict[str, Any]:
    """Collapse axes that do not apply: no rate without pruning, options of unused pruners."""
    p = dict(point)
    if p["pruning_method"] == "none":
        p["pruning_rate"] = 0.0
    else:
        p["pruning_rate"] = float(p["pruning_rate"])
    for key in p:
        if key.startswith("pruners.") and key.split(".")[1] != p["pruning_method"]:
            p[key] = None
    if p["size_factor"] is not None:
        p["size_factor"] = float(p["size_factor"])
    p["cfg_scale"] = float(p["cfg_scale"])
    return p


def expand_points(cfg: BenchConfig) -> list[dict[str, Any]]:
    """All axis points of the matrix (product, minus excludes, plus includes and references)."""
    defaults = _defaults(cfg)
    dotted = [k for k in cfg.axes if "." in k]
    for key in dotted:
        defaults[key] = None
    names = list(cfg.axes)
    points: list[dict[str, Any]] = []
    for values in itertools.product(*(cfg.axes[n] for n in names)):
        point = {**defaults, **dict(zip(names, values, strict=True))}
        if any(_matches(point, e) for e in cfg.exclude):
            continue
        points.append(_normalise(point))
    for entry in cfg.include:
        points.append(_normalise({**defaults, **entry}))
    # every cell's reference (the teacher under the same sampling) is part of the matrix
    with_refs: list[dict[str, Any]] = []
    for p in points:
        with_refs.extend([reference_point(p), p])
    seen: dict[str, dict[str, Any]] = {}
    for p in with_refs:
        seen.setdefault(canonical_json(p), p)
    return list(seen.values())


def _variant(cfg: BenchConfig, point: dict[str, Any]) -> VariantSpec:
    method = point["pruning_method"]
    pruner_opts: dict[str, Any] = {}
    if method != "none":
        pruner_opts = dict(cfg.pruners.get(method, {}))
        for key, value in point.items():
            if key.startswith(f"pruners.{method}.") and value is not None:
                pruner_opts[key.split(".", 2)[2]] = value
    overrides = {k: v for k, v in point.items() if k.startswith(("model.", "dataset.")) and v is not None}
    return VariantSpec(
        point["size_factor"],
        method,
        float(point["pruning_rate"]),
        canonical_json(pruner_opts),
        canonical_json(overrides),
    )


def cell_name(cfg: BenchConfig, point: dict[str, Any]) -> str:
    """Readable deterministic name, e.g. ``pruning[method=magnitude,rate=0.5,cfg=7.5,seed=0]``."""
    parts = []
    swept = set(cfg.axes) | {k for e in cfg.include for k in e}
    ref = point["size_factor"] is None and point["pruning_method"] == "none"
    if ref and ("size_factor" in swept or "pruning_method" in swept):
        parts.append("reference")
    for axis in [*BUILTIN_AXES, *sorted(k for k in point if "." in k)]:
        if axis not in swept:
            continue
        value = point.get(axis)
        if axis == "size_factor" and value is None:
            continue
        if axis == "pruning_method" and value == "none":
            continue
        if axis == "pruning_rate" and point["pruning_method"] == "none":
            continue
        if value is None:
            continue
        parts.append(f"{_SHORT.get(axis, axis)}={_fmt(value)}")
    return f"{cfg.benchmark.name}[{','.join(parts)}]"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def plan_cells(cfg: BenchConfig) -> list[Cell]:
    """Expand the matrix into cells (reference cells included), in a stable order."""
    # the sampler, steps and CFG scale are axes; every other key goes to the engine
    base_sampling = {k: v for k, v in cfg.sampling.model_dump().items() if k not in ("sampler", "steps", "cfg_scale")}
    metric_names = [m.name for m in cfg.metrics]
    common = {
        "seed": cfg.benchmark.seed,
        "dataset": [cfg.dataset.name, cfg.dataset.options],
        "model": [cfg.model.name, cfg.model.options, cfg.train, cfg.distill],
    }
    common_hash = stable_hash(common, 32)
    cells = []
    for point in expand_points(cfg):
        variant = _variant(cfg, point)
        sampling = dict(base_sampling)
        metric_options = {m.name: dict(m.options) for m in cfg.metrics}
        for key, value in point.items():
            if value is None:
                continue
            if key.startswith("sampling."):
                sampling[key.split(".", 1)[1]] = value
            elif key.startswith("metrics.") and key.split(".")[1] in metric_names:
                _, mname, opt = key.split(".", 2)
                metric_options[mname][opt] = value
        # batch size, CFG batching and warm-up change how fast the samples are drawn, not
        # which: they are part of the content (timings), not of the identity
        # (options added later are left out at their defaults, so stored cells keep their ids)
        hashed = {k: v for k, v in sampling.items() if _LATER_DEFAULTS.get(k, _UNSET) != v}
        in_id = {k: v for k, v in hashed.items() if k not in _SAMPLING_NOT_IN_ID}
        timing = {k: v for k, v in hashed.items() if k in _SAMPLING_NOT_IN_ID}
        cell_id = stable_hash(
            {"common": common_hash, "axes": point, "variant": [variant.pruner_options], "sampling": in_id}, 12
        )
        content_key = stable_hash([sorted(metric_options.items()), sorted(timing.items())], 12)
        cells.append(Cell(point, cell_id, cell_name(cfg, point), variant, SamplingSettings(**sampling),
                          metric_options, content_key))
    return cells


def group_units(cells: Iterable[Cell]) -> list[WorkUnit]:
    """Group cells by model variant; the reference variant's unit comes first."""
    units: dict[VariantSpec, WorkUnit] = {}
    for cell in cells:
        units.setdefault(cell.variant, WorkUnit(cell.variant)).cells.append(cell)
    ordered = sorted(units.values(), key=lambda u: u.variant.sort_key())
    for unit in ordered:
        unit.cells.sort(key=lambda c: (c.axes["sampler"], c.axes["steps"], c.axes["cfg_scale"], c.axes["seed"], c.name))
    return ordered
