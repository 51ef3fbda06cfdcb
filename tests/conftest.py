"""Test-wide settings: no network, caches in temporary folders, fresh plugin state."""

from __future__ import annotations

import os
import tempfile

import pytest

# set before torch / huggingface libraries are imported by any test module
_TMP = tempfile.mkdtemp(prefix="diffbench-tests-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["TORCH_HOME"] = os.path.join(_TMP, "torch")
os.environ["HF_HOME"] = os.path.join(_TMP, "hf")
os.environ["XDG_CACHE_HOME"] = os.path.join(_TMP, "xdg")
os.environ.setdefault("MPLBACKEND", "Agg")
# idle OpenMP workers spin by default; on a loaded 2-core machine that makes tests ~10x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.pop("DIFFBENCH_BLOCK_PLUGINS", None)


@pytest.fixture(autouse=True)
def _threads() -> None:
    # one intra-op thread: the test models are tiny, and on a busy machine a second thread
    # costs more in synchronisation than it saves
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def extra_plugins(monkeypatch):  # noqa: ANN201
    """``extra_plugins(obj, ...)``: every plugin manager the harness builds also registers these."""

    def _install(*plugins: object) -> None:
        from harness import registry, runner

        original = registry.get_plugin_manager

        def get_plugin_manager(load_entrypoints: bool = True, extra: list | None = None):  # noqa: ANN202
            return original(load_entrypoints, [*plugins, *(extra or [])])

        monkeypatch.setattr(registry, "get_plugin_manager", get_plugin_manager)
        monkeypatch.setattr(runner, "get_plugin_manager", get_plugin_manager)

    return _install


# ------------------------------------------------ random weights of the real metric networks


@pytest.fixture(scope="session")
def inception_dir(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A folder with a random-weight clean-fid ``inception-2015-12-05.pt`` (TorchScript)."""
    from _weights import save_inception

    return save_inception(tmp_path_factory.mktemp("inception"))


@pytest.fixture(scope="session")
def alexnet_file(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A random-weight torchvision AlexNet state dict (LPIPS's backbone file)."""
    from _weights import save_alexnet

    return save_alexnet(tmp_path_factory.mktemp("tv") / "alexnet-owt-7be5be79.pth")


@pytest.fixture(scope="session")
def small_clip_file(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A random-weight open_clip ViT-S-32 state dict."""
    from _weights import save_random_clip

    return save_random_clip("ViT-S-32", tmp_path_factory.mktemp("clip") / "vit-s-32.bin")


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A tiny random Stable Diffusion pipeline folder (harness.testing.tiny_sd_pipeline)."""
    from harness.testing import tiny_sd_pipeline

    return tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))
