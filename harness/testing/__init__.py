"""Contract tests for plugin authors (a pytest plugin shipped with diffbench).

diffbench registers this module as a pytest plugin (entry point ``pytest11``), so in any
project with diffbench installed a test module can check its own classes::

    from harness.testing import MetricContract, PrunerContract

    class TestMyPruner(PrunerContract):
        pruner_cls = MyPruner          # options: pruner_options = {...}

    class TestMyMetric(MetricContract):
        metric_cls = MyMetric

Every built-in plugin runs through the same checks (``tests/test_contracts.py``); the
list is in docs/writing_plugins.md ("Contract tests"). Each failure says what to fix:
an unstructured pruner's sparsity off its rate, a pruned protected module, a metric
reading a context field its ``requires`` does not name (the checks' context raises,
:mod:`harness.testing.checks`), a plot crashing on a realistic frame, a dataset's
labels outside ``num_classes`` or images outside [-1, 1]. The
checks use this package's own stand-in model and dataset (``harness.testing.stand_ins``:
no plugin needed, so they run with the built-ins blocked), need no training and no
downloads; a metric that needs pretrained weights it cannot find is skipped with the
reason. pytest fixtures: ``bench_registry`` (a fresh registry of the installed
plugins), ``bench_tmp_cache`` (an empty artifact cache).

A plugin that needs its own small fixtures for the checks (a dataset folder, cheaper
options, a model with attention) supplies them from a classmethod, as diffusers' test
classes supply ``get_dummy_inputs``::

    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        return {"options": {"root": str(write_tiny_copy(folder))}}

``folder`` is an empty temporary folder; the call happens once per session. Keys (all
optional): ``options`` (constructor options for the checks; a test class's own
``*_options`` update them), ``model`` (``(family name, options)``: a registered model
family whose model, built on the stand-in dataset, replaces the stand-in model in the
pruner and metric checks) and ``skip`` (a reason to skip the checks, e.g. a missing
optional dependency).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import pytest

#: helpers re-exported lazily: this module is a pytest plugin loaded by every pytest
#: session in an environment with diffbench, and must not import torch or diffusers
_LAZY = {
    **dict.fromkeys(["StandInDataset", "StandInNet", "metric_context", "prune_context", "tiny_dataset", "tiny_model"],
                    "harness.testing.stand_ins"),
    "tiny_sd_pipeline": "harness.testing.sd_pipeline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'harness.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


@pytest.fixture
def bench_registry() -> Any:
    """A fresh registry of every installed plugin (no state shared between tests)."""
    from harness.registry import build_registry, get_plugin_manager

    return build_registry(get_plugin_manager())


@pytest.fixture
def bench_tmp_cache(tmp_path: Path) -> Any:
    """An empty artifact cache in a temporary folder."""
    from harness.cache import ArtifactCache

    return ArtifactCache(tmp_path / ".cache")


# ----------------------------------------------------------------------- contract fixtures

#: what a plugin's ``contract_fixtures(folder)`` may return (see the module docstring)
FIXTURE_KEYS = frozenset({"options", "model", "skip"})


@functools.cache
def contract_fixtures(cls: type) -> dict[str, Any]:
    """The small test fixtures ``cls`` supplies for its contract (``{}`` if it has none).

    Calls the classmethod ``cls.contract_fixtures(folder)`` once per session, with an
    empty temporary folder for any files it writes (removed at exit).
    """
    hook = getattr(cls, "contract_fixtures", None)
    if hook is None:
        return {}
    folder = Path(tempfile.mkdtemp(prefix=f"diffbench-{cls.__name__}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    fixtures = dict(hook(folder))
    unknown = sorted(set(fixtures) - FIXTURE_KEYS)
    if unknown:
        raise TypeError(f"{cls.__qualname__}.contract_fixtures returned {unknown}; valid keys: {sorted(FIXTURE_KEYS)}")
    return fixtures


def fixture_model(spec: tuple[str, dict[str, Any]], image_size: int = 16) -> Any:
    """A fresh model of the registered family ``spec = (name, options)`` on the stand-in dataset.

    Built with torch's global generator seeded 0 (same weights on every call); the global
    state is restored afterwards.
    """
    import torch

    from harness.registry import build_registry

    from harness.testing.stand_ins import tiny_dataset

    name, options = spec
    family = build_registry().get("models", name, where="contract_fixtures model")(**options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return family.build(tiny_dataset(image_size))


def prune_context_for(model: Any, seed: int = 0) -> Any:
    """The stand-in PruneContext for ``model`` (:func:`harness.testing.stand_ins.prune_context`)."""
    from harness.testing.stand_ins import prune_context

    return prune_context(model, seed)


def _skip_if_missing_weights(exc: BaseException) -> None:
    from harness.errors import MissingFileError

    if isinstance(exc, MissingFileError):
        pytest.skip(f"needs pretrained weights: {exc}")


# ----------------------------------------------------------------------------- contracts


class _NameContract:
    #: the class attribute naming the plugin class, e.g. ``pruner_cls``; its options are
    #: the attribute of the same stem, ``pruner_options``
    cls_attr: ClassVar[str] = ""

    def _cls(self) -> type:
        return getattr(self, self.cls_attr)

    def _fixtures(self) -> dict[str, Any]:
        return contract_fixtures(self._cls())

    def _options(self) -> dict[str, Any]:
        """The fixtures' options, updated by the test class's own ``*_options``."""
        own = getattr(self, self.cls_attr.replace("_cls", "_options"))
        return {**self._fixtures().get("options", {}), **own}

    @pytest.fixture(autouse=True)
    def _skip_by_fixtures(self) -> None:
        reason = self._fixtures().get("skip")
        if reason:
            pytest.skip(reason)

    def test_has_name_and_docstring(self) -> None:
        cls = self._cls()
        assert isinstance(cls.name, str) and cls.name, f"{cls.__name__} needs a class attribute 'name'"
        assert cls.describe(), f"{cls.__name__} needs a docstring whose first line says what it is for"

    def test_options_are_listable(self) -> None:
        from harness.options import option_fields

        fields = option_fields(getattr(self._cls(), "Options", None))
        assert all(len(f) == 4 for f in fields)


class PrunerContract(_NameContract):
    """Checks of the Pruner contract; set ``pruner_cls`` (and ``pruner_options``)."""

    pruner_cls: ClassVar[type] = None  # type: ignore[assignment]
    pruner_options: ClassVar[dict[str, Any]] = {}
    rates: ClassVar[tuple[float, ...]] = (0.3, 0.7)

    cls_attr: ClassVar[str] = "pruner_cls"

    def make_model(self) -> Any:
        """The model pruned by the checks: a fresh one per call.

        The fixtures' ``model`` if the pruner supplies one (for a target the stand-in
        lacks: attention heads, channels that do not feed a protected embedding), else
        the stand-in model (two convolutions, time and class embeddings).
        """
        from harness.testing.stand_ins import tiny_model

        spec = self._fixtures().get("model")
        return fixture_model(spec) if spec else tiny_model()

    def _prune(self, rate: float, seed: int = 0) -> tuple[Any, Any]:
        model = self.make_model()
        pruned = self._cls()(**self._options()).prune(model, rate, prune_context_for(model, seed))
        return model, pruned

    def test_pruned_model_still_runs(self) -> None:
        import torch

        from harness.base import DiffusionModel

        for rate in self.rates:
            _, pruned = self._prune(rate)
            assert isinstance(pruned, DiffusionModel)
            x, t, c = pruned.example_inputs(2)
            with torch.no_grad():
                out = pruned.net(x, t, c)
            assert out.shape == x.shape
            assert torch.isfinite(out).all()

    def test_removes_something(self) -> None:
        from harness.modelio import count_params

        before = count_params(self.make_model().net)
        _, pruned = self._prune(max(self.rates))
        after = count_params(pruned.net)
        assert after[1] < before[1], "pruning at a high rate left every parameter in place"

    def test_unstructured_sparsity_is_the_rate(self) -> None:
        from harness.sizes import weight_sparsity

        if self.pruner_cls.removes_structure:
            pytest.skip("removes structure: its rate counts channels or heads, not zeroed weights")
        for rate in self.rates:
            _, pruned = self._prune(rate)
            got = weight_sparsity(self._cls()(**self._options()).prunable_weights(pruned))
            assert abs(got - rate) <= 0.01, (
                f"{self.pruner_cls.__name__} at rate {rate} left {got:.3f} of its prunable_weights(model) at zero: "
                "an unstructured pruner (removes_structure = False) must zero `rate` of them; use `rate`, and "
                "if it touches fewer weights than the default scope, override prunable_weights(model)")

    def test_protected_modules_untouched(self) -> None:
        from harness.sizes import protected_modules

        model = self.make_model()
        before = {f"{m}.{n}" if m else n: p.detach().clone()
                  for m, mod in protected_modules(model.net, model.protected_modules).items()
                  for n, p in mod.named_parameters(recurse=False)}
        assert before, "the model protects no module: the check needs one"
        ctx = prune_context_for(model)
        ctx.finetune = lambda m, steps: m  # fine-tuning may train protected weights; pruning may not touch them
        pruned = self._cls()(**self._options()).prune(model, max(self.rates), ctx)
        after = dict(pruned.net.named_parameters())
        for name, old in before.items():
            new = after.get(name)
            assert new is not None, f"{self.pruner_cls.__name__} removed the protected parameter {name}"
            same = new.shape == old.shape and bool((new.detach().cpu() == old.cpu()).all())
            # a structured pruner may shrink a protected layer's inputs, never its outputs
            shrunk = self.pruner_cls.removes_structure and new.shape[0] == old.shape[0]
            assert same or shrunk, (
                f"{self.pruner_cls.__name__} changed {name}, inside the model's protected modules "
                f"{sorted(model.protected_modules)}: leave protected modules (model.protected_modules, "
                "net.ignored_layers(), see harness.protected_modules) untouched")

    def test_deterministic_given_generator(self) -> None:
        import torch

        _, a = self._prune(0.5, seed=1)
        _, b = self._prune(0.5, seed=1)
        for (na, pa), (_, pb) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
            assert torch.equal(pa, pb), f"{na} differs between two runs with the same generator"


class MetricContract(_NameContract):
    """Checks of the Metric contract; set ``metric_cls`` (and ``metric_options``)."""

    metric_cls: ClassVar[type] = None  # type: ignore[assignment]
    metric_options: ClassVar[dict[str, Any]] = {}

    cls_attr: ClassVar[str] = "metric_cls"

    def test_declares_requirements(self) -> None:
        from harness.base import METRIC_REQUIREMENTS

        cls = self.metric_cls
        assert isinstance(cls.higher_is_better, bool)
        assert isinstance(cls.cached, bool), "cached must be a bool (False: no cache entry, see harness.base.Metric)"
        assert isinstance(cls.requires, frozenset) and cls.requires <= METRIC_REQUIREMENTS, (
            f"requires must be a frozenset within {sorted(METRIC_REQUIREMENTS)}"
        )

    def _compute(self, cache: Any) -> list[dict[str, Any]]:
        from harness.metric_values import normalise_metric_result
        from harness.testing.checks import UndeclaredFieldError, strict_metric_context
        from harness.testing.stand_ins import metric_context

        ctx = metric_context(cache)
        spec = self._fixtures().get("model")
        if spec:  # the metric needs what the stand-in lacks (e.g. attention maps)
            ctx.model = ctx.reference_model = fixture_model(spec)
        ctx = strict_metric_context(ctx, self.metric_cls.name, self.metric_cls.requires)
        try:
            result = self._cls()(**self._options()).compute(ctx)
        except UndeclaredFieldError as exc:
            pytest.fail(str(exc), pytrace=False)
        except Exception as exc:
            _skip_if_missing_weights(exc)
            raise
        return normalise_metric_result(self.metric_cls.name, result)

    def test_returns_finite_rows(self, bench_tmp_cache: Any) -> None:
        rows = self._compute(bench_tmp_cache)
        assert rows, "compute returned no rows"
        for r in rows:
            assert math.isfinite(r["value"]), r

    def test_deterministic(self, bench_tmp_cache: Any) -> None:
        a = self._compute(bench_tmp_cache)
        b = self._compute(bench_tmp_cache)
        assert [r["metric"] for r in a] == [r["metric"] for r in b]
        for ra, rb in zip(a, b, strict=True):
            assert ra["value"] == pytest.approx(rb["value"], rel=1e-5, abs=1e-6), ra["metric"]


class ModelFamilyContract(_NameContract):
    """Checks of the ModelFamily contract; set ``family_cls`` (and ``family_options``)."""

    family_cls: ClassVar[type] = None  # type: ignore[assignment]
    family_options: ClassVar[dict[str, Any]] = {}
    image_size: ClassVar[int] = 16

    cls_attr: ClassVar[str] = "family_cls"

    def _build(self) -> tuple[Any, Any, Any]:
        fam = self._cls()(**self._options())
        from harness.testing.stand_ins import tiny_dataset

        ds = tiny_dataset(self.image_size)
        return fam, ds, fam.build(ds)

    def test_samples_in_unit_range(self) -> None:
        import torch

        _, ds, model = self._build()
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(4, *model.sample_shape, generator=gen)
        out = model.sample(noise, ds.sample_conditions(4, gen), cfg_scale=2.0, sampler=self.family_cls.samplers[0],
                           steps=3, record_trajectory=True, generator=torch.Generator().manual_seed(0))
        assert out.images.shape[0] == 4
        assert float(out.images.min()) >= 0.0 and float(out.images.max()) <= 1.0
        assert out.trajectory is not None and out.trajectory.shape[0] == 4  # K + 1 states

    def test_state_round_trip(self) -> None:
        import torch

        fam, ds, model = self._build()
        tensors, meta = fam.state(model)
        restored = fam.restore(tensors, meta, ds)
        x, t, c = model.example_inputs(2)
        with torch.no_grad():
            torch.testing.assert_close(model.net(x, t, c), restored.net(x, t, c))

    def test_student_is_smaller(self) -> None:
        from harness.modelio import count_params

        if not self.family_cls.supports_sizes:
            pytest.skip("family does not support size factors")
        _, _, model = self._build()
        student = model.make_student(0.3)
        assert count_params(student.net)[0] < count_params(model.net)[0]


class DatasetContract(_NameContract):
    """Checks of the Dataset contract; set ``dataset_cls`` (and ``dataset_options``)."""

    dataset_cls: ClassVar[type] = None  # type: ignore[assignment]
    dataset_options: ClassVar[dict[str, Any]] = {}

    cls_attr: ClassVar[str] = "dataset_cls"

    def test_splits(self) -> None:
        ds = self._cls()(**self._options())
        for split in ("train", "reference"):
            batch = ds.load(split)
            imgs = batch.images
            assert imgs.dim() == 4 and imgs.shape[1] == ds.channels
            assert imgs.shape[-1] == ds.image_size and imgs.shape[-2] == ds.image_size
            lo, hi = float(imgs.min()), float(imgs.max())
            assert lo >= -1.0 - 1e-6 and hi <= 1.0 + 1e-6, (
                f"{ds.name}: load({split!r}) images span [{lo:.3g}, {hi:.3g}]; scale them to [-1, 1] "
                "(e.g. uint8 / 127.5 - 1)")
            assert len(batch.conditions) == imgs.shape[0]
            self._check_labels(ds, batch.conditions, f"load({split!r})")

    def _check_labels(self, ds: Any, conditions: Any, where: str) -> None:
        labels = conditions.labels
        if labels is None:
            return
        n = getattr(ds, "num_classes", None)
        assert n, f"{ds.name}: {where} has labels but num_classes is {n!r}: set num_classes"
        lo, hi = int(labels.min()), int(labels.max())
        assert 0 <= lo and hi < n, (
            f"{ds.name}: {where} has labels in [{lo}, {hi}], outside [0, num_classes = {n}): labels are "
            "0-based class indices (the model keeps index num_classes for the null class)")

    def test_conditions_deterministic(self) -> None:
        import torch

        ds = self._cls()(**self._options())
        a = ds.sample_conditions(20, torch.Generator().manual_seed(3))
        b = ds.sample_conditions(20, torch.Generator().manual_seed(3))
        assert len(a) == 20
        self._check_labels(ds, a, "sample_conditions(20)")
        if a.labels is not None:
            assert torch.equal(a.labels, b.labels)
        assert a.prompts == b.prompts


class ExecutorContract(_NameContract):
    """Checks of the Executor contract; set ``executor_cls`` (and ``executor_options``)."""

    executor_cls: ClassVar[type] = None  # type: ignore[assignment]
    executor_options: ClassVar[dict[str, Any]] = {}

    cls_attr: ClassVar[str] = "executor_cls"

    def test_runs_every_unit(self) -> None:
        # a unit derived from another's variant ("b" from "a"), handed out as a one-shot
        # iterable, as the runner hands them
        from harness.testing.checks import SquareWorker, StandInUnit, StandInVariant

        units = [StandInUnit(StandInVariant("a"), [1, 2]), StandInUnit(StandInVariant("b", "a"), [3]),
                 StandInUnit(StandInVariant("c"), [4, 5, 6])]
        got = list(self._cls()(**self._options()).run(iter(units), SquareWorker()))
        assert sorted(got) == [1, 4, 9, 16, 25, 36]


class PlotContract(_NameContract):
    """Checks of the Plot contract; set ``plot_cls`` (and ``plot_options``)."""

    plot_cls: ClassVar[type] = None  # type: ignore[assignment]
    plot_options: ClassVar[dict[str, Any]] = {}

    cls_attr: ClassVar[str] = "plot_cls"

    def test_empty_frame_draws_nothing(self, tmp_path: Path) -> None:
        import pandas as pd

        from harness.schema import COLUMNS

        df = pd.DataFrame({c: [] for c in COLUMNS})
        assert self._cls()(**self._options()).draw(df, tmp_path) == []

    def test_draws_on_a_realistic_frame(self, tmp_path: Path) -> None:
        from harness.testing.checks import realistic_frame

        try:
            paths = self._cls()(**self._options()).draw(realistic_frame(), tmp_path)
        except Exception as exc:  # noqa: BLE001 (any crash is the finding)
            pytest.fail(f"{self.plot_cls.__name__}.draw crashed on a frame with every schema column, several "
                        f"variants and seeds, NaN values, a missing metric and an error row: {type(exc).__name__}: "
                        f"{exc}. Draw what the frame holds, skip what it lacks (return [] when nothing)",
                        pytrace=False)
        missing = [p for p in paths if not Path(p).exists()]
        assert not missing, f"{self.plot_cls.__name__}.draw returned paths it did not write: {missing}"


# a module of its own (this one is long); it builds on _NameContract above
from harness.testing.feature_contract import FeatureExtractorContract  # noqa: E402

CONTRACTS = {
    "pruners": (PrunerContract, "pruner_cls"),
    "metrics": (MetricContract, "metric_cls"),
    "features": (FeatureExtractorContract, "extractor_cls"),
    "models": (ModelFamilyContract, "family_cls"),
    "datasets": (DatasetContract, "dataset_cls"),
    "executors": (ExecutorContract, "executor_cls"),
    "plots": (PlotContract, "plot_cls"),
}
