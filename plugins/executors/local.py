"""The ``local`` executor: every work unit in this process, one after the other."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from harness import Executor, Worker, WorkUnit


class LocalExecutor(Executor):
    """Run cells in this process, unit by unit (the default; deterministic order).

    Each unit's cells are yielded as they finish, so results are stored (and progress
    shown) cell by cell. Closing the returned iterator stops after the current cell.
    """

    name = "local"

    def run(self, units: Iterable[WorkUnit], worker: Worker) -> Iterator[Any]:
        for unit in units:
            yield from worker(unit)
