"""Safety: no pickle of untrusted files, and matrix paths stay inside their folders.

- A static check (``ast``) of ``harness/`` and ``plugins/``: every ``torch.load`` passes
  ``weights_only=True``; no ``pickle`` / ``dill`` / ``joblib`` / ``pandas.read_pickle``
  load, no ``numpy.load(allow_pickle=True)``. The one other deserialiser,
  ``torch.jit.load`` of clean-fid's TorchScript Inception file in ``plugins/features/inception.py``,
  is listed with its reason: TorchScript archives are read by torch's C++ unpickler, which
  resolves no Python globals, so a pickle cannot run code through it (shown below).
- A malicious checkpoint (a ``torch.save`` pickle whose loading would create a folder)
  given as a metric's weights option fails its cell with a one-line error, and is never
  executed; the same file planted in the artifact cache is discarded and rebuilt.
- Relative paths in a matrix (``results_dir``, dataset roots, weights, any plugin option)
  may not climb out of their folder with ``..``; absolute paths are taken as written.
"""

from __future__ import annotations

import ast
import io
import os
import textwrap
from pathlib import Path

import pytest
import torch

import harness
from harness import runner
from harness.cli import main
from harness.config import load_matrix
from harness.validation import leaves_its_folder

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "benchmarks" / "synthetic.toml"
ONE_CELL = ['matrix.pruning_method=["none"]', "matrix.cfg_scale=[1.0]", "matrix.seed=[0]",
            "sampling.num_samples=4", "sampling.batch_size=4"]

# ----------------------------------------------------------------------------- static audit

#: call -> why it is allowed, per file (relative to the repository)
ALLOWED = {
    ("plugins/features/inception.py", "torch.jit.load"): "clean-fid's Inception is TorchScript; the C++ unpickler "
                                                         "of a TorchScript archive resolves no Python globals",
}
PICKLE_LOADERS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cPickle.load",
    "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads", "joblib.load", "pandas.read_pickle",
    "pd.read_pickle", "torch.package.PackageImporter", "shelve.open", "marshal.load", "marshal.loads",
}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``torch.load`` for ``torch.load`` / ``th.load`` (import torch as th) / ``load`` (from torch import load)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def unsafe_calls(source: str) -> list[tuple[int, str]]:
    """``(line, problem)`` for every deserialisation of a file that could run code."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name is None:
            continue
        name = name.replace("numpy.", "np.", 1) if name.startswith("numpy.") else name
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        if name in ("torch.load", "torch.serialization.load"):
            wo = kwargs.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                problems.append((node.lineno, f"{name} without weights_only=True"))
        elif name == "np.load":
            ap = kwargs.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                problems.append((node.lineno, "np.load with allow_pickle"))
        elif name in PICKLE_LOADERS or name in ("torch.jit.load", "torch.jit._load_for_lite_interpreter"):
            problems.append((node.lineno, name))
    return problems


def test_the_audit_finds_what_it_looks_for():
    source = textwrap.dedent("""
        import pickle, torch, joblib
        import numpy as np
        import torch as th
        from torch import load
        from pandas import read_pickle
        torch.load("a")
        th.load("a", weights_only=False)
        load("a")
        torch.load("a", weights_only=True)
        pickle.loads(b"")
        joblib.load("a")
        np.load("a", allow_pickle=True)
        np.load("a")
        read_pickle("a")
        torch.jit.load("a")
    """)
    assert unsafe_calls(source) == [
        (7, "torch.load without weights_only=True"), (8, "torch.load without weights_only=True"),
        (9, "torch.load without weights_only=True"), (11, "pickle.loads"), (12, "joblib.load"),
        (13, "np.load with allow_pickle"), (15, "pandas.read_pickle"), (16, "torch.jit.load"),
    ]


def test_no_pickle_of_files_in_harness_and_plugins():
    found = []
    for folder in ("harness", "plugins"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for line, problem in unsafe_calls(path.read_text()):
                if (rel, problem) not in ALLOWED:
                    found.append(f"{rel}:{line}: {problem}")
    assert not found, "unsafe deserialisation:\n" + "\n".join(found)
    # every allowance is still needed (a stale entry would hide a new call elsewhere in that file)
    for rel, call in ALLOWED:
        assert any(p == call for _, p in unsafe_calls((REPO / rel).read_text())), (rel, call)


# ----------------------------------------------------------------------------- malicious files


class _Payload:
    """Unpickling this creates the folder ``target``: a stand-in for arbitrary code."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (self.target,))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """A torch.save'd checkpoint that runs code when unpickled, and the folder that code makes."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"features.0.weight": _Payload(marker)}}, path)
    # it is really malicious: a plain unpickling runs the payload
    torch.load(path, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    return path, marker


@pytest.mark.parametrize(("metric", "options", "message"), [
    ("fid", {"weights": "{path}"}, "fid: {path} is not a TorchScript Inception file"),
    ("lpips", {"backbone_weights": "{path}"},
     "lpips: cannot read {path} as a torchvision state dict (UnpicklingError)"),
    ("clip_score", {"weights": "{path}", "model_name": "ViT-S-32", "pretrained": ""},
     "clip_score: cannot load {path} as an open_clip checkpoint of ViT-S-32 (UnpicklingError; only tensors are read"),
])
def test_a_malicious_checkpoint_as_weights_fails_the_cell_and_is_not_run(metric, options, message, evil, tmp_path):
    path, marker = evil
    opts = ", ".join(f'{k} = "{v.format(path=path)}"' for k, v in options.items())
    summary = runner.run(SYNTHETIC, [*ONE_CELL, f'metrics.names=["{metric}"]', f"metrics.{metric}={{{opts}}}"],
                         results_dir=str(tmp_path / "results"), stream=io.StringIO(), interactive=False)
    assert (summary.ok, summary.error) == (0, 1)
    (error,) = harness.load_results(tmp_path / "results")["error"]
    assert error.startswith(f"MissingFileError: {message.format(path=path)}"), error
    assert "\n" not in error and "weights_only=False" not in error
    assert not marker.exists(), "the checkpoint's payload ran"


def test_a_pickle_planted_in_the_artifact_cache_is_discarded_not_run(evil, tmp_path):
    path, marker = evil
    results = tmp_path / "results"
    run = lambda **kw: runner.run(SYNTHETIC, ONE_CELL, results_dir=str(results), stream=io.StringIO(),  # noqa: E731
                                  interactive=False, **kw)
    from safetensors.torch import load_file

    assert run().ok == 1
    (teacher,) = [p for p in (results / ".cache" / "model").iterdir() if not p.name.startswith(".")]
    weights = {k: v.clone() for k, v in load_file(teacher / "tensors.safetensors").items()}  # not the mmap
    (teacher / "tensors.safetensors").write_bytes(path.read_bytes())  # the cache holds safetensors only
    samples = results / ".cache" / "samples"
    for p in samples.iterdir():  # so the model is needed again
        if not p.name.startswith("."):
            for f in p.iterdir():
                f.unlink()
            p.rmdir()
    assert run(force=True).ok == 1
    assert not marker.exists(), "the planted pickle ran"
    rebuilt = load_file(teacher / "tensors.safetensors")  # safetensors again, the same weights
    assert rebuilt.keys() == weights.keys() and all(torch.equal(rebuilt[k], weights[k]) for k in weights)


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize(("value", "leaves"), [
    ("results", False), ("a/b/c", False), ("a/../b", False), ("./x", False), ("", False), ("...", False),
    ("..", True), ("../x", True), ("a/../../x", True), ("./../x", True), ("a/b/../../../x", True),
    ("/abs/../x", False), ("~/x", False), ("$HOME/../x", False),
])
def test_which_relative_paths_leave_their_folder(value, leaves):
    assert leaves_its_folder(value) is leaves


@pytest.fixture
def bench_error(capsys):
    def _run(*argv: str) -> str:
        code = main(list(argv))
        out, err = capsys.readouterr()
        assert code == 2, (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
        return lines[0].removeprefix("error: ")

    return _run


def test_a_results_dir_above_the_current_directory_is_refused(bench_error, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = bench_error("run", str(SYNTHETIC), "--set", 'execution.results_dir="../elsewhere"')
    assert line == (f"{SYNTHETIC}: execution.results_dir: relative path '../elsewhere' climbs out of its folder "
                    "with '..'; give a path inside the current directory or an absolute path")
    assert not (tmp_path.parent / "elsewhere").exists()


def test_inside_absolute_and_command_line_results_folders_are_fine(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for value in ("out", "a/../out", str(tmp_path / "abs")):
        cfg = load_matrix(SYNTHETIC, [f'execution.results_dir="{value}"'])
        assert cfg.results_dir == Path(value)
    # --results is the command line's own choice, not the matrix file's
    assert load_matrix(SYNTHETIC, results_dir="../out").results_dir == Path("../out")


def test_a_dataset_root_above_the_current_directory_is_refused(bench_error, tmp_path, monkeypatch):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    data = 'dataset={name = "image_folder", root = "../data", image_size = 16}'
    line = bench_error("plan", str(SYNTHETIC), "--set", data)
    assert line.startswith(f"{SYNTHETIC}: dataset.root: relative path '../data' climbs out of its folder")
    # the same folder named absolutely is accepted (as far as paths go)
    cfg = load_matrix(SYNTHETIC, [f'dataset={{name = "image_folder", root = "{tmp_path / "data"}", image_size = 16}}'],
                      results_dir=str(tmp_path / "r"))
    assert cfg.dataset.options["root"] == str(tmp_path / "data")


def test_weights_paths_in_tables_and_swept_axes_are_checked(bench_error, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["--set", 'metrics.names=["synthetic_quality", "fid"]']
    line = bench_error("plan", str(SYNTHETIC), *base, "--set", 'metrics.fid.weights="../w/inception.pt"')
    assert line.startswith(f"{SYNTHETIC}: metrics.fid.weights: relative path '../w/inception.pt' climbs out")
    line = bench_error("plan", str(SYNTHETIC), *base, "--set", 'matrix."metrics.fid.weights"=["w.pt", "x/../../w.pt"]')
    assert line.startswith(f"{SYNTHETIC}: matrix.metrics.fid.weights[1]: relative path 'x/../../w.pt' climbs out")
