"""Result rows as Arrow tables: typed from row dicts for a fragment, and read back.

:func:`rows_to_table` types a cell's rows (the schema's columns, then one per swept
option); :func:`load_results` reads every live fragment under a folder into one typed
DataFrame. The layout on disk is described in :mod:`harness.store`, which writes it:
live fragments are the ``*.parquet`` files whose names, and whose folders' names below
the folder read, do not start with ``_`` or ``.``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import UserError, did_you_mean, valid_choices
from harness.schema import CATEGORICAL, COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

FRAGMENT_SUFFIX = ".parquet"
SUPERSEDED_DIR = "_superseded"
SUPERSEDED_SUFFIX = ".parquet.superseded"

#: columns on which a row is paired with its reference row (plus swept ``metrics.*`` options)
REFERENCE_KEYS = ("benchmark", "metric", "timestep", "cfg_scale", "sampler", "steps", "seed")
#: columns that ``load_results(with_reference=True)`` adds
ADDED_COLUMNS = ("reference_value", "delta")
STATUSES = ("ok", "error")


def widen_type(a: pa.DataType | None, b: pa.DataType | None) -> pa.DataType | None:
    """The type that holds values of both ``a`` and ``b`` (None = unknown yet)."""
    if a is None or b is None or a == b:
        return a if b is None else b
    if pa.types.is_null(a) or pa.types.is_null(b):
        return b if pa.types.is_null(a) else a
    numeric = (pa.int64(), pa.float64())
    if a in numeric and b in numeric:
        return pa.float64()
    return pa.string()


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ == "NaTType"


def infer_arrow_type(values: Iterable[Any]) -> pa.DataType | None:
    """The column type of a swept option's values: bool, int64, float64 or string.

    ``None`` if every value is missing. Ints mixed with floats give float64; anything
    else mixed (or lists, dicts) is stored as strings.
    """
    kinds = set()
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool) or type(v).__name__ == "bool_":  # numpy.bool_ without importing numpy
            kinds.add("bool")
        elif isinstance(v, numbers.Integral):
            kinds.add("int")
        elif isinstance(v, numbers.Real):
            kinds.add("float")
        else:
            kinds.add("str")
    if not kinds:
        return None
    if len(kinds) == 1 and kinds != {"str"}:
        return {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64()}[kinds.pop()]
    return pa.float64() if kinds <= {"int", "float"} else pa.string()


def _to_str(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=str, sort_keys=True)
    return str(v)


def _to_bytes(v: Any) -> Any:
    if _is_missing(v):
        return None
    if isinstance(v, (bytes, bytearray, memoryview)):
        return v
    raise TypeError(f"{type(v).__name__} is not bytes (a blob is the .npy bytes of an array: harness.schema.encode_blob)")


def _timestamp(v: Any) -> Any:
    """Strings (ISO 8601) and numbers (seconds since the epoch) as datetimes; pyarrow
    takes the rest (naive datetimes are UTC, as everything the harness writes)."""
    if isinstance(v, str):
        return _dt.datetime.fromisoformat(v)
    if isinstance(v, numbers.Real) and not _is_missing(v):
        return _dt.datetime.fromtimestamp(float(v), _dt.timezone.utc)
    return None if _is_missing(v) else v


def _array(name: str, values: list[Any], typ: pa.DataType) -> pa.Array:
    """Convert one column with pyarrow; None (and NaN in numeric columns) becomes null."""
    try:
        if pa.types.is_string(typ):
            return pa.array([_to_str(v) for v in values], typ)
        if pa.types.is_binary(typ):
            return pa.array([_to_bytes(v) for v in values], typ)
        if pa.types.is_timestamp(typ):
            return pa.array([_timestamp(v) for v in values], typ)
        # numbers and bools: inferred, then a safe cast (refuses 1.5 as an int; NaN is
        # turned into null here, as pyarrow's from_pandas=True would import pandas)
        return pa.array([None if _is_missing(v) else v for v in values]).cast(typ)
    except (TypeError, ValueError, pa.ArrowException) as exc:
        raise ValueError(f"column {name!r}: cannot store {values!r} as {typ}: {exc}") from exc


def rows_to_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    fixed: Mapping[str, Any] | None = None,
    extra_types: Mapping[str, pa.DataType] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> pa.Table:
    """Rows (dicts) -> an arrow table with every schema column, in order, then extras.

    :param fixed: values that override every row's (benchmark, run_id, cell_id).
    :param extra_types: types of extra columns (others are inferred from their values).
    :param metadata: Parquet schema metadata.
    """
    fixed, extra_types = dict(fixed or {}), dict(extra_types or {})
    columns = {n: [fixed[n]] * len(rows) if n in fixed else [r.get(n) for r in rows] for n in COLUMNS}
    if "timestamp" not in fixed:
        now = _dt.datetime.now(_dt.timezone.utc)
        columns["timestamp"] = [v or now for v in columns["timestamp"]]
    types = dict(COLUMNS)
    for name in sorted({k for r in rows for k in r if k not in COLUMNS}):
        columns[name] = [r.get(name) for r in rows]
        types[name] = widen_type(extra_types.get(name), infer_arrow_type(columns[name])) or pa.string()
    schema = pa.schema([pa.field(n, t) for n, t in types.items()],
                       metadata={k: str(v) for k, v in (metadata or {}).items()})
    return pa.Table.from_arrays([_array(n, columns[n], t) for n, t in types.items()], schema=schema)


def validate_rows(cell_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Raise ``ValueError`` naming the cell and row unless every row is a dict with a
    ``metric`` and a valid ``status``."""
    if not rows:
        raise ValueError(f"cell {cell_id}: no rows to store (an errored cell stores one status='error' row)")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"cell {cell_id}: row {i} is {type(row).__name__}, not a dict")
        if not isinstance(row.get("metric"), str) or not row["metric"]:
            raise ValueError(f"cell {cell_id}: row {i} has no 'metric' (got {row.get('metric')!r})")
        if row.get("status") not in STATUSES:
            raise ValueError(f"cell {cell_id}: row {i} has status {row.get('status')!r}; valid: 'ok', 'error'")


def cell_status(rows: Iterable[Mapping[str, Any]]) -> str:
    """A cell's status: ``"error"`` if any of its rows is, else ``"ok"``."""
    return "error" if any(r.get("status") == "error" for r in rows) else "ok"



# -- reading ----------------------------------------------------------------------------


MANIFEST = "_manifest.json"


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def _is_run_folder(d: Path) -> bool:
    """A folder written by ``bench run``: a manifest, or fragments directly inside."""
    return (d / MANIFEST).is_file() or any(
        f.endswith(FRAGMENT_SUFFIX) and not _hidden(f) for f in os.listdir(d))


def run_ids(path: str | os.PathLike[str]) -> list[str]:
    """The run ids of the benchmark folder ``path``, oldest first (``[]`` if it holds none)."""
    root = Path(path)
    if not root.is_dir() or (root / MANIFEST).is_file():
        return []
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not _hidden(e.name) and _is_run_folder(Path(e.path)))


def select_runs(path: str | os.PathLike[str], runs: Sequence[str] | None = None, latest: bool = False) -> list[Path]:
    """The run folders of the benchmark folder ``path`` (``results/<benchmark>``) named by
    ``runs``, or the newest one with ``latest`` (run ids sort in creation order).

    :raises UserError: ``path`` is not a benchmark folder, or a run id is not one of its
        runs (the message names the valid run ids).
    """
    root = Path(path)
    valid = run_ids(root)
    if not valid:
        if root.is_dir() and (root / MANIFEST).is_file():
            hint = f"; this is run {root.name}: give {root.parent} --run {root.name}"
        else:
            inside = sorted({str(m.parent.parent) for m in root.glob(f"*/*/{MANIFEST}")}) if root.is_dir() else []
            hint = f"; benchmark folders under it: {', '.join(inside)}" if inside else ""
        raise UserError(f"{path}: not a benchmark folder with runs (results/<benchmark>/<run_id>/); "
                        f"--run and --latest select runs of one benchmark{hint}")
    if latest:
        return [root / valid[-1]]
    unknown = [r for r in runs or () if r not in valid]
    if unknown:
        raise UserError(f"--run {unknown[0]}: no such run in {path}{did_you_mean(unknown[0], valid)}; "
                        f"{valid_choices(valid)}")
    return [root / r for r in dict.fromkeys(runs or ())]


def fragment_files(path: str | os.PathLike[str], runs: Sequence[str] | None = None,
                   latest: bool = False) -> list[Path]:
    """Every live fragment under ``path`` (a file, or a folder searched recursively).

    Names starting with ``_`` or ``.`` below ``path`` are skipped, as Parquet readers
    do; a ``_superseded`` folder given explicitly lists its superseded fragments. With
    ``runs`` or ``latest``, only the fragments of those runs of the benchmark folder
    ``path`` (:func:`select_runs`).
    """
    if runs or latest:
        return [f for d in select_runs(path, runs, latest) for f in fragment_files(d)]
    root = Path(path)
    if root.is_file():
        return [root]
    suffixes = (FRAGMENT_SUFFIX, SUPERSEDED_SUFFIX) if SUPERSEDED_DIR in root.resolve().parts else (FRAGMENT_SUFFIX,)
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        out.extend(
            Path(dirpath, f) for f in sorted(filenames) if f.endswith(suffixes) and not f.startswith(("_", "."))
        )
    return out


def _read_fragment(path: Path) -> pa.Table:
    # Reading the bytes first is ~2x faster for small files than pq.read_table(path).
    try:
        with open(path, "rb") as fh:
            table = pq.ParquetFile(pa.BufferReader(fh.read())).read(use_threads=False)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read result fragment {path}: {exc}; move it away or delete it") from exc
    return table.replace_schema_metadata(None)  # per-cell metadata would make every schema differ


def _unify(tables: list[pa.Table]) -> pa.Table:
    """Concatenate fragments (in order) whose extra columns, or their types, differ."""
    types: dict[str, pa.DataType | None] = {}
    last: pa.Schema | None = None
    for t in tables:
        # fragments mostly share a schema: compare with the last one seen (cheap), and
        # look at the columns again only while an option has been seen as nulls only
        known = all(types.get(n) is not None for n in t.column_names if n not in COLUMNS)
        if last is not None and known and t.schema.equals(last):
            continue
        last = t.schema
        for field, col in zip(t.schema, t.columns):
            # an all-null column says nothing about the type; don't let it widen to string
            types[field.name] = widen_type(types.get(field.name), None if col.null_count == len(col) else field.type)
    order = [*COLUMNS, *sorted(c for c in types if c not in COLUMNS)]
    schema = pa.schema([pa.field(c, COLUMNS.get(c) or types.get(c) or pa.string()) for c in order])
    out = []
    for t in tables:
        if t.schema.equals(schema):
            out.append(t)
            continue
        cols = []
        for field in schema:
            if field.name not in t.column_names:
                cols.append(pa.nulls(len(t), field.type))
                continue
            col = t.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type) if col.null_count < len(col) else pa.nulls(len(col), field.type)
            cols.append(col)
        out.append(pa.Table.from_arrays(cols, schema=schema))
    return pa.concat_tables(out)


def load_results(
    path: str | os.PathLike[str],
    *,
    runs: Sequence[str] | None = None,
    latest: bool = False,
    with_reference: bool = False,
    include_errors: bool = True,
) -> pd.DataFrame:
    """Read every live fragment under ``path`` into one typed pandas DataFrame.

    ``path`` is a results folder, a benchmark folder, a run folder or one fragment.
    ``runs`` (run ids) or ``latest`` (the newest run) read only those runs of the
    benchmark folder ``path``: the cells each run computed and that no later run
    superseded (:func:`select_runs`).
    Columns: the schema's, in order (categoricals for ``schema.CATEGORICAL``, timestamps
    in UTC, NaN for missing floats, nullable ``Int64``/``boolean`` for ints and bools),
    then one per swept option. ``blob`` holds ``bytes`` on diagnostic rows (decode with
    :func:`harness.schema.decode_blob`) and ``None`` elsewhere. With ``with_reference``
    adds ``reference_value`` (the value of the reference row of the same benchmark,
    metric, timestep, cfg_scale, sampler, steps, seed and swept ``metrics.*`` options;
    the same run's when several runs hold one, else the newest) and
    ``delta = value - reference_value``.
    """
    import pandas as pd

    files = fragment_files(path, runs, latest)
    if not files and (runs or latest):
        chosen = ", ".join(d.name for d in select_runs(path, runs, latest))
        raise UserError(f"{path}: no live results in run {chosen} (its cells were superseded by later runs, "
                        "or it stored none)")
    if not files:
        raise UserError(f"no results under {path}")
    table = _unify([_read_fragment(f) for f in files]).combine_chunks()
    df = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)
    for col in CATEGORICAL:
        df[col] = df[col].astype("category")
    if not include_errors:
        df = df[df["status"] != "error"].reset_index(drop=True)
        df["status"] = df["status"].cat.remove_unused_categories()
    if with_reference:
        df = add_reference(df)
    return df


def add_reference(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``reference_value`` and ``delta`` columns (see :func:`load_results`)."""
    import numpy as np
    import pandas as pd

    keys = [*REFERENCE_KEYS, *sorted(c for c in df.columns if c.startswith("metrics."))]
    out = df.reset_index(drop=True).copy()
    ref = out[(out["role"] == "reference") & (out["status"] == "ok")]
    ref = ref[[*keys, "value", "run_id", "timestamp"]].rename(
        columns={"value": "_ref_value", "run_id": "_ref_run", "timestamp": "_ref_time"}
    )
    left = out[[*keys, "run_id"]].assign(_row=np.arange(len(out)))
    # Plain (not categorical) keys: categories of the subsets may differ.
    for frame in (left, ref):
        for k in keys:
            if isinstance(frame[k].dtype, pd.CategoricalDtype):
                frame[k] = frame[k].astype(object)
    m = left.merge(ref, on=keys, how="inner")
    m["_same_run"] = m["run_id"].astype(str) == m["_ref_run"].astype(str)
    m = m.sort_values(["_row", "_same_run", "_ref_time"], ascending=[True, False, False])
    m = m.drop_duplicates("_row")
    reference = np.full(len(out), np.nan)
    reference[m["_row"].to_numpy()] = m["_ref_value"].to_numpy(dtype=float, na_value=np.nan)
    out["reference_value"] = reference
    out["delta"] = out["value"] - out["reference_value"]
    return out
