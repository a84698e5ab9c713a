"""The resolved recipe as a frozen run configuration: ``recipe.config.train.lr``, ``recipe.config.data.views``.

Built once from the validated recipe (:class:`lnzoo.recipe.Recipe`): every section and value the schema
(:mod:`lnzoo.recipe_schema`) gives it, read-only. A key that is not there is an error naming its dotted
path (with a did-you-mean), never a silent ``None``; a component's table (``model.backbone``) gives its
registered ``name`` and its factory arguments (``options``).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from lnzoo.errors import did_you_mean


class Config(Mapping[str, Any]):
    """A read-only section of the resolved recipe: attribute access for its keys, nested sections wrapped."""

    __slots__ = ("_path", "_values")

    def __init__(self, values: Mapping[str, Any], path: str = ""):
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_values", {k: _wrap(v, f"{path}.{k}" if path else str(k))
                                             for k, v in values.items()})

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__") or key in ("_path", "_values"):  # copy, pickle and half-built objects ask these
            raise AttributeError(key)
        values = object.__getattribute__(self, "_values")
        if key in values:
            return values[key]
        where = f"{self._path}.{key}" if self._path else key
        raise AttributeError(f"the run configuration has no {where}{did_you_mean(key, list(values))}")

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"the run configuration is read-only (tried to set {self._path}.{key})")

    def __copy__(self) -> "Config":
        return self

    def __deepcopy__(self, memo: dict) -> "Config":
        return self  # read-only all the way down: a copy would be the same

    def __reduce__(self):
        return (Config, (plain(self), self._path))

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Config({self._path or 'recipe'}: {', '.join(self._values)})"

    @property
    def options(self) -> dict[str, Any]:
        """A component table's factory arguments: every key but ``name``, as plain values."""
        return {k: plain(v) for k, v in self._values.items() if k != "name"}


def _wrap(value: Any, path: str) -> Any:
    if isinstance(value, Mapping):
        return Config(value, path)
    if isinstance(value, list):  # a copy: the configuration never aliases the recipe's own lists
        return [_wrap(v, path) for v in value]
    return value


def plain(value: Any) -> Any:
    """A configuration value as plain dicts and lists (for JSON, TOML, or an API that wants a dict)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def as_config(section: Mapping[str, Any], path: str = "") -> Config:
    """A section as a :class:`Config` (a plain mapping, as a test or an older caller passes, is wrapped)."""
    return section if isinstance(section, Config) else Config(section, path)
