"""The ``lnzoo`` command line (typer + rich). Heavy modules are imported inside commands only."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from lnzoo import __version__
from lnzoo.errors import LnzooError

app = typer.Typer(name="lnzoo", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Plugin-based multi-task model zoo for lymph node ultrasound.")
console = Console()
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of a table.")]


def guarded(fn: Callable) -> Callable:
    """Turn lnzoo's own errors into a clear message and the documented exit code (2 usage/data, 1 runtime)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LnzooError as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
    return wrapper


def _version(value: bool) -> None:
    if value:
        console.print(f"lnzoo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                          help="Show the version and exit.")] = None) -> None:
    """Plugin-based multi-task model zoo for lymph node ultrasound."""


def _host():
    from lnzoo.plugins import get_host
    return get_host()


def _list(kind: str, as_json: bool) -> None:
    entries = list(_host().registry(kind))
    if kind == "task":
        rows = [{"name": e.name, "description": e.description, "classes": list(e.build().classes),
                 "distribution": e.provenance.distribution, "version": e.provenance.version} for e in entries]
    else:
        rows = [{"name": e.name, "description": e.description, "distribution": e.provenance.distribution,
                 "version": e.provenance.version,
                 "overrides": str(e.overrides) if e.overrides else None} for e in entries]
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"{kind}s ({len(rows)})", title_justify="left")
    table.add_column("name", style="bold cyan")
    if kind == "task":
        table.add_column("classes")
    table.add_column("description")
    table.add_column("source")
    for r in rows:
        cells = [r["name"]] + ([", ".join(r["classes"])] if kind == "task" else [])
        table.add_row(*cells, r["description"], f"{r['distribution']} {r['version']}")
    console.print(table)


@app.command("list-heads")
@guarded
def list_heads(as_json: JsonOpt = False) -> None:
    """List the registered task heads."""
    _list("head", as_json)


@app.command("list-backbones")
@guarded
def list_backbones(as_json: JsonOpt = False) -> None:
    """List the registered backbones (``timm`` takes any timm model name)."""
    _list("backbone", as_json)


@app.command("list-fusions")
@guarded
def list_fusions(as_json: JsonOpt = False) -> None:
    """List the registered view-fusion strategies."""
    _list("fusion", as_json)


@app.command("list-tasks")
@guarded
def list_tasks(as_json: JsonOpt = False) -> None:
    """List the registered tasks with their classes."""
    _list("task", as_json)


@app.command("plugins")
@guarded
def plugins(as_json: JsonOpt = False) -> None:
    """List every plugin: distribution, version, what it registered, its load error if any."""
    host = _host()
    if as_json:
        print(json.dumps([p.as_dict() for p in host.plugins], ensure_ascii=False, indent=2))
        return
    table = Table(title=f"plugins ({len(host.plugins)})", title_justify="left")
    for col in ("entry point", "distribution", "registered", "status"):
        table.add_column(col)
    for p in host.plugins:
        reg = "; ".join(f"{k}: {', '.join(v)}" for k, v in p.registered.items()) or "-"
        status = f"[red]error: {p.error}[/]" if p.error else "[green]ok[/]"
        table.add_row(p.name, f"{p.distribution} {p.version}", reg, status)
    console.print(table)


def main() -> None:
    """Console entry point: load plugins (warning about broken ones), then dispatch."""
    args = sys.argv[1:]
    if args[:1] != ["--version"]:
        from lnzoo.plugins import get_host, warn_failures
        try:
            warn_failures(get_host())
        except LnzooError as exc:  # strict mode
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
    app()
