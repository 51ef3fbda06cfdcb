"""Every registered built-in plugin of every kind runs through ``harness.testing``'s contracts.

One test class per (kind, plugin), built from the registry at collection time, e.g.
``Test_pruners_magnitude(PrunerContract)``. Third-party plugins installed in the same
environment are checked too, as are the built-ins they sit next to. A plugin that needs
its own small fixtures (a dataset folder, cheaper options, a model with attention)
supplies them from its ``contract_fixtures`` classmethod; metrics that need pretrained
weights they cannot find skip with the reason (the contract does that).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from harness.registry import BLOCK_ENV, build_registry, get_plugin_manager
from harness.testing import CONTRACTS, PrunerContract, contract_fixtures

_REGISTRY = build_registry(get_plugin_manager())
REPO = Path(__file__).resolve().parents[1]


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
            classes[test_name] = type(test_name, (contract,), {attr: info.cls, "__module__": __name__})
    return classes


globals().update(_contract_classes())


def test_every_kind_has_a_contract_and_a_plugin():
    assert set(CONTRACTS) == set(_REGISTRY.plugins)
    for kind in ("datasets", "models", "pruners", "metrics", "executors"):
        assert _REGISTRY.plugins[kind], f"no built-in {kind}"
        for name in _REGISTRY.plugins[kind]:
            assert f"Test_{kind}_{name}" in globals()


def test_unknown_fixture_keys_are_an_error():
    class Odd:
        @classmethod
        def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
            return {"optons": {}}

    with pytest.raises(TypeError, match=r"Odd.contract_fixtures returned \['optons'\]; valid keys: \['model', "):
        contract_fixtures(Odd)


class _SkippedPruner:
    name = "skipped"

    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        return {"skip": "needs an extra that is not installed"}


class TestFixturesCanSkip(PrunerContract):
    """Every check of a plugin whose fixtures say ``skip`` is skipped (here: none may fail)."""

    pruner_cls = _SkippedPruner


def test_the_contracts_run_with_every_builtin_blocked(tmp_path):
    """harness.testing brings its own stand-ins: a third party's checks need no built-in plugin."""
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        from harness import Pruner
        from harness.testing import PrunerContract


        class HalfZero(Pruner):
            '''Zeroes the first half of every conv weight.'''

            name = "half_zero"

            def prune(self, model, rate, ctx):
                import torch

                with torch.no_grad():
                    for m in model.net.modules():
                        if isinstance(m, torch.nn.Conv2d):
                            m.weight[: m.weight.shape[0] // 2] = 0
                return model


        class TestHalfZero(PrunerContract):
            pruner_cls = HalfZero


        def test_no_builtin_is_loaded(bench_registry):
            assert all(not names for names in bench_registry.plugins.values())
    """))
    env = {**os.environ, BLOCK_ENV: "diffbench", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    # name and docstring, options, still runs, removes something, deterministic; the registry check
    assert re.search(r"^6 passed\b", out.stdout, re.M), out.stdout
