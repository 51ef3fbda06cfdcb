"""``bench new KIND NAME``: write a ready third-party plugin package.

The package (``diffbench-NAME/``) holds a ``pyproject.toml`` with the ``bench`` entry
point and a dependency on diffbench, the module ``diffbench_NAME`` (the hook and one
small working plugin of the kind), contract tests built on :mod:`harness.testing` and a
README. The files are rendered from the jinja2 templates in ``harness/templates/new/``;
the generated plugin imports only ``harness``'s public API and passes its contract
tests unmodified (``tests/test_scaffold.py`` checks every kind).
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError, did_you_mean, valid_choices

TEMPLATES = Path(__file__).resolve().parent / "templates" / "new"


@dataclass(frozen=True)
class KindSpec:
    """What ``bench new`` writes for one kind."""

    kind: str  # registry kind: "pruners"
    base: str  # harness base class
    suffix: str  # class name suffix: TaylorPruner
    contract: str  # harness.testing contract class
    cls_attr: str  # the contract's class attribute
    noun: str  # what the prose calls one: "pruner", "feature extractor"


KINDS: dict[str, KindSpec] = {
    "pruner": KindSpec("pruners", "Pruner", "Pruner", "PrunerContract", "pruner_cls", "pruner"),
    "metric": KindSpec("metrics", "Metric", "Metric", "MetricContract", "metric_cls", "metric"),
    "plot": KindSpec("plots", "Plot", "Plot", "PlotContract", "plot_cls", "plot"),
    "dataset": KindSpec("datasets", "Dataset", "Dataset", "DatasetContract", "dataset_cls", "dataset"),
    "features": KindSpec("features", "FeatureExtractor", "Features", "FeatureExtractorContract", "extractor_cls",
                          "feature extractor"),
}
#: plural, singular and registry spellings of the kinds
_ALIASES = {"pruners": "pruner", "pruning": "pruner", "metrics": "metric", "plots": "plot", "datasets": "dataset",
            "feature": "features", "extractor": "features", "extractors": "features"}
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
#: template (under templates/new/) -> file in the package; {module} and {kind} filled in
_FILES = {
    "pyproject.toml.j2": "pyproject.toml",
    "README.md.j2": "README.md",
    "__init__.py.j2": "{module}/__init__.py",
    "{kind}.py.j2": "{module}/{kind}.py",
    "test_contracts.py.j2": "tests/test_contracts.py",
}


def resolve_kind(kind: str) -> str:
    """``pruner`` (or ``pruners``) -> ``pruner``, ``extractor`` -> ``features``; a one-line error for anything else."""
    k = _ALIASES.get(kind, kind)
    if k not in KINDS:
        raise UserError(f"bench new {kind}: unknown kind{did_you_mean(kind, [*KINDS, *_ALIASES])}; "
                        f"{valid_choices(KINDS)}")
    return k


def check_name(kind: str, name: str) -> None:
    """A plugin name must be a lower-case Python identifier: it names the module and the plugin."""
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise UserError(
            f"bench new {kind} {name}: NAME must be a lower-case Python identifier (letters, digits, '_', "
            f"starting with a letter, not a keyword), e.g. 'taylor' or 'pixel_diversity'"
        )


def context(kind: str, name: str) -> dict[str, str]:
    """The template variables of a package for plugin ``name`` of ``kind``."""
    spec = KINDS[kind]
    camel = "".join(part.capitalize() for part in name.split("_") if part)
    return {
        "kind": kind,
        "noun": spec.noun,
        "registry_kind": spec.kind,
        "name": name,
        "module": f"diffbench_{name}",
        "distribution": f"diffbench-{name.replace('_', '-')}",
        "class_name": camel if camel.endswith(spec.suffix) else f"{camel}{spec.suffix}",
        "base": spec.base,
        "contract": spec.contract,
        "cls_attr": spec.cls_attr,
    }


def render(kind: str, name: str) -> dict[str, str]:
    """Every file of the package: relative path -> text (nothing written)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    ctx = context(kind, name)
    return {out.format(**ctx): env.get_template(template.format(kind=kind)).render(**ctx)
            for template, out in _FILES.items()}


def _check_unregistered(kind: str, name: str) -> None:
    """Refuse a name an installed plugin of the kind already has: installing would clash."""
    from harness.registry import build_registry

    registry = build_registry()
    spec = KINDS[kind]
    if name in registry.plugins[spec.kind]:
        info = registry.info(spec.kind, name)
        raise UserError(f"bench new {kind} {name}: a {kind} named '{name}' is already registered by {info.source}; "
                        f"choose another NAME")


def new_package(kind: str, name: str, parent: Path) -> Path:
    """Write the package ``parent/diffbench-NAME`` and return its folder.

    :raises UserError: unknown kind, invalid name, a name an installed plugin already has,
        or an existing target folder (nothing is written or overwritten then).
    """
    kind = resolve_kind(kind)
    check_name(kind, name)
    _check_unregistered(kind, name)
    folder = parent / context(kind, name)["distribution"]
    if folder.exists():
        raise UserError(f"bench new {kind} {name}: {folder} already exists; remove it or choose another --dir")
    files = render(kind, name)  # every template rendered before the first file is written
    folder.mkdir(parents=True)
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder
