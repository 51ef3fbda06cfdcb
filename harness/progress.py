"""Progress reporting: rich bars on a terminal, plain log lines otherwise.

Cells (done / total, the current cell, elapsed and ETA) and nested tasks (training
epochs, sampling batches) are reported through one object that the runner and the
engine share. When the output is not a terminal every event is one plain line, so CI
logs and ``nohup`` files stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class _PlainTask:
    def __init__(self, owner: Progress, desc: str, total: int, unit: str = "steps") -> None:
        self.owner, self.desc, self.total, self.done = owner, desc, total, 0
        self._last = 0.0
        self.t0 = time.perf_counter()
        owner._line(f"{desc}: started ({total} {unit})")

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last > 10 or self.done >= self.total:  # at most one line per 10 s
            self._last = now
            self.owner._line(f"{self.desc}: {self.done}/{self.total} ({now - self.t0:.0f}s)")

    def close(self) -> None:
        pass


class _RichTask:
    def __init__(self, progress: Any, desc: str, total: int) -> None:
        self.progress = progress
        self.task_id = progress.add_task(desc, total=total)

    def update(self, n: int = 1) -> None:
        self.progress.update(self.task_id, advance=n)

    def close(self) -> None:
        self.progress.remove_task(self.task_id)


class Progress:
    """Progress of a run; ``interactive`` defaults to whether ``stream`` is a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None, interactive: bool | None = None,
                 quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.done = 0
        self.failed = 0
        self.quiet = quiet
        self.interactive = (self.stream.isatty() if interactive is None else interactive) and not quiet
        self.t0 = time.perf_counter()
        self._rich: Any = None
        self._cells: Any = None

    def __enter__(self) -> Progress:
        if self.interactive:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._rich.start()
            self._cells = self._rich.add_task("cells", total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._rich is not None:
            self._rich.stop()

    def _line(self, text: str) -> None:
        if self.quiet:
            return
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def task(self, desc: str, total: int, unit: str = "steps") -> Any:
        """A nested progress task (training epochs, sampling batches)."""
        if self._rich is not None:
            return _RichTask(self._rich, f"{desc} ({unit})", total)
        return _PlainTask(self, desc, total, unit)

    def cell_started(self, name: str) -> None:
        if self._rich is not None:
            self._rich.update(self._cells, description=f"cells (now: {name})")

    def cell_done(self, name: str, status: str, duration: float, error: str | None = None) -> None:
        self.done += 1
        self.failed += status != "ok"
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        if self._rich is not None:
            self._rich.update(self._cells, advance=1)
            if status != "ok":
                self._line(f"error in {name}: {error}")
        else:
            msg = f"[{self.done}/{self.total}] {status} {name} ({duration:.1f}s; elapsed {elapsed:.0f}s, eta {eta:.0f}s)"
            if error:
                msg += f": {error}"
            self._line(msg)

    def message(self, text: str) -> None:
        self._line(text)
