"""Validating a matrix file: every problem found before any work starts, one line each.

:class:`Validator` checks the parsed sections, resolves every plugin name, validates each
plugin's options, the axes and the include/exclude filters, and collects the problems
as ``FILE: key.path: what is wrong; what is valid`` lines, raised together as one
:class:`harness.errors.ConfigError` (see :func:`harness.config.load_matrix`).
"""

from __future__ import annotations

import dataclasses

import logging
import math
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from harness.config import (
    BUILTIN_AXES,
    DEVICES,
    DOTTED_PREFIXES,
    SECTIONS,
    BenchConfig,
    MatrixFile,
    PluginSpec,
    SamplingSection,
)
from harness.errors import ConfigError, did_you_mean, valid_choices
from harness.options import stage_options, validate_options
from harness.registry import Registry

log = logging.getLogger(__name__)

def leaves_its_folder(value: str) -> bool:
    """Whether ``value``, read as a path, is relative and climbs out of its folder with ``..``.

    The rule for every path in a matrix (``results_dir``, a dataset's ``root``, a metric's
    ``weights``, any string option of a plugin): a relative path stays inside the folder it
    is relative to (the current directory; for some options another declared folder, such
    as ``image_folder``'s ``captions`` inside its ``root``), so a shared matrix file cannot
    point a run at ``../../somewhere``. An absolute path (also after ``~`` and ``$VAR``
    expansion) is taken as written. The check is lexical: ``a/../b`` stays inside, and
    symbolic links are the user's own choice and are not followed.
    """
    expanded = os.path.expandvars(os.path.expanduser(value))
    if not expanded or os.path.isabs(expanded):
        return False
    return os.path.normpath(expanded).split(os.sep, 1)[0] == os.pardir


class Validator:
    """Collects every problem of one matrix, then raises them together."""

    def __init__(self, path: Path, raw: dict[str, Any], registry: Registry, results_from_cli: bool = False) -> None:
        self.path = path
        self.raw = raw
        self.registry = registry
        #: ``--results DIR`` given: the command line's folder, not the file's, is used
        self.results_from_cli = results_from_cli
        self.problems: list[str] = []

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path}: {key}: {message}")

    def check_paths(self, key: str, value: Any) -> None:
        """Report every string under ``value`` that is a relative path out of its folder (see ``leaves_its_folder``)."""
        if isinstance(value, str):
            if leaves_its_folder(value):
                self.fail(key, f"relative path {value!r} climbs out of its folder with '..'; "
                          "give a path inside the current directory or an absolute path")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self.check_paths(f"{key}[{i}]", v)
        elif isinstance(value, dict):
            for k, v in value.items():
                self.check_paths(f"{key}.{k}", v)

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(list(dict.fromkeys(self.problems)))

    # -- structure -------------------------------------------------------------------
    def run(self) -> BenchConfig:
        for key in self.raw:
            if key not in SECTIONS:
                self.fail(key, f"unknown section{did_you_mean(key, SECTIONS)}; {valid_choices(SECTIONS)}")
        try:
            parsed = MatrixFile.model_validate({k: v for k, v in self.raw.items() if k in SECTIONS})
        except ValidationError as exc:
            for err in exc.errors():
                self._pydantic_problem(err)
            self.raise_if_any()
            raise AssertionError("unreachable") from None
        self.raise_if_any()
        cfg = self._resolve(parsed)
        self.raise_if_any()
        return cfg

    def _pydantic_problem(self, err: dict[str, Any]) -> None:
        loc = [str(p) for p in err.get("loc", ())]
        key = ".".join(loc)
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            parent = loc[:-1]
            model = _model_at(parent)
            names = list(model.model_fields) if model is not None else []
            self.fail(key, f"unknown key{did_you_mean(loc[-1], names)}; {valid_choices(names)}")
        elif kind == "missing":
            self.fail(key, "required key is missing")
        elif kind == "literal_error":
            ctx = err.get("ctx", {})
            expected = ctx.get("expected", "")
            self.fail(key, f"{err.get('input')!r} is not valid{did_you_mean(err.get('input'), _literal_values(expected))}; valid: {expected}")
        else:
            self.fail(key, f"{err.get('msg')} (got {err.get('input')!r})")

    # -- plugins ---------------------------------------------------------------------
    def _plugin(self, kind: str, name: str, options: dict[str, Any], where: str) -> bool:
        if name not in self.registry.plugins[kind]:
            names = self.registry.names(kind)
            key = {"dataset": "dataset.name", "model": "model.name", "execution": "execution.executor"}.get(where, where)
            self.fail(key,
                      f"unknown {_singular(kind)} '{name}'{did_you_mean(name, names)}; {valid_choices(names)}")
            return False
        cls = self.registry.get(kind, name)
        try:
            validate_options(cls, options, where if where not in ("dataset", "model") else where)
        except ConfigError as exc:
            self.problems.append(f"{self.path}: {exc}")
            return False
        return self._plugin_references(cls, options, where)

    def _plugin_references(self, cls: type, options: dict[str, Any], where: str) -> bool:
        """Options that name another plugin (dataclass field metadata ``{"plugin": KIND}``,
        e.g. a metric's ``features``) must name a registered one."""
        options_cls = getattr(cls, "Options", None)
        ok = True
        for f in dataclasses.fields(options_cls) if dataclasses.is_dataclass(options_cls) else ():
            kind, value = f.metadata.get("plugin"), options.get(f.name)
            if kind and value is not None and value not in self.registry.plugins[kind]:
                names = self.registry.names(kind)
                self.fail(f"{where}.{f.name}", f"unknown {_singular(kind)} '{value}'{did_you_mean(value, names)}; "
                          f"{valid_choices(names)}")
                ok = False
        return ok

    def _resolve(self, m: MatrixFile) -> BenchConfig:
        dataset_opts = dict(m.dataset.model_extra or {})
        if self._plugin("datasets", m.dataset.name, dataset_opts, "dataset"):
            self.check_paths("dataset", dataset_opts)
        family = self._family(m)
        metric_specs = self._metrics(m)
        exec_opts = self._execution(m)
        for i, name in enumerate(m.plots.names):
            if name not in self.registry.plugins["plots"]:
                names = self.registry.names("plots")
                self.fail(f"plots.names[{i}]", f"unknown plot '{name}'{did_you_mean(name, names)}; {valid_choices(names)}")
        axes = self._axes(m, family)
        exclude = self._filters(m.matrix.get("exclude", []), "matrix.exclude", axes)
        include = self._filters(m.matrix.get("include", []), "matrix.include", axes, include=True, family=family)
        methods = set(axes.get("pruning_method", ["none"])) | {c.get("pruning_method", "none") for c in include}
        return BenchConfig(
            path=self.path, raw=self.raw, benchmark=m.benchmark,
            dataset=PluginSpec(m.dataset.name, dataset_opts),
            model=PluginSpec(m.model.name, dict(m.model.model_extra or {})),
            train=dict(m.model.train), distill=dict(m.model.distill), sampling=m.sampling,
            axes=axes, exclude=exclude, include=include, metrics=metric_specs,
            pruners=self._pruners(m, methods), execution=m.execution, executor_options=exec_opts,
            plots=list(m.plots.names), registry=self.registry,
        )

    def _family(self, m: MatrixFile) -> type | None:
        """Check ``[model]``, its training tables and the sampler; the family class if known."""
        model_opts = dict(m.model.model_extra or {})
        if not self._plugin("models", m.model.name, model_opts, "model"):
            return None
        self.check_paths("model", model_opts)
        family = self.registry.get("models", m.model.name)
        self._check_train(family, "train", m.model.train)
        self._check_train(family, "distill", m.model.distill)
        if m.sampling.sampler not in family.samplers:
            self.fail("sampling.sampler", f"'{m.sampling.sampler}' is not a sampler of model '{family.name}'"
                      f"{did_you_mean(m.sampling.sampler, family.samplers)}; {valid_choices(family.samplers)}")
        return family

    def _metrics(self, m: MatrixFile) -> list[PluginSpec]:
        specs = []
        tables = dict(m.metrics.model_extra or {})
        for i, name in enumerate(m.metrics.names):
            if not isinstance(name, str):
                self.fail(f"metrics.names[{i}]", f"expected a metric name, got {name!r}")
                continue
            opts = tables.get(name, {})
            if not isinstance(opts, dict):
                self.fail(f"metrics.{name}", f"expected a table of options, got {opts!r}")
                continue
            if self._plugin("metrics", name, opts, f"metrics.{name}"):
                specs.append(PluginSpec(name, opts))
                self.check_paths(f"metrics.{name}", opts)
        if len(set(m.metrics.names)) != len(m.metrics.names):
            self.fail("metrics.names", "a metric is listed twice")
        for key in tables:
            if key in m.metrics.names:
                continue
            if key in self.registry.plugins["metrics"]:
                # a known metric left out of names (e.g. by --set metrics.names=[...]): harmless
                log.warning("%s: [metrics.%s] has options but is not in metrics.names; ignored", self.path, key)
            else:
                self.fail(f"metrics.{key}", f"options for a metric that is not in metrics.names"
                          f"{did_you_mean(key, m.metrics.names)}; listed: {', '.join(m.metrics.names)}")
        return specs

    def _execution(self, m: MatrixFile) -> dict[str, Any]:
        """Check the executor, its options and the device; the executor's options."""
        exec_opts = dict(m.execution.model_extra or {})
        if self._plugin("executors", m.execution.executor, exec_opts, "execution"):
            self.check_paths("execution", exec_opts)
        if not self.results_from_cli:
            self.check_paths("execution.results_dir", m.execution.results_dir)
        dev = m.execution.device
        if dev not in DEVICES and not (dev.startswith("cuda:") and dev[5:].isdigit()):
            self.fail("execution.device", f"'{dev}' is not a device{did_you_mean(dev, DEVICES)}; valid: "
                      + ", ".join(f"'{d}'" for d in DEVICES) + ", 'cuda:N'")
        return exec_opts

    def _pruners(self, m: MatrixFile, methods: set[str]) -> dict[str, dict[str, Any]]:
        tables = {}
        for pname, opts in m.pruners.items():
            if not isinstance(opts, dict):
                self.fail(f"pruners.{pname}", f"expected a table of options, got {opts!r}")
                continue
            if self._plugin("pruners", pname, opts, f"pruners.{pname}"):
                tables[pname] = opts
                self.check_paths(f"pruners.{pname}", opts)
                if pname not in methods:
                    # e.g. --set matrix.pruning_method=["magnitude"] on a matrix with [pruners.structured]
                    log.warning("%s: [pruners.%s] has options but no cell uses that pruner; ignored", self.path, pname)
        return tables

    def _check_train(self, family: type | None, stage: str, table: dict[str, Any]) -> bool:
        """Check the ``[model.<stage>]`` table against the family's declared options class
        (``ModelFamily.train_options`` / ``distill_options``); False after a problem."""
        if family is None:  # an unknown model is reported already; its options are unknown
            return True
        try:
            stage_options(family, stage, table)
        except ConfigError as exc:
            self.problems.append(f"{self.path}: {exc}")
            return False
        return True

    # -- axes ------------------------------------------------------------------------
    def _axes(self, m: MatrixFile, family: type | None) -> dict[str, list[Any]]:
        axes: dict[str, list[Any]] = {}
        for key, values in m.matrix.items():
            if key in ("exclude", "include"):
                if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
                    self.fail(f"matrix.{key}", f"expected [[matrix.{key}]] tables, got {values!r}")
                continue
            where = f"matrix.{key}"
            if not isinstance(values, list):
                values = [values]
            if not values:
                self.fail(where, "empty axis; give at least one value")
                continue
            if key in BUILTIN_AXES:
                checked = [self._axis_value(key, v, f"{where}[{i}]", family) for i, v in enumerate(values)]
            elif "." in key:
                before = len(self.problems)
                checked = self._dotted_axis(key, values, where, m)
                if len(self.problems) == before:
                    self.check_paths(where, values)
            else:
                if isinstance(values[0], dict) and key in DOTTED_PREFIXES:
                    # TOML reads an unquoted `pruners.iterative.rounds = [...]` as nested tables
                    dotted, table = key, values[0]
                    while isinstance(table, dict) and len(table) == 1:
                        name, table = next(iter(table.items()))
                        dotted += f".{name}"
                    self.fail(where, f'unknown axis; a dotted axis must be quoted: "{dotted}" = [...]')
                    continue
                choices = list(BUILTIN_AXES)
                self.fail(where, f"unknown axis{did_you_mean(key, choices)}; valid: "
                          + ", ".join(choices) + ", or a dotted plugin option such as 'pruners.iterative.rounds'")
                continue
            if len({repr(v) for v in checked}) != len(checked):
                self.fail(where, "an axis value is listed twice")
            axes[key] = checked
        if "size_factor" in axes and family is not None and not family.supports_sizes:
            self.fail("matrix.size_factor", f"model '{family.name}' does not support size factors")
        # m.matrix, not axes: an invalid pruning_method axis is reported once, on its own key
        if "pruning_rate" in axes and "pruning_method" not in m.matrix:
            self.fail("matrix.pruning_rate", "a pruning_rate axis needs a pruning_method axis")
        return axes

    def _axis_value(self, axis: str, value: Any, where: str, family: type | None) -> Any:
        def num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if axis == "size_factor":
            if not num(value) or not 0 < value <= 1:
                self.fail(where, f"size factor must be a number in (0, 1], got {value!r}")
            return float(value) if num(value) else value
        if axis == "pruning_rate":
            if not num(value) or not 0 <= value < 1:
                self.fail(where, f"pruning rate must be a number in [0, 1), got {value!r}")
            return float(value) if num(value) else value
        if axis == "cfg_scale":
            if not num(value) or value < 0:
                self.fail(where, f"CFG scale must be a number >= 0, got {value!r}")
            return float(value) if num(value) else value
        if axis in ("steps", "seed"):
            low = 1 if axis == "steps" else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                self.fail(where, f"{axis} must be an integer >= {low}, got {value!r}")
            return value
        if axis == "pruning_method":
            names = ["none", *self.registry.names("pruners")]
            if value not in names:
                self.fail(where, f"unknown pruner '{value}'{did_you_mean(value, names)}; {valid_choices(names)}")
            return value
        if axis == "sampler":
            samplers = family.samplers if family is not None else ("ddpm", "ddim")
            if value not in samplers:
                self.fail(where, f"unknown sampler '{value}'{did_you_mean(value, samplers)}; {valid_choices(samplers)}")
            return value
        raise AssertionError(axis)

    def _dotted_axis(self, key: str, values: list[Any], where: str, m: MatrixFile) -> list[Any]:
        parts = key.split(".")
        prefix = parts[0]
        if prefix not in DOTTED_PREFIXES:
            self.fail(where, f"unknown axis{did_you_mean(prefix, DOTTED_PREFIXES)}; a dotted axis starts with "
                      + ", ".join(DOTTED_PREFIXES))
            return values
        if prefix in ("pruners", "metrics"):
            if len(parts) != 3:
                self.fail(where, f"expected '{prefix}.NAME.OPTION'")
                return values
            kind = "pruners" if prefix == "pruners" else "metrics"
            name, opt = parts[1], parts[2]
            if name not in self.registry.plugins[kind]:
                names = self.registry.names(kind)
                self.fail(where, f"unknown {_singular(kind)} '{name}'{did_you_mean(name, names)}; {valid_choices(names)}")
                return values
            base = (m.pruners.get(name, {}) if prefix == "pruners" else (m.metrics.model_extra or {}).get(name, {})) or {}
            cls = self.registry.get(kind, name)
            for i, v in enumerate(values):
                try:
                    validate_options(cls, {**base, opt: v}, f"{prefix}.{name}")
                except ConfigError as exc:
                    self.problems.append(f"{self.path}: {where}[{i}]: {str(exc).split(': ', 1)[-1]}")
            return values
        if prefix == "sampling":
            field_name = parts[1] if len(parts) == 2 else ""
            allowed = [f for f in SamplingSection.model_fields if f not in ("sampler", "steps", "cfg_scale")]
            if field_name not in allowed:
                self.fail(where, f"unknown sampling option{did_you_mean(field_name, allowed)}; {valid_choices(allowed)}")
                return values
            for i, v in enumerate(values):
                try:
                    SamplingSection.model_validate({field_name: v})
                except ValidationError as exc:
                    self.fail(f"{where}[{i}]", exc.errors()[0]["msg"])
            return values
        # model.* / dataset.* : plugin options, or model.train.* / model.distill.*
        if prefix == "model" and len(parts) == 3 and parts[1] in ("train", "distill"):
            entry = self.registry.plugins["models"].get(m.model.name)
            family = entry.cls if entry is not None else None
            table = dict(m.model.train if parts[1] == "train" else m.model.distill)
            for i, v in enumerate(values):
                if not self._check_train(family, parts[1], {**table, parts[2]: v}):
                    self.problems[-1] = self.problems[-1].replace(f": model.{parts[1]}", f": {where}[{i}]: model.{parts[1]}", 1)
            return values
        if len(parts) != 2:
            self.fail(where, f"expected '{prefix}.OPTION'")
            return values
        section = m.dataset if prefix == "dataset" else m.model
        kind = "datasets" if prefix == "dataset" else "models"
        if section.name not in self.registry.plugins[kind]:
            return values
        cls = self.registry.get(kind, section.name)
        for i, v in enumerate(values):
            try:
                validate_options(cls, {**(section.model_extra or {}), parts[1]: v}, prefix)
            except ConfigError as exc:
                self.problems.append(f"{self.path}: {where}[{i}]: {str(exc).split(': ', 1)[-1]}")
        return values

    def _filters(
        self,
        entries: Any,
        where: str,
        axes: dict[str, list[Any]],
        include: bool = False,
        family: type | None = None,
    ) -> list[dict[str, Any]]:
        if not isinstance(entries, list):
            return []
        out = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not entry:
                self.fail(f"{where}[{i}]", "expected a non-empty table of axis = value")
                continue
            for key, value in entry.items():
                known = set(axes) | (set(BUILTIN_AXES) if include else set())
                if key not in known:
                    choices = sorted(known)
                    self.fail(f"{where}[{i}].{key}", f"not an axis of this matrix{did_you_mean(key, choices)}; "
                              f"axes: {', '.join(choices) or '(none)'}")
                elif include and key in BUILTIN_AXES:
                    self._axis_value(key, value, f"{where}[{i}].{key}", family)
            out.append(dict(entry))
        return out


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = MatrixFile
    for part in loc:
        if model is None:
            return None
        info = model.model_fields.get(part)
        if info is None:
            return None
        ann = info.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _literal_values(expected: str) -> list[str]:
    return [p.strip().strip("'\"") for p in expected.replace(" or ", ",").split(",") if p.strip()]


def _singular(kind: str) -> str:
    return {"datasets": "dataset", "models": "model", "pruners": "pruner", "metrics": "metric",
            "features": "feature extractor", "executors": "executor", "plots": "plot"}[kind]


__all__ = ["Validator", "leaves_its_folder"]
