"""The declared public API: ``harness.__all__`` resolves, is documented, and is all plugins use."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import harness

REPO = Path(__file__).resolve().parents[1]

#: the one module outside ``harness.__all__`` a plugin may import, and where
TESTING = "harness.testing"
FIXTURE_HOOK = "contract_fixtures"


def _is_test_file(path: Path) -> bool:
    return "tests" in path.relative_to(REPO).parts or path.name.startswith("test_") or path.name == "conftest.py"


def private_imports(path: Path) -> list[str]:
    """``file:line: import`` for every import of a ``harness`` submodule in ``path``.

    ``harness.testing`` is allowed in test files and in a plugin's ``contract_fixtures``
    (test code shipped with the plugin, see docs/writing_plugins.md).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    allowed_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == FIXTURE_HOOK:
            allowed_lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module or ""]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            if not module.startswith("harness."):
                continue
            if module == TESTING and (_is_test_file(path) or node.lineno in allowed_lines):
                continue
            found.append((node.lineno, f"{path.relative_to(REPO)}:{node.lineno}: {module}"))
    return [hit for _, hit in sorted(found)]


def _sources() -> list[Path]:
    return sorted(p for root in ("plugins", "examples") for p in (REPO / root).rglob("*.py"))


def test_plugins_and_examples_import_only_the_public_api():
    assert len(_sources()) > 30  # the scan sees the built-ins
    bad = [hit for path in _sources() for hit in private_imports(path)]
    assert not bad, "import these names from `harness` (add them to harness.__all__ if missing):\n" + "\n".join(bad)


def test_the_scan_catches_every_import_form(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    plugin = tmp_path / "plugins" / "mine.py"
    plugin.parent.mkdir()
    plugin.write_text(
        "from harness import Pruner\n"
        "import harness.engine\n"
        "def f():\n"
        "    from harness.cache import stable_hash\n"
        "from harness.testing import tiny_model\n"
        "class P:\n"
        "    @classmethod\n"
        "    def contract_fixtures(cls, folder):\n"
        "        from harness.testing import tiny_sd_pipeline\n"
    )
    assert private_imports(plugin) == [
        "plugins/mine.py:2: harness.engine",
        "plugins/mine.py:4: harness.cache",
        "plugins/mine.py:5: harness.testing",
    ]
    test = tmp_path / "plugins" / "tests" / "test_mine.py"
    test.parent.mkdir()
    test.write_text("from harness.testing import PrunerContract\nfrom harness.base import Pruner\n")
    assert private_imports(test) == ["plugins/tests/test_mine.py:2: harness.base"]


def test_every_public_name_resolves():
    missing = [f"{name} (from {harness._API.get(name)})" for name in harness.__all__ if not _resolves(name)]
    assert not missing, f"public names that do not resolve: {missing}"
    assert set(harness.__all__) <= set(dir(harness))
    with pytest.raises(AttributeError, match="has no attribute 'engine_internals'"):
        _ = harness.engine_internals


def _resolves(name: str) -> bool:
    try:
        getattr(harness, name)
    except (AttributeError, ImportError):
        return False
    return True


def _documented(name: str, value: object) -> bool:
    """A class or function needs its own docstring; a constant a ``#:`` comment where it is set."""
    if inspect.isclass(value) or inspect.isfunction(value):
        return bool((value.__doc__ or "").strip())
    if name == "__version__":
        return True
    source = inspect.getsource(sys.modules[harness._API[name]])
    return re.search(rf"^#:.*\n{re.escape(name)}\b", source, re.M) is not None


def test_every_public_name_is_documented():
    # a name that does not resolve fails test_every_public_name_resolves, not this test
    resolved = {name: getattr(harness, name) for name in harness.__all__ if _resolves(name)}
    undocumented = [name for name, value in resolved.items() if not _documented(name, value)]
    assert not undocumented, f"public names without a docstring (or #: comment): {undocumented}"


def test_importing_harness_loads_no_heavy_module():
    code = (
        "import sys, harness\n"
        "heavy = [m for m in ('torch', 'pyarrow', 'pandas', 'harness.base', 'harness.store') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""
