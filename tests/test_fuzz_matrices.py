"""Bad input: fuzzed malformed matrices, and bad values at run time.

Part 1 generates, with hypothesis, malformed versions of ``benchmarks/synthetic.toml``:
one mutation per example (a wrong type, an unknown key or section, a bad or
out-of-range value, an empty axis, a missing key, an unknown plugin name) with the key
path it breaks, or a syntax error on a known line. Each goes through ``bench run
MATRIX --results DIR`` (``harness.cli.main``, not ``--dry-run``) and must exit 2 with
exactly one ``error: FILE: KEY...`` line that names that key path (or, for broken TOML,
the file and the line), no traceback, and nothing written: no results folder, so no run
folder, fragment or cache.

Part 2: bad values at run time (NaN samples, a metric that returns NaN or raises, a
metric whose optional dependency is missing, a plugin package that fails to import)
mark only the affected cells as failed, with the reason, and the rest of the run goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re
import string
import tempfile
import textwrap
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import harness
from harness import hookimpl, runner
from harness.base import Metric, MetricContext
from harness.options import option_fields
from harness.cli import main
from harness.config import BUILTIN_AXES, DEVICES, DOTTED_PREFIXES
from harness.registry import build_registry
from harness.training import TrainConfig
from plugins.models.synthetic import SyntheticFamily, SyntheticModel

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "benchmarks" / "synthetic.toml"
BASE_TEXT = SYNTHETIC.read_text()
BASE = tomllib.loads(BASE_TEXT)
REGISTRY = build_registry()
NAMES = {kind: set(REGISTRY.names(kind)) for kind in REGISTRY.plugins}
EXAMPLES = 250


# ============================================================================ TOML writer


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def dumps(doc: dict[str, Any]) -> str:
    """A TOML document of ``doc`` (tables as ``[a.b]`` sections, the rest inline)."""
    lines: list[str] = []

    def table(prefix: tuple[str, ...], t: dict[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in t.items() if isinstance(v, dict)}
        if prefix and (scalars or not subs):
            lines.append("[" + ".".join(_key(p) for p in prefix) + "]")
        lines.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())
        for k, v in subs.items():
            table((*prefix, k), v)

    table((), doc)
    return "\n".join(lines) + "\n"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# ============================================================================ mutations


@dataclass
class Case:
    """One malformed matrix: its text and where its one error must point."""

    category: str
    what: str
    text: str
    #: the error line must contain ``FILE: `` + one of these
    expect: tuple[str, ...]


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))  # deep copy (the base has no NaN)
    node = out
    for p in path[:-1]:
        node = node.setdefault(p, {}) if isinstance(p, str) else node[p]
    node[path[-1]] = value
    return out


def _delete(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    node = out
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return out


def _case(category: str, what: str, doc: dict[str, Any], *expect: str) -> Case:
    text = dumps(doc)
    assert _same(tomllib.loads(text), doc), text  # the writer round-trips
    return Case(category, what, text, tuple(expect))


def _keypath(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


# -- value strategies ---------------------------------------------------------------------

_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "t", "f", "y", "n"}
_FLOAT_WORDS = {"inf", "infinity", "nan"}
ident = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
words = st.text(string.ascii_letters + " _-/", min_size=1, max_size=12).filter(
    lambda s: s.strip().lower().lstrip("+-") not in _BOOL_WORDS | _FLOAT_WORDS)
small_lists = st.lists(st.integers(-3, 3), max_size=3)
small_tables = st.dictionaries(ident, st.integers(-3, 3), max_size=2)
fractional = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: not float(x).is_integer())
not_int = st.one_of(words, small_lists, small_tables, fractional, st.booleans())
not_float = st.one_of(words, small_lists, small_tables, st.booleans())
not_str = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), small_lists,
                    small_tables)
not_bool = st.one_of(words, st.integers().filter(lambda i: i not in (0, 1)), small_lists, small_tables)
not_table = st.one_of(st.integers(), words, small_lists, st.booleans())
bad_float = st.sampled_from([math.nan, math.inf, -math.inf])


def _options(kind: str, name: str) -> tuple[str, ...]:
    return tuple(f[0] for f in option_fields(REGISTRY.get(kind, name).Options))


def unknown(*known: Any) -> st.SearchStrategy[str]:
    taken = set().union(*(set(k) for k in known))
    return ident.filter(lambda s: s not in taken)


# -- categories ----------------------------------------------------------------------------


@st.composite
def wrong_types(draw: st.DrawFn) -> Case:
    fields: list[tuple[tuple[Any, ...], st.SearchStrategy[Any]]] = [
        (("benchmark", "name"), not_str),
        (("benchmark", "seed"), not_int),
        (("benchmark", "description"), not_str),
        (("sampling", "steps"), not_int),
        (("sampling", "num_samples"), not_int),
        (("sampling", "batch_size"), not_int),
        (("sampling", "trajectory_samples"), not_int),
        (("sampling", "cfg_scale"), not_float),
        (("sampling", "warmup"), not_bool),
        (("sampling", "sampler"), not_str),
        (("sampling", "cfg_batching"), not_str),
        (("dataset", "name"), not_str),
        (("model", "name"), not_str),
        (("model", "train"), not_table),
        (("execution", "executor"), not_str),
        (("execution", "device"), not_str),
        # not execution.results_dir: --results DIR (always given here) replaces it, as --set would
        (("metrics", "names"), st.one_of(st.integers(), words, st.booleans())),
        (("metrics", "synthetic_quality"), not_table),
        # plugin options (checked against the plugins' Options)
        (("dataset", "image_size"), not_int),
        (("dataset", "num_images"), not_int),
        (("model", "hidden"), not_int),
        (("model", "cost_ms"), not_float),
        (("metrics", "synthetic_quality", "noise"), not_float),
        (("metrics", "synthetic_quality", "seed"), not_int),
        (("model", "train", "epochs"), not_int),
        (("model", "distill", "lr"), not_float),
        (("pruners", "magnitude", "protect"), st.one_of(st.integers(), words, st.booleans())),
        # whole sections
        *(((section,), not_table) for section in ("benchmark", "dataset", "model", "sampling", "matrix",
                                                   "metrics", "pruners", "execution", "plots")),
        # axis values
        (("matrix", "seed", 1), st.one_of(words, fractional, st.booleans(), small_lists)),
        (("matrix", "cfg_scale", 0), st.one_of(words, st.booleans(), small_lists)),
        (("matrix", "pruning_rate", 4), st.one_of(words, st.booleans(), small_lists)),
    ]
    path, values = draw(st.sampled_from(fields))
    value = draw(values)
    doc = _set(BASE, path, value)
    key = _keypath(path)
    expect = [f"{key}:"]
    if path[0] == "metrics" and path[-1] == "names" or path[-1] == "protect":
        expect.append(f"{key}.")  # pydantic / option type errors may point inside the value
    return _case("wrong type", f"{key} = {value!r}", doc, *expect)


@st.composite
def unknown_keys(draw: st.DrawFn) -> Case:
    choice = draw(st.sampled_from(["section", "benchmark", "sampling", "plots", "dataset", "model", "train",
                                   "metric option", "metric table", "executor", "pruner", "pruner option", "axis",
                                   "dotted axis", "dotted prefix", "sampling axis", "exclude"]))
    value = draw(st.one_of(st.integers(0, 9), ident))
    sections = ("benchmark", "dataset", "model", "sampling", "matrix", "metrics", "pruners", "execution", "plots")
    fields = {
        "benchmark": ("name", "seed", "description"),
        "sampling": ("sampler", "steps", "cfg_scale", "cfg_batching", "num_samples", "batch_size",
                     "trajectory_samples", "warmup"),
        "plots": ("names",),
        "dataset": ("name", *_options("datasets", "synthetic")),
        "model": ("name", "train", "distill", *_options("models", "synthetic")),
        "train": tuple(f.name for f in dataclasses.fields(TrainConfig)),
        "metric option": _options("metrics", "synthetic_quality"),
        "executor": ("executor", "device", "results_dir"),
    }
    if choice == "section":
        name = draw(unknown(sections))
        return _case("unknown key", f"[{name}]", {**BASE, name: {"x": value}}, f"{name}:")
    if choice in ("benchmark", "sampling", "plots", "dataset", "model", "executor"):
        section = "execution" if choice == "executor" else choice
        name = draw(unknown(fields[choice]))
        return _case("unknown key", f"{section}.{name}", _set(BASE, (section, name), value), f"{section}.{name}:")
    if choice == "train":
        part = draw(st.sampled_from(["train", "distill"]))
        name = draw(unknown(fields["train"]))
        return _case("unknown key", f"model.{part}.{name}", _set(BASE, ("model", part, name), value),
                     f"model.{part}.{name}:")
    if choice == "metric option":
        name = draw(unknown(fields["metric option"]))
        path = ("metrics", "synthetic_quality", name)
        return _case("unknown key", _keypath(path), _set(BASE, path, value), f"{_keypath(path)}:")
    if choice == "metric table":
        name = draw(unknown(NAMES["metrics"], {"names"}))
        return _case("unknown key", f"[metrics.{name}]", _set(BASE, ("metrics", name), {"x": value}),
                     f"metrics.{name}:")
    if choice == "pruner":
        name = draw(unknown(NAMES["pruners"]))
        return _case("unknown key", f"[pruners.{name}]", _set(BASE, ("pruners", name), {}), f"pruners.{name}:")
    if choice == "pruner option":
        name = draw(unknown(_options("pruners", "magnitude")))
        return _case("unknown key", f"pruners.magnitude.{name}", _set(BASE, ("pruners", "magnitude", name), value),
                     f"pruners.magnitude.{name}:")
    if choice == "axis":
        name = draw(unknown(BUILTIN_AXES, DOTTED_PREFIXES, {"exclude", "include"}))
        return _case("unknown key", f"matrix.{name}", _set(BASE, ("matrix", name), [value]), f"matrix.{name}:")
    if choice == "dotted axis":
        name = draw(unknown(_options("pruners", "magnitude")))
        key = f"pruners.magnitude.{name}"
        return _case("unknown key", f"matrix.{key}", _set(BASE, ("matrix", key), [value]), f"matrix.{key}[0]:")
    if choice == "dotted prefix":
        key = f"{draw(unknown(DOTTED_PREFIXES))}.{draw(ident)}"
        return _case("unknown key", f"matrix.{key}", _set(BASE, ("matrix", key), [value]), f"matrix.{key}:")
    if choice == "sampling axis":
        key = f"sampling.{draw(unknown(fields['sampling']))}"
        return _case("unknown key", f"matrix.{key}", _set(BASE, ("matrix", key), [value]), f"matrix.{key}:")
    assert choice == "exclude"
    name = draw(unknown(BASE["matrix"]))
    return _case("unknown key", f"matrix.exclude[0].{name}", _set(BASE, ("matrix", "exclude"), [{name: value}]),
                 f"matrix.exclude[0].{name}:")


@st.composite
def missing_keys(draw: st.DrawFn) -> Case:
    path = draw(st.sampled_from([("benchmark",), ("dataset",), ("model",), ("metrics",), ("benchmark", "name"),
                                 ("dataset", "name"), ("model", "name"), ("metrics", "names")]))
    return _case("missing key", _keypath(path), _delete(BASE, path), f"{_keypath(path)}:")


@st.composite
def bad_values(draw: st.DrawFn) -> Case:
    """Values of the right type that are not allowed (out of range, unknown names, duplicates)."""
    choice = draw(st.sampled_from([
        "seed", "name", "steps", "counts", "cfg", "cfg_batching", "sampler", "device", "executor", "dataset",
        "model", "metric", "metric twice", "empty names", "plot", "pruning method", "cfg axis", "seed axis",
        "steps axis", "size axis", "sampler axis", "duplicate", "rate without method", "empty exclude",
        "include", "plugin option", "train option", "path",
    ]))
    if choice == "seed":
        v = draw(st.integers(max_value=-1))
        return _case("bad value", f"benchmark.seed = {v}", _set(BASE, ("benchmark", "seed"), v), "benchmark.seed:")
    if choice == "name":
        v = draw(st.one_of(st.just(""), st.tuples(st.sampled_from("_.-"), ident).map("".join),
                           st.tuples(ident, st.sampled_from(list(" /\\:*?é")), ident).map("".join)))
        return _case("bad value", f"benchmark.name = {v!r}", _set(BASE, ("benchmark", "name"), v), "benchmark.name:")
    if choice == "steps":
        v = draw(st.one_of(st.integers(max_value=0), st.integers(min_value=10001)))
        return _case("bad value", f"sampling.steps = {v}", _set(BASE, ("sampling", "steps"), v), "sampling.steps:")
    if choice == "counts":
        key = draw(st.sampled_from(["num_samples", "batch_size", "trajectory_samples"]))
        v = draw(st.integers(max_value=0))
        return _case("bad value", f"sampling.{key} = {v}", _set(BASE, ("sampling", key), v), f"sampling.{key}:")
    if choice == "cfg":
        v = draw(st.one_of(st.floats(max_value=-1e-9, allow_infinity=False), bad_float))
        return _case("out of range", f"sampling.cfg_scale = {v}", _set(BASE, ("sampling", "cfg_scale"), v),
                     "sampling.cfg_scale:")
    if choice in ("cfg_batching", "sampler", "device"):
        section, known = {"cfg_batching": ("sampling", {"auto", "concat", "split"}),
                          "sampler": ("sampling", {"ddim", "ddpm"}), "device": ("execution", set(DEVICES))}[choice]
        v = draw(unknown(known))
        doc = _set(BASE, (section, choice), v)
        return _case("bad value", f"{section}.{choice} = {v!r}", doc, f"{section}.{choice}:")
    if choice in ("executor", "dataset", "model"):
        path, kind = {"executor": (("execution", "executor"), "executors"),
                      "dataset": (("dataset", "name"), "datasets"),
                      "model": (("model", "name"), "models")}[choice]
        v = draw(unknown(NAMES[kind]))
        return _case("bad value", f"{_keypath(path)} = {v!r}", _set(BASE, path, v), f"{_keypath(path)}:")
    if choice == "metric":
        v = draw(unknown(NAMES["metrics"], {"names"}))
        i = draw(st.integers(0, 1))
        doc = _set(BASE, ("metrics", "names", i), v)
        return _case("bad value", f"metrics.names[{i}] = {v!r}", doc, f"metrics.{v}:")
    if choice == "metric twice":
        doc = _set(BASE, ("metrics", "names"), ["synthetic_quality", "generation_time", "synthetic_quality"])
        return _case("bad value", "a metric listed twice", doc, "metrics.names:")
    if choice == "empty names":
        return _case("empty axis", "metrics.names = []", _set(BASE, ("metrics", "names"), []), "metrics.names:")
    if choice == "plot":
        v = draw(unknown(NAMES["plots"]))
        return _case("bad value", f"plots.names = [{v!r}]", _set(BASE, ("plots", "names"), [v]), "plots.names[0]:")
    if choice == "pruning method":
        i = draw(st.integers(0, 2))
        v = draw(unknown(NAMES["pruners"], {"none"}))
        return _case("bad value", f"matrix.pruning_method[{i}] = {v!r}", _set(BASE, ("matrix", "pruning_method", i), v),
                     f"matrix.pruning_method[{i}]:")
    if choice == "cfg axis":
        i = draw(st.integers(0, 1))
        v = draw(st.one_of(st.floats(max_value=-1e-9, allow_infinity=False), bad_float))
        return _case("out of range", f"matrix.cfg_scale[{i}] = {v}", _set(BASE, ("matrix", "cfg_scale", i), v),
                     f"matrix.cfg_scale[{i}]:")
    if choice == "seed axis":
        i = draw(st.integers(0, 1))
        v = draw(st.integers(max_value=-1))
        doc = _set(BASE, ("matrix", "seed", i), v)
        return _case("out of range", f"matrix.seed[{i}] = {v}", doc, f"matrix.seed[{i}]:")
    if choice == "steps axis":
        v = draw(st.one_of(st.integers(max_value=0), fractional))
        return _case("out of range", f"matrix.steps = [{v}]", _set(BASE, ("matrix", "steps"), [v]), "matrix.steps[0]:")
    if choice == "size axis":
        v = draw(st.one_of(st.floats(max_value=0.0, allow_infinity=False), st.floats(min_value=1.0, exclude_min=True),
                           st.just(math.nan)))
        return _case("out of range", f"matrix.size_factor = [{v}]", _set(BASE, ("matrix", "size_factor"), [v]),
                     "matrix.size_factor[0]:")
    if choice == "sampler axis":
        v = draw(unknown({"ddim", "ddpm"}))
        doc = _set(BASE, ("matrix", "sampler"), [v])
        return _case("bad value", f"matrix.sampler = [{v!r}]", doc, "matrix.sampler[0]:")
    if choice == "duplicate":
        axis, values = draw(st.sampled_from([("seed", [0, 1, 0]), ("cfg_scale", [1.0, 3, 1]),
                                             ("pruning_method", ["none", "random", "random"])]))
        return _case("bad value", f"matrix.{axis} = {values}", _set(BASE, ("matrix", axis), values), f"matrix.{axis}:")
    if choice == "rate without method":
        return _case("missing key", "no pruning_method axis", _delete(BASE, ("matrix", "pruning_method")),
                     "matrix.pruning_rate:")
    if choice == "empty exclude":
        return _case("bad value", "[[matrix.exclude]] with no keys", _set(BASE, ("matrix", "exclude"), [{}]),
                     "matrix.exclude[0]:")
    if choice == "include":
        v = draw(st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9), bad_float))
        doc = _set(BASE, ("matrix", "include"), [{"pruning_method": "magnitude", "pruning_rate": v}])
        return _case("out of range", f"include pruning_rate = {v}", doc, "matrix.include[0].pruning_rate:")
    if choice == "plugin option":
        # checked by the plugins' Options (the message names the option after its table)
        path, v = draw(st.sampled_from([
            (("dataset", "image_size"), st.integers(max_value=0)),
            (("dataset", "num_images"), st.integers(max_value=0)),
            (("model", "hidden"), st.integers(max_value=0)),
            (("model", "cost_ms"), st.one_of(st.floats(max_value=-1e-9), bad_float)),
            (("metrics", "synthetic_quality", "noise"), st.one_of(st.floats(max_value=-1e-9), bad_float)),
            (("metrics", "synthetic_quality", "width"), st.one_of(st.floats(max_value=0.0), bad_float)),
            (("metrics", "synthetic_quality", "best_cfg"), st.one_of(st.floats(max_value=-1e-9), bad_float)),
        ]).flatmap(lambda pv: st.tuples(st.just(pv[0]), pv[1])))
        table = _keypath(path[:-1])
        return _case("out of range", f"{_keypath(path)} = {v}", _set(BASE, path, v), f"{table}: {path[-1]} ",
                     f"{_keypath(path)}:")
    if choice == "train option":
        part = draw(st.sampled_from(["train", "distill"]))
        name, v = draw(st.sampled_from([
            ("epochs", st.integers(max_value=0)), ("batch_size", st.integers(max_value=0)),
            ("lr", st.floats(max_value=0.0)), ("cond_dropout", st.floats(min_value=1.0)),
            ("ema_decay", st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9))),
            ("max_steps", st.integers(max_value=0)),
        ]).flatmap(lambda nv: st.tuples(st.just(nv[0]), nv[1])))
        return _case("out of range", f"model.{part}.{name} = {v}", _set(BASE, ("model", part, name), v),
                     f"model.{part}: {name} ", f"model.{part}.{name}:")
    assert choice == "path"
    up = draw(st.lists(st.just(".."), min_size=1, max_size=3).map("/".join))
    v = f"{draw(st.sampled_from(['', './', 'a/../']))}{up}/{draw(ident)}.pt"  # each climbs out of the cwd
    # a weights file (not results_dir: --results, given here, replaces the file's folder)
    doc = _set(_set(BASE, ("metrics", "names", 1), "fid"), ("metrics", "fid"), {"weights": v})
    return _case("bad value", f"metrics.fid.weights = {v!r}", doc, "metrics.fid.weights:")


@st.composite
def rates(draw: st.DrawFn) -> Case:
    """Out-of-range pruning rates, the classic mistake (rates are in [0, 1))."""
    i = draw(st.integers(0, len(BASE["matrix"]["pruning_rate"]) - 1))
    v = draw(st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9), bad_float, st.integers(min_value=1),
                       st.integers(max_value=-1)))
    return _case("out of range", f"matrix.pruning_rate[{i}] = {v}", _set(BASE, ("matrix", "pruning_rate", i), v),
                 f"matrix.pruning_rate[{i}]:")


@st.composite
def empty_axes(draw: st.DrawFn) -> Case:
    axis = draw(st.sampled_from([*BUILTIN_AXES, "pruners.magnitude.protect", "sampling.num_samples"]))
    return _case("empty axis", f"matrix.{axis} = []", _set(BASE, ("matrix", axis), []), f"matrix.{axis}:")


BASE_LINES = BASE_TEXT.splitlines()
ASSIGNMENTS = [i for i, line in enumerate(BASE_LINES) if " = " in line and not line.startswith("#")]
HEADERS = [i for i, line in enumerate(BASE_LINES) if line.startswith("[")]
STRINGS = [i for i in ASSIGNMENTS if BASE_LINES[i].rstrip().endswith('"')]


@st.composite
def broken_toml(draw: st.DrawFn) -> Case:
    """A syntax error on one line: the error must name the file and that line."""
    lines = list(BASE_LINES)
    how = draw(st.sampled_from(["no =", "no value", "open string", "open header", "header twice", "junk", "key twice"]))
    if how == "header twice":
        i = len(lines)
        lines.append(BASE_LINES[draw(st.sampled_from(HEADERS))])
    elif how == "key twice":
        j = draw(st.sampled_from(ASSIGNMENTS))
        i = j + 1
        lines.insert(i, BASE_LINES[j])
    else:
        pool = {"open string": STRINGS, "open header": HEADERS}.get(how, ASSIGNMENTS)
        i = draw(st.sampled_from(pool))
        line = lines[i]
        if how == "no =":
            lines[i] = line.replace(" = ", " ", 1)
        elif how == "no value":
            lines[i] = line.split(" = ", 1)[0] + " ="
        elif how == "open string":
            lines[i] = line.rstrip()[:-1]
        elif how == "open header":
            lines[i] = line.rstrip().rstrip("]")
        else:
            lines[i] = line + " " + draw(st.sampled_from(["x", "1", "= 2", "]", '"a"']))
    return Case("broken TOML", f"{how} at line {i + 1}", "\n".join(lines) + "\n", ("invalid TOML: ",))


def _line_of(case: Case) -> int:
    return int(case.what.rsplit(" ", 1)[1])


malformed = st.one_of(wrong_types(), unknown_keys(), missing_keys(), bad_values(), rates(), empty_axes(),
                      broken_toml())


# ============================================================================ the test


def test_the_base_matrix_is_valid_as_written_by_the_test_writer(tmp_path):
    path = tmp_path / "base.toml"
    path.write_text(dumps(BASE))
    assert main(["run", str(path), "--results", str(tmp_path / "r"), "--dry-run"]) == 0


def test_malformed_matrices_exit_2_with_one_line_naming_the_key(tmp_path_factory):
    """>= 200 fuzzed malformed matrices through ``bench run``: exit 2, one line, nothing written."""
    root = tmp_path_factory.mktemp("fuzz")
    seen: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(case=malformed)
    def check(case: Case) -> None:
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            path = Path(tmp) / "matrix.toml"
            path.write_text(case.text)
            results = Path(tmp) / "results"
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["run", str(path), "--results", str(results)])
            stdout, stderr = out.getvalue(), err.getvalue()
            context = f"{case.category}: {case.what}\n--- stderr:\n{stderr}--- matrix:\n{case.text}"
            assert code == 2, context
            assert "Traceback" not in stderr + stdout, context
            errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
            others = [line for line in stderr.splitlines() if not line.startswith(("error: ", "WARNING "))]
            assert len(errors) == 1 and not others, context
            line = errors[0].removeprefix("error: ")
            assert any(line.startswith(f"{path}: {e}") for e in case.expect), context
            if case.category == "broken TOML":
                assert re.search(rf"\(at line {_line_of(case)}, column \d+\)$", line), context
            assert not results.exists(), "a malformed matrix must not start any work\n" + context
        seen[case.category] += 1

    check()
    assert sum(seen.values()) >= 200, seen
    assert set(seen) == {"wrong type", "unknown key", "missing key", "bad value", "out of range", "empty axis",
                         "broken TOML"}, seen


# ============================================================================ run time


TWO_CFG = [
    'matrix.pruning_method=["none", "magnitude"]',
    "matrix.pruning_rate=[0.5]",
    "matrix.cfg_scale=[1.0, 3.0]",
    "matrix.seed=[0]",
]




def _run(results: Path, overrides: list[str]) -> runner.RunSummary:
    return runner.run(SYNTHETIC, [*TWO_CFG, *overrides], results_dir=str(results), stream=io.StringIO(),
                      interactive=False)


class NaNSamplesFamily(SyntheticFamily):
    """The synthetic model, except that pruned variants sample a NaN at CFG 3 (test plugin)."""

    name = "nan_at_cfg3"

    def build(self, dataset: Any) -> Any:
        model = super().build(dataset)
        model.__class__ = NaNSamplesModel
        return model


class NaNSamplesModel(SyntheticModel):
    def sample(self, noise: torch.Tensor, conditions: Any, *, cfg_scale: float, **kw: Any) -> Any:
        out = super().sample(noise, conditions, cfg_scale=cfg_scale, **kw)
        if cfg_scale == 3.0 and bool((self.net.inp.weight == 0).any()):  # magnitude-pruned
            out.images[0, 0, 0, 0] = math.nan
        return out


class NaNMetric(Metric):
    """Returns NaN on cells of CFG 3 (test plugin)."""

    name = "nan_at_cfg3"
    requires: ClassVar[frozenset[str]] = frozenset({"samples"})

    def compute(self, ctx: MetricContext) -> float:
        return math.nan if ctx.cell.axes["cfg_scale"] == 3.0 else 0.5


class NeedsMissingPackage(Metric):
    """Imports an optional dependency that is not installed, on pruned cells only (test plugin)."""

    name = "needs_missing_package"
    requires: ClassVar[frozenset[str]] = frozenset({"samples"})

    def compute(self, ctx: MetricContext) -> float:
        if ctx.cell.axes["pruning_method"] != "none":
            import diffbench_no_such_package  # noqa: F401
        return 1.0


class RunTimePlugins:
    @hookimpl
    def bench_register_models(self, register: Any) -> None:
        register(NaNSamplesFamily)

    @hookimpl
    def bench_register_metrics(self, register: Any) -> None:
        register(NaNMetric)
        register(NeedsMissingPackage)


def _by_cell(results: Path) -> dict[str, Any]:
    df = harness.load_results(results)
    return {name: rows for name, rows in df.groupby(df["cell_name"].astype(str))}


def test_nan_samples_fail_only_their_cells(tmp_path, extra_plugins):
    extra_plugins(RunTimePlugins())
    summary = _run(tmp_path, ["model.name=nan_at_cfg3"])
    assert (summary.ok, summary.error, summary.exit_code) == (3, 1, 1)
    cells = _by_cell(tmp_path)
    failed = cells.pop("synthetic[method=magnitude,rate=0.5,cfg=3,seed=0]")
    assert set(failed["status"]) == {"error"} and failed["value"].isna().all()
    assert set(failed["error"]) == {"CellError: sampling produced non-finite values (1 entries)"}
    assert len(cells) == 3 and all(set(rows["status"]) == {"ok"} for rows in cells.values())


def test_a_metric_returning_nan_fails_its_cells_with_the_reason(tmp_path, extra_plugins):
    extra_plugins(RunTimePlugins())
    summary = _run(tmp_path, ['metrics.names=["synthetic_quality", "nan_at_cfg3"]'])
    assert (summary.ok, summary.error) == (2, 2)
    df = harness.load_results(tmp_path)
    errors = df[df["status"] == "error"]
    assert set(errors["cfg_scale"]) == {3.0} and len(errors) == 4  # both metrics' rows of each failed cell
    assert set(errors["error"]) == {"CellError: metric 'nan_at_cfg3' returned NaN for 'nan_at_cfg3'"}
    assert (df.loc[df["status"] == "ok", "cfg_scale"] == 1.0).all()


def test_a_metric_whose_dependency_is_missing_fails_its_cells(tmp_path, extra_plugins, capsys):
    extra_plugins(RunTimePlugins())
    args = [a for o in [*TWO_CFG, 'metrics.names=["synthetic_quality", "needs_missing_package"]'] for a in ("--set", o)]
    assert main(["run", str(SYNTHETIC), "--results", str(tmp_path), *args]) == 1
    out, err = capsys.readouterr()
    assert "synthetic: 2 ok, 2 failed" in out and "Traceback" not in err
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and all("method=magnitude" in line for line in failed)
    assert all(line.endswith("ModuleNotFoundError: No module named 'diffbench_no_such_package'") for line in failed)


@pytest.fixture
def broken_distribution(tmp_path, monkeypatch):
    """An installed-looking distribution whose ``bench`` entry point raises on import."""
    site = tmp_path / "site"
    (site / "diffbench_broken_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "diffbench_broken_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: diffbench-broken-plugin\nVersion: 0.1\n")
    (site / "diffbench_broken_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[bench]\nbroken = diffbench_broken_plugin\n")
    (site / "diffbench_broken_plugin.py").write_text(textwrap.dedent("""
        import diffbench_missing_dependency  # the plugin's dependency is not installed
    """))
    monkeypatch.syspath_prepend(str(site))
    import importlib

    importlib.invalidate_caches()
    return "diffbench-broken-plugin"


def test_a_plugin_that_fails_to_import_is_a_warning_and_the_others_work(broken_distribution, tmp_path, capsys,
                                                                        caplog):
    registry = build_registry()
    (message,) = [e for e in registry.load_errors if "'broken'" in e]
    assert message == ("plugin entry point 'broken' (diffbench_broken_plugin, diffbench-broken-plugin) failed to "
                       "import: ModuleNotFoundError: No module named 'diffbench_missing_dependency'")
    assert {"synthetic", "unet"} <= set(registry.names("models")) and "synthetic_quality" in registry.names("metrics")

    assert main(["list", "metrics"]) == 0
    out = capsys.readouterr().out
    assert "warning: plugin entry point 'broken'" in " ".join(out.split()) and "synthetic_quality" in out

    args = [a for o in TWO_CFG for a in ("--set", o)]
    caplog.clear()
    assert main(["run", str(SYNTHETIC), "--results", str(tmp_path), "--quiet", *args]) == 0
    out, err = capsys.readouterr()
    assert "synthetic: 4 ok, 0 failed" in out and "Traceback" not in err
    assert message in [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(harness.load_results(tmp_path)) == 8
