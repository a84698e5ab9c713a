"""The commands that show what is installed: ``lnzoo plugins`` and the ``list-*`` commands."""
from __future__ import annotations

import json
from typing import Callable

from rich.markup import escape
from rich.table import Table

from lnzoo.cli._common import Command, JsonOpt, app, console, err, guarded, plugin_host


def _list(kind: str, as_json: bool) -> None:
    registry = plugin_host().registry(kind)
    if kind == "task":
        tasks = [(e, e.build()) for e in registry]
        rows = [{"name": e.name, "description": e.description, "classes": list(t.classes),
                 "aliases": {c: list(a) for c, a in t.aliases.items()}, "passes_on": t.passes_on,
                 "distribution": e.provenance.distribution, "version": e.provenance.version} for e, t in tasks]
    else:
        rows = [{"name": e.name, "description": e.description, "distribution": e.provenance.distribution,
                 "version": e.provenance.version, "default": e.name == registry.default,
                 "overrides": str(e.overrides) if e.overrides else None} for e in registry]
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"{kind}s ({len(rows)})", title_justify="left")
    table.add_column("name", style="bold cyan")
    if kind == "task":
        table.add_column("classes")
        table.add_column("aliases", overflow="fold")
    table.add_column("description")
    table.add_column("source")
    for r in rows:
        cells = [r["name"] + (" (default)" if r.get("default") else "")] + ([", ".join(r["classes"]), "\n".join(
            f"{c}: {', '.join(a)}" for c, a in r["aliases"].items())] if kind == "task" else [])
        table.add_row(*cells, r["description"], f"{r['distribution']} {r['version']}")
    console.print(table)


LISTS = {"backbone": "the registered backbones ('timm' takes any timm model name)",
         "head": "the registered task heads; the default is marked",
         "fusion": "the registered view-fusion strategies; the default is marked",
         "task": "the registered tasks with their classes and the label aliases (e.g. 良性, 肿大) each accepts",
         "input": "the registered input kinds besides the image views (data.inputs.NAME = {name = KIND, ...})",
         "tracker": "the registered experiment trackers (train.track = [NAME, ...])",
         "pretrainer": "the registered self-supervised pretraining methods (pretrain.method = NAME)"}


def _lister(kind: str, what: str) -> Callable:
    def command(as_json: JsonOpt = False) -> None:
        _list(kind, as_json)
    command.__name__ = f"list_{kind}s"
    command.__doc__ = f"List {what}.\n\n    Example: lnzoo list-{kind}s --json\n    "
    return command


for _kind, _what in LISTS.items():
    app.command(cls=Command, name=f"list-{_kind}s")(guarded(_lister(_kind, _what)))


@app.command(cls=Command, name="plugins")
@guarded
def plugins(as_json: JsonOpt = False) -> None:
    """List every plugin: distribution, version, what it registered, its load error if any.

    Example: lnzoo plugins --json
    """
    loaded = plugin_host()
    if as_json:
        print(json.dumps([{**p.as_dict(), "warnings": [w for w in loaded.overrides
                                                       if f"from {p.distribution} " in w]}
                          for p in loaded.plugins], ensure_ascii=False, indent=2))
        return
    table = Table(title=f"plugins ({len(loaded.plugins)})", title_justify="left")
    for col in ("entry point", "distribution", "registered", "status"):
        table.add_column(col)
    for p in loaded.plugins:
        reg = "; ".join(f"{k}: {', '.join(v)}" for k, v in p.registered.items()) or "-"
        status = f"[red]error: {p.error}[/]" if p.error else "[green]ok[/]"
        table.add_row(p.name, f"{p.distribution} {p.version}", reg, status)
    console.print(table)
    for line in loaded.overrides:
        err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
