"""The engine's stages (variants -> samples -> metric values) and the typed records between them."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest

from harness import runner
from harness.config import SamplingSection, load_matrix
from harness.planner import SamplingSettings, plan_cells
from harness.schema import COLUMNS, ResultRow
from harness.session import Session
from harness.sizes import measure_macs
from harness.variants import VariantStage
from harness.worker import Stages

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "benchmarks" / "synthetic.toml"
ONE_CELL = ['matrix.pruning_method=["none"]', "matrix.cfg_scale=[1.0]", "matrix.seed=[0]"]


def test_a_result_row_has_a_field_per_schema_column_in_schema_order():
    names = [f.name for f in dataclasses.fields(ResultRow) if f.name != "options"]
    assert sorted(names) == sorted(COLUMNS)
    row = ResultRow("c", "n", "reference", "m", float("nan"), "teacher", "none", 0.0, 1.0, "ddim", 5, 0, "d", 8,
                    "fid", "ok", options={"pruners.x.k": 3})
    assert list(row.as_dict()) == [*COLUMNS, "pruners.x.k"]


def test_sampling_settings_are_the_sampling_section_minus_the_axes():
    axes = {"sampler", "steps", "cfg_scale"}
    fields = {f.name for f in dataclasses.fields(SamplingSettings)}
    assert fields == set(SamplingSection.model_fields) - axes
    cfg = load_matrix(SYNTHETIC, [*ONE_CELL, "sampling.num_samples=7", 'matrix."sampling.batch_size"=[2, 4]'])
    cells = plan_cells(cfg)
    assert {c.sampling.num_samples for c in cells} == {7}
    assert sorted(c.sampling.batch_size for c in cells) == [2, 4]


def test_macs_counted_by_an_older_counter_are_counted_again(tmp_path):
    cfg = load_matrix(SYNTHETIC, ONE_CELL, results_dir=str(tmp_path))
    spec = plan_cells(cfg)[0].variant
    first = VariantStage(Session(cfg, tmp_path / ".cache")).get(spec)
    assert first.macs == measure_macs(first.model)
    meta_file = next((tmp_path / ".cache" / "model").glob("*/meta.json"))
    meta = json.loads(meta_file.read_text())
    assert meta.pop("macs_version") == 2
    meta["macs"] = 1.0  # what an older counter (blind to attention) stored, without a version
    meta_file.write_text(json.dumps(meta))
    again = VariantStage(Session(cfg, tmp_path / ".cache")).get(spec)
    assert again.macs == first.macs


def test_a_set_drawn_with_trajectories_serves_a_request_without(tmp_path):
    cfg = load_matrix(SYNTHETIC, ONE_CELL, results_dir=str(tmp_path))
    cell = plan_cells(cfg)[0]
    stages = Stages(cfg, tmp_path / ".cache")
    with_traj = stages.samples.get(cell.variant, cell, trajectory=True)
    assert stages.samples.is_stored(cell.variant, cell, trajectory=False)
    plain = stages.samples.get(cell.variant, cell, trajectory=False)
    assert plain.key == with_traj.key  # loaded, not drawn again
    assert len(list((tmp_path / ".cache" / "samples").glob("*/meta.json"))) == 1
    stats = stages.samples.stats(cell.variant, cell, trajectory=False)
    assert stats.images is None and stats.stats == with_traj.stats


def test_every_stage_is_cached_apart(tmp_path):
    """A new metric computes only that metric; a new CFG scale samples only that scale."""
    base = [*ONE_CELL, 'metrics.names=["synthetic_quality"]']
    run = lambda extra: runner.run(SYNTHETIC, [*base, *extra], results_dir=str(tmp_path),  # noqa: E731
                                   stream=io.StringIO(), interactive=False)
    run([])
    kinds = lambda: {k: len(list((tmp_path / ".cache" / k).glob("*/meta.json")))  # noqa: E731
                     for k in ("model", "samples", "metric")}
    first = kinds()
    run(['metrics.names=["synthetic_quality", "generation_time"]'])
    assert kinds() == first  # generation_time copies sampling stats: no new artifact of any kind
    run(["matrix.cfg_scale=[1.0, 2.0]"])
    second = kinds()
    assert second["model"] == first["model"] and second["samples"] == first["samples"] + 1
    assert second["metric"] == first["metric"] + 1


@pytest.mark.parametrize("threads", [1, 2])
def test_a_worker_runs_its_cells_with_the_runs_thread_count(tmp_path, threads):
    import torch

    from harness.worker import UnitWorker

    seen = []
    cfg = load_matrix(SYNTHETIC, ONE_CELL, results_dir=str(tmp_path))
    worker = UnitWorker(str(SYNTHETIC), ONE_CELL, str(tmp_path), str(tmp_path / ".cache"), threads, cfg=cfg)
    stages = worker.stages()
    run_cell = stages.run_cell
    stages.run_cell = lambda cell: (seen.append(torch.get_num_threads()), run_cell(cell))[1]
    before = torch.get_num_threads()
    from harness.planner import group_units

    results = [r for unit in group_units(plan_cells(cfg)) for r in worker(unit)]
    assert {r.status for r in results} == {"ok"} and seen == [threads] * len(results)
    assert torch.get_num_threads() == before  # restored after each cell


def _pruned_spec(cfg, method: str):  # noqa: ANN001, ANN202
    return next(c.variant for c in plan_cells(cfg) if c.variant.pruning_method == method)


@pytest.fixture
def no_train_split(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """A synthetic matrix whose dataset has no train split (as a val-only COCO copy); yields (cfg, loads)."""
    from harness.errors import UserError

    cfg = load_matrix(SYNTHETIC, ['matrix.pruning_method=["magnitude", "random"]', "matrix.pruning_rate=[0.5]",
                                  "matrix.cfg_scale=[1.0]", "matrix.seed=[0]"], results_dir=str(tmp_path))
    cls = type(Session(cfg, tmp_path / ".cache").dataset())
    loads: list[str] = []
    real_load = cls.load

    def load(self, split):  # noqa: ANN001, ANN202
        loads.append(split)
        if split == "train":
            raise UserError("dataset 'synthetic': no images for the 'train' split: val2017 only")
        return real_load(self, split)

    monkeypatch.setattr(cls, "load", load)
    return cfg, loads


def test_data_free_pruners_need_no_train_split(tmp_path, no_train_split):
    cfg, _ = no_train_split
    stage = VariantStage(Session(cfg, tmp_path / ".cache"))
    for method in ("magnitude", "random"):
        assert stage.get(_pruned_spec(cfg, method)).sparsity == pytest.approx(0.5, abs=0.01)


def test_a_pruner_reading_the_calibration_batch_gets_the_datasets_one_line_error(tmp_path, no_train_split):
    from harness.errors import UserError

    cfg, loads = no_train_split
    stage = VariantStage(Session(cfg, tmp_path / ".cache"))
    spec = _pruned_spec(cfg, "magnitude")
    ctx = stage.prune_context(spec, stage.get(spec.parent()).model)
    assert "train" not in loads  # nothing read before the pruner asks
    with pytest.raises(UserError, match="no images for the 'train' split"):
        ctx.calibration  # noqa: B018


def test_the_calibration_batch_is_read_on_first_use_and_continues_the_generator(tmp_path):
    import torch

    cfg = load_matrix(SYNTHETIC, ['matrix.pruning_method=["random"]', "matrix.pruning_rate=[0.5]",
                                  "matrix.cfg_scale=[1.0]", "matrix.seed=[0]"], results_dir=str(tmp_path))
    stage = VariantStage(Session(cfg, tmp_path / ".cache"))
    spec = _pruned_spec(cfg, "random")
    model = stage.get(spec.parent()).model
    train = stage.s.dataset(spec).load("train")
    # the generator a pruner sees continues after the calibration draw, whichever it reads first
    expected = stage.s.generator("prune", "random", spec.pruning_rate, spec.size_factor)
    idx = torch.randperm(len(train.images), generator=expected)[:256]
    for first in ("generator", "calibration"):
        ctx = stage.prune_context(spec, model)
        getattr(ctx, first)
        assert torch.equal(ctx.calibration.images, train.images[idx])
        assert torch.equal(ctx.generator.get_state(), expected.get_state())


@pytest.fixture(scope="module")
def unet():  # noqa: ANN201
    """A fresh (untrained) built-in UNet on digits: attention, embeddings, an output conv."""
    import torch

    from harness.registry import build_registry

    reg = build_registry()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return reg.get("models", "unet", "test")().build(reg.get("datasets", "digits", "test")())


def _fresh(model):  # noqa: ANN001, ANN202
    import copy

    return copy.deepcopy(model)


def test_the_example_plugins_pruner_at_0_6_stores_0_6(unet, monkeypatch):
    from harness.variants import stored_sparsity

    monkeypatch.syspath_prepend(str(REPO / "examples" / "diffbench-example-plugin"))
    from diffbench_example.pruner import LayerMagnitudePruner

    pruner = LayerMagnitudePruner()
    model = pruner.prune(_fresh(unet), 0.6, None)
    assert round(stored_sparsity(model, pruner), 3) == 0.600
    # its scope leaves out the attention input projections it never prunes
    assert stored_sparsity(model) < 0.59


def test_stored_sparsity_follows_the_pruners_protect_scope(unet):
    from harness.registry import build_registry
    from harness.variants import stored_sparsity

    magnitude = build_registry().get("pruners", "magnitude", "test")
    wide = magnitude(protect=["time_embed", "class_embed", "out_conv", "down.0"])
    model = wide.prune(_fresh(unet), 0.5, None)
    assert stored_sparsity(model, wide) == pytest.approx(0.5, abs=1e-4)
    assert stored_sparsity(model) < 0.49  # over the default scope the untouched down.0 counts
    assert all(float((p != 0).float().mean()) == 1.0 for n, p in model.net.named_parameters()
               if n.startswith("down.0.") and p.dim() >= 2)


def test_protect_entries_match_module_paths_not_substrings():
    from torch import nn

    from harness.sizes import in_module, protected_modules

    net = nn.ModuleDict({"out_conv": nn.Conv2d(1, 1, 1), "out_conv_skip": nn.Conv2d(1, 1, 1),
                         "up": nn.ModuleDict({"out_conv": nn.Conv2d(1, 1, 1)})})
    assert sorted(protected_modules(net, ["out_conv", "up.out_conv"])) == ["out_conv", "up.out_conv"]
    assert in_module("up.out_conv", "up") and not in_module("upper", "up") and not in_module("up", "")


def test_the_default_protect_paths_name_the_unets_modules(unet):
    from harness.sizes import protected_modules
    from plugins.pruning._common import DEFAULT_PROTECT

    by_path = set(protected_modules(unet.net, DEFAULT_PROTECT))
    by_substring = {n for n, _ in unet.net.named_modules() if n and any(p in n for p in DEFAULT_PROTECT)}
    assert by_path == by_substring and {"time_embed", "class_embed", "out_conv"} <= by_path
