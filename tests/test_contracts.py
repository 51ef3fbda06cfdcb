"""Every registered built-in plugin of every kind runs through ``harness.testing``'s contracts.

One test class per (kind, plugin), built from the registry at collection time, e.g.
``Test_pruners_magnitude(PrunerContract)``. Third-party plugins installed in the same
environment are checked too, as are the built-ins they sit next to. Metrics that need
pretrained weights they cannot find skip with the reason (the contract does that).
"""

from __future__ import annotations

import atexit
import importlib.util
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from harness.registry import build_registry, get_plugin_manager
from harness.testing import CONTRACTS

_REGISTRY = build_registry(get_plugin_manager())


def _tiny_unet(self: Any) -> Any:
    """A small untrained UNet (attention, GroupNorm, skip connections) on 16x16 images."""
    from harness.testing import tiny_dataset

    import torch

    family = _REGISTRY.get("models", "unet")(base_channels=8, channel_mults=[1, 2], num_heads=2, norm_groups=4)
    # the family initialises from torch's global generator: same weights on every call,
    # and the global state is restored afterwards
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return family.build(tiny_dataset(16))


#: class attributes that adapt a contract to one plugin (keyed by kind, name)
def _compute_on_tiny_unet(self: Any, cache: Any) -> Any:
    """attention_maps needs a model with attention: the synthetic stand-in has none."""
    from harness.metric_values import normalise_metric_result
    from harness.testing import metric_context

    ctx = metric_context(cache)
    ctx.model = ctx.reference_model = _tiny_unet(self)
    return normalise_metric_result(self.metric_cls.name, self.metric_cls(**self.metric_options).compute(ctx))


def _dataset_fixture(name: str, **options: Any) -> property:
    """``dataset_options`` pointing at a generated local copy (the datasets that read files need one).

    The fixture is written once per session, on first use, into a temporary folder; the
    writers are the ones of ``tests/test_real_datasets.py``.
    """

    def get(self: Any) -> dict[str, Any]:
        return {"root": str(_fixture_root(name)), "image_size": 16, **options}

    return property(get)


@functools.cache
def _fixture_root(name: str) -> Path:
    from test_real_datasets import make_coco, make_flickr8k, make_image_folder

    from harness.testing import tiny_sd_pipeline

    write = {"coco": make_coco, "flickr8k": make_flickr8k, "image_folder": make_image_folder,
             "tiny_sd": tiny_sd_pipeline}[name]
    root = Path(tempfile.mkdtemp(prefix=f"diffbench-{name}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return write(root / name)


OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    # the ray executor is an optional extra (pip install -e ".[ray]")
    ("executors", "ray"): {"pytestmark": [pytest.mark.skipif(
        importlib.util.find_spec("ray") is None, reason='needs the ray extra: pip install -e ".[ray]"')]},
    # datasets read from disk: a handful of generated images in each real layout
    ("datasets", "coco"): {"dataset_options": _dataset_fixture("coco", max_items=4)},
    ("datasets", "flickr8k"): {"dataset_options": _dataset_fixture("flickr8k")},
    ("datasets", "image_folder"): {"dataset_options": _dataset_fixture("image_folder")},
    # a tiny random Stable Diffusion pipeline of the real classes, saved once per session
    ("models", "diffusers"): {"family_options": property(lambda self: {"pretrained": str(_fixture_root("tiny_sd"))})},
    # the defaults fine-tune 3 x 100 steps: the contract checks behaviour, not convergence
    ("pruners", "iterative"): {"pruner_options": {"rounds": 2, "finetune_steps": 2}},
    # the stand-in has no attention and its only channels feed a protected embedding
    ("pruners", "attention_heads"): {"make_model": _tiny_unet},
    ("pruners", "structured"): {"make_model": _tiny_unet},
    ("metrics", "attention_maps"): {"_compute": _compute_on_tiny_unet},
}


@pytest.fixture(autouse=True)
def _threads() -> None:
    # overrides conftest's: tiny tensors, where a second intra-op thread only adds
    # synchronisation (badly so on a busy machine)
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def _shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from harness.cache import ArtifactCache

    return ArtifactCache(tmp_path_factory.mktemp("contracts") / ".cache")


@pytest.fixture
def bench_tmp_cache(_shared_cache: Any) -> Any:
    # One artifact cache for the module: the digit classifier (and any other metric-side
    # artifact) is trained once, not once per metric test.
    return _shared_cache


def _contract_classes() -> dict[str, type]:
    classes = {}
    for kind, (contract, attr) in CONTRACTS.items():
        for name, info in sorted(_REGISTRY.plugins[kind].items()):
            test_name = f"Test_{kind}_{name}"
            attrs = {attr: info.cls, "__module__": __name__, **OVERRIDES.get((kind, name), {})}
            classes[test_name] = type(test_name, (contract,), attrs)
    return classes


globals().update(_contract_classes())


def test_every_kind_has_a_contract_and_a_plugin():
    assert set(CONTRACTS) == set(_REGISTRY.plugins)
    for kind in ("datasets", "models", "pruners", "metrics", "executors"):
        assert _REGISTRY.plugins[kind], f"no built-in {kind}"
        for name in _REGISTRY.plugins[kind]:
            assert f"Test_{kind}_{name}" in globals()
