"""Matrix files: one test per kind of mistake, asserting the exact one-line message.

Every mistake goes through the command line (``harness.cli.main``): exit code 2, one
``error: FILE: key.path: problem; what is valid`` line per problem, no traceback, and no
work done (the results folder is not even created).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import load_matrix
from harness.planner import plan_cells
from harness.errors import ConfigError

SECTIONS = {
    "benchmark": 'name = "t"',
    "dataset": 'name = "synthetic"',
    "model": 'name = "synthetic"',
    "sampling": "steps = 2\nnum_samples = 4\nbatch_size = 4",
    "matrix": 'pruning_method = ["none", "magnitude"]\npruning_rate = [0.5]\ncfg_scale = [1.0]\nseed = [0]',
    "metrics": 'names = ["synthetic_quality"]',
    "execution": 'device = "cpu"',
}
VALID_SECTIONS = (
    "valid: 'benchmark', 'dataset', 'execution', 'matrix', 'metrics', 'model', 'plots', 'pruners', 'sampling'"
)


def matrix_text(extra: str = "", **sections: str | None) -> str:
    """A small valid synthetic matrix; ``section=TEXT`` replaces (None drops) a section."""
    body = {**SECTIONS, **sections}
    parts = [f"[{name}]\n{textwrap.dedent(text).strip()}\n" for name, text in body.items() if text is not None]
    return "\n".join(parts) + "\n" + textwrap.dedent(extra)


@pytest.fixture
def write(tmp_path):
    def _write(text: str, name: str = "m.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


@pytest.fixture
def bench_errors(tmp_path, capsys):
    """Run ``bench run --dry-run PATH ARGS``; assert exit 2, no traceback; return the lines."""

    def _run(path: Path, *args: str, command: str = "run") -> list[str]:
        results = tmp_path / "results"
        argv = [command, str(path), "--results", str(results), *args]
        if command == "run":
            argv.append("--dry-run")
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 2, (out, err)
        assert "Traceback" not in err and "Traceback" not in out
        lines = err.strip().splitlines()
        assert lines and all(line.startswith("error: ") for line in lines), err
        assert not results.exists(), "a broken matrix must not start any work"
        return [line.removeprefix("error: ") for line in lines]

    return _run


def test_valid_base_matrix_loads(write):
    cfg = load_matrix(write(matrix_text()))
    assert cfg.benchmark.name == "t"
    assert cfg.axes == {"pruning_method": ["none", "magnitude"], "pruning_rate": [0.5], "cfg_scale": [1.0], "seed": [0]}


# ----------------------------------------------------------------------------- structure


def test_unknown_section(write, bench_errors):
    path = write(matrix_text(extra='[matrx]\nseed = [1]\n'))
    assert bench_errors(path) == [f"{path}: matrx: unknown section (did you mean 'matrix'?); {VALID_SECTIONS}"]


def test_unknown_key_in_section(write, bench_errors):
    path = write(matrix_text(sampling="stpes = 2\nnum_samples = 4"))
    assert bench_errors(path) == [
        f"{path}: sampling.stpes: unknown key (did you mean 'steps'?); valid: 'batch_size', 'cfg_batching', "
        "'cfg_scale', 'compile', 'dtype', 'num_samples', 'sampler', 'steps', 'trajectory_samples', 'warmup'"
    ]


def test_wrong_type(write, bench_errors):
    path = write(matrix_text(sampling='num_samples = "ten"'))
    assert bench_errors(path) == [
        f"{path}: sampling.num_samples: Input should be a valid integer, unable to parse string as an integer "
        "(got 'ten')"
    ]


@pytest.mark.parametrize(("value", "message"), [
    ("0", "Input should be greater than or equal to 1 (got 0)"),
    ('"two"', "Input should be a valid integer, unable to parse string as an integer (got 'two')"),
])
def test_bad_thread_count(write, bench_errors, value, message):
    path = write(matrix_text())
    assert bench_errors(path, "--set", f"execution.threads={value}") == [f"{path}: execution.threads: {message}"]


def test_wrong_literal_value_gets_did_you_mean(write, bench_errors):
    path = write(matrix_text(sampling='cfg_batching = "concatt"'))
    assert bench_errors(path) == [
        f"{path}: sampling.cfg_batching: 'concatt' is not valid (did you mean 'concat'?); valid: 'auto', 'concat' "
        "or 'split'"
    ]


def test_missing_required_benchmark_name(write, bench_errors):
    path = write(matrix_text(benchmark='seed = 1'))
    assert bench_errors(path) == [f"{path}: benchmark.name: required key is missing"]


def test_missing_required_section(write, bench_errors):
    path = write(matrix_text(metrics=None))
    assert bench_errors(path) == [f"{path}: metrics: required key is missing"]


def test_broken_toml_syntax(write, bench_errors):
    path = write(matrix_text(extra="[oops\nname = 1\n"))
    (line,) = bench_errors(path)
    assert line.startswith(f"{path}: invalid TOML: ")
    assert "(at line " in line


def test_missing_file(tmp_path, bench_errors):
    path = tmp_path / "nope.toml"
    assert bench_errors(path) == [f"{path}: no such matrix file"]


def test_missing_file_through_a_real_process(tmp_path):
    """The installed console script: exit 2, one line, no traceback."""
    bench = Path(sys.executable).with_name("bench")
    proc = subprocess.run([str(bench), "run", str(tmp_path / "nope.toml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {tmp_path / 'nope.toml'}: no such matrix file\n"
    assert proc.stdout == ""


# ----------------------------------------------------------------------------- plugin names


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        (
            {"dataset": 'name = "synthetik"'},
            "dataset.name: unknown dataset 'synthetik' (did you mean 'synthetic'?); valid: ",
        ),
        (
            {"model": 'name = "synthetik"'},
            "model.name: unknown model 'synthetik' (did you mean 'synthetic'?); valid: ",
        ),
        (
            {"metrics": 'names = ["synthetic_qualty"]'},
            "metrics.synthetic_qualty: unknown metric 'synthetic_qualty' (did you mean 'synthetic_quality'?); valid: ",
        ),
        (
            {"matrix": 'pruning_method = ["none", "magnitud"]\npruning_rate = [0.5]'},
            "matrix.pruning_method[1]: unknown pruner 'magnitud' (did you mean 'magnitude'?); valid: ",
        ),
        (
            {"execution": 'executor = "locl"'},
            "execution.executor: unknown executor 'locl' (did you mean 'local'?); valid: ",
        ),
    ],
    ids=["dataset", "model", "metric", "pruner", "executor"],
)
def test_unknown_plugin_name(write, bench_errors, bench_registry, sections, expected):
    path = write(matrix_text(**sections))
    (line,) = bench_errors(path)
    assert line.startswith(f"{path}: {expected}")
    # the valid names are the registered ones (plus 'none' for the pruning_method axis)
    kind = {"dataset": "datasets", "model": "models", "metrics": "metrics", "matrix": "pruners",
            "execution": "executors"}[next(iter(sections))]
    names = bench_registry.names(kind) + (["none"] if kind == "pruners" else [])
    assert line.endswith(", ".join(f"'{n}'" for n in sorted(names)))


def test_unknown_sampler(write, bench_errors):
    path = write(matrix_text(matrix='sampler = ["ddim", "dpm"]'))
    lines = bench_errors(path)
    assert f"{path}: matrix.sampler[1]: unknown sampler 'dpm' (did you mean 'ddpm'?); valid: 'ddim', 'ddpm'" in lines


# ----------------------------------------------------------------------------- plugin options


def test_unknown_pruner_option(write, bench_errors):
    path = write(matrix_text(extra="[pruners.magnitude]\nfoo = 1\n"))
    assert bench_errors(path) == [f"{path}: pruners.magnitude.foo: unknown option of 'magnitude'; valid: protect"]


def test_unknown_model_option_did_you_mean(write, bench_errors):
    path = write(matrix_text(model='name = "unet"\nbase_channel = 8'))
    (line,) = bench_errors(path)
    assert line.startswith(f"{path}: model.base_channel: unknown option of 'unet' (did you mean 'base_channels'?); valid: ")
    assert "base_channels" in line.split("valid: ")[1].split(", ")


def test_wrong_type_of_plugin_option(write, bench_errors):
    path = write(matrix_text(model='name = "synthetic"\nhidden = "wide"'))
    assert bench_errors(path) == [f"{path}: model.hidden: expected int, got str 'wide'"]


def test_unknown_metric_option(write, bench_errors):
    path = write(matrix_text(extra="[metrics.synthetic_quality]\nnoize = 0.1\n"))
    (line,) = bench_errors(path)
    assert line.startswith(
        f"{path}: metrics.synthetic_quality.noize: unknown option of 'synthetic_quality' (did you mean 'noise'?); valid: "
    )


def test_options_of_unused_pruner_are_checked_then_ignored(write, bench_errors, caplog):
    # a --set that narrows matrix.pruning_method must not make the matrix invalid
    path = write(matrix_text(extra="[pruners.random]\nprotect = []\n"))
    with caplog.at_level("WARNING"):
        cfg = load_matrix(path)
    assert "random" not in {c.variant.pruning_method for c in plan_cells(cfg)}
    assert "[pruners.random] has options but no cell uses that pruner; ignored" in caplog.text
    path = write(matrix_text(extra="[pruners.random]\nprotec = []\n"))
    (line,) = bench_errors(path)
    assert line.startswith(f"{path}: pruners.random.protec: unknown option of 'random' (did you mean 'protect'?)")


def test_options_of_a_known_metric_left_out_of_names_are_ignored(write, bench_errors, caplog):
    path = write(matrix_text(extra="[metrics.generation_time]\n"))
    with caplog.at_level("WARNING"):
        cfg = load_matrix(path)
    assert [m.name for m in cfg.metrics] == ["synthetic_quality"]
    assert "[metrics.generation_time] has options but is not in metrics.names; ignored" in caplog.text


def test_metric_options_for_a_metric_not_listed(write, bench_errors):
    path = write(matrix_text(extra="[metrics.generation_tme]\n"))
    assert bench_errors(path) == [
        f"{path}: metrics.generation_tme: options for a metric that is not in metrics.names; listed: synthetic_quality"
    ]


# ----------------------------------------------------------------------------- axes


def test_empty_axis(write, bench_errors):
    path = write(matrix_text(matrix='pruning_method = ["none", "magnitude"]\npruning_rate = []'))
    assert bench_errors(path) == [f"{path}: matrix.pruning_rate: empty axis; give at least one value"]


@pytest.mark.parametrize(
    ("axis", "toml_value", "message"),
    [
        ("pruning_rate", "[0.5, 1.5]", "matrix.pruning_rate[1]: pruning rate must be a number in [0, 1), got 1.5"),
        ("size_factor", "[0]", "matrix.size_factor[0]: size factor must be a number in (0, 1], got 0"),
        ("size_factor", "[1.5]", "matrix.size_factor[0]: size factor must be a number in (0, 1], got 1.5"),
        ("cfg_scale", "[1.0, -1]", "matrix.cfg_scale[1]: CFG scale must be a number >= 0, got -1"),
        ("cfg_scale", '["high"]', "matrix.cfg_scale[0]: CFG scale must be a number >= 0, got 'high'"),
        ("steps", "[0]", "matrix.steps[0]: steps must be an integer >= 1, got 0"),
        ("seed", "[-1]", "matrix.seed[0]: seed must be an integer >= 0, got -1"),
    ],
    ids=["rate", "size0", "size1.5", "cfg", "cfg-type", "steps", "seed"],
)
def test_out_of_range_axis_value(write, bench_errors, axis, toml_value, message):
    method = 'pruning_method = ["none", "magnitude"]\n' if axis == "pruning_rate" else ""
    path = write(matrix_text(matrix=f"{method}{axis} = {toml_value}"))
    assert bench_errors(path) == [f"{path}: {message}"]


def test_out_of_range_sampling_value(write, bench_errors):
    path = write(matrix_text(sampling="steps = 0"))
    assert bench_errors(path) == [f"{path}: sampling.steps: Input should be greater than or equal to 1 (got 0)"]


def test_unknown_axis(write, bench_errors):
    path = write(matrix_text(matrix="cfg_scales = [1.0]"))
    (line,) = bench_errors(path)
    assert line.startswith(f"{path}: matrix.cfg_scales: unknown axis (did you mean 'cfg_scale'?); valid: size_factor, ")


def test_axis_value_listed_twice(write, bench_errors):
    path = write(matrix_text(matrix="seed = [0, 1, 0]"))
    assert bench_errors(path) == [f"{path}: matrix.seed: an axis value is listed twice"]


def test_rate_axis_without_method_axis(write, bench_errors):
    path = write(matrix_text(matrix="pruning_rate = [0.5]"))
    assert bench_errors(path) == [f"{path}: matrix.pruning_rate: a pruning_rate axis needs a pruning_method axis"]


def test_exclude_names_an_unknown_axis(write, bench_errors):
    path = write(matrix_text(extra="[[matrix.exclude]]\npruning_method = 'magnitude'\npruning_rat = 0.5\n"))
    assert bench_errors(path) == [
        f"{path}: matrix.exclude[0].pruning_rat: not an axis of this matrix (did you mean 'pruning_rate'?); "
        "axes: cfg_scale, pruning_method, pruning_rate, seed"
    ]


def test_include_with_a_bad_value(write, bench_errors):
    path = write(matrix_text(extra="[[matrix.include]]\npruning_method = 'randon'\npruning_rate = 1.5\n"))
    lines = bench_errors(path)
    assert lines[0].startswith(
        f"{path}: matrix.include[0].pruning_method: unknown pruner 'randon' (did you mean 'random'?); valid: "
    )
    assert lines[1:] == [f"{path}: matrix.include[0].pruning_rate: pruning rate must be a number in [0, 1), got 1.5"]


def test_unknown_dotted_axis_prefix(write, bench_errors):
    path = write(
        matrix_text(matrix=SECTIONS["matrix"].replace('["none", "magnitude"]', '["none", "iterative"]')
                    + '\n"pruner.iterative.rounds" = [1, 3]')
    )
    assert bench_errors(path) == [
        f"{path}: matrix.pruner.iterative.rounds: unknown axis (did you mean 'pruners'?); a dotted axis starts "
        "with pruners, metrics, model, dataset, sampling"
    ]


def test_unknown_option_in_dotted_axis(write, bench_errors):
    path = write(
        matrix_text(matrix=SECTIONS["matrix"].replace('["none", "magnitude"]', '["none", "iterative"]')
                    + '\n"pruners.iterative.roundz" = [1, 3]')
    )
    lines = bench_errors(path)
    assert lines
    for i, line in enumerate(lines):
        assert line.startswith(
            f"{path}: matrix.pruners.iterative.roundz[{i}]: unknown option of 'iterative' (did you mean 'rounds'?); "
            "valid: rounds, "
        )


def test_unknown_plugin_in_dotted_axis(write, bench_errors):
    path = write(matrix_text(matrix=SECTIONS["matrix"] + '\n"pruners.iterativ.rounds" = [1, 3]'))
    (line,) = bench_errors(path)
    assert line.startswith(
        f"{path}: matrix.pruners.iterativ.rounds: unknown pruner 'iterativ' (did you mean 'iterative'?); valid: "
    )


def test_unquoted_dotted_axis_is_explained(write, bench_errors):
    # TOML reads an unquoted dotted key as nested tables: the axis must be quoted
    path = write(matrix_text(matrix=SECTIONS["matrix"] + "\npruners.iterative.rounds = [1, 3]"))
    assert bench_errors(path) == [
        f'{path}: matrix.pruners: unknown axis; a dotted axis must be quoted: "pruners.iterative.rounds" = [...]'
    ]


# ----------------------------------------------------------------------------- --set


def test_set_without_equals(write, bench_errors):
    path = write(matrix_text())
    assert bench_errors(path, "--set", "sampling.num_samples") == [
        "--set sampling.num_samples: expected KEY=VALUE, e.g. --set sampling.num_samples=10"
    ]


@pytest.mark.parametrize("value", ["[0.3", '"abc', "{a = 1"])
def test_set_with_unparsable_value(write, bench_errors, value):
    path = write(matrix_text())
    assert bench_errors(path, "--set", f"matrix.pruning_rate={value}") == [
        f"--set matrix.pruning_rate={value}: not a TOML value (numbers 1 / 0.5, strings \"x\", lists [1, 2])"
    ]


def test_set_with_empty_value(write, bench_errors):
    path = write(matrix_text())
    assert bench_errors(path, "--set", "sampling.steps=") == [
        "--set sampling.steps=: empty value; give a TOML value such as 10, 1.5, \"x\" or [1, 2]"
    ]


def test_set_unknown_key(write, bench_errors):
    path = write(matrix_text())
    lines = bench_errors(path, "--set", "sampling.stpes=3")
    assert lines == [
        f"{path}: sampling.stpes: unknown key (did you mean 'steps'?); valid: 'batch_size', 'cfg_batching', "
        "'cfg_scale', 'compile', 'dtype', 'num_samples', 'sampler', 'steps', 'trajectory_samples', 'warmup'"
    ]


def test_set_bad_value_is_validated_like_the_file(write, bench_errors):
    path = write(matrix_text())
    assert bench_errors(path, "--set", "matrix.pruning_rate=[2.0]") == [
        f"{path}: matrix.pruning_rate[0]: pruning rate must be a number in [0, 1), got 2.0"
    ]


def test_set_replaces_an_axis(write):
    cfg = load_matrix(write(matrix_text()), ["matrix.pruning_rate=[0.3]"])
    assert cfg.axes["pruning_rate"] == [0.3]
    cfg = load_matrix(write(matrix_text()), ["matrix.pruning_rate=[0.1, 0.9]", "matrix.seed=[0, 1, 2]"])
    assert cfg.axes["pruning_rate"] == [0.1, 0.9]
    assert cfg.axes["seed"] == [0, 1, 2]


def test_set_a_sampling_value(write):
    cfg = load_matrix(write(matrix_text()), ["sampling.num_samples=10"])
    assert cfg.sampling.num_samples == 10
    assert cfg.sampling.steps == 2  # the rest of the table is kept


def test_set_a_bare_word_is_a_string(write):
    cfg = load_matrix(write(matrix_text(dataset='name = "digits"')), ["dataset.name=synthetic"])
    assert cfg.dataset.name == "synthetic"
    cfg = load_matrix(write(matrix_text()), ['sampling.sampler="ddpm"'])
    assert cfg.sampling.sampler == "ddpm"


def test_set_adds_a_new_table(write):
    cfg = load_matrix(write(matrix_text()), ["pruners.magnitude.protect=['inp']"])
    assert cfg.pruners == {"magnitude": {"protect": ["inp"]}}


def test_set_through_the_cli(write, tmp_path, capsys):
    path = write(matrix_text())
    code = main(["plan", str(path), "--results", str(tmp_path / "r"), "--set", "matrix.seed=[0, 1, 2]"])
    out, err = capsys.readouterr()
    assert code == 0, err
    # 3 seeds x (reference + magnitude@0.5)
    assert "t: 6 cells, 0 already stored, 6 to run" in out


def test_dotted_axis_sweeps_a_real_pruner_option(write):
    cfg = load_matrix(
        write(
            matrix_text(matrix=SECTIONS["matrix"].replace('["none", "magnitude"]', '["none", "magnitude", "iterative"]')
                        + '\n"pruners.iterative.rounds" = [1, 2]\n"pruners.magnitude.protect" = [["inp"], ["out"]]')
        )
    )
    assert cfg.axes["pruners.iterative.rounds"] == [1, 2]
    assert cfg.axes["pruners.magnitude.protect"] == [["inp"], ["out"]]


def test_dotted_axis_with_a_bad_value(write, bench_errors):
    path = write(
        matrix_text(matrix=SECTIONS["matrix"].replace('["none", "magnitude"]', '["none", "iterative"]')
                    + '\n"pruners.iterative.rounds" = [1, "two"]')
    )
    assert bench_errors(path) == [f"{path}: matrix.pruners.iterative.rounds[1]: expected int, got str 'two'"]


def test_dotted_axis_of_a_model_option(write):
    cfg = load_matrix(write(matrix_text(matrix=SECTIONS["matrix"] + '\n"model.hidden" = [8, 16]')))
    assert cfg.axes["model.hidden"] == [8, 16]


# ----------------------------------------------------------------------------- many errors


def test_every_error_of_a_file_is_reported_one_line_each(write, bench_errors):
    path = write(
        matrix_text(
            dataset='name = "synthetik"',
            matrix='pruning_method = ["none", "magnitud"]\npruning_rate = [1.5]\ncfg_scale = [-1]',
            metrics='names = ["synthetic_qualty"]',
            extra="[pruners.magnitude]\nfoo = 1\n",
        )
    )
    lines = bench_errors(path)
    keys = [line.removeprefix(f"{path}: ").split(":")[0] for line in lines]
    assert keys == [
        "dataset.name",
        "metrics.synthetic_qualty",
        "matrix.pruning_method[1]",
        "matrix.pruning_rate[0]",
        "matrix.cfg_scale[0]",
        "pruners.magnitude.foo",
    ]
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_every_structural_error_is_reported(write, bench_errors):
    path = write(matrix_text(sampling='stpes = 2\nnum_samples = "ten"', benchmark="seed = 0", extra="[matrx]\n"))
    lines = bench_errors(path)
    assert sorted(line.removeprefix(f"{path}: ").split(":")[0] for line in lines) == [
        "benchmark.name",
        "matrx",
        "sampling.num_samples",
        "sampling.stpes",
    ]


def test_load_matrix_raises_one_config_error_with_every_line(write):
    path = write(matrix_text(dataset='name = "synthetik"', metrics='names = ["synthetic_qualty"]'))
    with pytest.raises(ConfigError) as info:
        load_matrix(path)
    assert len(str(info.value).splitlines()) == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.train.lr=inf", "model.train: lr must be a finite number > 0, got inf"),
        ("model.train.weight_decay=-1", "model.train: weight_decay must be a finite number >= 0, got -1"),
        ("model.train.grad_clip=nan", "model.train: grad_clip must be a finite number >= 0 (0 = off), got nan"),
        ("model.train.warmup_steps=-5", "model.train: warmup_steps must be >= 0, got -5"),
        ("model.distill.lr=0", "model.distill: lr must be a finite number > 0, got 0"),
    ],
)
def test_bad_training_options_are_one_line_errors(override, message, bench_errors):
    quickstart = Path(__file__).resolve().parents[1] / "benchmarks" / "quickstart.toml"
    assert bench_errors(quickstart, "--set", override) == [f"{quickstart}: {message}"]


def test_unknown_training_option_is_named_with_the_familys_stage(bench_errors):
    quickstart = Path(__file__).resolve().parents[1] / "benchmarks" / "quickstart.toml"
    assert bench_errors(quickstart, "--set", "model.distill.epoch=2") == [
        f"{quickstart}: model.distill.epoch: unknown option of 'unet distillation' (did you mean 'epochs'?); "
        "valid: epochs, batch_size, lr, cond_dropout, ema_decay, weight_decay, grad_clip, max_steps, warmup_steps"
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[model.train]\nepochs = 3\n", "model.train.epochs: model 'synthetic' has no training stage; remove [model.train]"),
        ("[model.distill]\nlr = 0.1\n", "model.distill.lr: model 'synthetic' has no distillation stage; remove [model.distill]"),
        ('[matrix]\n"model.train.epochs" = [2, 3]\n', "matrix.model.train.epochs[0]: model.train.epochs: model "
         "'synthetic' has no training stage; remove [model.train]"),
    ],
    ids=["train table", "distill table", "train axis"],
)
def test_training_tables_of_a_family_without_that_stage_are_errors(write, bench_errors, extra, message):
    """The training options are the family's: ``synthetic`` declares none, so its matrix
    cannot set them (they would change nothing but the cell ids)."""
    if extra.startswith("[matrix]"):
        path = write(matrix_text(matrix=SECTIONS["matrix"] + "\n" + extra.split("\n", 1)[1]))
    else:
        path = write(matrix_text(extra=extra))
    assert bench_errors(path)[0] == f"{path}: {message}"


@pytest.mark.parametrize(
    "name, cells",
    [("quickstart", None), ("synthetic", None), ("trajectory_distillation", None), ("pruning", 184)],
)
def test_shipped_matrix_files_validate_and_plan(name, cells, tmp_path):
    """Every matrix file under benchmarks/ that needs no external data validates and plans
    (the diffusers ones need a COCO folder and are checked in test_diffusers)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.toml"
    cfg = load_matrix(path, [], results_dir=tmp_path)
    planned = plan_cells(cfg)
    assert len(planned) > 0
    if cells is not None:  # the count its header comment states
        assert len(planned) == cells
