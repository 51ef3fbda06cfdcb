"""Plugin options: listing, validating and dumping the ``Options`` of a plugin class.

A plugin declares its options as a dataclass or a pydantic model ``Options``; the
harness validates the matrix file's table against it before any work starts (one-line
errors naming the key path and the valid choices), lists it in ``bench list`` and
hashes its dump into cache keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from harness.errors import ConfigError, did_you_mean


def option_fields(options_cls: Any) -> list[tuple[str, str, Any, str]]:
    """List ``(name, type, default, description)`` of an ``Options`` class."""
    if options_cls is None:
        return []
    if dataclasses.is_dataclass(options_cls):
        out = []
        for f in dataclasses.fields(options_cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            else:
                default = "(required)"
            typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            out.append((f.name, typ, default, f.metadata.get("help", "")))
        return out
    fields = getattr(options_cls, "model_fields", None)
    if fields is not None:  # pydantic v2
        out = []
        for name, info in fields.items():
            default = "(required)" if info.is_required() else info.get_default(call_default_factory=True)
            ann = info.annotation
            typ = getattr(ann, "__name__", str(ann)).replace("typing.", "")
            out.append((name, typ, default, info.description or ""))
        return out
    raise TypeError(f"Options of unsupported type {options_cls!r}: use a dataclass or pydantic model")


def validate_options(cls: type, options: dict[str, Any], where: str) -> Any:
    """Validate ``options`` against ``cls.Options``; raise a one-line ConfigError.

    :param where: the key path in the matrix file, e.g. ``"pruners.iterative"``.
    """
    options_cls = getattr(cls, "Options", None)
    if options_cls is None:
        if options:
            key = next(iter(options))
            raise ConfigError(f"{where}.{key}: plugin '{cls.name}' takes no options")
        return None
    names = [f[0] for f in option_fields(options_cls)]
    for key in options:
        if key not in names:
            valid = ", ".join(names) or "(none)"
            raise ConfigError(
                f"{where}.{key}: unknown option of '{cls.name}'{did_you_mean(key, names)}; valid: {valid}"
            )
    if dataclasses.is_dataclass(options_cls):
        missing = [n for n, _t, d, _h in option_fields(options_cls) if d == "(required)" and n not in options]
        if missing:
            raise ConfigError(f"{where}.{missing[0]}: required option of '{cls.name}' is missing")
        hints = _dataclass_types(options_cls)
        for key, value in options.items():
            _check_type(value, hints.get(key), f"{where}.{key}")
        try:
            return options_cls(**options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    try:
        return options_cls(**options)
    except Exception as exc:  # pydantic.ValidationError, kept generic to avoid the import
        errors = getattr(exc, "errors", None)
        if callable(errors):
            err = errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            raise ConfigError(f"{where}.{loc}: {err.get('msg')} (got {err.get('input')!r})") from None
        raise ConfigError(f"{where}: {exc}") from None


def _dataclass_types(options_cls: type) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(options_cls)
    except Exception:  # pragma: no cover - unresolvable forward refs
        return {}


def _check_type(value: Any, hint: Any, where: str) -> None:
    """Light type check for dataclass options (pydantic Options get full validation)."""
    import typing

    if hint is None or hint is Any:
        return
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = typing.get_args(hint)
        errors = []
        for arg in args:
            try:
                _check_type(value, arg, where)
                return
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{where}: {value!r} is not valid{did_you_mean(value, choices)}; valid: "
                + ", ".join(repr(c) for c in choices)
            )
        return
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected None, got {value!r}")
        return
    base = origin or hint
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base in (list, tuple, Sequence):
        ok = isinstance(value, (list, tuple))
    elif isinstance(base, type):
        ok = isinstance(value, base)
    else:
        ok = True
    if not ok:
        tname = getattr(base, "__name__", str(base))
        raise ConfigError(f"{where}: expected {tname}, got {type(value).__name__} {value!r}")


def options_dict(options: Any) -> dict[str, Any]:
    """A plugin's options (dataclass, pydantic model or mapping) as a plain dict, e.g. for a cache key."""
    if options is None:
        return {}
    if dataclasses.is_dataclass(options):
        return dataclasses.asdict(options)
    dump = getattr(options, "model_dump", None)
    if dump is not None:
        return dump()
    return dict(options)


#: the matrix-file table of each training stage -> the stage's name in error messages
TRAIN_STAGES = {"train": "training", "distill": "distillation"}


def stage_options(family: Any, stage: str, table: dict[str, Any]) -> Any:
    """Validate the ``[model.<stage>]`` table against the family's declared options class.

    :param stage: ``"train"`` or ``"distill"``.
    :returns: the options object, or None for a family without that stage (and no table).
    :raises ConfigError: one line naming ``model.<stage>``: an unknown key, a bad value,
        or a table given to a family that has no such stage.
    """
    where = f"model.{stage}"
    options_cls = family.train_options if stage == "train" else family.distill_options
    if options_cls is None:
        if table:
            key = f"{where}.{next(iter(table))}"
            raise ConfigError(f"{key}: model '{family.name}' has no {TRAIN_STAGES[stage]} stage; remove [{where}]")
        return None
    # validate_options reads a plugin's ``name`` (for messages) and ``Options``
    holder = type("StageOptions", (), {"name": f"{family.name} {TRAIN_STAGES[stage]}", "Options": options_cls})
    return validate_options(holder, dict(table), where)
