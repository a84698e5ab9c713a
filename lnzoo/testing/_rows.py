"""What a plugin's tests are given: manifest rows for an input kind, and a host with the plugin loaded from its
source folder, installed or not."""
from __future__ import annotations

import importlib
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lnzoo.plugins import PluginHost, get_host


def make_row(cells: Mapping[str, Any], *, line: int = 2, manifest: str = "m.csv", base: str | Path | None = None,
             patient: str | None = None) -> Any:
    """One manifest row as lnzoo hands it to an input kind: ``cells`` (column -> text; None is an empty cell),
    ``origin`` ``"manifest:line"`` (what a problem names), ``base`` the folder relative paths resolve against
    (``row.cell_path(column)``), ``patient``."""
    from lnzoo.data.samples import Sample

    text = {str(k): "" if v is None else str(v) for k, v in cells.items()}
    return Sample({}, patient or f"P{line}", {}, f"{manifest}:{line}", cells=text,
                  base=None if base is None else Path(base))


def make_rows(cells: Iterable[Mapping[str, Any]], *, manifest: str = "m.csv", base: str | Path | None = None) -> list:
    """Rows of a manifest with a header line: the first on line 2."""
    return [make_row(c, line=i + 2, manifest=manifest, base=base) for i, c in enumerate(cells)]


def plugin_host(project: str | Path, *, builtins: bool = True) -> PluginHost:
    """A plugin host with the plugin whose project folder (``pyproject.toml``, sources under ``src/``) is
    ``project``, whether it is pip-installed or not: its sources go on ``sys.path`` and each module of its
    ``lnzoo`` entry points is loaded as the entry point would load it. ``builtins``: also every other installed
    plugin, lnzoo's built-ins included (its own entry points, if installed too, are left out); else only it."""
    from lnzoo.errors import PluginError
    from lnzoo.plugins import GROUP, _entry_points, load_plugins

    project = Path(project).resolve()
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    dist = meta["project"]["name"]
    modules = list(meta["project"].get("entry-points", {}).get(GROUP, {}).values())
    if not modules:
        raise PluginError(f"{project / 'pyproject.toml'}: no [project.entry-points.{GROUP}] table")
    where = meta.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {}).get("where")
    for folder in reversed([project / w for w in where] if where else
                           [project / "src" if (project / "src").is_dir() else project]):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    extra = [(dist, importlib.import_module(m.partition(":")[0])) for m in modules]

    def norm(name: str) -> str:
        return name.lower().replace("_", "-")
    others = [ep for ep in _entry_points() if not (ep.dist and norm(ep.dist.name) == norm(dist))] if builtins else []
    host = load_plugins(extra=extra, entry_points=others, strict=False)
    for info in host.plugins:
        if info.distribution == dist and info.error:
            raise PluginError(f"plugin {dist} ({info.value}): {info.error}")
    return host


def registered_names(kind: str, host: PluginHost | None = None) -> list[str]:
    """Names registered for ``kind`` ("backbone", "head", "fusion", "input", "task"), for pytest parametrisation."""
    return (host or get_host()).registry(kind).names()
