"""Matrix files: load TOML, apply ``--set`` overrides, validate, resolve plugins.

Every problem is found before any work starts and reported as one line per problem:
``FILE: key.path: what is wrong; what is valid``. :func:`load_matrix` raises a
:class:`harness.errors.ConfigError` whose message holds those lines.
"""

from __future__ import annotations

import logging

import copy
import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from harness.base import options_dict, stage_options, validate_options
from harness.errors import ConfigError, UserError, did_you_mean, valid_choices
from harness.registry import Registry

log = logging.getLogger(__name__)

#: the built-in axes, in the order cells are named and sorted
BUILTIN_AXES = ("size_factor", "pruning_method", "pruning_rate", "cfg_scale", "sampler", "steps", "seed")
#: prefixes a dotted axis (a swept plugin option) may start with
DOTTED_PREFIXES = ("pruners", "metrics", "model", "dataset", "sampling")
DEVICES = ("auto", "cpu", "cuda", "mps")


# ----------------------------------------------------------------------------- schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads `num_samples = true` as 1; TOML has real booleans, so a
        # boolean where a number belongs is a mistake (plugin options and axes refuse it too)
        field_info = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field_info is not None and field_info.annotation in (int, float):
            kind = "an integer" if field_info.annotation is int else "a number"
            raise PydanticCustomError("bool_not_number", f"Input should be {kind}, not a boolean")
        return value


class BenchmarkSection(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    seed: int = Field(0, ge=0)
    description: str = ""


class PluginSection(BaseModel):
    """``name`` plus the plugin's own options (validated by the plugin)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)


class ModelSection(PluginSection):
    train: dict[str, Any] = Field(default_factory=dict)
    distill: dict[str, Any] = Field(default_factory=dict)


class SamplingSection(_Strict):
    sampler: str = "ddim"
    steps: int = Field(50, ge=1, le=10000)
    cfg_scale: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    cfg_batching: Literal["auto", "concat", "split"] = "auto"
    num_samples: int = Field(256, ge=1)
    batch_size: int = Field(256, ge=1)
    trajectory_samples: int = Field(128, ge=1, description="samples whose trajectories are stored")
    warmup: bool = True
    dtype: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="autocast dtype of the denoiser when sampling")
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = Field(
        "none", description="torch.compile mode of the denoiser when sampling"
    )


class MetricsSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    names: list[str] = Field(min_length=1)


class ExecutionSection(BaseModel):
    """``executor``, ``device``, ``results_dir``; other keys are executor options."""

    model_config = ConfigDict(extra="allow")
    executor: str = "local"
    device: str = "auto"
    results_dir: str = "results"
    threads: int | None = Field(
        None, ge=1, description="torch threads of every worker, whatever the executor (unset: torch's default "
                                "in the process that runs `bench run`); recorded in the manifest")


class PlotsSection(_Strict):
    names: list[str] = Field(default_factory=list)


class MatrixFile(_Strict):
    benchmark: BenchmarkSection
    dataset: PluginSection
    model: ModelSection
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    matrix: dict[str, Any] = Field(default_factory=dict)
    metrics: MetricsSection
    pruners: dict[str, dict[str, Any]] = Field(default_factory=dict)
    execution: ExecutionSection = Field(default_factory=ExecutionSection)
    plots: PlotsSection = Field(default_factory=PlotsSection)


SECTIONS = tuple(MatrixFile.model_fields)


# ----------------------------------------------------------------------------- resolved


@dataclass
class PluginSpec:
    """A plugin named in the matrix, with its options (as written)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchConfig:
    """A validated matrix file with every plugin name resolved."""

    path: Path
    raw: dict[str, Any]
    benchmark: BenchmarkSection
    dataset: PluginSpec
    model: PluginSpec
    train: dict[str, Any]
    distill: dict[str, Any]
    sampling: SamplingSection
    axes: dict[str, list[Any]]
    exclude: list[dict[str, Any]]
    include: list[dict[str, Any]]
    metrics: list[PluginSpec]
    pruners: dict[str, dict[str, Any]]
    execution: ExecutionSection
    executor_options: dict[str, Any]
    plots: list[str]
    registry: Registry

    @property
    def results_dir(self) -> Path:
        return Path(self.execution.results_dir)

    def as_dict(self) -> dict[str, Any]:
        """The resolved configuration, JSON-able (for manifests)."""
        return {
            "benchmark": self.benchmark.model_dump(),
            "dataset": dataclasses.asdict(self.dataset),
            "model": dataclasses.asdict(self.model),
            "train": self.train,
            "distill": self.distill,
            "sampling": self.sampling.model_dump(),
            "axes": self.axes,
            "exclude": self.exclude,
            "include": self.include,
            "metrics": [dataclasses.asdict(m) for m in self.metrics],
            "pruners": self.pruners,
            "execution": self.execution.model_dump(),
            "plots": self.plots,
        }


# ----------------------------------------------------------------------------- loading


def parse_override(text: str) -> dict[str, Any]:
    """``key.path=VALUE`` (VALUE in TOML syntax; a bare word is a string) -> nested dict."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set sampling.num_samples=10")
    key, _, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not key:
        raise ConfigError(f"--set {text}: empty key; expected KEY=VALUE")
    if not value:
        raise ConfigError(f"--set {key}=: empty value; give a TOML value such as 10, 1.5, \"x\" or [1, 2]")
    # a bare word is a string; a broken list, table or quoted string is not
    candidates = (value,) if value[0] in "[{\"'" else (value, f'"{value}"')
    for candidate in candidates:
        try:
            return tomllib.loads(f"{key} = {candidate}")
        except tomllib.TOMLDecodeError:
            continue
    raise ConfigError(f"--set {key}={value}: not a TOML value (numbers 1 / 0.5, strings \"x\", lists [1, 2])")


class NotATableError(ValueError):
    """An override sets a key inside ``key``, but the matrix holds a non-table value there."""

    def __init__(self, key: str, value: Any) -> None:
        super().__init__(f"{key}: expected a table, got {value!r}")
        self.key, self.value = key, value


def deep_merge(base: dict[str, Any], override: dict[str, Any], _where: str = "") -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; tables merge, other values replace.

    A table in ``override`` where ``base`` holds something else (``execution = 0`` and
    ``--results DIR``) raises :class:`NotATableError`: replacing the value would hide the
    file's mistake, and dropping the override would ignore the command line.
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        where = f"{_where}.{key}" if _where else str(key)
        if isinstance(value, dict) and key in out and not isinstance(out[key], dict):
            raise NotATableError(where, out[key])
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, where)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such matrix file")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file: {exc}") from None


def load_matrix(
    path: str | Path,
    overrides: list[str] | None = None,
    registry: Registry | None = None,
    results_dir: str | None = None,
) -> BenchConfig:
    """Load, override, validate and resolve a matrix file."""
    from harness.registry import build_registry

    path = Path(path)
    raw = read_toml(path)
    for text in overrides or []:
        try:
            raw = deep_merge(raw, parse_override(text))
        except NotATableError as exc:
            raise ConfigError(f"{path}: {exc} (so --set {text.strip()} cannot set a key inside it)") from None
    if results_dir is not None:
        try:
            raw = deep_merge(raw, {"execution": {"results_dir": str(results_dir)}})
        except NotATableError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    registry = registry or build_registry()
    return _Validator(path, raw, registry, results_from_cli=results_dir is not None).run()


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


class _Validator:
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
        return True

    def _resolve(self, m: MatrixFile) -> BenchConfig:
        reg = self.registry
        dataset_opts = dict(m.dataset.model_extra or {})
        if self._plugin("datasets", m.dataset.name, dataset_opts, "dataset"):
            self.check_paths("dataset", dataset_opts)
        model_opts = dict(m.model.model_extra or {})
        model_ok = self._plugin("models", m.model.name, model_opts, "model")
        if model_ok:
            self.check_paths("model", model_opts)
        family = reg.get("models", m.model.name) if model_ok else None
        self._check_train(family, "train", m.model.train)
        self._check_train(family, "distill", m.model.distill)

        if family is not None and m.sampling.sampler not in family.samplers:
            self.fail("sampling.sampler", f"'{m.sampling.sampler}' is not a sampler of model '{family.name}'"
                      f"{did_you_mean(m.sampling.sampler, family.samplers)}; {valid_choices(family.samplers)}")

        # metrics
        metric_specs = []
        metric_tables = dict(m.metrics.model_extra or {})
        for i, name in enumerate(m.metrics.names):
            if not isinstance(name, str):
                self.fail(f"metrics.names[{i}]", f"expected a metric name, got {name!r}")
                continue
            opts = metric_tables.get(name, {})
            if not isinstance(opts, dict):
                self.fail(f"metrics.{name}", f"expected a table of options, got {opts!r}")
                continue
            if self._plugin("metrics", name, opts, f"metrics.{name}"):
                metric_specs.append(PluginSpec(name, opts))
                self.check_paths(f"metrics.{name}", opts)
        if len(set(m.metrics.names)) != len(m.metrics.names):
            self.fail("metrics.names", "a metric is listed twice")
        for key, value in metric_tables.items():
            if key in m.metrics.names:
                continue
            if key in self.registry.plugins["metrics"]:
                # a known metric left out of names (e.g. by --set metrics.names=[...]): harmless
                log.warning("%s: [metrics.%s] has options but is not in metrics.names; ignored", self.path, key)
            else:
                self.fail(f"metrics.{key}", f"options for a metric that is not in metrics.names"
                          f"{did_you_mean(key, m.metrics.names)}; listed: {', '.join(m.metrics.names)}")

        # executor, device
        exec_opts = dict(m.execution.model_extra or {})
        if self._plugin("executors", m.execution.executor, exec_opts, "execution"):
            self.check_paths("execution", exec_opts)
        if not self.results_from_cli:
            self.check_paths("execution.results_dir", m.execution.results_dir)
        dev = m.execution.device
        if dev not in DEVICES and not (dev.startswith("cuda:") and dev[5:].isdigit()):
            self.fail("execution.device", f"'{dev}' is not a device{did_you_mean(dev, DEVICES)}; valid: "
                      + ", ".join(f"'{d}'" for d in DEVICES) + ", 'cuda:N'")

        # plots
        for i, name in enumerate(m.plots.names):
            if name not in reg.plugins["plots"]:
                names = reg.names("plots")
                self.fail(f"plots.names[{i}]", f"unknown plot '{name}'{did_you_mean(name, names)}; {valid_choices(names)}")

        axes = self._axes(m, family)
        exclude = self._filters(m.matrix.get("exclude", []), "matrix.exclude", axes)
        include = self._filters(m.matrix.get("include", []), "matrix.include", axes, include=True, family=family)

        methods = set(axes.get("pruning_method", ["none"])) | {c.get("pruning_method", "none") for c in include}
        pruner_tables = {}
        for pname, opts in m.pruners.items():
            if not isinstance(opts, dict):
                self.fail(f"pruners.{pname}", f"expected a table of options, got {opts!r}")
                continue
            if self._plugin("pruners", pname, opts, f"pruners.{pname}"):
                pruner_tables[pname] = opts
                self.check_paths(f"pruners.{pname}", opts)
                if pname not in methods:
                    # e.g. --set matrix.pruning_method=["magnitude"] on a matrix with [pruners.structured]
                    log.warning("%s: [pruners.%s] has options but no cell uses that pruner; ignored", self.path, pname)

        return BenchConfig(
            path=self.path,
            raw=self.raw,
            benchmark=m.benchmark,
            dataset=PluginSpec(m.dataset.name, dataset_opts),
            model=PluginSpec(m.model.name, model_opts),
            train=dict(m.model.train),
            distill=dict(m.model.distill),
            sampling=m.sampling,
            axes=axes,
            exclude=exclude,
            include=include,
            metrics=metric_specs,
            pruners=pruner_tables,
            execution=m.execution,
            executor_options=exec_opts,
            plots=list(m.plots.names),
            registry=reg,
        )

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
            "executors": "executor", "plots": "plot"}[kind]


__all__ = ["BenchConfig", "PluginSpec", "load_matrix", "parse_override", "UserError", "options_dict"]
