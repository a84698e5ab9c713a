"""Name -> factory registries with provenance (which distribution registered what)."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lnzoo.errors import PluginError, UnknownNameError

KINDS = ("backbone", "head", "fusion", "task")


@dataclass(frozen=True)
class Provenance:
    """Who registered an entry: the distribution, its version and the entry-point name."""

    distribution: str
    version: str
    plugin: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}"


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    provenance: Provenance
    overrides: Provenance | None = None

    def build(self, *args: Any, **kwargs: Any) -> Any:
        return self.factory(*args, **kwargs)

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The factory's keyword parameters, for checking recipe arguments before building."""
        return dict(inspect.signature(self.factory).parameters)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""


@dataclass
class Registry:
    """All entries of one kind, in registration order."""

    kind: str
    _entries: dict[str, Entry] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def check_add(self, entry: Entry, override: bool) -> Entry:
        """Return the entry to store, or raise if the name is taken and override was not asked."""
        old = self._entries.get(entry.name)
        if old is None:
            return entry
        if not override:
            raise PluginError(
                f"{self.kind} {entry.name!r} is registered twice: by {old.provenance} and by "
                f"{entry.provenance}; the second must pass override=True to replace it")
        return Entry(entry.kind, entry.name, entry.factory, entry.description, entry.provenance,
                     overrides=old.provenance)

    def put(self, entry: Entry) -> None:
        self._entries[entry.name] = entry


class Register:
    """The callable a hook receives: ``register(name, factory, description=None, *, override=False)``.

    Registrations are staged and committed only when every hook of the plugin succeeded, so a
    plugin that fails half-way leaves nothing behind.
    """

    def __init__(self, registry: Registry, provenance: Provenance, staged: list[tuple[Registry, Entry]]):
        self._registry, self._provenance, self._staged = registry, provenance, staged

    def __call__(self, name: str, factory: Callable[..., Any], description: str | None = None, *,
                 override: bool = False) -> None:
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"{self._registry.kind} name must be a non-empty string, got {name!r}")
        if self._registry.kind == "task" and not callable(factory):
            task = factory  # a task is data: registering the Task itself is allowed
            description = description or getattr(task, "description", None)
            factory = lambda: task  # noqa: E731
        if not callable(factory):
            raise PluginError(f"{self._registry.kind} {name!r}: factory must be callable, got {type(factory).__name__}")
        if any(r is self._registry and e.name == name for r, e in self._staged):
            raise PluginError(f"{self._registry.kind} {name!r} is registered twice by {self._provenance}")
        desc = description or _first_line(getattr(factory, "description", None)) or _first_line(factory.__doc__)
        entry = Entry(self._registry.kind, name, factory, desc, self._provenance)
        self._staged.append((self._registry, self._registry.check_add(entry, override)))
