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


        class HeadZero(Pruner):
            '''Zeroes the first `rate` of every unprotected conv weight (in memory order).'''

            name = "head_zero"

            def prune(self, model, rate, ctx):
                import torch

                from harness import protected_modules

                protected = {id(m) for m in protected_modules(model.net, model.protected_modules).values()}
                with torch.no_grad():
                    for m in model.net.modules():
                        if isinstance(m, torch.nn.Conv2d) and id(m) not in protected:
                            m.weight.view(-1)[: round(rate * m.weight.numel())] = 0
                return model


        class TestHeadZero(PrunerContract):
            pruner_cls = HeadZero


        def test_no_builtin_is_loaded(bench_registry):
            assert all(not names for names in bench_registry.plugins.values())
    """))
    env = {**os.environ, BLOCK_ENV: "diffbench", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    # name and docstring, options, still runs, removes something, sparsity = rate, protected
    # modules untouched, deterministic; the registry check
    assert re.search(r"^8 passed\b", out.stdout, re.M), out.stdout


# ------------------------------------------------------- broken plugins the contracts catch


def _contract_fails(contract: type, check: str, match: str, *args: Any) -> None:
    """Running ``check`` of ``contract`` on its deliberately broken plugin fails with ``match``."""
    with pytest.raises((AssertionError, pytest.fail.Exception), match=match):
        getattr(contract(), check)(*args)


def _pruner(name: str, zero: Any) -> type:
    from harness import Pruner

    def prune(self, model, rate, ctx):  # noqa: ANN001, ANN202
        import torch

        with torch.no_grad():
            zero(model, rate)
        return model

    return type(name, (Pruner,), {"name": name.lower(), "__doc__": "A broken pruner.", "prune": prune})


def _zero_share(weights: Any, share: float) -> None:
    for w in weights:
        w.view(-1)[: round(share * w.numel())] = 0


def test_a_pruner_that_ignores_the_rate_is_caught():
    from harness import prunable_weights

    broken = _pruner("AlwaysHalf", lambda model, rate: _zero_share(
        [r.tensor for r in prunable_weights(model.net, model.protected_modules)], 0.5))
    contract = type("C", (PrunerContract,), {"pruner_cls": broken})
    _contract_fails(contract, "test_unstructured_sparsity_is_the_rate",
                    r"AlwaysHalf at rate 0.3 left 0.500 .* must zero `rate` of them")


def test_a_pruner_that_prunes_protected_modules_is_caught():
    broken = _pruner("EveryWeight", lambda model, rate: _zero_share(
        [p for p in model.net.parameters() if p.dim() >= 2], rate))
    contract = type("C", (PrunerContract,), {"pruner_cls": broken})
    contract().test_unstructured_sparsity_is_the_rate()  # its scope is right: only protection is broken
    _contract_fails(contract, "test_protected_modules_untouched",
                    r"EveryWeight changed (time|class)_embed.weight, inside the model's protected modules .*"
                    r"leave protected modules .* untouched")


def test_a_metric_reading_an_undeclared_field_is_caught(tmp_path):
    from harness import ArtifactCache, Metric
    from harness.testing import MetricContract

    class RealMean(Metric):
        """Mean of the real images (forgets to declare them: the default requires is samples)."""

        name = "real_mean"
        higher_is_better = True

        def compute(self, ctx):  # noqa: ANN001, ANN202
            return float(ctx.real_images.mean())

    contract = type("C", (MetricContract,), {"metric_cls": RealMean})
    _contract_fails(contract, "test_returns_finite_rows",
                    r"metric 'real_mean' reads ctx.real_images, but its requires \['samples'\] does not name "
                    r"'real_images': add 'real_images' to requires", ArtifactCache(tmp_path))
    RealMean.requires = frozenset({"real_images"})  # declared: the same check passes
    contract().test_returns_finite_rows(ArtifactCache(tmp_path))


def test_a_plot_that_crashes_on_a_real_frame_is_caught(tmp_path):
    from harness import Plot
    from harness.testing import PlotContract

    class FirstFid(Plot):
        """Plots the first FID value (assumes there is one)."""

        name = "first_fid"

        def draw(self, df, out_dir):  # noqa: ANN001, ANN202
            if df.empty:
                return []
            return [df[df.metric == "fid"].value.iloc[0]]

    contract = type("C", (PlotContract,), {"plot_cls": FirstFid})
    contract().test_empty_frame_draws_nothing(tmp_path)  # the old check passed it
    _contract_fails(contract, "test_draws_on_a_realistic_frame",
                    r"FirstFid.draw crashed on a frame with every schema column.*IndexError.*skip what it lacks",
                    tmp_path)


def test_the_realistic_frame_has_every_schema_column_and_the_hard_cases():
    from harness.schema import COLUMNS
    from harness.testing.checks import realistic_frame

    df = realistic_frame()
    assert list(COLUMNS) == list(df.columns[: len(COLUMNS)])
    assert df.value.isna().any() and (df.status == "error").any() and df.timestep.notna().any()
    assert df.seed.nunique() == 2 and df.cfg_scale.nunique() == 2 and "pruners.random.scope" in df


@pytest.mark.parametrize(("change", "check", "match"), [
    ("labels", "test_splits", r"load\('train'\) has labels in \[1, 10\], outside \[0, num_classes = 10\)"),
    ("labels", "test_conditions_deterministic", r"sample_conditions\(20\) has labels in \[1, 10\]"),
    ("images", "test_splits", r"load\('train'\) images span \[.*\]; scale them to \[-1, 1\]"),
])
def test_a_dataset_with_labels_or_images_out_of_range_is_caught(change, check, match):
    from harness.base import Conditions, ImageBatch
    from harness.testing import DatasetContract
    from harness.testing.stand_ins import StandInDataset

    class Broken(StandInDataset):
        """Stand-in images with a deliberate mistake."""

        name = "broken"

        def load(self, split):  # noqa: ANN001, ANN202
            batch = super().load(split)
            if change == "images":
                return ImageBatch((batch.images + 1) * 127.5, batch.conditions)  # uint8 scale
            return ImageBatch(batch.images, self.sample_conditions(len(batch.images), None))

        def sample_conditions(self, n, generator):  # noqa: ANN001, ANN202
            c = super().sample_conditions(n, generator)
            return Conditions(labels=c.labels + 1, prompts=c.prompts) if change == "labels" else c

    contract = type("C", (DatasetContract,), {"dataset_cls": Broken})
    _contract_fails(contract, check, match)
