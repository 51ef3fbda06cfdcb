"""``bench new KIND NAME``: the package it writes passes its own contract tests unmodified."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from harness.cli import main
from harness.registry import build_registry, get_plugin_manager
from harness.scaffold import KINDS

REPO = Path(__file__).resolve().parents[1]


def bench(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def new(capsys, tmp_path: Path, kind: str, name: str) -> Path:
    code, out, err = bench(capsys, "new", kind, name, "--dir", tmp_path)
    assert code == 0, err
    folder = tmp_path / f"diffbench-{name.replace('_', '-')}"
    assert out.startswith(f"wrote {folder}")
    return folder


def load(folder: Path, module: str, monkeypatch) -> object:
    monkeypatch.syspath_prepend(str(folder))
    for name in [m for m in sys.modules if m == module or m.startswith(f"{module}.")]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module(module)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_generated_package_passes_its_contract_tests_unmodified(capsys, tmp_path, kind):
    folder = new(capsys, tmp_path, kind, f"my_{kind}")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted(
        ["README.md", "pyproject.toml", f"diffbench_my_{kind}/__init__.py", f"diffbench_my_{kind}/{kind}.py",
         "tests/test_contracts.py"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(folder)]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_entry_point_registers_the_plugin_next_to_the_builtins(capsys, tmp_path, monkeypatch, kind):
    name = f"ep_{kind}"
    folder = new(capsys, tmp_path, kind, name)
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["bench"] == {f"diffbench_{name}": f"diffbench_{name}"}
    assert "diffbench" in project["dependencies"]
    module = load(folder, f"diffbench_{name}", monkeypatch)
    registry = build_registry(get_plugin_manager(extra=[module]))
    spec = KINDS[kind]
    cls = registry.get(spec.kind, name)
    assert cls.__module__ == f"diffbench_{name}.{kind}" and cls.describe()
    assert "magnitude" in registry.names("pruners")  # built-ins still there, no clash


def test_generated_code_imports_only_the_public_api(capsys, tmp_path):
    for kind in KINDS:
        folder = new(capsys, tmp_path, kind, f"api_{kind}")
        for path in folder.rglob("*.py"):
            test_code = path.parent.name == "tests"
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness"):
                    assert node.module == "harness" or (test_code and node.module == "harness.testing"), (
                        f"{path}: from {node.module} import ...")


def test_generated_package_builds_a_wheel_with_the_entry_point(capsys, tmp_path):
    folder = new(capsys, tmp_path, "pruner", "wheel_check")
    out = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(folder)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("diffbench_wheel_check-0.1.0-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "diffbench_wheel_check/pruner.py" in names
    assert "[bench]\ndiffbench_wheel_check = diffbench_wheel_check" in entry_points


# ------------------------------------------------------------------ what the plugins do


def test_pruner_zeroes_exactly_rate_of_its_scope_and_leaves_protected_modules(capsys, tmp_path, monkeypatch):
    import torch

    from harness import weight_sparsity
    from harness.testing import prune_context, tiny_model

    load(new(capsys, tmp_path, "pruner", "smallest"), "diffbench_smallest", monkeypatch)
    from diffbench_smallest.pruner import SmallestPruner

    model = tiny_model()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    pruner = SmallestPruner()
    scope = pruner.prunable_weights(model)
    assert [w is model.net.inp.weight for w in scope] == [True]  # out_conv and embeddings protected
    n = scope[0].numel()
    threshold = before["inp.weight"].abs().flatten().sort().values[round(0.5 * n)]
    pruned = pruner.prune(model, 0.5, prune_context(model))
    assert weight_sparsity(pruner.prunable_weights(pruned)) == round(0.5 * n) / n
    kept = pruned.net.inp.weight != 0
    assert (before["inp.weight"].abs()[kept] >= threshold).all()  # the smallest went
    for key in ("out_conv.weight", "time_embed.weight", "class_embed.weight", "inp.bias"):
        assert torch.equal(pruned.net.state_dict()[key], before[key]), key
    # a protect path matches whole module-path components, not substrings
    assert len(SmallestPruner(protect=["conv"]).prunable_weights(tiny_model())) == 2


def test_metric_measures_diversity_of_the_samples(capsys, tmp_path, monkeypatch):
    import torch

    load(new(capsys, tmp_path, "metric", "spread"), "diffbench_spread", monkeypatch)
    from diffbench_spread.metric import SpreadMetric

    class Ctx:
        samples = torch.zeros(4, 1, 8, 8)

    assert SpreadMetric().compute(Ctx()) == 0.0  # collapsed: all alike
    Ctx.samples = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    assert SpreadMetric().compute(Ctx()) == pytest.approx(0.5)  # the maximum


def test_plot_draws_one_figure_from_a_realistic_frame(capsys, tmp_path, monkeypatch):
    import numpy as np
    import pandas as pd

    from harness import COLUMNS

    load(new(capsys, tmp_path, "plot", "curves"), "diffbench_curves", monkeypatch)
    from diffbench_curves.plot import CurvesPlot

    rows = []
    for method, rate in [("none", 0.0), ("magnitude", 0.3), ("magnitude", 0.6), ("random", 0.3)]:
        for seed in (0, 1):
            for metric, value, status in [("fid", 10 + rate + seed, "ok"), ("lpips", np.nan, "ok"),
                                          ("fid", np.nan, "error")]:
                rows.append({"pruning_method": method, "pruning_rate": rate, "seed": seed, "metric": metric,
                             "value": value, "status": status, "timestep": np.nan})
    df = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    for col in ("pruning_method", "metric", "status"):
        df[col] = df[col].astype("category")
    paths = CurvesPlot().draw(df, tmp_path / "fig")
    assert paths == [tmp_path / "fig" / "curves.png"] and paths[0].stat().st_size > 1000
    assert CurvesPlot().draw(df[df.pruning_method == "none"], tmp_path / "none") == []


def test_dataset_labels_depend_only_on_the_seed_and_the_index(capsys, tmp_path, monkeypatch):
    import torch

    load(new(capsys, tmp_path, "dataset", "blobs"), "diffbench_blobs", monkeypatch)
    from diffbench_blobs.dataset import BlobsDataset

    ds = BlobsDataset(num_classes=3)
    short = ds.sample_conditions(5, torch.Generator().manual_seed(7)).labels
    long = ds.sample_conditions(11, torch.Generator().manual_seed(7)).labels
    assert torch.equal(short, long[:5]) and set(long.tolist()) == {0, 1, 2}
    batch = ds.load("train")
    assert torch.equal(batch.conditions.labels, torch.arange(64) % 3)
    assert not torch.equal(batch.images, ds.load("reference").images)


def test_features_are_a_fixed_function_of_each_image_and_its_options(capsys, tmp_path, monkeypatch):
    import torch

    load(new(capsys, tmp_path, "features", "randconv"), "diffbench_randconv", monkeypatch)
    from diffbench_randconv.features import RandconvFeatures

    from harness import ConfigError

    gen = torch.Generator().manual_seed(0)
    grey, rgb = torch.rand(4, 1, 20, 20, generator=gen), torch.rand(4, 3, 20, 20, generator=gen)
    extractor = RandconvFeatures(filters=8)
    assert extractor.dim == 16 and extractor(grey).shape == (4, 16)
    # a grey image is the same image as its three-channel copy
    torch.testing.assert_close(extractor(grey), extractor(grey.expand(-1, 3, -1, -1)))
    assert not torch.allclose(extractor(rgb), extractor(rgb.mean(dim=1, keepdim=True)))
    # flat images give no response (zero-mean filters); other seeds are other features
    torch.testing.assert_close(extractor(torch.full((2, 1, 20, 20), 0.7)), torch.zeros(2, 16), rtol=0, atol=1e-6)
    assert not torch.allclose(extractor(grey), RandconvFeatures(filters=8, seed=1)(grey))
    assert RandconvFeatures(filters=8, seed=1).fingerprint()["options"]["seed"] == 1
    lengths = extractor.kernel_features(extractor(rgb)).norm(dim=1)
    torch.testing.assert_close(lengths, torch.full((4,), 4.0, dtype=lengths.dtype))  # sqrt(dim)
    with pytest.raises(ConfigError, match="filters >= 1"):
        RandconvFeatures(filters=0)


def test_the_docs_show_the_extractor_bench_new_writes():
    import re

    from harness.scaffold import render

    doc = (REPO / "docs" / "writing_plugins.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", doc, re.DOTALL)
               if b.startswith("# diffbench_rand_conv/features.py")]
    written = render("features", "rand_conv")["diffbench_rand_conv/features.py"].splitlines()
    shown = [line for line in block.splitlines()[1:] if line.strip()]
    # every line as written, but the class docstring's first line only
    first_line = {line + '"""' for line in written if line.startswith('    """')}
    assert len(shown) > 30 and [line for line in shown if line not in written and line not in first_line] == []
    methods = [line for line in written if line.lstrip().startswith(("def ", "class "))]
    assert methods == [line for line in shown if line.lstrip().startswith(("def ", "class "))]


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("name", ["My-Plugin", "1abc", "class", "Taylor", "tay lor"])
def test_invalid_name_is_one_line_and_writes_nothing(capsys, tmp_path, name):
    code, out, err = bench(capsys, "new", "pruner", name, "--dir", tmp_path)
    assert code == 2 and out == ""
    assert err == (f"error: bench new pruner {name}: NAME must be a lower-case Python identifier (letters, digits, "
                   "'_', starting with a letter, not a keyword), e.g. 'taylor' or 'pixel_diversity'\n")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_not_overwritten(capsys, tmp_path):
    folder = tmp_path / "diffbench-taylor"
    folder.mkdir()
    (folder / "pyproject.toml").write_text("mine")
    code, out, err = bench(capsys, "new", "pruner", "taylor", "--dir", tmp_path)
    assert code == 2
    assert err == f"error: bench new pruner taylor: {folder} already exists; remove it or choose another --dir\n"
    assert [p.name for p in folder.iterdir()] == ["pyproject.toml"] and (folder / "pyproject.toml").read_text() == "mine"


def test_unknown_kind_and_other_spellings(capsys, tmp_path):
    code, _, err = bench(capsys, "new", "prunr", "taylor", "--dir", tmp_path)
    assert code == 2
    assert err == ("error: bench new prunr: unknown kind (did you mean 'pruner'?); "
                   "valid: 'dataset', 'features', 'metric', 'plot', 'pruner'\n")
    code, _, err = bench(capsys, "new", "extractr", "clipfeat", "--dir", tmp_path)
    assert code == 2 and err.startswith("error: bench new extractr: unknown kind (did you mean 'extractor'?); ")
    assert list(tmp_path.iterdir()) == []
    # plural spellings, as bench list takes them, and the feature extractor's other names
    new(capsys, tmp_path, "metrics", "plural_ok")
    for spelling in ("feature", "extractor", "extractors"):
        folder = new(capsys, tmp_path, spelling, f"{spelling}_ok")
        assert (folder / f"diffbench_{spelling}_ok" / "features.py").is_file()


def test_name_of_an_installed_plugin_is_refused(capsys, tmp_path):
    code, _, err = bench(capsys, "new", "pruner", "magnitude", "--dir", tmp_path)
    assert code == 2
    assert err.startswith("error: bench new pruner magnitude: a pruner named 'magnitude' is already registered by "
                          "plugins.pruning.magnitude (diffbench ")
    assert list(tmp_path.iterdir()) == []
