"""The result store: one Parquet fragment per cell, written atomically, read with pandas.

Layout (folders are plain names, not hive ``key=value`` partitions)::

    <results_dir>/<benchmark>/<run_id>/<cell_id>.parquet      one fragment per cell
    <results_dir>/<benchmark>/<run_id>/_manifest.json         what the run was
    <results_dir>/<benchmark>/<run_id>/_index.jsonl           cache for stored_cells()
    <results_dir>/<benchmark>/_superseded/<run_id>/<cell_id>.parquet.superseded
    <results_dir>/<benchmark>/.lock                           holder's pid
    <results_dir>/.cache/                                     the artifact cache

Every non-fragment name starts with ``_`` or ``.`` (pyarrow, hence
``pandas.read_parquet("results")``, skips those) and does not end in ``.parquet``
(DuckDB's and polars' ``results/**/*.parquet`` globs skip nothing, not even ``_`` and
``.`` folders). That is why a temporary file is ``.tmp-<cell_id>-<pid>.parquet.tmp`` and
a superseded fragment is ``<cell_id>.parquet.superseded``: the live fragments are
exactly the files that every reader sees.

Crash safety: a fragment is written to a hidden temporary file in its run folder,
flushed, fsynced and renamed into place, so a SIGKILL leaves either the whole fragment
or nothing visible. The files that exist are the truth; ``_index.jsonl`` only caches each
fragment's status together with its (inode, size, mtime) so :meth:`ResultStore.stored_cells`
does not open 10,000 files, and a fragment that the index does not describe (the writer
died between rename and append) is read from its Parquet footer instead.

The fsync (so that a power cut cannot leave a renamed but empty file) costs 1-10 ms on
many disks, more than everything else a write does. ``write_cell(..., wait=False)``
hands the encoding, fsync and rename to the store's one writer thread, which keeps
submission order, so the runner's next cell overlaps it; queued writes are flushed by
``Run.finish``, ``stored_cells`` and on leaving ``ResultStore.lock``.

Writers hold :meth:`ResultStore.lock`; it makes the store's picture of the live
fragments (needed to supersede an older one) trustworthy for the whole run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import math
import numbers
import os
import re
import secrets
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from harness import writegate
from harness.cache import remove_stale_tmp, tmp_tag
from harness.errors import UserError
from harness.schema import BINARY_COLUMNS, CATEGORICAL, COLUMNS, SCHEMA_VERSION

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from rich.table import Table

log = logging.getLogger(__name__)

FRAGMENT_SUFFIX = ".parquet"
SUPERSEDED_DIR = "_superseded"
SUPERSEDED_SUFFIX = ".parquet.superseded"
MANIFEST = "_manifest.json"
INDEX = "_index.jsonl"
LOCK = ".lock"

#: keys of the Parquet schema metadata of every fragment
META_SCHEMA_VERSION = "diffbench.schema_version"
META_VERSION = "diffbench.version"
META_STATUS = "diffbench.status"
#: hash of what the cell was computed with beyond its identity (its metric list and options)
META_CONTENT_KEY = "diffbench.content_key"
META_CELL_ID = "diffbench.cell_id"
META_RUN_ID = "diffbench.run_id"
META_BENCHMARK = "diffbench.benchmark"

STATUSES = ("ok", "error")

#: A fragment holds a handful of rows: per-column statistics and dictionaries only make
#: the footer (which every reader parses) bigger; without them a write costs ~0.7 ms
#: instead of ~1.2 ms and a read ~0.45 ms instead of ~0.7 ms (31 columns, 5 rows).
_PARQUET_OPTIONS: dict[str, Any] = {"write_statistics": False, "use_dictionary": False}

#: fragments queued for the writer thread before write_cell waits (each is a few KB)
_MAX_PENDING_WRITES = 256

#: axes over which :func:`summarize` groups (seed is what it averages over)
SUMMARY_AXES = (
    "benchmark",
    "role",
    "model",
    "size_factor",
    "pruning_method",
    "pruning_rate",
    "cfg_scale",
    "sampler",
    "steps",
)

#: columns on which a row is paired with its reference row (plus swept ``metrics.*`` options)
REFERENCE_KEYS = ("benchmark", "metric", "timestep", "cfg_scale", "sampler", "steps", "seed")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+,-]*$")
_ADDED_COLUMNS = ("reference_value", "delta")


def _diffbench_version() -> str:
    from harness import __version__

    return __version__


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def new_run_id(now: _dt.datetime | None = None, after: str | None = None) -> str:
    """A sortable, unique run id: UTC time + 4 random hex digits, ``20261123-192233-ab12``.

    :param after: the newest existing run id; within the same second the random part is
        drawn above its own, so run ids sort in creation order.
    """
    stamp = (now or _utcnow()).astimezone(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    low = 0
    if after and after[: len(stamp)] == stamp:
        with contextlib.suppress(ValueError):
            low = int(after[len(stamp) + 1 :], 16) + 1
    if low == 0 or low > 0xFFFF:  # (thousands of runs in one second: give up ordering)
        return f"{stamp}-{secrets.token_hex(2)}"
    # a small step up, so that many runs fit in one second
    return f"{stamp}-{low + secrets.randbelow(min(64, 0x10000 - low)):04x}"


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise UserError(
            f"{what} {name!r} cannot name a results folder or file: use letters, digits and "
            "'_.=+,-', not starting with '_' or '.'"
        )
    return name


# -- atomic file writes -----------------------------------------------------------------


def _atomic_write_bytes(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` through a hidden temp file + fsync + rename."""
    tmp = final.with_name(f".tmp-{final.name}-{tmp_tag()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _atomic_write_json(final: Path, obj: Any) -> None:
    _atomic_write_bytes(final, (json.dumps(obj, indent=1, default=str) + "\n").encode())


# -- rows -> arrow ----------------------------------------------------------------------


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ == "NaTType"


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool) or type(v).__name__ == "bool_"  # numpy.bool_ without importing numpy


def infer_arrow_type(values: Iterable[Any]) -> pa.DataType | None:
    """The column type of a swept option's values: bool, int64, float64 or string.

    ``None`` if every value is missing. Ints mixed with floats give float64; anything
    else mixed (or lists, dicts) is stored as strings.
    """
    kinds = set()
    for v in values:
        if v is None:
            continue
        if _is_bool(v):
            kinds.add("bool")
        elif isinstance(v, numbers.Integral):
            kinds.add("int")
        elif isinstance(v, numbers.Real):
            kinds.add("float")
        else:
            kinds.add("str")
    if not kinds:
        return None
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"int"}:
        return pa.int64()
    if kinds <= {"int", "float"}:
        return pa.float64()
    return pa.string()


def _widen(a: pa.DataType | None, b: pa.DataType | None) -> pa.DataType | None:
    """The type that holds values of both ``a`` and ``b`` (None = unknown yet)."""
    if a is None or b is None or a == b:
        return a if b is None else b
    if pa.types.is_null(a) or pa.types.is_null(b):
        return b if pa.types.is_null(a) else a
    numeric = (pa.int64(), pa.float64())
    if a in numeric and b in numeric:
        return pa.float64()
    return pa.string()


def _to_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=str, sort_keys=True)
    return str(v)


def _array(name: str, values: list[Any], typ: pa.DataType) -> pa.Array:
    """Convert one column; None (and NaN in numeric columns) becomes null."""
    try:
        if pa.types.is_string(typ):
            return pa.array([_to_str(v) for v in values], typ)
        if pa.types.is_floating(typ):
            # NaN -> null by hand: pyarrow's from_pandas=True would import pandas (~1 s)
            return pa.array([None if _is_missing(v) else float(v) for v in values], typ)
        if pa.types.is_integer(typ):
            ints = []
            for v in values:
                if _is_missing(v):
                    ints.append(None)
                elif isinstance(v, numbers.Integral) and not _is_bool(v):
                    ints.append(int(v))
                elif isinstance(v, numbers.Real) and float(v).is_integer():
                    ints.append(int(v))
                else:
                    raise TypeError(f"{v!r} is not an integer")
            return pa.array(ints, typ)
        if pa.types.is_boolean(typ):
            return pa.array([None if _is_missing(v) else bool(v) for v in values], typ)
        if pa.types.is_timestamp(typ):
            return pa.array([_timestamp(v) for v in values], typ)
        if pa.types.is_binary(typ):
            return pa.array([_to_bytes(v) for v in values], typ)
        return pa.array(values, typ)
    except (TypeError, ValueError, pa.ArrowException) as exc:
        raise ValueError(f"column {name!r}: cannot store {values!r} as {typ}: {exc}") from exc


def _to_bytes(v: Any) -> bytes | None:
    if _is_missing(v):
        return None
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"{type(v).__name__} is not bytes (a blob is the .npy bytes of an array: harness.schema.encode_blob)")


def _timestamp(v: Any) -> _dt.datetime | None:
    if _is_missing(v):
        return None
    if isinstance(v, str):
        v = _dt.datetime.fromisoformat(v)
    elif isinstance(v, numbers.Real):  # seconds since the epoch
        v = _dt.datetime.fromtimestamp(float(v), _dt.timezone.utc)
    elif hasattr(v, "to_pydatetime"):  # pandas.Timestamp
        v = v.to_pydatetime()
    if v.tzinfo is None:  # naive = UTC, as everything the harness writes
        v = v.replace(tzinfo=_dt.timezone.utc)
    return v.astimezone(_dt.timezone.utc)


def _validate_rows(cell_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
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
    fixed = dict(fixed or {})
    extra_types = dict(extra_types or {})
    extras: list[str] = sorted({k for r in rows for k in r if k not in COLUMNS})
    now = _utcnow()
    arrays: list[pa.Array] = []
    fields: list[pa.Field] = []
    for name, typ in COLUMNS.items():
        if name in fixed:
            values = [fixed[name]] * len(rows)
        elif name == "timestamp":
            values = [r.get(name) or now for r in rows]
        else:
            values = [r.get(name) for r in rows]
        arrays.append(_array(name, values, typ))
        fields.append(pa.field(name, typ))
    for name in extras:
        values = [r.get(name) for r in rows]
        typ = _widen(extra_types.get(name), infer_arrow_type(values)) or pa.string()
        arrays.append(_array(name, values, typ))
        fields.append(pa.field(name, typ))
    schema = pa.schema(fields, metadata={k: str(v) for k, v in (metadata or {}).items()})
    return pa.Table.from_arrays(arrays, schema=schema)


# -- runs and the store -----------------------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    """A live fragment: which run holds the cell, and the cell's status."""

    cell_id: str
    run_id: str
    status: str
    benchmark_dir: Path
    #: the runner's content key (metric list and options) the rows were computed with
    content_key: str | None = None

    @property
    def path(self) -> Path:
        # computed, not stored: building 10,000 Path objects is most of a scan's time
        return self.benchmark_dir / self.run_id / f"{self.cell_id}{FRAGMENT_SUFFIX}"


class Run:
    """One ``bench run`` invocation: a folder of fragments plus ``_manifest.json``.

    Made by :meth:`ResultStore.new_run`; writers should hold :meth:`ResultStore.lock`.
    """

    def __init__(self, store: ResultStore, run_id: str, manifest: dict[str, Any]) -> None:
        self.store = store
        self.run_id = run_id
        self.path = store.path / run_id
        self.manifest = manifest
        #: cells stored by this run, by status, and earlier fragments it superseded
        self.counts = {"ok": 0, "error": 0, "superseded": 0}
        self._extra_types: dict[str, pa.DataType] = {}

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def declare_columns(self, values: Mapping[str, Iterable[Any]]) -> None:
        """Fix the types of extra columns from all their swept values.

        Without this a column is typed from the first values written, so a sweep such
        as ``[0.5, 1]`` would store int64 in one fragment and float64 in another, which
        polars (and pandas, when the first fragment read holds the int) refuse to mix.
        """
        for name, vals in values.items():
            typ = infer_arrow_type(vals)
            if typ is not None:
                self._extra_types[name] = _widen(self._extra_types.get(name), typ)

    def write_cell(
        self, cell_id: str, rows: Sequence[Mapping[str, Any]], *, wait: bool = True, content_key: str | None = None
    ) -> Path:
        """Store a cell's rows as ``<run>/<cell_id>.parquet``, atomically; return that path.

        Missing schema columns are filled with nulls; ``benchmark``, ``run_id`` and
        ``cell_id`` are set from the store; ``timestamp`` defaults to now. A live
        fragment of the same cell (an earlier run's, or this run's earlier attempt) is
        moved under ``_superseded/``, so exactly one fragment per cell is live.

        Rows are checked and typed here (a bad row raises ``ValueError`` at once); the
        file is encoded, written, fsynced and renamed into place by the store's writer
        thread.
        With ``wait=False`` this returns before that, so the fsync (a few ms on many
        disks) overlaps the next cell: the fragment is then in place after :meth:`flush`,
        :meth:`finish`, :meth:`ResultStore.stored_cells` or leaving
        :meth:`ResultStore.lock`, and a failed write raises from the next of these calls
        or of ``write_cell``. A crash loses only the queued cells (the cells in flight).
        """
        _check_name(cell_id, "cell id")
        _validate_rows(cell_id, rows)
        status = cell_status(rows)
        for name in {k for r in rows for k in r if k not in COLUMNS}:
            typ = infer_arrow_type(r.get(name) for r in rows)
            if typ is not None:
                self._extra_types[name] = _widen(self._extra_types.get(name), typ)
        table = rows_to_table(
            rows,
            fixed={"benchmark": self.store.benchmark, "run_id": self.run_id, "cell_id": cell_id},
            extra_types=self._extra_types,
            metadata={
                META_SCHEMA_VERSION: SCHEMA_VERSION,
                META_VERSION: _diffbench_version(),
                META_STATUS: status,
                **({META_CONTENT_KEY: content_key} if content_key else {}),
                META_CELL_ID: cell_id,
                META_RUN_ID: self.run_id,
                META_BENCHMARK: self.store.benchmark,
            },
        )
        self.store._submit(cell_id, self.store._commit, self, cell_id, table, status, content_key, wait=wait)
        return self.path / f"{cell_id}{FRAGMENT_SUFFIX}"

    def flush(self) -> None:
        """Wait until every fragment written so far is in place (see :meth:`write_cell`)."""
        self.store.flush()

    def finish(self, **updates: Any) -> dict[str, Any]:
        """Flush, then rewrite the manifest with ``end_time``, a ``summary`` and ``updates``.

        ``summary`` counts this run's cells (``cells``, ``ok``, ``error``,
        ``superseded``); a ``summary=`` update is merged into it, other updates replace
        top-level keys. Returns the manifest.
        """
        self.flush()
        summary = {"cells": self.counts["ok"] + self.counts["error"], **self.counts}
        summary.update(updates.pop("summary", None) or {})
        self.manifest.update({"end_time": _utcnow().isoformat(), "status": "finished", "summary": summary})
        self.manifest.update(updates)
        _atomic_write_json(self.path / MANIFEST, self.manifest)
        return self.manifest


class ResultStore:
    """The results of one benchmark: ``<results_dir>/<benchmark>/``.

    Writers (``bench run``) hold :meth:`lock` for the whole run; readers need no lock.
    """

    def __init__(self, results_dir: str | os.PathLike[str], benchmark: str) -> None:
        self.results_dir = Path(results_dir)
        self.benchmark = _check_name(benchmark, "benchmark name")
        self.path = self.results_dir / benchmark
        self._live: dict[str, Fragment] | None = None
        self._lock_depth = 0
        self._writer: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[str, Future[None]]] = deque()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    # -- runs -----------------------------------------------------------------------
    def clean_partial(self) -> int:
        """Remove temporary files of interrupted writes in this benchmark's folder (see
        :func:`harness.cache.is_stale_tmp`); return how many."""
        if not self.path.is_dir():
            return 0
        return remove_stale_tmp([p for p in self.path.rglob(".tmp-*") if ".cache" not in p.parts])

    def new_run(self, manifest: Mapping[str, Any] | None = None) -> Run:
        """Create a run folder with a fresh run id and write its ``_manifest.json``.

        ``manifest`` holds what the runner knows (matrix, resolved options, versions,
        git commit, device); ``run_id``, ``benchmark``, ``schema_version``,
        ``diffbench_version``, ``start_time`` (unless given), ``end_time`` and
        ``status`` are added.
        """
        self.flush()
        self.path.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            run_id = new_run_id(after=max(self.runs(), default=None))
            try:
                (self.path / run_id).mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 collisions in one second
            raise RuntimeError(f"could not create a unique run folder under {self.path}")
        full = {
            "run_id": run_id,
            "benchmark": self.benchmark,
            "schema_version": SCHEMA_VERSION,
            "diffbench_version": _diffbench_version(),
            "start_time": _utcnow().isoformat(),
            "end_time": None,
            "status": "running",
            **dict(manifest or {}),
        }
        full["run_id"], full["benchmark"] = run_id, self.benchmark
        _atomic_write_json(self.path / run_id / MANIFEST, full)
        self._live = None  # another process may have written since we last looked
        log.info("new run %s", self.path / run_id)
        return Run(self, run_id, full)

    def runs(self) -> list[str]:
        """The run ids of this benchmark, oldest first."""
        if not self.path.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.path) if e.is_dir() and not e.name.startswith(("_", ".")))

    def manifest(self, run_id: str) -> dict[str, Any]:
        """The ``_manifest.json`` of a run."""
        return json.loads((self.path / run_id / MANIFEST).read_text())

    # -- what is stored -------------------------------------------------------------
    def stored_cells(self) -> dict[str, str]:
        """``cell_id -> "ok" | "error"`` for every live fragment of this benchmark."""
        return {cid: frag.status for cid, frag in self.fragments().items()}

    def fragments(self) -> dict[str, Fragment]:
        """``cell_id -> Fragment`` for every live fragment of this benchmark."""
        self.flush()
        self._live = self._scan()
        return dict(self._live)

    def _scan(self) -> dict[str, Fragment]:
        live: dict[str, Fragment] = {}
        newest: dict[str, int] = {}
        for run_id in self.runs():
            run_dir = self.path / run_id
            index = _read_index(run_dir / INDEX)
            for entry in os.scandir(run_dir):
                name = entry.name
                if name.startswith(("_", ".")) or not name.endswith(FRAGMENT_SUFFIX):
                    continue
                cell_id = name[: -len(FRAGMENT_SUFFIX)]
                try:
                    st = entry.stat()
                except FileNotFoundError:  # superseded while we looked
                    continue
                known = index.get(cell_id)
                if known is not None and known[1:4] == [st.st_ino, st.st_size, st.st_mtime_ns]:
                    status, key = known[0], (known[4] if len(known) > 4 else None)
                else:
                    status, key = _fragment_status(entry.path, with_key=True)
                frag = Fragment(cell_id, run_id, status, self.path, key)
                if cell_id in live:
                    # Only without the lock (two writers) or by copying folders by hand.
                    log.warning(
                        "cell %s is stored in runs %s and %s; using the newer file",
                        cell_id,
                        live[cell_id].run_id,
                        run_id,
                    )
                    if st.st_mtime_ns < newest[cell_id]:
                        continue
                live[cell_id] = frag
                newest[cell_id] = st.st_mtime_ns
        return live

    # -- writing (on the writer thread) ---------------------------------------------
    def _submit(self, cell_id: str, fn: Any, *args: Any, wait: bool = False) -> None:
        self._reap(block=False)
        if self._writer is None:
            # One thread per store: writes (and supersedes) happen in submission order.
            # ThreadPoolExecutor finishes queued writes at interpreter exit.
            self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"store-{self.benchmark}")
        # the job starts while the run's thread does plugin work (see harness.writegate)
        self._pending.append((cell_id, writegate.submit(self._writer, fn, *args)))
        if wait:
            self.flush()
        while len(self._pending) > _MAX_PENDING_WRITES:  # bound the memory held by queued fragments
            self._reap(block=True, one=True)

    def _reap(self, *, block: bool, one: bool = False) -> None:
        """Drop finished writes from the queue; re-raise the first failure."""
        while self._pending and (block or self._pending[0][1].done()):
            cell_id, fut = self._pending.popleft()
            with writegate.opened():
                exc = fut.exception()  # waits if block
            if exc is not None:
                if hasattr(exc, "add_note"):
                    exc.add_note(f"while storing cell {cell_id} under {self.path}")
                raise exc
            if one:
                return

    def flush(self) -> None:
        """Wait until every queued fragment is in place; re-raise the first failed write."""
        self._reap(block=True)

    def _commit(self, run: Run, cell_id: str, table: pa.Table, status: str, content_key: str | None = None) -> None:
        final = run.path / f"{cell_id}{FRAGMENT_SUFFIX}"
        # Not ".parquet": DuckDB and polars globs would read a half-written file.
        tmp = run.path / f".tmp-{cell_id}-{tmp_tag()}{FRAGMENT_SUFFIX}.tmp"
        try:
            with open(tmp, "wb") as fh:
                # Encoding here, on the writer thread: Parquet's writer releases the GIL.
                pq.write_table(table, fh, **_PARQUET_OPTIONS)
                fh.flush()
                os.fsync(fh.fileno())
            # Supersede only once the new data is safely on disk; a crash between the two
            # renames leaves the cell missing (recomputed on resume), never duplicated.
            if self._supersede(cell_id):
                run.counts["superseded"] += 1
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        run.counts[status] += 1
        self._record(Fragment(cell_id, run.run_id, status, self.path, content_key))

    def _record(self, frag: Fragment) -> None:
        """Note a new fragment in memory and in its run's index (a cache, see module doc)."""
        if self._live is not None:
            self._live[frag.cell_id] = frag
        st = os.stat(frag.path)
        line = json.dumps([frag.cell_id, frag.status, st.st_ino, st.st_size, st.st_mtime_ns, frag.content_key]) + "\n"
        with open(frag.path.parent / INDEX, "a") as fh:
            fh.write(line)

    def _supersede(self, cell_id: str) -> bool:
        """Move the live fragment of ``cell_id`` (if any) under ``_superseded/<its run>/``."""
        if self._live is None:
            self._live = self._scan()
        old = self._live.pop(cell_id, None)
        if old is None or not old.path.exists():
            return False
        dest_dir = self.path / SUPERSEDED_DIR / old.run_id
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{cell_id}{SUPERSEDED_SUFFIX}"
        n = 1
        while dest.exists():  # the same run wrote the cell twice (a retry)
            dest = dest_dir / f"{cell_id}.{n}{SUPERSEDED_SUFFIX}"
            n += 1
        os.replace(old.path, dest)
        log.info("superseded %s (status %s) -> %s", old.path, old.status, dest)
        return True

    # -- lock -----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, wait: bool = True) -> Iterator[None]:
        """Hold this benchmark's lock (``flock`` on ``<benchmark>/.lock``) for a whole run.

        With ``wait=False`` a held lock raises a one-line :class:`UserError` naming the
        holder's pid. Re-entrant within one store object. Queued writes are flushed
        before the lock is released.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self.flush()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: it names the holder
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                holder = _read_pid(fd)
                if not wait:
                    raise UserError(
                        f"{self.path} is locked by another bench run (pid {holder}); "
                        "wait for it or use another --results folder"
                    ) from None
                log.warning("%s is locked by another bench run (pid %s); waiting", self.path, holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._lock_depth = 1
            self._live = None  # whoever held the lock before us may have written
            try:
                yield
                self.flush()
            finally:
                try:
                    # on an exception, still put queued fragments in place before unlocking
                    with contextlib.suppress(Exception):
                        self.flush()
                finally:
                    self._lock_depth = 0
                    os.ftruncate(fd, 0)
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip() or "unknown"
    except OSError:
        return "unknown"


def _read_index(path: Path) -> dict[str, list[Any]]:
    """``cell_id -> [status, inode, size, mtime_ns, content_key]``; the last line for a cell
    wins (lines written before content keys existed have four fields)."""
    out: dict[str, list[Any]] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            cell_id, *rest = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        out[cell_id] = rest
    return out


def _fragment_status(path: str | Path, with_key: bool = False) -> Any:
    """A fragment's status from its footer (or its status column if it has no metadata);
    with ``with_key``, ``(status, content_key or None)``."""
    try:
        meta = pq.read_metadata(path).metadata or {}
        key = meta.get(META_CONTENT_KEY.encode())
        key = key.decode() if key is not None else None
        status = meta.get(META_STATUS.encode())
        if status is not None:
            return (status.decode(), key) if with_key else status.decode()
        statuses = pq.read_table(path, columns=["status"]).column("status").to_pylist()
        status = cell_status({"status": s} for s in statuses)
        return (status, key) if with_key else status
    except (OSError, pa.ArrowException) as exc:
        # Unreadable (truncated by hand, disk error): call it an error so it is recomputed,
        # and the rewrite supersedes it.
        log.warning("cannot read %s (%s); treating the cell as errored", path, exc)
        return ("error", None) if with_key else "error"


# -- reading ----------------------------------------------------------------------------


def fragment_files(path: str | os.PathLike[str]) -> list[Path]:
    """Every live fragment under ``path`` (a file, or a folder searched recursively).

    Names starting with ``_`` or ``.`` below ``path`` are skipped, as Parquet readers
    do; a ``_superseded`` folder given explicitly lists its superseded fragments.
    """
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
    # Fragments mostly share a schema; compare with the last one seen (cheap) rather than
    # hashing every schema.
    types: dict[str, pa.DataType | None] = {}
    last: pa.Schema | None = None
    for t in tables:
        if last is not None and t.schema.equals(last):
            if not all(types.get(n) is not None for n in t.column_names if n not in COLUMNS):
                _note_types(t, types)  # an option seen only as nulls so far
            continue
        last = t.schema
        _note_types(t, types)
    order = [*COLUMNS, *sorted(c for c in types if c not in COLUMNS)]
    schema = pa.schema([pa.field(c, COLUMNS.get(c) or types.get(c) or pa.string()) for c in order])
    out = []
    for t in tables:
        if t.schema.equals(schema):
            out.append(t)
            continue
        cols = []
        for field in schema:
            if field.name in t.column_names:
                col = t.column(field.name)
                if col.type != field.type:
                    col = col.cast(field.type) if col.null_count < len(col) else pa.nulls(len(col), field.type)
                cols.append(col)
            else:
                cols.append(pa.nulls(len(t), field.type))
        out.append(pa.Table.from_arrays(cols, schema=schema))
    return pa.concat_tables(out)


def _note_types(table: pa.Table, types: dict[str, pa.DataType | None]) -> None:
    for field, col in zip(table.schema, table.columns):
        # An all-null column says nothing about the type; don't let it widen to string.
        typ = None if col.null_count == len(col) else field.type
        types[field.name] = _widen(types.get(field.name), typ)


def load_results(
    path: str | os.PathLike[str],
    *,
    with_reference: bool = False,
    include_errors: bool = True,
) -> pd.DataFrame:
    """Read every live fragment under ``path`` into one typed pandas DataFrame.

    ``path`` is a results folder, a benchmark folder, a run folder or one fragment.
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

    files = fragment_files(path)
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


# -- summaries --------------------------------------------------------------------------


def summarize(df: pd.DataFrame, *, by: Sequence[str] | None = None, per_timestep: bool = False) -> pd.DataFrame:
    """Mean, std and count over seeds per (variant, metric): what ``bench results`` prints.

    :param by: the grouping columns; default: the axes (``SUMMARY_AXES`` plus swept
        option columns) that are not empty, i.e. every axis but ``seed``.
    :param per_timestep: keep one row per timestep of per-step metrics. Otherwise a
        metric stored only per step is first averaged over its timesteps (per seed) and
        reported as ``"<metric> (mean over t)"``; per-step rows of metrics that also have
        an overall row are left out.
    :returns: the group columns, ``metric``, ``higher_is_better``, ``mean``, ``std``
        (over seeds, NaN for one seed), ``n`` (values averaged), ``errors`` (errored
        rows), and ``delta_mean`` when ``df`` has a ``delta`` column.
    """
    import pandas as pd

    if by is None:
        extras = sorted(c for c in df.columns if c not in COLUMNS and c not in _ADDED_COLUMNS and c != "seed")
        by = [c for c in (*SUMMARY_AXES, *extras) if c in df.columns and df[c].notna().any()]
    by = [c for c in by if c not in ("metric", "seed", "timestep")]
    data = df.copy()
    if "blob" in data:  # diagnostic rows (sample grids, attention maps): their value is a count
        data = data[data["blob"].isna()]
    for c in (*by, "metric"):
        if isinstance(data[c].dtype, pd.CategoricalDtype):
            data[c] = data[c].astype(object)
    stepped = data["timestep"].notna()
    if per_timestep:
        by = [*by, "timestep"]
    elif stepped.any():
        overall = set(data.loc[~stepped, "metric"])
        only_steps = stepped & ~data["metric"].isin(overall)
        per_seed = (
            data[only_steps]
            .groupby([*by, "metric", "seed"], dropna=False, sort=False)
            .agg(
                value=("value", "mean"),
                higher_is_better=("higher_is_better", "first"),
                status=("status", lambda s: "error" if (s == "error").any() else "ok"),
                **({"delta": ("delta", "mean")} if "delta" in data else {}),
            )
            .reset_index()
        )
        per_seed["metric"] = per_seed["metric"].astype(str) + " (mean over t)"
        data = pd.concat([data[~stepped], per_seed], ignore_index=True)
    is_error = data["status"].astype(object) == "error"
    values = data["value"].where(~is_error)
    aggs: dict[str, Any] = {
        "higher_is_better": ("higher_is_better", "first"),
        "mean": ("_v", "mean"),
        "std": ("_v", "std"),
        "n": ("_v", "count"),
        "errors": ("_err", "sum"),
    }
    if "delta" in data:
        aggs["delta_mean"] = ("_d", "mean")
    data = data.assign(_v=values.astype(float), _err=is_error.astype(int))
    if "delta" in data:
        data["_d"] = data["delta"].where(~is_error).astype(float)
    grouped = data.groupby([*by, "metric"], dropna=False, sort=True)
    out = grouped.agg(**aggs).reset_index()
    out["errors"] = out["errors"].astype(int)
    return out


def format_table(summary: pd.DataFrame, title: str | None = None) -> Table:
    """A rich table of :func:`summarize`'s output; columns equal on every row are left out
    (and named in the caption)."""
    import pandas as pd
    from rich.table import Table

    stats = {"metric", "higher_is_better", "mean", "std", "n", "errors", "delta_mean"}
    groups = [c for c in summary.columns if c not in stats]
    shown = [c for c in groups if summary[c].nunique(dropna=False) > 1]
    constant = [c for c in groups if c not in shown and len(summary) and summary[c].notna().all()]
    caption = ", ".join(f"{c}={_fmt(summary[c].iloc[0])}" for c in constant) or None
    table = Table(title=title, caption=caption)
    for c in shown:
        table.add_column(c, justify="right" if pd.api.types.is_numeric_dtype(summary[c]) else "left")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    table.add_column("n", justify="right")
    has_errors = bool(len(summary)) and int(summary["errors"].sum()) > 0
    if has_errors:
        table.add_column("errors", justify="right", style="red")
    if "delta_mean" in summary:
        table.add_column("Δ vs reference", justify="right")
    for _, row in summary.iterrows():
        arrow = {True: " ↑", False: " ↓"}.get(None if pd.isna(row["higher_is_better"]) else bool(row["higher_is_better"]), "")
        cells = [_fmt(row[c]) for c in shown]
        cells.append(f"{row['metric']}{arrow}")
        cells.append(f"{_fmt(row['mean'])} ± {_fmt(row['std'])}" if not pd.isna(row["std"]) else _fmt(row["mean"]))
        cells.append(str(int(row["n"])))
        if has_errors:
            cells.append(str(int(row["errors"])) if row["errors"] else "")
        if "delta_mean" in summary:
            cells.append(_fmt(row["delta_mean"], signed=True))
        table.add_row(*cells)
    return table


def _fmt(v: Any, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    try:
        import pandas as pd

        if pd.isna(v):
            return "-"
    except (TypeError, ValueError):
        pass
    if isinstance(v, float):
        return f"{v:+.4g}" if signed else f"{v:.4g}"
    return str(v)


def export(df: pd.DataFrame, fmt: Literal["json", "csv"], out: str | os.PathLike[str]) -> Path:
    """Write ``df`` as JSON records or CSV to ``out`` (atomically); return the path.

    The ``blob`` column (arrays of diagnostic rows, as bytes) is left out: text formats
    would need base64 of arrays nobody reads as text; the rows themselves (metric,
    value, ...) are kept. Read the arrays from the Parquet files.
    """
    out = Path(out)
    if fmt not in ("json", "csv"):
        raise UserError(f"--export: unknown format {fmt!r} (valid: 'csv', 'json')")
    df = df.drop(columns=[c for c in BINARY_COLUMNS if c in df.columns])
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        text = df.to_json(orient="records", date_format="iso", date_unit="us", indent=1)
    else:
        text = df.to_csv(index=False)
    _atomic_write_bytes(out, text.encode())
    return out


__all__ = [
    "Fragment",
    "ResultStore",
    "Run",
    "add_reference",
    "export",
    "format_table",
    "fragment_files",
    "infer_arrow_type",
    "load_results",
    "new_run_id",
    "rows_to_table",
    "summarize",
]
