"""The long-format result schema: one row per (cell, metric[, timestep]).

Every Parquet fragment carries all these columns (plus one per swept plugin option,
named by its dotted key), so a file read on its own says what it is.

The ``blob`` column holds a small array attached to a *diagnostic* row (a sample grid,
a denoising strip, a PCA projection, attention maps: what the image figures of
``bench plot`` need, so that results stay self-contained Parquet). It is the ``.npy``
serialisation of one numpy array (:func:`encode_blob` / :func:`decode_blob`, no
pickles) and null on every ordinary row. A metric attaches one by returning a row dict
with a ``blob`` key (bytes).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

SCHEMA_VERSION = "1"

#: column -> arrow type. Order is the order in the files.
COLUMNS: dict[str, pa.DataType] = {
    "benchmark": pa.string(),
    "run_id": pa.string(),
    "cell_id": pa.string(),
    "cell_name": pa.string(),
    "role": pa.string(),  # reference | student | pruned | pruned_student
    "model": pa.string(),
    "size_factor": pa.float64(),  # NaN for the teacher / reference
    "size_tier": pa.string(),  # tiny | small | medium | full | teacher
    "param_ratio": pa.float64(),  # num_params / reference num_params
    "pruning_method": pa.string(),
    "pruning_rate": pa.float64(),
    "sparsity": pa.float64(),  # measured share of zero weights in the denoiser
    "cfg_scale": pa.float64(),
    "sampler": pa.string(),
    "steps": pa.int64(),
    "seed": pa.int64(),
    "dataset": pa.string(),
    "num_samples": pa.int64(),
    "reference": pa.string(),  # FID-like metrics: the reference statistics used (else null)
    "num_reference": pa.int64(),  # ... and how many real images they hold
    "num_params": pa.int64(),
    "nonzero_params": pa.int64(),
    "macs": pa.float64(),  # multiply-accumulates of one denoiser call on one sample
    "speedup": pa.float64(),  # reference generation_time / this variant's
    "metric": pa.string(),
    "value": pa.float64(),
    # the metric's own uncertainty of value: s.d. over subsets (kid), standard error (fid_inf); else NaN
    "value_sd": pa.float64(),
    "timestep": pa.float64(),  # NaN unless a per-step row
    "higher_is_better": pa.bool_(),
    "status": pa.string(),  # ok | error
    "error": pa.string(),
    "duration_s": pa.float64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    # small array attached to a diagnostic row, .npy bytes; null for ordinary rows
    "blob": pa.binary(),
}

#: columns of bytes: ``bench results --export`` and :func:`harness.tables.export` drop them
BINARY_COLUMNS = ("blob",)

#: columns stored as pandas categoricals by ``load_results``
CATEGORICAL = (
    "benchmark",
    "run_id",
    "role",
    "model",
    "size_tier",
    "pruning_method",
    "sampler",
    "dataset",
    "metric",
    "status",
)


def size_tier(size_factor: float | None) -> str:
    """The seed's tiers: tiny < 0.1 <= small < 0.3 <= medium < 0.7 <= full; teacher if None."""
    if size_factor is None or size_factor != size_factor:  # None or NaN
        return "teacher"
    if size_factor < 0.1:
        return "tiny"
    if size_factor < 0.3:
        return "small"
    if size_factor < 0.7:
        return "medium"
    return "full"


def encode_blob(array: Any) -> bytes:
    """The ``.npy`` bytes of ``array`` (what a metric puts in a row's ``blob``).

    Object arrays are refused (they would need pickling to load); numbers, bools and
    fixed-width strings (``numpy.str_``) are fine.
    """
    import numpy as np

    arr = np.asarray(array)
    if arr.dtype.hasobject:
        raise ValueError(f"blob: cannot store an array of dtype {arr.dtype} (object arrays need pickling)")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def decode_blob(blob: bytes | bytearray | memoryview) -> np.ndarray:
    """The array stored in a ``blob`` cell (``numpy.load`` of the ``.npy`` bytes, no pickles)."""
    import numpy as np

    return np.load(io.BytesIO(bytes(blob)), allow_pickle=False)


@dataclass
class ResultRow:
    """One stored row: a field per schema column (:data:`COLUMNS`, same names and order),
    plus ``options``, the cell's swept plugin options (one extra column each).

    ``benchmark``, ``run_id`` and ``timestamp`` are filled in by the runner when it stores
    the row; everything else by the worker.
    """

    cell_id: str
    cell_name: str
    role: str
    model: str
    size_factor: float
    size_tier: str
    pruning_method: str
    pruning_rate: float
    cfg_scale: float
    sampler: str
    steps: int
    seed: int
    dataset: str
    num_samples: int
    metric: str
    status: str
    value: float = math.nan
    value_sd: float = math.nan
    param_ratio: float = math.nan
    sparsity: float = math.nan
    reference: str | None = None
    num_reference: int | None = None
    num_params: int | None = None
    nonzero_params: int | None = None
    macs: float = math.nan
    speedup: float = math.nan
    timestep: float = math.nan
    higher_is_better: bool | None = None
    error: str | None = None
    duration_s: float = math.nan
    blob: bytes | None = None
    benchmark: str | None = None
    run_id: str | None = None
    timestamp: Any = None
    options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The row as the store and the ``bench_after_cell`` hook take it: schema columns in
        schema order, then one key per swept option."""
        row = {name: getattr(self, name) for name in COLUMNS}
        row.update(self.options)
        return row
