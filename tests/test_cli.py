"""The ``bench`` command line: list, plugins, plan, results, run --dry-run, progress lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

import harness
from harness import runner
from harness.options import option_fields
from harness.cli import main
from harness.registry import build_registry, get_plugin_manager, plugin_summary
from _matrices import REPO, SMALL, SYNTHETIC

SET_SMALL = [a for o in SMALL for a in ("--set", o)]


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    # rich wraps tables to the console width; a wide one keeps each row on one line
    monkeypatch.setenv("COLUMNS", "1000")


def bench(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results folder holding the small synthetic matrix (4 cells x 2 metrics)."""
    from harness import runner

    import torch

    torch.set_num_threads(1)  # module-scoped: runs before the function-scoped _threads
    path = tmp_path_factory.mktemp("results")
    summary = runner.run(SYNTHETIC, SMALL, results_dir=str(path), quiet=True)
    assert summary.ok == 4
    return path


# ----------------------------------------------------------------------------- list


def test_list_every_kind(capsys, bench_registry):
    code, out, err = bench(capsys, "list")
    assert code == 0, err
    for kind, infos in bench_registry.plugins.items():
        assert re.search(rf"^ *{kind} *$", out, re.M), f"no table titled {kind}"
        for name in infos:
            assert re.search(rf"│ {re.escape(name)} +│", out), name


def test_list_pruners_shows_names_options_and_docstrings(capsys, bench_registry):
    code, out, err = bench(capsys, "list", "pruners")
    assert code == 0, err
    assert "metrics" not in out.split("\n")[0]
    names = bench_registry.names("pruners")
    assert {"magnitude", "random", "iterative", "structured"} <= set(names)
    for name in names:
        cls = bench_registry.get("pruners", name)
        assert re.search(rf"│ {re.escape(name)} +│ {re.escape(cls.describe())}", out), name
        for opt, typ, default, _help in option_fields(getattr(cls, "Options", None)):
            assert f"{opt}: {typ} = {default!r}" in out, (name, opt)
    assert "rounds: int = 3" in out
    assert "Iterative global magnitude pruning: prune a little, fine-tune, repeat." in out


def test_list_metrics_says_which_way_is_better(capsys):
    code, out, _ = bench(capsys, "list", "metrics")
    assert code == 0
    assert re.search(r"│ generation_time +│ .*\[lower is better; needs samples\]", out)


def test_list_accepts_singular_kinds(capsys):
    assert bench(capsys, "list", "pruning")[1] == bench(capsys, "list", "pruners")[1]


def test_list_unknown_kind(capsys):
    code, out, err = bench(capsys, "list", "bogus")
    assert code == 2
    assert err == ("error: bench list bogus: unknown kind; valid: 'datasets', 'executors', 'features', 'metrics', "
                   "'models', 'plots', 'pruners'\n")
    code, out, err = bench(capsys, "list", "prunrs")
    assert code == 2
    assert err.startswith("error: bench list prunrs: unknown kind (did you mean 'pruners'?); valid: ")
    assert "Traceback" not in err and out == ""


def test_list_shows_option_help_under_each_option(capsys):
    # dataclass field(metadata={"help": ...}) and pydantic Field(description=...)
    code, out, err = bench(capsys, "list", "plots")
    assert code == 0, err
    assert re.search(r"│ budget: float = 0\.1 +│\n.*│   allowed relative loss vs the reference +│", out)
    code, out, err = bench(capsys, "list", "executors")
    assert code == 0, err
    assert re.search(r"│ num_cpus: float = 1\.0 +│\n.*│   CPUs each task \(work unit\) requests +│", out)


def test_list_one_plugin_in_full(capsys):
    import inspect

    from plugins.pruning.magnitude import MagnitudePruner

    code, out, err = bench(capsys, "list", "pruners", "magnitude")
    assert code == 0, err
    assert out.startswith("magnitude (pruners)\n\n")
    assert inspect.cleandoc(MagnitudePruner.__doc__) in out  # the whole docstring, not its first line
    assert ("options:\n  protect: list[str] = ['time_embed', 'class_embed', 'out_conv']\n"
            "      module paths never pruned, with everything inside them (embeddings, output conv by default)\n") in out
    assert "class: plugins.pruning.magnitude.MagnitudePruner\n" in out
    assert f"distribution: diffbench {harness.__version__}\nentry point: pruning\n" in out
    assert "│" not in out  # no table


def test_list_one_plugin_pydantic_options_and_metric_direction(capsys):
    code, out, err = bench(capsys, "list", "executor", "ray")
    assert code == 0, err
    assert "  num_cpus: float = 1.0\n      CPUs each task (work unit) requests\n" in out
    code, out, err = bench(capsys, "list", "metrics", "generation_time")
    assert code == 0, err
    assert "\nlower is better; needs samples\n" in out
    assert "options: (none)" in out


def test_list_unknown_plugin_name(capsys):
    code, out, err = bench(capsys, "list", "pruners", "magnitde")
    assert code == 2 and out == ""
    assert err == ("error: bench list pruners magnitde: unknown pruner 'magnitde' (did you mean 'magnitude'?); "
                   "valid: 'attention_heads', 'iterative', 'magnitude', 'random', 'structured'\n")
    code, out, err = bench(capsys, "list", "prunrs", "magnitude")
    assert code == 2
    assert err.startswith("error: bench list prunrs: unknown kind (did you mean 'pruners'?); valid: ")


# ----------------------------------------------------------------------------- plugins


def test_plugins_shows_distribution_and_what_each_module_registers(capsys, bench_registry):
    code, out, err = bench(capsys, "plugins")
    assert code == 0, err
    pm = get_plugin_manager()
    rows = {r["entry_point"]: r for r in plugin_summary(pm, build_registry(pm))}
    for entry_point in ("datasets", "models", "pruning", "metrics", "executors", "plots"):
        row = rows[entry_point]
        assert row["module"] == f"plugins.{entry_point}"
        assert (row["distribution"], row["version"]) == ("diffbench", harness.__version__)
        line = next(line for line in out.splitlines() if re.match(rf"│ {entry_point} +│", line))
        assert f"plugins.{entry_point}" in line and "diffbench" in line
        for item in row["provides"]:
            assert item in line
    # each module lists exactly what its hooks registered
    assert rows["datasets"]["provides"] == [f"datasets:{n}" for n in bench_registry.names("datasets")]
    assert rows["pruning"]["provides"] == [f"pruners:{n}" for n in bench_registry.names("pruners")]
    assert rows["metrics"]["provides"] == [f"metrics:{n}" for n in bench_registry.names("metrics")]
    assert rows["executors"]["provides"] == ["executors:local", "executors:ray"]
    listed = {item for r in rows.values() for item in r["provides"]}
    assert listed == {f"{k}:{n}" for k, infos in bench_registry.plugins.items() for n in infos}


# ----------------------------------------------------------------------------- plan


def test_plan_prints_cells_and_work_per_stage(capsys, tmp_path):
    code, out, err = bench(capsys, "plan", SYNTHETIC, "--results", tmp_path, *SET_SMALL)
    assert code == 0, err
    assert "synthetic: 4 cells, 0 already stored, 4 to run" in out
    for stage in ("train", "prune", "sample", "metrics"):
        assert re.search(rf"│ {stage} +│", out), stage
    assert "images to generate: 64" in out  # 4 sample sets x 16 samples
    assert not tmp_path.joinpath("synthetic").exists()


def test_plan_lists_cells(capsys, tmp_path):
    code, out, _ = bench(capsys, "plan", SYNTHETIC, "--results", tmp_path, *SET_SMALL, "--cells")
    assert code == 0
    lines = [line for line in out.splitlines() if re.match(r"^[0-9a-f]{12}  ", line)]
    assert len(lines) == 4
    assert any(line.endswith("to do   synthetic[method=magnitude,rate=0.5,cfg=1,seed=1]") for line in lines)


def test_plan_after_a_run(capsys, results):
    code, out, _ = bench(capsys, "plan", SYNTHETIC, "--results", results, *SET_SMALL, "--cells")
    assert code == 0
    assert "synthetic: 4 cells, 4 already stored, 0 to run" in out
    assert len(re.findall(r"^[0-9a-f]{12}  stored  synthetic\[", out, re.M)) == 4


def test_run_dry_run_writes_nothing(capsys, tmp_path):
    target = tmp_path / "res"
    code, out, err = bench(capsys, "run", SYNTHETIC, "--results", target, *SET_SMALL, "--dry-run")
    assert code == 0, err
    assert "synthetic: 4 cells, 0 already stored, 4 to run" in out
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- results


def test_results_table(capsys, results):
    code, out, err = bench(capsys, "results", results)
    assert code == 0, err
    assert "synthetic_quality" in out and "generation_time" in out
    assert "magnitude" in out


def test_results_export_json_and_csv(capsys, results, tmp_path):
    n = len(harness.load_results(results))
    assert n == 8
    code, out, _ = bench(capsys, "results", results, "--export", "json", "--out", tmp_path / "rows.json")
    assert code == 0
    assert f"wrote {n} rows to {tmp_path / 'rows.json'}" in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == n and {r["metric"] for r in rows} == {"synthetic_quality", "generation_time"}
    code, out, _ = bench(capsys, "results", results, "--export", "csv", "--out", tmp_path / "rows.csv")
    assert code == 0
    df = pd.read_csv(tmp_path / "rows.csv")
    assert len(df) == n
    assert set(df["cell_id"]) == set(harness.load_results(results)["cell_id"])


def test_results_export_default_path_keeps_the_folder_readable(capsys, results):
    code, out, _ = bench(capsys, "results", results, "--export", "csv")
    assert code == 0
    exported = results.resolve() / "_export.csv"
    assert len(pd.read_csv(exported)) == 8
    # the export file starts with "_": parquet readers still see only the fragments
    assert len(pd.read_parquet(results)) == 8
    exported.unlink()


def test_results_of_an_empty_folder(capsys, tmp_path):
    code, out, err = bench(capsys, "results", tmp_path)
    assert code == 2
    assert err == f"error: no results under {tmp_path}\n"


@pytest.fixture
def three_runs(tmp_path) -> tuple[Path, list[str]]:
    """A synthetic benchmark folder: run 1 seeds 0 and 1, run 2 seed 2, run 3 seeds 0 and 1
    again with ``--force`` (so run 1 holds nothing live any more)."""
    for overrides, force in ((SMALL, False), ([*SMALL[:-1], "matrix.seed=[2]"], False), (SMALL, True)):
        runner.run(SYNTHETIC, overrides, results_dir=str(tmp_path / "res"), quiet=True, force=force)
    folder = tmp_path / "res" / "synthetic"
    return folder, sorted(p.name for p in folder.iterdir() if not p.name.startswith(("_", ".")))


def test_results_and_plot_of_chosen_runs(capsys, three_runs, tmp_path):
    folder, (first, second, third) = three_runs
    for args, seeds in ((["--latest"], {0, 1}), (["--run", second], {2}), (["--run", second, "--run", third], {0, 1, 2}),
                        ([], {0, 1, 2})):
        code, out, err = bench(capsys, "results", folder, *args, "--export", "csv", "--out", tmp_path / "rows.csv")
        assert code == 0, err
        assert set(pd.read_csv(tmp_path / "rows.csv")["seed"]) == seeds
        code, out, err = bench(capsys, "plot", folder, *args, "--kind", "pruning_json", "--out", tmp_path / "f")
        assert code == 0, err
        rows = json.loads((tmp_path / "f" / "pruning" / "results_magnitude.json").read_text())
        assert {r["seed"] for r in rows} == seeds
    code, out, err = bench(capsys, "results", folder, "--run", first)
    assert code == 2
    assert err == (f"error: {folder}: no live results in run {first} (its cells were superseded by later runs, "
                   "or it stored none)\n")


# ----------------------------------------------------------------------------- run output


PROGRESS = re.compile(r"^\[(\d+)/4\] (ok|error) (synthetic\[[^\]]*\]) \((\d+\.\d)s; elapsed \d+s, eta \d+s\)$")


def test_run_prints_plain_progress_lines_when_not_a_terminal(capsys, tmp_path):
    code, out, err = bench(capsys, "run", SYNTHETIC, "--results", tmp_path, *SET_SMALL)
    assert code == 0, err
    matches = [PROGRESS.match(line) for line in err.splitlines()]
    progress = [m for m in matches if m]
    assert [int(m.group(1)) for m in progress] == [1, 2, 3, 4]
    assert {m.group(2) for m in progress} == {"ok"}
    assert {m.group(3) for m in progress} == {
        "synthetic[reference,cfg=1,seed=0]",
        "synthetic[reference,cfg=1,seed=1]",
        "synthetic[method=magnitude,rate=0.5,cfg=1,seed=0]",
        "synthetic[method=magnitude,rate=0.5,cfg=1,seed=1]",
    }
    assert "\x1b[" not in err  # no terminal control codes in a log
    assert re.search(rf"^synthetic: 4 ok, 0 failed, 0 already stored in \d+\.\ds -> {re.escape(str(tmp_path))}/synthetic/",
                     out, re.M)
    # a second run says everything is stored
    code, out, err = bench(capsys, "run", SYNTHETIC, "--results", tmp_path, *SET_SMALL)
    assert code == 0
    assert "synthetic: all 4 cells already stored (use --force to recompute)" in err


def test_run_quiet_prints_no_progress(capsys, tmp_path):
    code, out, err = bench(capsys, "run", SYNTHETIC, "--results", tmp_path, *SET_SMALL, "--quiet")
    assert code == 0
    assert not [line for line in err.splitlines() if PROGRESS.match(line)]


# ----------------------------------------------------------------------------- bench train

TINY_UNET = [
    "--set", "model.base_channels=8", "--set", "model.channel_mults=[1, 2]", "--set", "model.num_heads=2",
    "--set", "model.norm_groups=4", "--set", "model.train.max_steps=3", "--set", "model.distill.max_steps=2",
    "--set", "matrix.size_factor=[0.5]", "--set", "matrix.cfg_scale=[1.0]", "--set", "matrix.seed=[0]",
]


def test_train_teacher_then_students_then_run_trains_nothing(tmp_path, capsys):
    quickstart = REPO / "benchmarks" / "quickstart.toml"
    results = str(tmp_path / "r")
    assert main(["train", "teacher", str(quickstart), "--results", results, *TINY_UNET]) == 0
    out = capsys.readouterr().out
    assert out.startswith("teacher: ") and "parameters, artifact" in out
    overrides = [v for v in TINY_UNET if v != "--set"]
    stages = runner.plan(quickstart, overrides, results_dir=results).stages
    assert stages["train"] == {"to do": 1, "cached": 1}  # the teacher is cached, the student not
    assert main(["train", "students", str(quickstart), "--results", results, "--size-factors", "0.5", *TINY_UNET]) == 0
    assert "student 0.5: " in capsys.readouterr().out
    stages = runner.plan(quickstart, overrides, results_dir=results).stages
    assert stages["train"] == {"to do": 0, "cached": 2}


def test_train_students_rejects_bad_size_factors(tmp_path, capsys):
    quickstart = REPO / "benchmarks" / "quickstart.toml"
    code = main(["train", "students", str(quickstart), "--results", str(tmp_path), "--size-factors", "0.5,x", *TINY_UNET])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --size-factors 0.5,x: expected numbers such as 0.1,0.5"
