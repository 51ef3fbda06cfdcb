"""The planner: cartesian product, collapsing, exclude/include, references, ids, names, units."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.config import load_matrix
from harness.planner import group_units, plan_cells

REPO = Path(__file__).resolve().parents[1]

SECTIONS = {
    "benchmark": 'name = "pruning"',
    "dataset": 'name = "synthetic"',
    "model": 'name = "synthetic"',
    "sampling": "steps = 2\nnum_samples = 4\nbatch_size = 4",
    "matrix": 'pruning_method = ["none", "magnitude", "random"]\npruning_rate = [0.1, 0.5]\ncfg_scale = [1.0, 7.5]\n'
              "seed = [0, 1]",
    "metrics": 'names = ["synthetic_quality"]',
    "execution": 'device = "cpu"',
}


def matrix_text(extra: str = "", **sections: str | None) -> str:
    body = {**SECTIONS, **sections}
    parts = [f"[{name}]\n{textwrap.dedent(text).strip()}\n" for name, text in body.items() if text is not None]
    return "\n".join(parts) + "\n" + textwrap.dedent(extra)


@pytest.fixture
def cfg_of(tmp_path, bench_registry):
    """``cfg_of(text, overrides)`` -> a validated BenchConfig (one shared registry)."""
    counter = iter(range(10**6))

    def _load(text: str, overrides: list[str] | None = None):
        path = tmp_path / f"m{next(counter)}.toml"
        path.write_text(text)
        return load_matrix(path, overrides, registry=bench_registry)

    return _load


def ids(cells) -> dict[str, str]:
    return {c.name: c.cell_id for c in cells}


# ----------------------------------------------------------------------------- expansion


def test_cartesian_product_with_none_collapsing_the_rate(cfg_of):
    cells = plan_cells(cfg_of(matrix_text()))
    # none: 1 rate x 2 cfg x 2 seeds; magnitude, random: 2 rates x 2 cfg x 2 seeds each
    assert len(cells) == 4 + 8 + 8
    methods = [c.axes["pruning_method"] for c in cells]
    assert methods.count("none") == 4
    assert {c.axes["pruning_rate"] for c in cells if c.axes["pruning_method"] == "none"} == {0.0}
    assert len({c.cell_id for c in cells}) == len(cells)
    assert len({c.name for c in cells}) == len(cells)


def test_product_counts_over_every_builtin_axis(cfg_of):
    cfg = cfg_of(
        matrix_text(
            matrix="size_factor = [0.25, 0.5]\npruning_method = ['none', 'magnitude']\npruning_rate = [0.3, 0.6, 0.9]\n"
                   "cfg_scale = [1.0, 3.0]\nsampler = ['ddim', 'ddpm']\nsteps = [2, 4]\nseed = [0, 1, 2]"
        )
    )
    cells = plan_cells(cfg)
    per_sampling = 2 * 2 * 2 * 3  # cfg x sampler x steps x seed
    variants = 2 * (1 + 3)  # sizes x (unpruned + 3 rates)
    references = 1  # the teacher: size_factor absent
    assert len(cells) == per_sampling * (variants + references)


def test_pruning_method_none_alone_collapses_the_rate_axis(cfg_of):
    cells = plan_cells(cfg_of(matrix_text(matrix='pruning_method = "none"\npruning_rate = [0.1, 0.5, 0.9]\n'
                                                 "cfg_scale = [1.0, 7.5]\nseed = [0, 1]")))
    assert len(cells) == 4
    assert all(c.role == "reference" and c.axes["pruning_rate"] == 0.0 for c in cells)


def test_exclude_drops_matching_cells(cfg_of):
    base = plan_cells(cfg_of(matrix_text()))
    cells = plan_cells(cfg_of(matrix_text(extra="[[matrix.exclude]]\npruning_method = 'magnitude'\npruning_rate = 0.5\n")))
    assert len(cells) == len(base) - 4
    assert not [c for c in cells if c.axes["pruning_method"] == "magnitude" and c.axes["pruning_rate"] == 0.5]
    # the other cells keep their ids
    assert {c.cell_id for c in cells} < {c.cell_id for c in base}


def test_exclude_with_a_partial_match_drops_every_matching_cell(cfg_of):
    cells = plan_cells(cfg_of(matrix_text(extra="[[matrix.exclude]]\ncfg_scale = 7.5\nseed = 1\n")))
    assert len(cells) == 20 - 5
    assert not [c for c in cells if c.axes["cfg_scale"] == 7.5 and c.axes["seed"] == 1]


def test_include_adds_cells_with_their_reference(cfg_of):
    base = plan_cells(cfg_of(matrix_text()))
    cells = plan_cells(
        cfg_of(matrix_text(extra="[[matrix.include]]\npruning_method = 'random'\npruning_rate = 0.9\ncfg_scale = 3.0\n"))
    )
    new = {c.name for c in cells} - {c.name for c in base}
    # the included cell (seed: the first default, 0) and its reference at cfg 3
    assert new == {"pruning[method=random,rate=0.9,cfg=3,seed=0]", "pruning[reference,cfg=3,seed=0]"}


def test_include_of_an_existing_cell_adds_nothing(cfg_of):
    base = plan_cells(cfg_of(matrix_text()))
    cells = plan_cells(
        cfg_of(matrix_text(extra="[[matrix.include]]\npruning_method = 'random'\npruning_rate = 0.5\n"
                                 "cfg_scale = 7.5\nseed = 1\n"))
    )
    assert ids(cells) == ids(base)


def test_reference_cells_are_added_automatically(cfg_of):
    cells = plan_cells(
        cfg_of(matrix_text(matrix="pruning_method = ['magnitude']\npruning_rate = [0.5]\ncfg_scale = [1.0, 7.5]\n"
                                  "sampler = ['ddim', 'ddpm']\nsteps = [2, 4]\nseed = [0, 1]"))
    )
    refs = [c for c in cells if c.role == "reference"]
    pruned = [c for c in cells if c.role == "pruned"]
    assert len(pruned) == 16
    # one reference per (cfg, seed, sampler, steps)
    assert len(refs) == 16
    keys = {(c.axes["cfg_scale"], c.axes["seed"], c.axes["sampler"], c.axes["steps"]) for c in refs}
    assert len(keys) == 16
    for c in pruned:
        assert c.reference_axes() in [r.axes for r in refs]


def test_students_share_the_teacher_reference(cfg_of):
    cells = plan_cells(cfg_of(matrix_text(matrix="size_factor = [0.25, 0.5]\ncfg_scale = [1.0]\nseed = [0]")))
    assert sorted(c.role for c in cells) == ["reference", "student", "student"]
    assert {c.variant.reference() for c in cells} == {next(c.variant for c in cells if c.role == "reference")}


def test_dotted_axis_applies_only_to_its_pruner(cfg_of):
    cells = plan_cells(
        cfg_of(matrix_text(matrix="pruning_method = ['none', 'magnitude', 'iterative']\npruning_rate = [0.5]\n"
                                  '"pruners.iterative.rounds" = [1, 2]\nseed = [0]'))
    )
    # reference, magnitude (rounds collapsed), iterative x 2 rounds
    assert len(cells) == 4
    rounds = {c.name: c.axes["pruners.iterative.rounds"] for c in cells}
    assert rounds == {
        "pruning[reference,seed=0]": None,
        "pruning[method=magnitude,rate=0.5,seed=0]": None,
        "pruning[method=iterative,rate=0.5,seed=0,pruners.iterative.rounds=1]": 1,
        "pruning[method=iterative,rate=0.5,seed=0,pruners.iterative.rounds=2]": 2,
    }
    it = [c for c in cells if c.axes["pruning_method"] == "iterative"]
    assert sorted(json.loads(c.variant.pruner_options)["rounds"] for c in it) == [1, 2]


# ----------------------------------------------------------------------------- names


def test_readable_deterministic_names(cfg_of):
    cells = plan_cells(cfg_of(matrix_text()))
    names = {c.name for c in cells}
    assert "pruning[method=magnitude,rate=0.5,cfg=7.5,seed=0]" in names
    assert "pruning[method=random,rate=0.1,cfg=1,seed=1]" in names
    assert "pruning[reference,cfg=7.5,seed=0]" in names
    assert [c.name for c in plan_cells(cfg_of(matrix_text()))] == [c.name for c in cells]


def test_names_mention_only_swept_axes(cfg_of):
    cells = plan_cells(cfg_of(matrix_text(matrix="size_factor = [0.5]\nseed = [3]")))
    assert sorted(c.name for c in cells) == ["pruning[reference,seed=3]", "pruning[size=0.5,seed=3]"]


# ----------------------------------------------------------------------------- ids


def test_ids_equal_for_equal_configs(cfg_of):
    assert ids(plan_cells(cfg_of(matrix_text()))) == ids(plan_cells(cfg_of(matrix_text())))


def test_ids_do_not_depend_on_key_order(cfg_of):
    reordered = textwrap.dedent(
        """
        [metrics]
        names = ["synthetic_quality"]

        [execution]
        device = "cpu"

        [matrix]
        seed = [0, 1]
        cfg_scale = [1.0, 7.5]
        pruning_rate = [0.1, 0.5]
        pruning_method = ["none", "magnitude", "random"]

        [sampling]
        batch_size = 4
        num_samples = 4
        steps = 2

        [model]
        name = "synthetic"

        [dataset]
        name = "synthetic"

        [benchmark]
        name = "pruning"
        """
    )
    a = plan_cells(cfg_of(matrix_text(extra="[metrics.synthetic_quality]\nnoise = 0.1\nseed = 3\n")))
    b = plan_cells(cfg_of(reordered.replace('[execution]', '[metrics.synthetic_quality]\nseed = 3\nnoise = 0.1\n\n'
                                                            '[execution]')))
    assert ids(a) == ids(b)


def test_ids_are_stable_across_processes(tmp_path, cfg_of):
    path = tmp_path / "m.toml"
    path.write_text(matrix_text())
    here = ids(plan_cells(cfg_of(matrix_text())))
    code = (
        "import json, sys\n"
        "from harness.config import load_matrix\n"
        "from harness.planner import plan_cells\n"
        "print(json.dumps({c.name: c.cell_id for c in plan_cells(load_matrix(sys.argv[1]))}))\n"
    )
    # another interpreter with another str-hash seed: ids must not depend on hash() or id()
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True, timeout=300,
        env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=tmp_path,
    ).stdout
    assert json.loads(out) == here


@pytest.mark.parametrize(
    ("description", "change"),
    [
        ("benchmark seed", {"benchmark": 'name = "pruning"\nseed = 1'}),
        ("dataset option", {"dataset": 'name = "synthetic"\nseed = 1'}),
        ("model option", {"model": 'name = "synthetic"\nhidden = 8'}),
        ("number of samples", {"sampling": "steps = 2\nnum_samples = 8\nbatch_size = 4"}),
        ("trajectory samples", {"sampling": "steps = 2\nnum_samples = 4\nbatch_size = 4\ntrajectory_samples = 2"}),
        ("pruner option", {"extra": "[pruners.magnitude]\nprotect = ['inp']\n"}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_ids_change_with_anything_that_affects_results(cfg_of, description, change):
    base = ids(plan_cells(cfg_of(matrix_text())))
    changed = ids(plan_cells(cfg_of(matrix_text(**change))))
    assert base.keys() == changed.keys()
    if description == "pruner option":
        # only the cells that use the pruner change
        differ = {n for n in base if base[n] != changed[n]}
        assert differ == {n for n in base if "method=magnitude" in n}
    else:
        assert all(base[n] != changed[n] for n in base), description


def test_ids_change_with_a_training_option(bench_registry):
    # the synthetic family has no training stage: the UNet's quickstart has one
    from _matrices import QUICKSTART

    base = ids(plan_cells(load_matrix(QUICKSTART, registry=bench_registry)))
    changed = ids(plan_cells(load_matrix(QUICKSTART, ["model.train.epochs=3"], registry=bench_registry)))
    assert base.keys() == changed.keys() and all(base[n] != changed[n] for n in base)


@pytest.mark.parametrize(
    "change",
    [{"extra": "[metrics.synthetic_quality]\nnoise = 0.5\n"},
     {"metrics": 'names = ["synthetic_quality", "generation_time"]'}],
    ids=["metric option", "metric list"],
)
def test_metrics_change_the_content_key_not_the_id(cfg_of, change):
    # a stored cell measured with other metrics is recomputed and superseded, not duplicated
    base = {c.name: c for c in plan_cells(cfg_of(matrix_text()))}
    changed = {c.name: c for c in plan_cells(cfg_of(matrix_text(**change)))}
    assert base.keys() == changed.keys()
    for n in base:
        assert base[n].cell_id == changed[n].cell_id
        assert base[n].content_key != changed[n].content_key


def test_ids_change_with_the_default_sampling_axes(cfg_of):
    base = plan_cells(cfg_of(matrix_text()))
    for sampling in ("steps = 3\nnum_samples = 4", "steps = 2\nnum_samples = 4\nsampler = 'ddpm'",
                     "steps = 2\nnum_samples = 4\ncfg_scale = 2.0"):
        other = plan_cells(cfg_of(matrix_text(sampling=sampling, matrix="pruning_method = ['none']\nseed = [0, 1]")))
        assert not {c.cell_id for c in other} & {c.cell_id for c in base}


def test_each_axis_value_changes_the_id(cfg_of):
    cells = plan_cells(cfg_of(matrix_text()))
    by_axes = {json.dumps(c.axes, sort_keys=True): c.cell_id for c in cells}
    assert len(set(by_axes.values())) == len(cells)


def test_ids_ignore_what_does_not_change_results(cfg_of):
    base = ids(plan_cells(cfg_of(matrix_text())))
    for change in (
        {"sampling": "steps = 2\nnum_samples = 4\nbatch_size = 2\ncfg_batching = 'split'\nwarmup = false"},
        {"execution": 'device = "auto"\nresults_dir = "elsewhere"'},
        {"benchmark": 'name = "pruning"\ndescription = "words"'},
    ):
        assert ids(plan_cells(cfg_of(matrix_text(**change)))) == base, change


def test_same_cell_has_the_same_id_in_a_bigger_matrix(cfg_of):
    small = ids(plan_cells(cfg_of(matrix_text(), ["matrix.seed=[0]", "matrix.cfg_scale=[7.5]"])))
    big = ids(plan_cells(cfg_of(matrix_text())))
    assert small.items() <= big.items()


# ----------------------------------------------------------------------------- units


def test_grouping_by_variant_reference_first(cfg_of):
    cells = plan_cells(cfg_of(matrix_text()))
    units = group_units(cells)
    assert units[0].variant.is_reference
    assert [u.variant.is_reference for u in units].count(True) == 1
    assert len(units) == 1 + 2 * 2  # reference + (magnitude, random) x 2 rates
    assert sorted(c.cell_id for u in units for c in u.cells) == sorted(c.cell_id for c in cells)
    for unit in units:
        assert {c.variant for c in unit.cells} == {unit.variant}
        assert len(unit.cells) == 4  # cfg x seed
        order = [(c.axes["cfg_scale"], c.axes["seed"]) for c in unit.cells]
        assert order == sorted(order)


def test_grouping_is_independent_of_the_input_order(cfg_of):
    cells = plan_cells(cfg_of(matrix_text()))
    a = [[c.cell_id for c in u.cells] for u in group_units(cells)]
    b = [[c.cell_id for c in u.cells] for u in group_units(list(reversed(cells)))]
    assert a == b


def test_planning_ten_thousand_cells(cfg_of):
    rates = ", ".join(str(round(0.02 * i, 2)) for i in range(50))
    cfgs = ", ".join(str(float(i)) for i in range(10))
    seeds = ", ".join(str(i) for i in range(10))
    cfg = cfg_of(
        matrix_text(matrix=f"pruning_method = ['magnitude', 'random']\npruning_rate = [{rates}]\n"
                           f"cfg_scale = [{cfgs}]\nseed = [{seeds}]")
    )
    cells = plan_cells(cfg)
    assert len(cells) == 2 * 50 * 10 * 10 + 10 * 10  # + one reference per (cfg, seed)
    assert len({c.cell_id for c in cells}) == len(cells)
    units = group_units(cells)
    assert len(units) == 1 + 2 * 50
    assert sum(len(u.cells) for u in units) == len(cells)
