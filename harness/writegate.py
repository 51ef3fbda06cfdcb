"""When the background writers may start a job: while the run's thread does plugin work or waits.

The artifact cache and the result store write on their own threads (see
``ArtifactCache.get_or_create(wait=False)`` and ``Run.write_cell(wait=False)``), so that
file creation, fsync and Parquet encoding overlap the next cell. Their Python parts
hold the GIL, though, and a writer that starts while the run's thread is doing the
harness's own bookkeeping between plugin calls (hashing, look-ups, building rows) makes
that bookkeeping wait: on 2 CPU cores this cost about 1.5 ms per cell, a quarter of the
harness overhead (``benchmarks/perf/harness_overhead.py``).

So a run closes the gate (:func:`closed`) and opens it (:func:`opened`) around plugin
work (building an artifact: training, pruning, sampling, a metric) and around every wait
for a writer; a job queued with :func:`submit` waits for the gate, at most ``MAX_DELAY_S``
after it was queued, so a gate left closed only delays writes and never stops them.
Outside a run the gate is open: writers start at once, as before.

The gate is one per process (the writers are); several runs in threads of one process
share it, which can only delay writes by up to ``MAX_DELAY_S``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

#: longest a queued write waits for the gate (seconds)
MAX_DELAY_S = 0.05

_open = threading.Event()
_open.set()


def wait(queued_at: float) -> None:
    """Block a writer until the gate is open or ``MAX_DELAY_S`` after ``queued_at``
    (a :func:`time.monotonic` time)."""
    remaining = queued_at + MAX_DELAY_S - time.monotonic()
    if remaining > 0 and not _open.is_set():
        _open.wait(remaining)


def submit(pool: Executor, fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """``pool.submit(fn, *args)`` for a background writer: the job first waits for the gate."""
    return pool.submit(_gated, time.monotonic(), fn, *args)


def _gated(queued_at: float, fn: Callable[..., Any], *args: Any) -> Any:
    wait(queued_at)
    return fn(*args)


def is_open() -> bool:
    return _open.is_set()


@contextlib.contextmanager
def _state(open_: bool) -> Iterator[None]:
    before = _open.is_set()
    (_open.set if open_ else _open.clear)()
    try:
        yield
    finally:
        (_open.set if before else _open.clear)()


def closed() -> contextlib.AbstractContextManager[None]:
    """Writers hold back (up to ``MAX_DELAY_S``) inside this block: the harness's own work."""
    return _state(False)


def opened() -> contextlib.AbstractContextManager[None]:
    """Writers may run inside this block: plugin work, or waiting for a writer."""
    return _state(True)
