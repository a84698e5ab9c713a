"""The resolved recipe as a frozen run configuration: ``recipe.config.train.lr``, ``recipe.config.data.views``.

Built once from the validated recipe (:class:`lnzoo.recipe.Recipe`): every section and value the schema
(:mod:`lnzoo.recipe_schema`) gives it, read-only. Attribute access to a key that is not there is an error
naming its dotted path (with a did-you-mean), never a silent ``None``. Sections are read-only dicts and
lists read-only lists, so JSON, TOML and a plugin factory that checks ``isinstance(x, dict)`` take them
as they are.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lnzoo.errors import did_you_mean


def _read_only(self, *args, **kwargs):
    raise TypeError(f"the run configuration is read-only ({getattr(self, '_path', '') or 'recipe'}); change the "
                    "recipe (Recipe.set) instead")


class Config(dict):
    """A read-only section of the resolved recipe: attribute access for its keys, nested sections wrapped."""

    __slots__ = ("_path",)

    def __init__(self, values: Mapping[str, Any], path: str = ""):
        dict.__init__(self, {k: _wrap(v, f"{path}.{k}" if path else str(k)) for k, v in values.items()})
        object.__setattr__(self, "_path", path)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__") or key == "_path":  # copy, pickle and half-built objects ask these
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            where = f"{self._path}.{key}" if self._path else key
            raise AttributeError(f"the run configuration has no {where}{did_you_mean(key, list(self))}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"the run configuration is read-only (tried to set {self._path}.{key})")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def __copy__(self) -> "Config":
        return self

    def __deepcopy__(self, memo: dict) -> "Config":
        return self  # read-only all the way down: a copy would be the same

    def __reduce__(self):
        return (Config, (plain(self), self._path))

    def __repr__(self) -> str:
        return f"Config({self._path or 'recipe'}: {', '.join(self)})"


class FrozenList(list):
    """A read-only list of the run configuration (equal to the list it was made from)."""

    __setitem__ = __delitem__ = __iadd__ = __imul__ = append = extend = insert = pop = remove = clear = sort = \
        reverse = _read_only

    def __deepcopy__(self, memo: dict) -> "FrozenList":
        return self

    def __reduce__(self):
        return (FrozenList, (list(self),))


def _wrap(value: Any, path: str) -> Any:
    if isinstance(value, Mapping):
        return Config(value, path)
    if isinstance(value, (list, tuple)):
        return FrozenList(_wrap(v, path) for v in value)
    return value


def plain(value: Any) -> Any:
    """A configuration value as plain, mutable dicts and lists (a copy the caller may change)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def component_options(table: Mapping[str, Any]) -> dict[str, Any]:
    """A component table's factory arguments (every key but ``name``), as plain values."""
    return {k: plain(v) for k, v in table.items() if k != "name"}


def as_config(section: Mapping[str, Any], path: str = "") -> Config:
    """A section as a :class:`Config` (a plain mapping, as a test or an older caller passes, is wrapped)."""
    return section if isinstance(section, Config) else Config(section, path)
