"""Stage 3, metric values: the rows of one metric on one cell's sample sets (and models).

A value is a ``metric`` artifact keyed by the metric's name, options and code version,
the cell seed and what the metric reads: the sample sets' keys (and which drawing of
them) for a metric that reads samples; the models' keys (and the dataset) for one that
reads none (``noise_prediction_mse``: one value per model, shared by its cells at every
CFG scale). Adding a metric to a finished matrix computes only that metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from harness.base import Metric, MetricContext
from harness.options import options_dict
from harness.cache import canonical_json
from harness.errors import CellError
from harness.planner import Cell
from harness.samples import SampleSet
from harness.session import Session
from harness.variants import Variant

TRAJECTORY_REQS = frozenset({"trajectories", "reference_trajectories"})
REFERENCE_REQS = frozenset({"reference_samples", "reference_trajectories", "model"})
#: a metric requiring none of these reads no sample set: its key leaves them out
SAMPLE_REQS = frozenset({"samples", "reference_samples", "trajectories", "reference_trajectories", "conditions"})


@dataclass
class CellInputs:
    """What a cell's metrics read: its variant and samples, and its reference's."""

    variant: Variant
    samples: SampleSet
    ref_variant: Variant
    reference: SampleSet


class MetricStage:
    """Computes (or loads) metric values; one plugin object per (name, options) for the
    session's life (a metric may keep loaded weights on itself between cells)."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self._objects: dict[tuple[str, str], Metric] = {}
        self._real: dict[str, torch.Tensor] = {}

    def objects(self, cell: Cell) -> list[tuple[str, Metric]]:
        out = []
        for spec in self.s.cfg.metrics:
            options = cell.metric_options.get(spec.name, spec.options)
            memo_key = (spec.name, canonical_json(options))
            if memo_key not in self._objects:
                self._objects[memo_key] = self.s.registry.get("metrics", spec.name)(**options)
            out.append((spec.name, self._objects[memo_key]))
        return out

    def config(self, cell: Cell, name: str, metric: Metric, inputs: CellInputs) -> dict[str, Any]:
        """What identifies a metric value (hashed into its key)."""
        req = type(metric).requires
        config: dict[str, Any] = {
            "metric": name,
            "options": options_dict(metric.options),
            "code": getattr(metric, "cache_version", "1"),
            "variant": inputs.variant.key if "model" in req else None,
            "cell_seed": cell.axes["seed"],
            "bench_seed": self.s.cfg.benchmark.seed,
        }
        if type(metric).fingerprint is not Metric.fingerprint:  # e.g. the feature extractor's weights
            config["fingerprint"] = metric.fingerprint(self.context(cell, name, metric, inputs))
        if req & SAMPLE_REQS:
            ref = bool(req & REFERENCE_REQS)
            config.update({
                "samples": inputs.samples.key,
                # which drawing of that sample set: rebuilt samples (a deleted cache) are measured
                # anew, so timings and everything computed from them are recomputed too
                "drawn": inputs.samples.stats.get("sampling_seconds"),
                "reference": inputs.reference.key if ref else None,
                "reference_drawn": inputs.reference.stats.get("sampling_seconds") if ref else None,
            })
        else:
            config.update({
                "reference_variant": inputs.ref_variant.key if "model" in req else None,
                "dataset": self.s.dataset(cell.variant).config_key() if "real_images" in req else None,
            })
        return config

    def rows(self, cell: Cell, name: str, metric: Metric, inputs: CellInputs) -> list[dict[str, Any]]:
        """The metric's rows for ``cell``: ``metric``, ``value``, ``higher_is_better`` and
        the optional ``timestep``, ``reference``, ``num_reference``, ``blob``."""

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            rows = normalise_metric_result(name, metric.compute(self.context(cell, name, metric, inputs)))
            # blobs (bytes) cannot go in the JSON metadata: row i's is tensor "blob.i"
            blobs = {f"blob.{i}": torch.frombuffer(bytearray(r.pop("blob")), dtype=torch.uint8)
                     for i, r in enumerate(rows) if "blob" in r}
            return blobs, {"rows": rows}

        if type(metric).cached:
            art = self.s.cache.get_or_create("metric", self.config(cell, name, metric, inputs), compute)
            tensors, meta = art.tensors, art.meta
        else:
            tensors, meta = compute()
        hib = bool(type(metric).higher_is_better)
        out = []
        for i, r in enumerate(meta["rows"]):
            blob = tensors.get(f"blob.{i}")
            out.append({**r, "higher_is_better": r.get("higher_is_better", hib),
                        **({"blob": blob.numpy().tobytes()} if blob is not None else {})})
        return out

    def context(self, cell: Cell, name: str, metric: Metric, inputs: CellInputs) -> MetricContext:
        """The metric's view of the cell: only what its ``requires`` names is filled in."""
        req = type(metric).requires
        samples, reference = inputs.samples, inputs.reference
        ctx = MetricContext(
            cell=cell,
            device=self.s.device,
            generator=self.s.generator(cell.axes["seed"], "metric", name),
            dataset=self.s.dataset(cell.variant),
            sampling_stats=dict(samples.stats),
            cache=self.s.cache,
            timesteps=samples.timesteps,
            samples=samples.images,
            conditions=samples.conditions,
        )
        if "reference_samples" in req:
            ctx.reference_samples = reference.images
        if "trajectories" in req:
            ctx.trajectories = samples.trajectory
        if "reference_trajectories" in req:
            ctx.reference_trajectories = reference.trajectory
        if "real_images" in req:
            ctx.real_images = self.real_images(cell)
        if "model" in req:
            ctx.model = inputs.variant.model
            ctx.reference_model = inputs.ref_variant.model
        return ctx

    def real_images(self, cell: Cell) -> torch.Tensor:
        """The dataset's reference split in [0, 1] (read once per dataset)."""
        ds = self.s.dataset(cell.variant)
        key = canonical_json(ds.config_key())
        if key not in self._real:
            self._real[key] = ds.load("reference").images
        return ((self._real[key] + 1) / 2).clamp(0, 1)  # a fresh tensor: metrics may change theirs


def normalise_metric_result(name: str, result: Any) -> list[dict[str, Any]]:
    """float | {name: float} | [row dicts] -> row dicts with finite float values.

    A row dict may carry ``value_sd`` (float: the metric's own uncertainty of ``value``,
    e.g. KID's s.d. over subsets), ``reference`` (str: the reference statistics it was measured
    against), ``num_reference`` (int: how many real images they hold), ``timestep``,
    ``higher_is_better`` and ``blob``: bytes (the ``.npy`` of a small array, see
    ``harness.schema.encode_blob``); other extra keys are dropped.
    """
    if isinstance(result, dict):
        rows = [{"metric": k, "value": v} for k, v in result.items()]
    elif isinstance(result, (list, tuple)):
        rows = [dict(r) for r in result]
    else:
        rows = [{"metric": name, "value": result}]
    return [_clean_row(name, r) for r in rows]


def _clean_row(name: str, r: dict[str, Any]) -> dict[str, Any]:
    if "metric" not in r or "value" not in r:
        raise CellError(f"metric '{name}' returned a row without 'metric' and 'value': {r!r}")
    value = float(r["value"])
    if not math.isfinite(value):
        raise CellError(f"metric '{name}' returned {'NaN' if math.isnan(value) else value} for '{r['metric']}'")
    clean: dict[str, Any] = {"metric": str(r["metric"]), "value": value}
    if r.get("timestep") is not None:
        clean["timestep"] = float(r["timestep"])
    if r.get("value_sd") is not None:
        clean["value_sd"] = float(r["value_sd"])
    if "higher_is_better" in r:
        clean["higher_is_better"] = bool(r["higher_is_better"])
    if r.get("reference") is not None:  # which reference statistics (FID-like metrics)
        clean["reference"] = str(r["reference"])
    if r.get("num_reference") is not None:
        clean["num_reference"] = int(r["num_reference"])
    if r.get("blob") is not None:
        if not isinstance(r["blob"], (bytes, bytearray, memoryview)) or not len(r["blob"]):
            raise CellError(f"metric '{name}' returned a blob of type {type(r['blob']).__name__} for "
                            f"'{r['metric']}'; a blob is non-empty bytes (harness.schema.encode_blob(array))")
        clean["blob"] = bytes(r["blob"])
    return clean
