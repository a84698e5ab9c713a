"""What every ``lnzoo`` command shares: the app, the consoles, the error guard, the plugin host and the option types.

The command modules import from here and never from :mod:`lnzoo.cli` itself, so the package has no cycle.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lnzoo import __version__
from lnzoo.errors import LnzooError
from lnzoo.ui import wide_console

# the order of ``lnzoo --help``: the workflow from a recipe to a served model; the list-* commands come last
ORDER = ("run", "validate", "synth", "sweep", "evaluate", "report", "compare", "select", "predict", "explain",
         "export", "serve", "plugins")


def _flags_without_metavar(params: list) -> list:
    for param in params:  # a flag takes no value: typer would still print a placeholder (``--help <bool>``)
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


class Command(typer.core.TyperCommand):
    """A command whose flags show no type placeholder in --help."""

    def get_params(self, ctx):
        return _flags_without_metavar(super().get_params(ctx))


class Group(typer.core.TyperGroup):
    """The root command: no type placeholder on its flags either (--help, --show-completion), and the
    commands listed in :data:`ORDER`, the list-* commands last."""

    def get_params(self, ctx):
        return _flags_without_metavar(super().get_params(ctx))

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)  # registration order: a command missing from ORDER keeps its place
        rank = {name: i for i, name in enumerate(ORDER)}
        return sorted(names, key=lambda n: (n.startswith("list-"), rank.get(n, len(ORDER))))


app = typer.Typer(name="lnzoo", cls=Group, no_args_is_help=True, add_completion=True, rich_markup_mode="rich",
                  help="Plugin-based multi-task model zoo for lymph node ultrasound.")
console = wide_console()
err = wide_console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print JSON for machines instead of a table.")]
PartialOpt = Annotated[bool, typer.Option("--allow-partial", metavar="", help="Read a run directory that did not "
                                          "finish (interrupted, failed or still running).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe key: --set train.epochs=3 "
                                                    "(value parsed as TOML). Repeatable.")]
QuickOpt = Annotated[bool, typer.Option("--quick", metavar="", help="The quick profile: small backbone and images, few "
                                                        "epochs, one fold (see the docs: Recipes).")]


def guarded(fn: Callable) -> Callable:
    """Turn lnzoo's own errors into a clear message and the documented exit code (2 usage/data, 1 runtime)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from lnzoo.rundir import partial_allowed

        try:
            with partial_allowed(bool(kwargs.get("allow_partial"))):  # readers of run directories honour it
                return fn(*args, **kwargs)
        except LnzooError as exc:
            # escaped: messages quote lists such as [full, crop], which rich would read as markup and drop
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # a full disk, a read-only folder: name the file, no traceback
            where = f"{exc.filename}: " if exc.filename else ""
            err.print(f"[bold red]error:[/] {escape(where + (exc.strerror or str(exc)))}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(1) from None
    return wrapper


def _version(value: bool) -> None:
    if value:
        console.print(f"lnzoo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", metavar="", callback=_version, is_eager=True,
                                                          help="Show the version and exit.")] = None) -> None:
    """Plugin-based multi-task model zoo for lymph node ultrasound."""


def plugin_host():
    """The plugin host (loaded on first use)."""
    from lnzoo.plugins import get_host
    return get_host()


def load(recipe: Path, sets: list[str] | None, quick: bool):
    """The recipe file with its --set overrides and --quick profile, checked against the installed plugins."""
    from lnzoo.recipe import load_recipe
    return load_recipe(recipe, sets=sets, quick=quick, host=plugin_host())


def summary_table(metrics: dict) -> None:
    """Print a run's held-out metrics: pooled CV (and mean ± sd over folds), test and external."""
    pooled = metrics.get("cross_validation", {}).get("pooled", {})
    mean_sd = metrics.get("cross_validation", {}).get("mean_sd", {})
    cols = ["auc", "accuracy", "balanced_accuracy", "f1_macro", "mcc"]
    table = Table(title=f"{metrics.get('recipe', '')}: held-out folds {metrics.get('folds_run', '')}",
                  title_justify="left")
    table.add_column("task", style="bold")
    table.add_column("part")
    for c in cols:
        table.add_column(c, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for task, m in pooled.items():
        table.add_row(task, "pooled CV", *[fmt(m.get(c)) for c in cols])
        if len(metrics.get("folds_run", [])) > 1 and task in mean_sd:
            table.add_row("", "mean ± sd", *[f"{fmt(mean_sd[task][c]['mean'])}±{fmt(mean_sd[task][c]['sd'])}"
                                             if c in mean_sd[task] else "-" for c in cols])
    for part in ("test", "external"):
        for task, m in metrics.get(part, {}).items():
            table.add_row(task, part, *[fmt(m.get(c)) for c in cols])
    console.print(table)
