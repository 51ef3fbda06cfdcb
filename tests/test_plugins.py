"""Plugin discovery: clashes, the block-list, base classes, hook docs, a third-party package."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import hookimpl, hookspecs
from harness.cli import main
from harness.errors import PluginError
from harness.registry import BLOCK_ENV, build_registry, get_plugin_manager

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "diffbench-example-plugin"


@pytest.fixture
def make_module(tmp_path, monkeypatch):
    """``make_module(name, source)``: write and import a real module (it has its own source)."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def _make(name: str, source: str):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        module = importlib.import_module(name)
        monkeypatch.setitem(sys.modules, name, module)  # removed again after the test
        return module

    return _make


PRUNER_MODULE = """
    from harness import Pruner, hookimpl


    class {cls}(Pruner):
        '''A test pruner.'''

        name = "{name}"

        def prune(self, model, rate, ctx):
            return model


    @hookimpl
    def bench_register_pruners(register):
        register({cls})
"""


# ----------------------------------------------------------------------------- registry


def test_duplicate_name_names_both_sources(make_module):
    a = make_module("dup_plugin_a", PRUNER_MODULE.format(cls="PrunerA", name="same"))
    b = make_module("dup_plugin_b", PRUNER_MODULE.format(cls="PrunerB", name="same"))
    with pytest.raises(PluginError) as info:
        build_registry(get_plugin_manager(extra=[a, b]))
    message = str(info.value)
    assert "pruners name clash: 'same' is registered by " in message
    assert "dup_plugin_a" in message and "dup_plugin_b" in message
    assert "\n" not in message


def test_clash_with_a_builtin_names_the_distribution(make_module):
    mod = make_module("dup_plugin_builtin", PRUNER_MODULE.format(cls="Impostor", name="magnitude"))
    with pytest.raises(PluginError) as info:
        build_registry(get_plugin_manager(extra=[mod]))
    assert str(info.value) == (
        "pruners name clash: 'magnitude' is registered by plugins.pruning.magnitude (diffbench 0.1.0) "
        "and by dup_plugin_builtin ((not installed) -)"
    )


def test_clash_is_a_user_error_on_the_command_line(make_module, monkeypatch, capsys):
    from harness import registry

    mod = make_module("dup_plugin_cli", PRUNER_MODULE.format(cls="Impostor", name="random"))
    original = registry.get_plugin_manager
    monkeypatch.setattr(registry, "get_plugin_manager", lambda load_entrypoints=True, extra=None: original(
        load_entrypoints, [mod]))
    assert main(["list", "pruners"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pruners name clash: 'random' is registered by plugins.pruning.random ")
    assert "Traceback" not in err


def test_registering_the_same_class_twice_is_harmless(make_module):
    mod = make_module("twice_plugin", PRUNER_MODULE.format(cls="Once", name="once"))
    again = make_module(
        "twice_plugin_again",
        """
        from harness import hookimpl
        from twice_plugin import Once


        @hookimpl
        def bench_register_pruners(register):
            register(Once)
        """,
    )
    registry = build_registry(get_plugin_manager(extra=[mod, again]))
    assert registry.get("pruners", "once") is mod.Once


def test_block_list_removes_a_plugin(monkeypatch, capsys):
    assert "magnitude" in build_registry(get_plugin_manager()).names("pruners")
    monkeypatch.setenv(BLOCK_ENV, "pruning")
    registry = build_registry(get_plugin_manager())
    assert registry.names("pruners") == []
    assert "local" in registry.names("executors")  # only the named entry point is blocked
    monkeypatch.setenv(BLOCK_ENV, "plugins.executors, pruning")
    registry = build_registry(get_plugin_manager())
    assert registry.names("executors") == [] and registry.names("pruners") == []
    monkeypatch.setenv(BLOCK_ENV, "pruning")
    assert main(["list", "pruners"]) == 0
    assert "magnitude" not in capsys.readouterr().out


def test_block_list_by_distribution(monkeypatch):
    monkeypatch.setenv(BLOCK_ENV, "diffbench")
    registry = build_registry(get_plugin_manager())
    assert all(not names for names in registry.plugins.values())


def test_blocked_plugin_in_a_matrix_is_an_unknown_name(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(BLOCK_ENV, "pruning")
    code = main(["plan", str(REPO / "benchmarks" / "synthetic.toml"), "--results", str(tmp_path)])
    assert code == 2
    assert "matrix.pruning_method[1]: unknown pruner 'magnitude'; valid: 'none'" in capsys.readouterr().err


def test_a_class_that_is_not_a_plugin_is_rejected(make_module):
    mod = make_module(
        "not_a_pruner",
        """
        from harness import hookimpl


        class Loose:
            name = "loose"

            def prune(self, model, rate, ctx):
                return model


        @hookimpl
        def bench_register_pruners(register):
            register(Loose)
        """,
    )
    with pytest.raises(PluginError) as info:
        build_registry(get_plugin_manager(extra=[mod]))
    assert str(info.value) == (
        "plugin not_a_pruner: <class 'not_a_pruner.Loose'> registered as one of pruners must subclass "
        "harness.base.Pruner"
    )


def test_a_plugin_class_without_a_name_is_rejected(make_module):
    mod = make_module("nameless_plugin", PRUNER_MODULE.format(cls="Nameless", name=""))
    with pytest.raises(PluginError) as info:
        build_registry(get_plugin_manager(extra=[mod]))
    assert str(info.value) == "plugin nameless_plugin: Nameless has no class attribute 'name'"


def test_an_unknown_hook_is_an_error(make_module):
    mod = make_module(
        "typo_hook_plugin",
        """
        from harness import hookimpl


        @hookimpl
        def bench_register_prunners(register):
            pass
        """,
    )
    with pytest.raises(Exception, match="bench_register_prunners"):
        get_plugin_manager(extra=[mod])


def test_managers_are_fresh(make_module):
    mod = make_module("fresh_plugin", PRUNER_MODULE.format(cls="Fresh", name="fresh"))
    assert "fresh" in build_registry(get_plugin_manager(extra=[mod])).names("pruners")
    assert "fresh" not in build_registry(get_plugin_manager()).names("pruners")


# ----------------------------------------------------------------------------- docs


def hook_specs() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in vars(hookspecs).items()
        if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")
    }


def test_every_hook_spec_is_documented():
    docs = (REPO / "docs" / "plugin_hooks.md").read_text()
    specs = hook_specs()
    assert len(specs) >= 9
    for name, sig in specs.items():
        assert re.search(rf"^### `{name}\(", docs, re.M), f"docs/plugin_hooks.md has no section for {name}"
        for param in sig.parameters:
            assert re.search(rf"^def {name}\([^)]*\b{param}\b", docs, re.M), f"{name}: parameter {param} undocumented"
    assert "register(cls)" in docs and "## Call order" in docs


def test_every_hook_spec_has_a_docstring_with_params():
    for name, sig in hook_specs().items():
        doc = getattr(hookspecs, name).__doc__ or ""
        for param in sig.parameters:
            assert f":param {param}:" in doc, f"{name} lacks ':param {param}:'"


# ----------------------------------------------------------------------------- third party


@pytest.fixture
def example_installed(tmp_path):
    """``pip install`` the example package (from a copy: no build files in the repo)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed: cannot build the example package offline")
    src = tmp_path / "example"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    importlib.invalidate_caches()  # this process sees the new distribution too
    try:
        yield
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "diffbench-example-plugin"],
                       capture_output=True, text=True, timeout=300, check=True)
        importlib.invalidate_caches()
        for name in [m for m in sys.modules if m == "diffbench_example" or m.startswith("diffbench_example.")]:
            del sys.modules[name]


THIRD_PARTY_MATRIX = """
[benchmark]
name = "third_party"

[dataset]
name = "synthetic"

[model]
name = "synthetic"

[sampling]
steps = 2
num_samples = 4
batch_size = 4

[matrix]
pruning_method = ["none", "layer_magnitude"]
pruning_rate = [0.5]

[metrics]
names = ["brightness_gap", "feature_mean_gap"]

[metrics.feature_mean_gap]
features = "patch_stats"

[execution]
device = "cpu"
"""


def test_third_party_package(example_installed, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    assert main(["list", "pruners"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"│ layer_magnitude +│ Layer-wise L1 magnitude pruning", out)
    assert "protect: tuple[str, ...] = ()" in out
    assert main(["list", "features"]) == 0
    assert re.search(r"│ patch_stats +│ Patch statistics: mean and standard deviation", capsys.readouterr().out)

    assert main(["plugins"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "diffbench_example" in line)
    assert re.match(r"│ example +│ diffbench_example +│ diffbench-example-plugin +│ 0\.1\.0 +│ "
                    r"features:patch_stats, metrics:brightness_gap, metrics:feature_mean_gap, "
                    r"pruners:layer_magnitude +│$", line)

    matrix = tmp_path / "m.toml"
    matrix.write_text(THIRD_PARTY_MATRIX)
    assert main(["run", str(matrix), "--results", str(tmp_path / "res"), "--quiet"]) == 0
    import harness

    df = harness.load_results(tmp_path / "res")
    assert len(df) == 4 and set(df["metric"]) == {"brightness_gap", "feature_mean_gap"}
    assert set(df["status"]) == {"ok"}
    # the third-party metric on the third-party extractor, with the cached reference features it used
    gap = df[df["metric"] == "feature_mean_gap"]
    assert gap["reference"].str.fullmatch(r"synthetic:reference@\d+px/patch_stats:[0-9a-f]{12}").all()
    assert gap["reference"].nunique() == 1 and (gap["num_reference"] > 0).all()
    pruned = df[df["pruning_method"] == "layer_magnitude"]
    assert len(pruned) == 2 and float(pruned["sparsity"].iloc[0]) == pytest.approx(0.5, abs=0.01)
    manifest = json.loads(next((tmp_path / "res" / "third_party").glob("*/_manifest.json")).read_text())
    assert manifest["versions"]["diffbench-example-plugin"] == "0.1.0"

    # the package's own tests: diffbench's contract classes, in a fresh process
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert re.search(r"\b\d+ passed\b", tests.stdout)


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(BLOCK_ENV, None)
    return env


class _RaisingHook:
    """A third-party plugin whose register hook raises."""

    __name__ = "raising_plugin"

    @hookimpl
    def bench_register_metrics(self, register):
        raise RuntimeError("broken on purpose")


def test_a_register_hook_that_raises_is_a_load_error_not_a_crash(caplog):
    from harness.registry import build_registry, get_plugin_manager

    with caplog.at_level("WARNING"):
        registry = build_registry(get_plugin_manager(extra=[_RaisingHook()]))
    assert "fid_digits" in registry.names("metrics")  # the other plugins still register
    (error,) = [e for e in registry.load_errors if "raising_plugin" in e]
    assert error.endswith("bench_register_metrics failed: RuntimeError: broken on purpose")
    assert "broken on purpose" in caplog.text


# ----------------------------------------------------------------------------- shadowed built-ins


@pytest.mark.parametrize("complete", [False, True], ids=["missing-submodules", "look-alike"])
def test_a_shadowing_plugins_package_stops_bench_with_one_line(tmp_path, complete):
    """Another package named ``plugins`` earlier on sys.path: a one-line error naming it, exit 2."""
    fake = tmp_path / "plugins"
    fake.mkdir()
    (fake / "__init__.py").write_text('"""Someone else\'s plugins package."""\n')
    if complete:  # it even has the submodules the entry points name: still not diffbench's
        for sub in ("datasets", "models", "pruning", "metrics", "executors", "plots"):
            (fake / f"{sub}.py").write_text("")
    env = dict(_env(), PYTHONPATH=f"{tmp_path}:{REPO}")
    out = subprocess.run([sys.executable, "-m", "harness.cli", "list", "pruners"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: diffbench's built-in plugins cannot be imported: the module 'plugins' at "
                                 f"{fake.resolve()} shadows {(REPO / 'plugins').resolve()}")
    assert "take its folder off sys.path" in out.stderr


def test_a_broken_builtin_that_is_not_shadowed_keeps_its_traceback(monkeypatch):
    import importlib.metadata as md

    from harness import registry

    (ep,) = [e for e in md.entry_points(group="bench") if e.name == "pruning"]
    boom = ImportError("a bug in a built-in")
    with pytest.raises(ImportError, match="a bug in a built-in"):
        registry.check_builtins_importable(ep, boom)
    registry.check_builtins_importable(ep, None)  # diffbench's own plugins: nothing to say
