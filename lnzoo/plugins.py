"""Discover and load plugins from the ``lnzoo`` entry-point group, one at a time, recording errors.

lnzoo's own components come through the same entry points (distribution ``lnzoo``), so built-in
and third-party entries are loaded, checked and listed alike. Built-ins load first so a third
party may replace one with ``override=True``.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import pluggy

from lnzoo import hookspecs
from lnzoo.errors import PluginError
from lnzoo.registry import KINDS, Entry, Provenance, Register, Registry

GROUP = "lnzoo"
STRICT_ENV = "LNZOO_STRICT_PLUGINS"
HOOKS = {kind: f"lnzoo_register_{kind}s" for kind in KINDS}


@dataclass
class PluginInfo:
    """One entry point of the group: where it came from, what it registered, why it failed."""

    name: str
    value: str
    distribution: str
    version: str
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.value, "distribution": self.distribution,
                "version": self.version, "registered": self.registered, "error": self.error}


@dataclass
class PluginHost:
    """The loaded plugins and the four registries they filled."""

    registries: dict[str, Registry]
    plugins: list[PluginInfo]

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def get(self, kind: str, name: str) -> Entry:
        return self.registries[kind].get(name)

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]

    @property
    def overrides(self) -> list[str]:
        """One line per component that a distribution replaced in another distribution's name."""
        return [f"{kind} {entry.name!r} from {entry.provenance} replaces the one from {entry.overrides}"
                for kind, registry in self.registries.items() for entry in registry
                if entry.overrides and entry.overrides.distribution != entry.provenance.distribution]


def strict_mode() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _entry_points() -> list[md.EntryPoint]:
    seen, eps = set(), []
    for ep in md.entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist else "?"
        key = (dist.lower().replace("_", "-"), ep.name)
        if key in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(key)
        eps.append(ep)
    # built-ins first, then third parties in a stable order
    return sorted(eps, key=lambda e: (e.dist is None or e.dist.name != "lnzoo", e.dist.name if e.dist else "", e.name))


def _describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    what = f"sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
    return f"{what}{where}"


def load_plugins(extra: list[tuple[str, object]] | None = None, strict: bool | None = None,
                 entry_points: list[md.EntryPoint] | None = None) -> PluginHost:
    """Load every plugin of the group (plus ``extra`` (name, module) pairs, used by tests).

    A plugin that fails to import, or whose hook raises, is recorded and skipped; in strict mode
    (``LNZOO_STRICT_PLUGINS=1``) the first failure raises :class:`PluginError` instead.
    """
    strict = strict_mode() if strict is None else strict
    registries = {kind: Registry(kind) for kind in KINDS}
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []

    candidates: list[tuple[PluginInfo, Any]] = []
    for ep in (_entry_points() if entry_points is None else entry_points):
        dist = ep.dist.name if ep.dist else "unknown"
        version = ep.dist.version if ep.dist else "?"
        info = PluginInfo(ep.name, ep.value, dist, version)
        infos.append(info)
        try:
            candidates.append((info, ep.load()))
        except (Exception, SystemExit) as exc:  # a broken plugin must not take the others down; Ctrl-C stops all
            info.error = f"failed to import: {_describe(exc)}"
    for name, module in extra or []:
        info = PluginInfo(name, getattr(module, "__name__", repr(module)), name, "local")
        infos.append(info)
        candidates.append((info, module))

    for info, module in candidates:
        try:
            _load_one(pm, registries, info, module)
        except (Exception, SystemExit) as exc:
            info.error = _describe(exc) if not isinstance(exc, PluginError) else str(exc)
        if info.error is None and not any(info.registered.values()):
            info.registered = {}
    if strict:
        for info in infos:
            if info.error:
                raise PluginError(f"plugin {info.name!r} from {info.distribution} {info.version}: {info.error} "
                                  f"({STRICT_ENV} is set, so this is fatal)")
    return PluginHost(registries, infos)


def _load_one(pm: pluggy.PluginManager, registries: dict[str, Registry], info: PluginInfo, module: Any) -> None:
    plugin_name = f"{info.distribution}:{info.name}"
    try:
        pm.register(module, name=plugin_name)
        pm.check_pending()  # an impl named after no hook (a typo) is an error, not silence
    except Exception:
        if pm.is_registered(module):
            pm.unregister(module)
        raise
    provenance = Provenance(info.distribution, info.version, info.name)
    staged: list[tuple[Registry, Entry]] = []
    for kind, hook_name in HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue
            impl.function(register=Register(registries[kind], provenance, staged))
    for registry, entry in staged:  # commit only when every hook of this plugin succeeded
        registry.put(entry)
        info.registered.setdefault(registry.kind, []).append(entry.name)


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, loaded on first use."""
    global _HOST
    if _HOST is None:
        _HOST = load_plugins()
    return _HOST


def set_host(host: PluginHost | None) -> None:
    """Replace the process-wide host (tests, or a caller that loaded plugins itself)."""
    global _HOST
    _HOST = host
