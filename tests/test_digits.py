"""The ``digits`` dataset: fixed stratified split, ranges, conditions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.errors import ConfigError
from harness.registry import build_registry, get_plugin_manager
from plugins.datasets.digits import DigitsDataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits() -> DigitsDataset:
    return DigitsDataset()


def test_registered_through_the_datasets_hook() -> None:
    import plugins.datasets

    registry = build_registry(get_plugin_manager(load_entrypoints=False, extra=[plugins.datasets]))
    assert registry.get("datasets", "digits") is DigitsDataset


def test_split_sizes_shapes_and_ranges(digits: DigitsDataset) -> None:
    train, ref = digits.load("train"), digits.load("reference")
    assert len(train.images) + len(ref.images) == 1797
    assert len(ref.images) == pytest.approx(0.2 * 1797, abs=10)
    for batch in (train, ref):
        assert batch.images.dtype == torch.float32
        assert batch.images.shape[1:] == (1, 16, 16)
        assert batch.images.min() >= -1.0 and batch.images.max() <= 1.0
        assert batch.images.min() == -1.0 and batch.images.max() > 0.9
        assert len(batch.conditions) == len(batch.images)
        assert batch.conditions.prompts == [f"a handwritten digit {v}" for v in batch.conditions.labels.tolist()]
    assert digits.channels == 1 and digits.num_classes == 10 and digits.image_size == 16


def test_split_is_stratified_and_disjoint(digits: DigitsDataset) -> None:
    train, ref = digits.load("train"), digits.load("reference")
    train_counts = torch.bincount(train.conditions.labels, minlength=10)
    ref_counts = torch.bincount(ref.conditions.labels, minlength=10)
    share = ref_counts.float() / (train_counts + ref_counts).float()
    assert torch.all((share - 0.2).abs() < 0.01)
    # no image of the reference split appears in the train split
    flat_train = {tuple(v) for v in train.images.flatten(1).tolist()}
    overlap = sum(tuple(v) in flat_train for v in ref.images.flatten(1).tolist())
    assert overlap <= 2  # sklearn's digits hold a few exact duplicates


def test_split_is_deterministic_and_seeded() -> None:
    a, b = DigitsDataset().load("reference"), DigitsDataset().load("reference")
    assert torch.equal(a.images, b.images) and torch.equal(a.conditions.labels, b.conditions.labels)
    c = DigitsDataset(split_seed=1).load("reference")
    assert not torch.equal(a.images, c.images)


def test_load_returns_copies(digits: DigitsDataset) -> None:
    batch = digits.load("train")
    batch.images.zero_()
    assert digits.load("train").images.min() == -1.0


def test_native_size_keeps_the_original_pixels() -> None:
    from sklearn.datasets import load_digits

    ds = DigitsDataset(image_size=8, reference_fraction=0.5)
    train, ref = ds.load("train"), ds.load("reference")
    raw = torch.as_tensor(load_digits().images, dtype=torch.float32) / 16 * 2 - 1
    assert torch.allclose(torch.cat([train.images, ref.images]).sort(0).values, raw.unsqueeze(1).sort(0).values)


def test_other_sizes() -> None:
    assert DigitsDataset(image_size=32).load("reference").images.shape[1:] == (1, 32, 32)
    assert DigitsDataset(image_size=4).load("reference").images.shape[1:] == (1, 4, 4)


def test_sample_conditions_are_balanced_and_seeded(digits: DigitsDataset) -> None:
    a = digits.sample_conditions(100, torch.Generator().manual_seed(0))
    b = digits.sample_conditions(100, torch.Generator().manual_seed(0))
    c = digits.sample_conditions(100, torch.Generator().manual_seed(1))
    assert torch.equal(a.labels, b.labels) and not torch.equal(a.labels, c.labels)
    assert torch.equal(torch.bincount(a.labels, minlength=10), torch.full((10,), 10))
    assert a.prompts[0] == f"a handwritten digit {int(a.labels[0])}"
    assert len(digits.sample_conditions(7, torch.Generator()).labels) == 7


@pytest.mark.parametrize("k", [1, 7, 10, 64])
def test_sample_i_condition_does_not_depend_on_the_sample_count(digits: DigitsDataset, k: int) -> None:
    # paired across runs: sample i gets the same label whether a run draws k or 2k samples
    few = digits.sample_conditions(k, torch.Generator().manual_seed(5))
    many = digits.sample_conditions(2 * k, torch.Generator().manual_seed(5))
    assert torch.equal(many.labels[:k], few.labels)
    assert many.prompts[:k] == few.prompts
    assert len(digits.sample_conditions(0, torch.Generator()).labels) == 0


def test_sample_conditions_are_balanced_in_every_block_of_ten(digits: DigitsDataset) -> None:
    labels = digits.sample_conditions(30, torch.Generator().manual_seed(2)).labels
    for block in labels.view(3, 10):
        assert sorted(block.tolist()) == list(range(10))
    assert labels.dtype == torch.long


def test_the_conditions_version_is_not_in_the_models_key(digits: DigitsDataset) -> None:
    # the training data did not change: trained teachers and the digit classifier stay valid
    from plugins.datasets.digits import CONDITIONS_VERSION

    assert digits.conditions_version == CONDITIONS_VERSION == 2
    key = digits.config_key()
    assert "conditions" not in key
    assert key["options"] == {"image_size": 16, "reference_fraction": 0.2, "split_seed": 0}


def test_the_sample_sets_cache_key_holds_the_conditions_version(tmp_path: Path) -> None:
    from harness.config import load_matrix
    from harness.planner import plan_cells
    from harness.worker import Stages

    one_cell = ["matrix.cfg_scale=[1.0]", "matrix.seed=[0]"]
    cfg = load_matrix(REPO / "benchmarks" / "quickstart.toml", one_cell, results_dir=str(tmp_path))
    cell = plan_cells(cfg)[0]
    config = Stages(cfg, tmp_path / ".cache").samples.config("variant", cell, trajectory=False)
    # sample sets (and the metric values measured on them) made with the old n-dependent
    # labels must not be reused: the version is part of the sample sets' keys
    assert config["dataset"]["name"] == "digits" and config["conditions"] == 2


def test_bad_split_and_options(digits: DigitsDataset) -> None:
    with pytest.raises(ValueError, match="no split 'test'; valid: train, reference"):
        digits.load("test")
    with pytest.raises(ConfigError, match="reference_fraction must be in"):
        DigitsDataset(reference_fraction=1.0)
    with pytest.raises(ConfigError, match="dataset.digits.image_sise: unknown option"):
        DigitsDataset(image_sise=8)
