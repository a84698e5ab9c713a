"""Name -> factory registries with provenance (which distribution registered what)."""
from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from lnzoo.errors import PluginError, UnknownNameError

KINDS = ("backbone", "head", "fusion", "task", "input", "tracker", "pretrainer")


@dataclass(frozen=True)
class Provenance:
    """Who registered an entry: the distribution, its version and the entry-point name."""

    distribution: str
    version: str
    plugin: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}"


def _split_target(target: str) -> tuple[str, str] | None:
    module, sep, attr = target.partition(":")
    names = [*module.split("."), *attr.split(".")]
    return (module, attr) if sep and all(n.isidentifier() for n in names) else None


@dataclass(frozen=True)
class Entry:
    """One registration; ``target`` is the factory or a ``"module:attr"`` string imported on first use."""

    kind: str
    name: str
    target: Callable[..., Any] | str
    description: str
    provenance: Provenance
    overrides: Provenance | None = None
    default: bool = False

    @property
    def factory(self) -> Callable[..., Any]:
        if not isinstance(self.target, str):
            return self.target
        module, _, attr = self.target.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            if not callable(obj):
                raise TypeError(f"a {type(obj).__name__}, not a callable factory")
        except Exception as exc:  # ImportError, AttributeError, or the module failing to import
            raise PluginError(f"{self.kind} {self.name!r} registered by {self.provenance}: cannot load its "
                              f"factory {self.target!r} ({type(exc).__name__}: {exc})") from None
        return obj

    def identity(self) -> dict[str, Any]:
        """Who provides this entry, as a checkpoint records it: the distribution and its version, the factory's
        qualified name, and the sha256 of the factory's source where Python can read it."""
        factory = self.factory
        name = self.target if isinstance(self.target, str) else \
            f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', type(factory).__name__)}"
        try:
            source = inspect.getsource(factory)
        except (OSError, TypeError):
            source = None
        return {"kind": self.kind, "name": self.name, "distribution": self.provenance.distribution,
                "version": self.provenance.version, "factory": name,
                "definition_sha256": hashlib.sha256(source.encode("utf-8")).hexdigest() if source else None}

    def build(self, *args: Any, **kwargs: Any) -> Any:
        return self.factory(*args, **kwargs)

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The factory's parameters (a class: its ``__init__`` less ``self``), for checking recipe arguments."""
        try:
            return dict(inspect.signature(self.factory, eval_str=True).parameters)
        except Exception:  # an annotation that does not evaluate here: keep it as a string
            return dict(inspect.signature(self.factory).parameters)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""


@dataclass
class Registry:
    """All entries of one kind, in registration order."""

    kind: str
    _entries: dict[str, Entry] = field(default_factory=dict)
    default: str | None = None  # the name a recipe gets when it names none of this kind

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
        if entry.default and self.default not in (None, entry.name) and not override:
            raise PluginError(
                f"{entry.provenance} declares {self.kind} {entry.name!r} the default, but "
                f"{self._entries[self.default].provenance} already made {self.default!r} the default; "
                f"pass override=True to replace it")
        old = self._entries.get(entry.name)
        if old is None:
            return entry
        if not override:
            raise PluginError(
                f"{self.kind} {entry.name!r} is registered twice: by {old.provenance} and by "
                f"{entry.provenance}; the second must pass override=True to replace it")
        return replace(entry, overrides=old.provenance)

    def put(self, entry: Entry) -> None:
        self._entries[entry.name] = entry
        if entry.default:
            self.default = entry.name


class Register:
    """The callable a hook receives: ``register(name, factory, description=None, *, override=False, default=False)``.

    See :mod:`lnzoo.hookspecs`. Registrations are staged and committed only when every hook of the
    plugin succeeded, so a plugin that fails half-way leaves nothing behind.
    """

    def __init__(self, registry: Registry, provenance: Provenance, staged: list[tuple[Registry, Entry]]):
        self._registry, self._provenance, self._staged = registry, provenance, staged

    def __call__(self, name: str, factory: Callable[..., Any] | str, description: str | None = None, *,
                 override: bool = False, default: bool = False) -> None:
        kind = self._registry.kind
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"{kind} name must be a non-empty string, got {name!r}")
        if isinstance(factory, str):
            if _split_target(factory) is None:
                raise PluginError(f"{kind} {name!r} from {self._provenance}: factory string {factory!r} "
                                  f"must read \"package.module:attr\"")
        elif kind == "task" and not callable(factory):
            task = factory  # a task is data: registering the Task itself is allowed
            description = description or getattr(task, "description", None)
            factory = lambda: task  # noqa: E731
        elif not callable(factory):
            raise PluginError(f"{kind} {name!r}: factory must be callable, got {type(factory).__name__}")
        mine = [e for r, e in self._staged if r is self._registry]
        if any(e.name == name for e in mine):
            raise PluginError(f"{kind} {name!r} is registered twice by {self._provenance}")
        if default and any(e.default for e in mine):
            raise PluginError(f"{self._provenance} declares two default {kind}s")
        desc = description or ("" if isinstance(factory, str) else
                               _first_line(getattr(factory, "description", None)) or _first_line(factory.__doc__))
        entry = Entry(kind, name, factory, desc, self._provenance, default=default)
        self._staged.append((self._registry, self._registry.check_add(entry, override)))
