"""Matrix files: load TOML, apply ``--set`` overrides, validate, resolve plugins.

Every problem is found before any work starts and reported as one line per problem:
``FILE: key.path: what is wrong; what is valid``. :func:`load_matrix` raises a
:class:`harness.errors.ConfigError` whose message holds those lines.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from harness.errors import ConfigError
from harness.registry import Registry

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
    from harness.validation import Validator

    return Validator(path, raw, registry, results_from_cli=results_dir is not None).run()


__all__ = ["BenchConfig", "PluginSpec", "load_matrix", "parse_override"]
