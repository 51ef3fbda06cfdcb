"""Pruning exports: a text summary per method (per-rate table, best rate within a quality
budget, the cliff) and the raw rows per method as JSON.

Everything goes under ``<out>/pruning/`` (see :mod:`plugins.plots.pruning` for the
groups and the reference at rate 0). Values are means ± s.d. over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness import BenchmarkPlot, averaged_note, fmt_num, seed_stats
from plugins.plots import _data as dt
from plugins.plots import _labels as lb
from plugins.plots.pruning import FOLDER, PruningGroup, group_metrics, pruning_groups

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "BudgetResult",
    "PruningJSON",
    "PruningSummary",
    "budget_and_cliff",
    "quality_loss",
    "summary_text",
]

#: default primary metric of the summaries: the first of these present
PRIMARY_ORDER = ("label_accuracy", "clip_score", "synthetic_quality", "fid_digits", "fid", "lpips", "feature_distance")


def quality_loss(value: float, reference: float, higher: bool) -> float:
    """Relative quality loss vs the reference (0.1 = 10% worse; negative = better).

    ``(ref - v) / |ref|`` for higher-is-better metrics, ``(v - ref) / |ref|`` for
    lower-is-better ones; NaN when the reference is 0 (e.g. LPIPS to itself).
    """
    if not np.isfinite(reference) or reference == 0 or not np.isfinite(value):
        return math.nan
    return ((reference - value) if higher else (value - reference)) / abs(reference)


@dataclass
class BudgetResult:
    """What a summary reports on the primary metric.

    :ivar best_rate: the highest rate whose loss is within the budget (None: none is).
    :ivar cliff_rate: the first (lowest) rate whose loss exceeds ``cliff`` (None: none does).
    :ivar losses: rate -> relative loss vs the reference.
    """

    best_rate: float | None
    cliff_rate: float | None
    losses: dict[float, float]


def budget_and_cliff(
    rates: Sequence[float],
    values: Sequence[float],
    reference: float,
    higher: bool,
    budget: float = 0.10,
    cliff: float = 0.25,
) -> BudgetResult:
    """Best rate within a quality budget and the "cliff" rate, from mean values per rate."""
    pairs = sorted((float(r), float(v)) for r, v in zip(rates, values) if float(r) > 0)
    losses = {r: quality_loss(v, reference, higher) for r, v in pairs}
    within = [r for r, loss in losses.items() if np.isfinite(loss) and loss <= budget]
    beyond = [r for r, loss in losses.items() if np.isfinite(loss) and loss > cliff]
    return BudgetResult(max(within) if within else None, min(beyond) if beyond else None, losses)


def _primary(g: PruningGroup, requested: str | None) -> str | None:
    metrics = group_metrics(g, include_cost=False)
    if requested is not None:
        return requested if requested in metrics else None
    ref = dt.scalar_rows(g.reference)
    usable = [m for m in metrics if np.isfinite(ref.loc[ref["metric"] == m, "value"].mean())
              and ref.loc[ref["metric"] == m, "value"].mean() != 0]
    for m in PRIMARY_ORDER:
        if m in usable:
            return m
    return usable[0] if usable else None


def _cell(mean: float, sd: float) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.4g}" if not np.isfinite(sd) else f"{mean:.4g} ± {sd:.2g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def summary_text(
    g: PruningGroup,
    method: str,
    primary: str | None = None,
    budget: float = 0.10,
    cliff: float = 0.25,
) -> str:
    """The text of ``summary_<method>.txt`` (see :class:`PruningSummary`): a header, then a
    section per CFG scale."""
    rows = dt.scalar_rows(g.rows(method))
    metrics = group_metrics(g)
    prim = _primary(g, primary)
    lines = _summary_header(g, method, rows, primary, prim, budget, cliff)
    for cfg in sorted(rows["cfg_scale"].unique()):
        part = rows[np.isclose(rows["cfg_scale"], cfg)]
        lines += _cfg_section(part, cfg, metrics, prim, budget, cliff)
    return "\n".join(lines) + "\n"


def _summary_header(
    g: PruningGroup,
    method: str,
    rows: pd.DataFrame,
    primary: str | None,
    prim: str | None,
    budget: float,
    cliff: float,
) -> list[str]:
    """What was summarised (benchmark, model, dataset, seeds), how to read the tables, and
    which metric is judged against the budget (``primary`` as asked, ``prim`` as found)."""
    lines = [f"Pruning summary: method '{method}'{g.title}"]
    info = []
    for col in ("benchmark", "model", "dataset"):
        if col in rows and rows[col].notna().any():
            info.append(f"{col} {', '.join(sorted(map(str, rows[col].dropna().unique())))}")
    if info:
        lines.append("; ".join(info))
    lines += [
        f"Values: mean ± s.d. over seeds ({_seeds_text(g, method, rows)}); rate 0 = the unpruned reference.",
        "↑ / ↓ after a metric: higher / lower is better. Loss = relative quality loss vs the reference.",
    ]
    if primary is not None and prim is None:
        lines.append(f"Primary metric '{primary}' has no rows for this method: no budget or cliff computed.")
    elif prim is None:
        lines.append("No quality metric with a non-zero reference value: no budget or cliff computed.")
    else:
        lines.append(
            f"Primary metric: {prim} ({'higher' if lb.higher_is_better(rows, prim) else 'lower'} is better); "
            f"budget: within {budget:.0%} of the reference; cliff: first rate losing more than {cliff:.0%}."
        )
    if (rows["metric"] == "synthetic_quality").any():
        lines.append("synthetic_quality is SYNTHETIC (a parametric curve plus noise), not a measurement.")
    avg = averaged_note(rows, ["cfg_scale", "pruning_rate", "pruning_method"])
    if avg:
        lines.append(avg)
    return lines


def _seed_list(part: pd.DataFrame) -> str:
    seeds = sorted(part["seed"].dropna().unique())
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}: {', '.join(map(str, seeds))}"


def _seeds_text(g: PruningGroup, method: str, rows: pd.DataFrame) -> str:
    """The seeds of the method's rows, and the reference's when they differ."""
    method_seeds = _seed_list(rows[rows["pruning_method"] == method])
    ref_seeds = _seed_list(g.reference)
    return method_seeds if method_seeds == ref_seeds else f"{method}: {method_seeds}; reference: {ref_seeds}"


def _cfg_section(
    part: pd.DataFrame,
    cfg: float,
    metrics: list[str],
    prim: str | None,
    budget: float,
    cliff: float,
) -> list[str]:
    """One CFG scale: the per-rate table, then the primary metric's losses, budget and cliff."""
    lines = ["", f"== CFG scale {fmt_num(cfg)} =="]
    shown = [m for m in metrics if (part["metric"] == m).any()]
    stats = {m: seed_stats(part[part["metric"] == m], ["pruning_rate"]).set_index("pruning_rate") for m in shown}
    lines += _rate_table(part, shown, stats)
    if prim is None or prim not in stats:
        return lines
    s = stats[prim]
    higher = lb.higher_is_better(part, prim)
    if 0.0 not in s.index:
        lines.append(f"No reference row of {prim} at CFG {fmt_num(cfg)}: no budget or cliff computed.")
        return lines
    return lines + _budget_lines(s, prim, higher, budget, cliff)


def _rate_table(part: pd.DataFrame, shown: list[str], stats: dict[str, pd.DataFrame]) -> list[str]:
    """A row per rate: measured sparsity, speed-up and parameter ratio (mean over seeds),
    then mean ± s.d. of every metric in ``shown`` (``stats``: per-rate seed statistics)."""
    keys = ["pruning_rate"]
    cells = part.drop_duplicates([*keys, "seed"])
    per_rate = cells.groupby(keys)[["sparsity", "speedup", "param_ratio"]].mean()
    header = ["rate", "sparsity", "speed-up", "param ratio"]
    header += [f"{m} {'↑' if lb.higher_is_better(part, m) else '↓'}" for m in shown]
    table_rows = []
    for rate in sorted(part["pruning_rate"].unique()):
        r = [fmt_num(rate) + (" (ref)" if rate == 0 else "")]
        for col in ("sparsity", "speedup", "param_ratio"):
            v = per_rate.loc[rate, col] if rate in per_rate.index else math.nan
            r.append(f"{v:.3g}" if np.isfinite(v) else "-")
        for m in shown:
            s = stats[m]
            r.append(_cell(s.loc[rate, "mean"], s.loc[rate, "std"]) if rate in s.index else "-")
        table_rows.append(r)
    return _table(header, table_rows)


def _budget_lines(s: pd.DataFrame, prim: str, higher: bool, budget: float, cliff: float) -> list[str]:
    """The loss per rate, the best rate within ``budget`` and the cliff, from ``prim``'s per-rate stats ``s``."""
    ref = float(s.loc[0.0, "mean"])
    res = budget_and_cliff(s.index, s["mean"], ref, higher, budget, cliff)

    def at(rate: float) -> str:
        # the best rate and the cliff are reported alike: the rate, its value, the reference's, the loss
        return (f"{fmt_num(rate)} ({prim} {float(s.loc[rate, 'mean']):.4g} vs reference {ref:.4g}, "
                f"loss {res.losses[rate]:+.1%})")

    lines = ["", "Loss of " + prim + " vs reference: " +
             ", ".join(f"{fmt_num(r)}: {loss:+.1%}" for r, loss in res.losses.items())]
    if res.best_rate is None:
        lines.append(f"Best rate within {budget:.0%}: none (every rate loses more than {budget:.0%}).")
    else:
        lines.append(f"Best rate within {budget:.0%}: {at(res.best_rate)}")
    if res.cliff_rate is None:
        lines.append(f"Cliff (> {cliff:.0%} loss): none up to rate {fmt_num(max(res.losses, default=0))}.")
    else:
        lines.append(f"Cliff (> {cliff:.0%} loss): {at(res.cliff_rate)}")
    return lines


class PruningSummary(BenchmarkPlot):
    """Text summary per pruning method: per-rate table, best rate within budget, cliff.

    Writes ``pruning/summary_<method>.txt``: per CFG scale, a table of mean ± s.d. (over
    seeds) of every metric plus measured sparsity, speed-up and parameter ratio per rate
    (rate 0 = the unpruned reference); the highest rate whose primary metric stays within
    ``budget`` (relative) of the reference; and the cliff, the first rate that loses more
    than ``cliff``.
    """

    name = "pruning_summary"

    @dataclass
    class Options:
        primary: str | None = field(
            default=None,
            metadata={"help": "metric judged against the budget (default: the first of "
                              + ", ".join(PRIMARY_ORDER) + " present)"},
        )
        budget: float = field(default=0.10, metadata={"help": "allowed relative loss vs the reference"})
        cliff: float = field(default=0.25, metadata={"help": "relative loss that marks the cliff"})

        def __post_init__(self) -> None:
            for name in ("budget", "cliff"):
                if not 0 <= getattr(self, name) < 10:
                    raise ValueError(f"{name} = {getattr(self, name)} is not a relative loss (e.g. 0.1 for 10%)")

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        o = self.options
        out = Path(out_dir) / FOLDER
        paths = []
        for g in pruning_groups(df):
            for method in g.methods:
                text = summary_text(g, method, o.primary, o.budget, o.cliff)
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"summary_{method}{g.suffix}.txt"
                path.write_text(text, encoding="utf-8")
                paths.append(path)
        return paths


class PruningJSON(BenchmarkPlot):
    """JSON export of the raw rows per pruning method (records orient).

    Writes ``pruning/results_<method>.json``: every ok row of the method (all rates, CFG
    scales, seeds, per-step rows) plus the rows of the unpruned models it was pruned from
    (``pruning_method = "none"``), so each file holds its own reference.
    """

    name = "pruning_json"

    def draw_one(self, df: pd.DataFrame, out_dir: Path) -> list[Path]:
        import pandas as pd

        groups = pruning_groups(df)
        methods = sorted({m for g in groups for m in g.methods})
        out = Path(out_dir) / FOLDER
        paths = []
        for method in methods:
            parts = []
            for g in groups:
                if method in g.methods:
                    parts += [g.reference, g.pruned[g.pruned["pruning_method"] == method]]
            rows = pd.concat(parts, ignore_index=True)
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"results_{method}.json"
            rows = rows.drop(columns="blob", errors="ignore")  # diagnostic arrays are not JSON
            text = rows.to_json(orient="records", date_format="iso", date_unit="us", indent=1)
            path.write_text(text, encoding="utf-8")
            paths.append(path)
        return paths
