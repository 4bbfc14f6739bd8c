"""Plugin discovery, blocking, failure isolation and listing (pluggy).

Discovery order: blocked names first, then the built-in modules of ``skipbench_plugins``, then
installed packages with entry points in group ``skipbench``, then drop-in ``*.py`` files from
plugin directories. Each plugin is imported and registered on its own, so one broken plugin is
reported and the rest carry on (``strict=True`` makes any failure fatal). Hooks are called one
implementation at a time, so every result is stamped with its provider and a plugin that raises
fails alone.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .specs import BlockBuilder, Measurement, Provider, UsageError, Variant, article, stamped

ENTRY_POINT_GROUP = hookspecs.PROJECT
BUILTIN_PACKAGE = "skipbench_plugins"
DISABLE_ENV = "SKIPBENCH_DISABLE_PLUGINS"
PLUGINS_DIR_ENV = "SKIPBENCH_PLUGINS_DIR"

# hook name -> the spec type its results must have
COLLECT_HOOKS = {
    "skipbench_register_builders": BlockBuilder,
    "skipbench_register_variants": Variant,
    "skipbench_register_measurements": Measurement,
}


class PluginError(UsageError):
    """A plugin failed while plugins are strict."""


@dataclass
class PluginInfo:
    """One discovered plugin: its names by every route, its status and what it contributes."""

    name: str
    source: str  # builtin | entrypoint | dropin
    module: str = ""
    distribution: str = ""
    version: str = ""
    status: str = "ok"  # ok | failed | blocked
    error: str = ""
    contributes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def provider(self) -> Provider:
        return Provider(self.name, self.distribution, self.version)

    def names(self) -> set[str]:
        """Every name a user may use for this plugin."""
        return {n for n in (self.name, self.module, self.distribution) if n}

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source, "module": self.module,
            "distribution": self.distribution, "version": self.version,
            "status": self.status, "error": self.error, "contributes": self.contributes,
        }


def _env_list(name: str) -> list[str]:
    value = os.environ.get(name, "")
    return [part.strip() for part in value.replace(",", os.pathsep).split(os.pathsep) if part.strip()]


class PluginSet:
    """A pluggy manager plus the record of every plugin it considered."""

    def __init__(self, disabled: Iterable[str] = (), strict: bool = False):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = set(disabled)
        self.strict = strict
        self.infos: list[PluginInfo] = []
        self._registered: dict[str, PluginInfo] = {}  # pluggy name -> the plugin registered under it

    # -- discovery --------------------------------------------------------------------------
    def _blocked(self, info: PluginInfo) -> bool:
        return any(_blocks(name, info) for name in self.disabled)

    def fail(self, info: PluginInfo, error: str) -> None:
        """Mark a plugin failed (fatal when strict); its contributions are dropped. The error is
        kept on one line (an exception's message may span several), as every listing shows it."""
        error = " ".join(error.split())
        info.status, info.error = "failed", error
        info.contributes = {}  # a failed plugin's contributions are dropped
        if self.strict:
            raise PluginError(f"plugin {info.name!r} ({info.source}) failed: {error}")

    def add(self, info: PluginInfo, load) -> None:
        """Load (import) and register one plugin, isolating any failure."""
        self.infos.append(info)
        if self._blocked(info):
            info.status = "blocked"
            return
        taken = self._registered.get(info.name)
        if taken is not None:
            self.fail(info, f"plugin name {info.name!r} is already taken by the {taken.source} plugin from "
                            f"{taken.module or taken.distribution}; rename one of them")
            return
        try:
            plugin = load()
        except (Exception, SystemExit) as exc:  # a broken plugin must not stop the others
            self.fail(info, f"import failed: {type(exc).__name__}: {exc}")
            return
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:
            self.fail(info, f"registration failed: {type(exc).__name__}: {exc}")
            return
        unknown = [hc.name for hc in self.pm.get_hookcallers(plugin) or [] if not hc.has_spec()]
        if unknown:
            self.pm.unregister(plugin)
            self.fail(info, f"unknown hook(s) {', '.join(unknown)} (misspelled?); known: {', '.join(COLLECT_HOOKS)}")
            return
        self._registered[info.name] = info

    def load_builtins(self) -> None:
        """Register every module of the built-in plugin package; a package that does not import
        (a broken checkout or install) is itself reported as a failed plugin, with the error."""
        try:
            package = importlib.import_module(BUILTIN_PACKAGE)
        except Exception as exc:
            info = PluginInfo(BUILTIN_PACKAGE, "builtin", module=BUILTIN_PACKAGE, distribution="skipbench",
                              version=_own_version())
            self.infos.append(info)
            if not self._blocked(info):
                self.fail(info, f"the built-in plugin package does not import: {type(exc).__name__}: {exc}")
            else:
                info.status = "blocked"
            return
        for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if mod.name.startswith("_"):
                continue
            modname = f"{BUILTIN_PACKAGE}.{mod.name}"
            self.add(PluginInfo(mod.name, "builtin", module=modname, distribution="skipbench",
                                version=_own_version()), lambda m=modname: importlib.import_module(m))

    def load_entrypoints(self) -> None:
        """Register installed packages' entry points in group ``skipbench``, one at a time."""
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(eps, key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, "entrypoint", module=ep.module,
                              distribution=dist.name if dist else "", version=dist.version if dist else "")
            self.add(info, ep.load)

    def load_dropins(self, directories: Iterable[str | os.PathLike]) -> None:
        """Register every ``*.py`` file of each directory as a plugin module."""
        for directory in directories:
            path = Path(directory)
            if not path.is_dir():
                raise UsageError(f"plugin directory {str(directory)!r} does not exist or is not a directory")
            for file in sorted(path.glob("*.py")):
                if file.name.startswith("_"):
                    continue
                modname = f"skipbench_dropin_{file.stem}"
                self.add(PluginInfo(file.stem, "dropin", module=modname, distribution=str(file)),
                         lambda f=file, m=modname: _import_file(m, f))

    # -- collection -------------------------------------------------------------------------
    def collect(self, hook_name: str) -> list:
        """Call one collect hook plugin by plugin; validate and stamp every result."""
        expected = COLLECT_HOOKS[hook_name]
        results = []
        # discovery order (built-ins, entry points, drop-ins), so that a later `replace = true` wins
        order = {name: index for index, name in enumerate(self._registered)}
        impls = sorted(getattr(self.pm.hook, hook_name).get_hookimpls(), key=lambda i: order.get(i.plugin_name, len(order)))
        for impl in impls:
            info = self._registered.get(impl.plugin_name)
            if info is None or info.status != "ok":
                continue
            try:
                produced, wrong = _call_collect_hook(impl.function, hook_name, expected)
            except Exception as exc:
                wrong = f"{hook_name} raised {type(exc).__name__}: {exc}"
            if wrong:
                self.fail(info, wrong)
                results = [r for r in results if r.provider != info.provider]
                continue
            stamped_items = [stamped(item, info.provider) for item in produced]
            info.contributes.setdefault(hook_name.removeprefix("skipbench_register_"), []).extend(
                item.name for item in stamped_items)
            results.extend(stamped_items)
        return results

    def failures(self) -> list[PluginInfo]:
        """The plugins that failed to import, register or contribute."""
        return [info for info in self.infos if info.status == "failed"]

    def unmatched_disabled(self) -> list[str]:
        """The names given to block plugins that match no plugin considered (misspelled?)."""
        return sorted(name for name in self.disabled if not any(_blocks(name, info) for info in self.infos))

    def warnings(self) -> list[str]:
        """One line per blocking name that matched no plugin, naming the plugins there are."""
        known = ", ".join(sorted({info.name for info in self.infos})) or "none"
        return [f"--disable-plugin/{DISABLE_ENV} {name!r} matches no plugin; known plugins: {known}"
                for name in self.unmatched_disabled()]


def _call_collect_hook(function, hook_name: str, expected: type) -> tuple[list, str]:
    """(results, "") of one collect hook implementation, or ([], why) when what it returned is
    not an iterable of `expected`. Collect hooks take no arguments (see hookspecs)."""
    returned = function()
    if returned is None:
        return [], ""
    if isinstance(returned, (str, bytes, dict, expected)) or not hasattr(returned, "__iter__"):
        return [], (f"{hook_name} returned {article(type(returned).__name__)}, not an iterable of "
                    f"{expected.__name__} (return a list, or yield them)")
    produced = list(returned)  # a generator's own exception propagates: the hook raised it
    for item in produced:
        if not isinstance(item, expected):
            return [], f"{hook_name} returned {article(type(item).__name__)}, not {article(expected.__name__)}"
    return produced, ""


def _blocks(name: str, info: PluginInfo) -> bool:
    """Whether a blocking name names the plugin: any of its names, or for an entry point its
    distribution as pip compares them (PEP 503: My_Plug blocks my-plug)."""
    if name in info.names():
        return True
    return info.source == "entrypoint" and bool(info.distribution) and _canonical(name) == _canonical(info.distribution)


def _canonical(name: str) -> str:
    """A distribution name normalized the way pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _own_version() -> str:
    from . import __version__

    return __version__


def _import_file(modname: str, file: Path):
    spec = importlib.util.spec_from_file_location(modname, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    return module


def discover(disabled: Iterable[str] = (), plugin_dirs: Iterable[str] = (), strict: bool = False,
             builtins: bool = True, entrypoints: bool = True, env: bool = True) -> PluginSet:
    """Discover plugins in DESIGN order; `env` reads SKIPBENCH_DISABLE_PLUGINS / SKIPBENCH_PLUGINS_DIR."""
    disabled = list(disabled) + (_env_list(DISABLE_ENV) if env else [])
    dirs = list(plugin_dirs) + (_env_list(PLUGINS_DIR_ENV) if env else [])
    plugins = PluginSet(disabled, strict)
    if builtins:
        plugins.load_builtins()
    if entrypoints:
        plugins.load_entrypoints()
    plugins.load_dropins(dirs)
    return plugins
