"""The ``bench`` command line.

User errors (:class:`harness.errors.UserError`) print one line per problem to stderr,
without a traceback, and exit with code 2. A run whose cells failed exits with code 1.
"""

from __future__ import annotations

import os

# Before torch is imported: idle OpenMP workers sleep instead of spinning. Spinning buys
# microseconds on an idle machine, but next to any other busy process (a second run, a
# data loader, a browser) it made training several times slower on 2 cores. Users who
# want spinning set OMP_WAIT_POLICY=ACTIVE themselves.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.base import PLUGIN_KINDS
from harness.options import option_fields, validate_options
from harness.errors import ConfigError, UserError, did_you_mean, valid_choices

if TYPE_CHECKING:  # pragma: no cover
    from harness.registry import Registry

KIND_ALIASES = {"pruning": "pruners", "pruner": "pruners", "dataset": "datasets", "model": "models",
                "metric": "metrics", "executor": "executors", "plot": "plots",
                "feature": "features", "extractor": "features", "extractors": "features"}


def _add_matrix_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("matrix", help="matrix file (TOML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, VALUE in TOML syntax (repeatable), e.g. --set sampling.num_samples=10")
    p.add_argument("--results", dest="results_dir", default=None, metavar="DIR",
                   help="results folder (default: [execution] results_dir, 'results')")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--run", dest="runs", action="append", default=None, metavar="RUN_ID",
                      help="only this run of the benchmark folder PATH (repeatable)")
    runs.add_argument("--latest", action="store_true", help="only the newest run of the benchmark folder PATH")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Benchmark compressed diffusion models.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run (or resume) a matrix")
    _add_matrix_args(p)
    p.add_argument("--force", action="store_true", help="recompute cells already stored (old rows are kept under _superseded/)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    p = sub.add_parser("plan", help="print the cells, what is stored and the work per stage")
    _add_matrix_args(p)
    p.add_argument("--cells", action="store_true", help="list every cell")

    p = sub.add_parser("list", help="list plugins of one kind (or all) with their options; KIND NAME: one in full")
    p.add_argument("kind", nargs="?", default=None, help="datasets, models, pruners, metrics, executors or plots")
    p.add_argument("name", nargs="?", default=None, help="one plugin: its docstring, options with help, source")

    p = sub.add_parser("new", help="write a new third-party plugin package (pyproject, module, contract tests)")
    p.add_argument("kind", help="pruner, metric, plot, dataset or features")
    p.add_argument("name", help="the plugin's name, a Python identifier such as 'taylor'")
    p.add_argument("--dir", default=".", help="folder to create diffbench-NAME/ in (default: the current folder)")

    sub.add_parser("plugins", help="list loaded plugin packages and what they register")

    p = sub.add_parser("results", help="summary table of a results folder")
    p.add_argument("path", help="results folder, benchmark folder, run folder or file")
    p.add_argument("--export", choices=["json", "csv"], default=None, help="write the rows to a file")
    p.add_argument("--out", default=None, help="output file for --export (default: next to PATH)")
    _add_run_args(p)

    p = sub.add_parser("plot", help="draw figures from a results folder")
    p.add_argument("path", help="results folder, benchmark folder, run folder or file")
    p.add_argument("--kind", action="append", default=None,
                   help="plot name, or a family prefix such as 'pruning' (repeatable; default: all that apply)")
    p.add_argument("--compare", action="store_true", help="one figure per metric with every method")
    p.add_argument("--set", dest="plot_options", action="append", default=[], metavar="PLOT.OPTION=VALUE",
                   help="set a plot option, VALUE in TOML syntax (repeatable), "
                        "e.g. --set pruning_summary.primary=fid_digits; 'bench list plots' lists the options")
    p.add_argument("--out", default="figures", help="output folder (default: figures)")
    _add_run_args(p)

    p = sub.add_parser("train", help="train the teacher or distil the students of a matrix")
    p.add_argument("what", choices=["teacher", "students"])
    _add_matrix_args(p)
    p.add_argument("--size-factors", default=None, help="comma-separated size factors (default: the matrix's axis)")

    p = sub.add_parser("report", help="write a report (markdown or html) of a results folder")
    p.add_argument("path", help="results folder, benchmark folder, run folder or file")
    p.add_argument("--out", default="report", help="output folder")
    p.add_argument("--format", choices=["md", "html"], default="md")
    _add_run_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(COMMANDS[args.command](args) or 0)
    except UserError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; stored cells are kept, re-run to resume", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from harness import runner

    if args.dry_run:
        return cmd_plan(args)
    summary = runner.run(
        args.matrix, args.overrides, results_dir=args.results_dir, force=args.force, fail_fast=args.fail_fast,
        quiet=args.quiet, argv=["bench", *sys.argv[1:]],
    )
    if summary.run_dir is not None:
        print(f"{summary.benchmark}: {summary.ok} ok, {summary.error} failed, {summary.skipped} already stored "
              f"in {summary.seconds:.1f}s -> {summary.run_dir}")
    for line in summary.errors[:20]:
        print(f"failed: {line}", file=sys.stderr)
    return summary.exit_code


def cmd_plan(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from harness import runner

    report = runner.plan(args.matrix, args.overrides, results_dir=args.results_dir)
    console = Console()
    total = len(report.cells)
    console.print(f"[bold]{report.benchmark}[/]: {total} cells, {len(report.stored)} already stored, "
                  f"{total - len(report.stored)} to run")
    if report.stages:
        table = Table("stage", "to do", "cached", "notes")
        for stage, counts in report.stages.items():
            notes = ", ".join(f"{k}: {v}" for k, v in counts.items() if k not in ("to do", "cached"))
            table.add_row(stage, str(counts.get("to do", 0)), str(counts.get("cached", "-")), notes)
        console.print(table)
    if getattr(args, "cells", False):
        for cell in report.cells:
            mark = "stored" if cell.cell_id in report.stored else "to do"
            console.print(f"{cell.cell_id}  {mark:6}  {cell.name}", markup=False, highlight=False)
    return 0


def _kind(kind: str | None) -> list[str]:
    if kind is None:
        return list(PLUGIN_KINDS)
    k = KIND_ALIASES.get(kind, kind)
    if k not in PLUGIN_KINDS:
        raise UserError(f"bench list {kind}: unknown kind{did_you_mean(kind, PLUGIN_KINDS)}; {valid_choices(PLUGIN_KINDS)}")
    return [k]


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness.registry import build_registry

    registry = build_registry()
    console = Console()
    kinds = _kind(args.kind)
    if args.name is not None:
        registry.get(kinds[0], args.name, f"bench list {args.kind} {args.name}")  # unknown: did you mean
        print(plugin_details(registry.info(kinds[0], args.name)))  # plain: a docstring keeps its own lines
        kinds = []
    for kind in kinds:
        table = Table(title=kind, show_lines=False, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        table.add_column("options (default)")
        for name in registry.names(kind):
            cls = registry.get(kind, name)
            opts = "\n".join(_option_line(*f) for f in option_fields(getattr(cls, "Options", None)))
            # escaped: "list[str]" or "[lower is better]" are not rich markup
            table.add_row(escape(name), escape(cls.describe() + _metric_note(cls)), escape(opts or "-"))
        console.print(table)
    for err in registry.load_errors:
        console.print(f"[yellow]warning:[/] {escape(err)}", highlight=False)
    return 0


def _option_line(name: str, typ: str, default: Any, help_text: str) -> str:
    return f"{name}: {typ} = {default!r}" + (f"\n  {help_text}" if help_text else "")


def _metric_note(cls: type) -> str:
    if not hasattr(cls, "higher_is_better"):
        return ""
    return f" [{'higher' if cls.higher_is_better else 'lower'} is better; needs {', '.join(sorted(cls.requires))}]"


def plugin_details(info: Any) -> str:
    """``bench list KIND NAME``: the plugin's full docstring, its options and where it comes from."""
    import inspect

    cls = info.cls
    lines = [f"{info.name} ({info.kind})", ""]
    lines += (inspect.cleandoc(cls.__doc__ or "") or "(no docstring)").splitlines()
    if _metric_note(cls):
        lines += ["", _metric_note(cls).strip(" []")]
    fields = option_fields(getattr(cls, "Options", None))
    lines += ["", "options:" if fields else "options: (none)"]
    for name, typ, default, help_text in fields:
        lines.append(f"  {name}: {typ} = {default!r}")
        if help_text:
            lines.append(f"      {help_text}")
    lines += ["", f"class: {cls.__module__}.{cls.__qualname__}",
              f"distribution: {info.distribution} {info.version}".rstrip(" -"),
              f"entry point: {info.plugin or '-'}"]
    return "\n".join(lines)


def cmd_plugins(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness.registry import build_registry, get_plugin_manager, plugin_summary

    pm = get_plugin_manager()
    registry = build_registry(pm)
    table = Table("entry point", "module", "distribution", "version", "registers")
    for row in plugin_summary(pm, registry):
        table.add_row(*(escape(v) for v in (row["entry_point"], row["module"], row["distribution"], row["version"],
                                             ", ".join(row["provides"]) or "-")))
    console = Console()
    console.print(table)
    for err in registry.load_errors:
        console.print(f"[yellow]warning:[/] {escape(err)}", highlight=False)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness import tables
    from harness.results import load_results

    df = load_results(args.path, runs=args.runs, latest=args.latest)
    console = Console()
    console.print(tables.format_table(tables.summarize(df)))
    warning = tables.sample_size_warning(tables.mixed_sample_sizes(df))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if args.export:
        out = Path(args.out) if args.out else Path(args.path).resolve() / f"_export.{args.export}"
        tables.export(df, args.export, out)
        console.print(f"wrote {len(df)} rows to {out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw the selected plots, each in isolation: a failing one is one line, exit 1."""
    from harness.drawing import draw_plots
    from harness.registry import build_registry
    from harness.results import load_results

    registry = build_registry()
    names = _plot_names(args.kind, registry.names("plots"))
    # every class and option checked before the results are read: a mistake draws nothing
    classes = {name: registry.get("plots", name, "--kind") for name in names}
    overrides = _plot_overrides(args.plot_options, registry, names)
    plots: dict[str, Any] = {}
    for name, cls in classes.items():
        opts: dict[str, Any] = {}
        if args.compare and "compare" in [f[0] for f in option_fields(getattr(cls, "Options", None))]:
            opts["compare"] = True
        opts.update(overrides.get(name, {}))  # --set pruning_curves.compare=false beats --compare
        if name in overrides:
            validate_options(cls, opts, f"--set {name}")
        plots[name] = cls(**opts)
    df = load_results(args.path, runs=args.runs, latest=args.latest)
    paths, failures = draw_plots(plots, df, Path(args.out))
    written = [p for files in paths.values() for p in files]
    for path in written:
        print(path)
    if not written and not failures:
        print(f"no figure applies to the results under {args.path} (plots tried: {', '.join(names)})", file=sys.stderr)
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _plot_overrides(texts: list[str], registry: Registry, selected: list[str]) -> dict[str, dict[str, Any]]:
    """``--set PLOT.OPTION=VALUE`` values -> ``{plot: {option: value}}``; VALUE as for ``bench run --set``.

    Checks the plot and option names; the values' types are checked by the caller against
    the plot's ``Options`` (``validate_options``), as for a matrix file.
    """
    from harness.config import parse_override

    out: dict[str, dict[str, Any]] = {}
    for text in texts:
        key, eq, value = text.partition("=")
        plot, dot, option = (part.strip() for part in key.partition("."))
        if not (eq and dot and plot and option) or "." in option:
            raise ConfigError(f"--set {text}: expected PLOT.OPTION=VALUE, e.g. --set pruning_summary.primary=fid_digits")
        key = f"{plot}.{option}"
        cls = registry.get("plots", plot, f"--set {key}")
        if plot not in selected:
            # an error rather than a warning: the option would silently change nothing
            raise ConfigError(
                f"--set {key}: plot '{plot}' is not selected by --kind, so the option would have no effect "
                f"(selected: {', '.join(repr(n) for n in selected)}); add --kind {plot} or drop this --set"
            )
        if option not in [f[0] for f in option_fields(getattr(cls, "Options", None))]:
            # before the value is parsed: a misspelt name is the mistake to report; the
            # plugin's own check words it (did you mean, valid options)
            validate_options(cls, {option: None}, f"--set {plot}")
        out.setdefault(plot, {})[option] = parse_override(f"{key}={value}")[plot][option]
    return out


def _plot_names(kinds: list[str] | None, available: list[str]) -> list[str]:
    """``--kind`` values: plot names, or a prefix naming a family (``pruning`` -> ``pruning_*``)."""
    if not kinds:
        return list(available)
    names: list[str] = []
    for kind in kinds:
        family = [n for n in available if n.startswith(f"{kind}_")]
        names.extend([kind] if kind in available or not family else family)
    return list(dict.fromkeys(names))


def cmd_train(args: argparse.Namespace) -> int:
    from harness.config import load_matrix
    from harness.planner import VariantSpec
    from harness.progress import Progress
    from harness.runner import cache_dir
    from harness.worker import Stages

    cfg = load_matrix(args.matrix, args.overrides, results_dir=args.results_dir)
    factors: list[float] = []
    if args.what == "students":  # check the size factors before any training
        if args.size_factors:
            try:
                factors = [float(x) for x in args.size_factors.split(",") if x.strip()]
            except ValueError:
                raise UserError(f"--size-factors {args.size_factors}: expected numbers such as 0.1,0.5") from None
        else:
            factors = [f for f in cfg.axes.get("size_factor", []) if f is not None]
        if not factors:
            raise UserError(f"{cfg.path}: matrix.size_factor: no size factors to train; add the axis or pass --size-factors")
        for f in factors:
            if not 0 < f <= 1:
                raise UserError(f"--size-factors: {f:g} is not in (0, 1]")
    with Progress(0) as progress:
        variants = Stages(cfg, cache_dir(cfg), progress=progress).variants
        v = variants.get(VariantSpec(None, "none", 0.0))
        print(f"teacher: {v.num_params:,} parameters, artifact {v.key}")
        for f in factors:
            s = variants.get(VariantSpec(f, "none", 0.0))
            print(f"student {f:g}: {s.num_params:,} parameters ({s.num_params / v.num_params:.3f} of the teacher), "
                  f"artifact {s.key}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness import report

    path, facts = report.make_report(Path(args.path), Path(args.out), fmt=args.format, runs=args.runs,
                                     latest=args.latest)
    print(path)
    warning = facts.sample_size_warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    failures = facts.plot_failures()
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failures else 0


def cmd_new(args: argparse.Namespace) -> int:
    from harness.scaffold import new_package

    folder = new_package(args.kind, args.name, Path(args.dir))
    print(f"wrote {folder}: pip install -e {folder}, then python -m pytest {folder / 'tests'}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "plan": cmd_plan,
    "list": cmd_list,
    "plugins": cmd_plugins,
    "results": cmd_results,
    "plot": cmd_plot,
    "train": cmd_train,
    "report": cmd_report,
    "new": cmd_new,
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
