"""Drawing plot plugins in isolation, for ``bench plot`` and ``bench report``.

A plot that raises (a built-in meeting a frame it did not foresee, a third-party plot
with a bug) costs its own figures only: :func:`draw_plots` records the error as a
:class:`PlotFailure`, one line naming the plot, the error type and its message, and
draws the other plots. The callers report the failures and exit with code 1.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from harness.base import Plot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlotFailure:
    """A plot whose ``draw`` raised: its name and the error, as one line."""

    name: str
    error_type: str
    message: str

    @property
    def error(self) -> str:
        """``"TypeError: boolean value of NA is ambiguous"``."""
        return f"{self.error_type}: {self.message}" if self.message else self.error_type

    def __str__(self) -> str:
        return f"plot {self.name} failed: {self.error}"


def draw_plots(plots: Mapping[str, Plot], df: pd.DataFrame,
               out_dir: Path) -> tuple[dict[str, list[Path]], list[PlotFailure]]:
    """Draw every plot of ``plots`` (name -> instance) on ``df`` into ``out_dir``.

    :returns: ``(paths, failures)``: the files each plot wrote, by plot name (in the order
        of ``plots``; a failed plot has none), and one :class:`PlotFailure` per plot that
        raised an ``Exception``. The traceback is logged at debug level (``bench -vv``).
    """
    paths: dict[str, list[Path]] = {}
    failures: list[PlotFailure] = []
    for name, plot in plots.items():
        try:
            paths[name] = [Path(p) for p in (plot.draw(df, out_dir) or [])]
        except Exception as exc:  # a broken plot must not cost the others their figures
            # the message folded to one line: the failure is reported as one line
            failure = PlotFailure(name, type(exc).__name__, " ".join(str(exc).split()))
            log.debug("%s", failure, exc_info=True)
            failures.append(failure)
            paths[name] = []
    return paths, failures


__all__ = ["PlotFailure", "draw_plots"]
