"""Loading plugins and collecting what they register.

Plugins come from the ``leitai`` entry-point group (built-ins included) and, for tests and
quick experiments, from the comma-separated module names in ``LEITAI_PLUGINS``. A plugin
that fails to import, or whose hook raises, is skipped and reported; it never stops the core.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from . import hookspecs
from .errors import UsageError, unknown

GROUP = "leitai"
KINDS = ("methods", "tasks", "models", "executors", "side_corpora", "commands")
#: how a kind's members are named in messages
SINGULAR = {"methods": "method", "tasks": "task", "models": "model", "executors": "executor",
            "side_corpora": "side corpus", "commands": "command"}


@dataclass
class PluginInfo:
    name: str
    source: str  # "distribution version" or "LEITAI_PLUGINS"
    registered: dict = field(default_factory=dict)  # kind -> [names]
    error: str | None = None


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    methods: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    executors: dict = field(default_factory=dict)
    side_corpora: dict = field(default_factory=dict)
    commands: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)  # (kind, name) -> plugin name
    plugins: dict = field(default_factory=dict)  # plugin name -> PluginInfo

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]

    def get(self, kind: str, name: str, hint: str = ""):
        """The registered ``kind`` (``"methods"``, ``"tasks"``...) called ``name``; a one-line
        :class:`~suite.errors.UsageError` naming the known ones otherwise (``hint`` is added
        to that list, e.g. ``"or file:PATH for your own data"``)."""
        table = getattr(self, kind)
        if name not in table:
            raise unknown(SINGULAR[kind], name, table, hint)
        return table[name]

    def method(self, name: str, settings: dict | None = None):
        """The method called ``name``: a registered one, or a user's PEFT config for
        ``peft:PATH`` (or for a name whose ``settings`` hold ``peft_config = "PATH"``, as a TOML
        ``[method.NAME]`` table does). ``settings`` are the user's overrides in the shootout, or
        a cell's params in the cell's process. A one-line :class:`~suite.errors.UsageError` for
        an unknown name or an unusable config file."""
        path = (settings or {}).get("peft_config")
        if name.startswith("peft:") or path is not None:
            from .methods.peft_file import PeftFileMethod

            if name in self.methods:
                raise UsageError(f"method {name!r} is installed; give your PEFT config another name")
            return PeftFileMethod.from_name(name, path)
        return self.get("methods", name, hint="or peft:PATH for a PEFT config")

    def in_default_run(self, kind: str) -> list[str]:
        """The ``methods`` or ``tasks`` ``leitai run`` uses when none are named, sorted: every
        method unless it says ``default = False`` (one per family), the tasks marked ``default = True``."""
        return sorted(n for n, obj in getattr(self, kind).items() if getattr(obj, "default", kind == "methods"))

    def default(self, kind: str, none: str | None = None) -> str:
        """The name of the ``kind`` a plugin marks ``default = True`` (the first by name if
        several do); ``none`` when there is none, or a one-line UsageError if ``none`` is None."""
        marked = sorted(n for n, obj in getattr(self, kind).items() if getattr(obj, "default", False))
        if marked:
            return marked[0]
        if none is None:
            raise UsageError(f"no default {SINGULAR[kind]} is registered; name one (known: "
                             f"{', '.join(sorted(getattr(self, kind))) or 'none'})")
        return none


#: the installed plugins' entry points, read once by the warm-start server for every cell it forks
#: (scanning every installed distribution's metadata takes a second or more); None: read them now
ENTRY_POINTS: list | None = None


def installed_entry_points() -> list[tuple[str, str, metadata.EntryPoint]]:
    """``(name, distribution, entry point)`` of every installed plugin (none is imported)."""
    return [(ep.name, f"{ep.dist.name} {ep.dist.version}" if ep.dist else "?", ep)
            for ep in metadata.entry_points(group=GROUP)]


def _entry_points() -> list[tuple[str, str, callable]]:
    found = [(name, dist, ep.load) for name, dist, ep in
             (ENTRY_POINTS if ENTRY_POINTS is not None else installed_entry_points())]
    for module in filter(None, os.environ.get("LEITAI_PLUGINS", "").split(",")):
        module = module.strip()
        found.append((module, "LEITAI_PLUGINS", lambda m=module: importlib.import_module(m)))
    return found


def load_registry(extra: list | None = None) -> Registry:
    """Load every plugin and return what they registered.

    ``extra`` is a list of already-imported plugin objects (modules or classes with hook
    implementations), registered after the entry points; tests use it.
    """
    registry = Registry()
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    candidates = _entry_points() + [
        (getattr(p, "__name__", repr(p)), "in-process", lambda p=p: p) for p in extra or []
    ]
    for name, source, load in candidates:
        info = PluginInfo(name, source)
        registry.plugins[name] = info
        try:
            plugin = load()
            if pm.is_registered(plugin):
                info.error = "already registered under another name"
                continue
            pm.register(plugin, name=name)
        except Exception as e:  # a broken plugin must not take the core down
            info.error = f"{type(e).__name__}: {e}"
            continue
        for kind in KINDS:
            hook = getattr(pm.hook, f"register_{kind}")
            impls = [i for i in hook.get_hookimpls() if i.plugin_name == name]
            if not impls:
                continue
            names = []

            def register(obj, _kind=kind, _names=names, _plugin=name):
                _register(registry, _kind, obj, _plugin)
                _names.append(obj.name)

            try:
                for impl in impls:
                    impl.function(register=register)
            except Exception as e:
                info.error = f"register_{kind} raised {type(e).__name__}: {e}"
            if names:
                info.registered[kind] = names
    return registry


def _register(registry: Registry, kind: str, obj, plugin: str) -> None:
    name = getattr(obj, "name", None)
    if not name or not isinstance(name, str):
        raise ValueError(f"a registered {kind[:-1]} needs a string .name, got {obj!r}")
    table = getattr(registry, kind)
    if name in table:
        raise ValueError(f"{kind[:-1]} {name!r} is already registered by {registry.origin[(kind, name)]}")
    table[name] = obj
    registry.origin[(kind, name)] = plugin


_cached: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _cached
    if _cached is None:
        _cached = load_registry()
    return _cached
