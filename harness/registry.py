"""Plugin discovery: the pluggy manager and the registry of plugin classes.

Built-in plugins reach the core the same way third-party ones do: through the ``bench``
entry-point group. ``DIFFBENCH_BLOCK_PLUGINS`` (comma-separated entry-point names or
distribution names) keeps plugins from loading. A third-party plugin that fails to
import is a load error (a warning; the other plugins still work), but a built-in never
vanishes silently: when another module named ``plugins`` shadows diffbench's, loading
stops with a one-line :class:`~harness.errors.UserError` naming that module's path.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from harness import hookspecs
from harness.base import PLUGIN_KINDS, Dataset, Executor, Metric, ModelFamily, Plot, Plugin, Pruner
from harness.errors import PluginError, UserError, did_you_mean, valid_choices
from harness.features import FeatureExtractor

log = logging.getLogger(__name__)

BLOCK_ENV = "DIFFBENCH_BLOCK_PLUGINS"
#: the distribution whose entry points are the built-ins
BUILTIN_DIST = "diffbench"

#: the base class every plugin of a kind subclasses
KIND_BASES: dict[str, type[Plugin]] = {"datasets": Dataset, "models": ModelFamily, "pruners": Pruner, "metrics": Metric,
                                       "features": FeatureExtractor, "executors": Executor, "plots": Plot}
_HOOK_OF_KIND = {kind: f"bench_register_{kind}" for kind in PLUGIN_KINDS}


@dataclass
class PluginInfo:
    """Where a plugin class comes from."""

    kind: str
    name: str
    cls: type[Plugin]
    module: str
    distribution: str
    version: str
    #: name of the plugin (entry point) whose hook registered the class
    plugin: str = ""

    @property
    def source(self) -> str:
        return f"{self.module} ({self.distribution} {self.version})"


@dataclass
class Registry:
    """Plugin classes by kind and name, with their sources."""

    plugins: dict[str, dict[str, PluginInfo]] = field(default_factory=lambda: {k: {} for k in PLUGIN_KINDS})
    load_errors: list[str] = field(default_factory=list)

    def add(self, kind: str, cls: type, module: str, distribution: str, version: str, plugin: str = "") -> None:
        base = KIND_BASES[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"plugin {module}: {cls!r} registered as one of {kind} must subclass harness.base.{base.__name__}"
            )
        name = getattr(cls, "name", "")
        if not name or not isinstance(name, str):
            raise PluginError(f"plugin {module}: {cls.__name__} has no class attribute 'name'")
        info = PluginInfo(kind, name, cls, module, distribution, version, plugin)
        existing = self.plugins[kind].get(name)
        if existing is not None and existing.cls is not cls:
            raise PluginError(
                f"{kind} name clash: '{name}' is registered by {existing.source} and by {info.source}"
            )
        self.plugins[kind][name] = info

    def names(self, kind: str) -> list[str]:
        return sorted(self.plugins[kind])

    def get(self, kind: str, name: str, where: str = "") -> type[Plugin]:
        """The class registered as ``name``; a one-line error with did-you-mean otherwise."""
        try:
            return self.plugins[kind][name].cls
        except KeyError:
            prefix = f"{where}: " if where else ""
            names = self.names(kind)
            raise PluginError(
                f"{prefix}unknown {kind[:-1] if kind.endswith('s') else kind} '{name}'"
                f"{did_you_mean(name, names)}; {valid_choices(names)}"
            ) from None

    def info(self, kind: str, name: str) -> PluginInfo:
        return self.plugins[kind][name]


def _plugins_location() -> list[Path]:
    """Folder(s) of the module that ``import plugins`` finds in this process (may be none)."""
    module = sys.modules.get("plugins")
    if module is not None:
        paths = list(getattr(module, "__path__", None) or [])
        if not paths and getattr(module, "__file__", None):
            paths = [str(Path(module.__file__).parent)]
    else:
        spec = importlib.util.find_spec("plugins")
        paths = list(spec.submodule_search_locations or []) if spec is not None else []
    return [Path(p).resolve() for p in paths]


def check_builtins_importable(ep: md.EntryPoint, error: BaseException | None) -> None:
    """Stop with a one-line UserError when a module named ``plugins`` shadows the built-ins.

    diffbench installs ``plugins`` next to ``harness``; any other ``plugins`` earlier on
    ``sys.path`` (a project folder, another package) hides them, and without this check
    every built-in would vanish behind a warning. ``error`` is what loading ``ep`` raised
    (None if it loaded): a built-in that fails to import without being shadowed is a bug,
    re-raised with its traceback.
    """
    expected = (Path(__file__).resolve().parent.parent / "plugins").resolve()
    found = _plugins_location()
    if expected in found:
        if error is not None:
            raise error
        return
    where = ", ".join(str(p) for p in found) or "(nowhere)"
    raise UserError(
        f"diffbench's built-in plugins cannot be imported: the module 'plugins' at {where} shadows {expected} "
        f"(entry point '{ep.name}' = {ep.value}); rename that package or take its folder off sys.path / PYTHONPATH"
    ) from error


def _blocked() -> set[str]:
    raw = os.environ.get(BLOCK_ENV, "")
    return {item.strip() for item in raw.split(",") if item.strip()}


def get_plugin_manager(load_entrypoints: bool = True, extra: list[Any] | None = None) -> pluggy.PluginManager:
    """Create a fresh plugin manager with the ``bench`` hooks and entry points loaded.

    :param load_entrypoints: load plugins of the ``bench`` entry-point group (the
        built-ins are registered that way too).
    :param extra: plugin objects (modules or instances) to register in addition, e.g. in
        tests.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = _blocked()
    if load_entrypoints:
        for ep in md.entry_points(group=hookspecs.PROJECT):
            dist = ep.dist.name if ep.dist is not None else "?"
            if ep.name in blocked or dist in blocked or ep.value in blocked:
                log.info("plugin %s (%s) blocked by %s", ep.name, dist, BLOCK_ENV)
                continue
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break the CLI
                if dist == BUILTIN_DIST:
                    check_builtins_importable(ep, exc)
                msg = f"plugin entry point '{ep.name}' ({ep.value}, {dist}) failed to import: {type(exc).__name__}: {exc}"
                log.warning(msg)
                pm._diffbench_load_errors = [*getattr(pm, "_diffbench_load_errors", []), msg]  # type: ignore[attr-defined]
                continue
            if dist == BUILTIN_DIST:  # imported, but maybe a same-named module from elsewhere
                check_builtins_importable(ep, None)
            pm.register(plugin, name=ep.name)
            pm._diffbench_dists = {**getattr(pm, "_diffbench_dists", {}), ep.name: ep.dist}  # type: ignore[attr-defined]
    for i, plugin in enumerate(extra or []):
        pm.register(plugin, name=getattr(plugin, "__name__", f"extra-{i}"))
    pm.check_pending()
    return pm


def build_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """Collect every registered plugin class from the ``bench_register_*`` hooks."""
    pm = pm or get_plugin_manager()
    registry = Registry(load_errors=list(getattr(pm, "_diffbench_load_errors", [])))
    dists = getattr(pm, "_diffbench_dists", {})
    for kind, hook_name in _HOOK_OF_KIND.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = pm.get_name(impl.plugin) or "?"
            module = getattr(impl.plugin, "__name__", type(impl.plugin).__name__)
            dist = dists.get(plugin_name)
            dist_name = dist.name if dist is not None else "(not installed)"
            version = dist.version if dist is not None else "-"

            def register(cls: type, _m: str = module, _d: str = dist_name, _v: str = version, _k: str = kind,
                         _p: str = plugin_name) -> None:
                registry.add(_k, cls, getattr(cls, "__module__", _m), _d, _v, _p)

            try:
                impl.function(register)
            except UserError:  # a name clash: an error the user must resolve
                raise
            except Exception as exc:  # a broken third-party hook must not break every command
                msg = f"plugin '{plugin_name}' ({module}, {dist_name}): {hook_name} failed: {type(exc).__name__}: {exc}"
                log.warning(msg)
                registry.load_errors.append(msg)
    return registry


def plugin_summary(pm: pluggy.PluginManager, registry: Registry) -> list[dict[str, Any]]:
    """One dict per loaded plugin module: name, distribution, version, what it registers."""
    dists = getattr(pm, "_diffbench_dists", {})
    rows = []
    for name, plugin in pm.list_name_plugin():
        module = getattr(plugin, "__name__", repr(plugin))
        # what this plugin's hooks registered (a class may live in another module, e.g.
        # plugins.datasets registers plugins.models.synthetic.SyntheticDataset)
        provides = [f"{kind}:{info.name}" for kind, infos in registry.plugins.items()
                    for info in infos.values() if info.plugin == name]
        dist = dists.get(name)
        rows.append(
            {
                "entry_point": name,
                "module": module,
                "distribution": dist.name if dist is not None else "-",
                "version": dist.version if dist is not None else "-",
                "provides": sorted(provides),
            }
        )
    return rows
