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
    import torch

    torch.set_num_threads(1)
