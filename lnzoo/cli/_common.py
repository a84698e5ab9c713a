"""What every ``lnzoo`` command shares: the app, the consoles, the error guard, the plugin host and the option types.

The command modules import from here and never from :mod:`lnzoo.cli` itself, so the package has no cycle.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lnzoo import __version__
from lnzoo.errors import LnzooError
from lnzoo.ui import wide_console

# the order of ``lnzoo --help``: the workflow from a recipe to a served model; the list-* commands come last
ORDER = ("run", "validate", "ingest", "synth", "sweep", "evaluate", "report", "audit", "compare", "reader-study",
         "select", "predict", "explain", "export", "serve", "zoo", "plugins")


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
ModifiedOpt = Annotated[bool, typer.Option("--allow-modified", metavar="", help="Use files of a run or bundle "
                                           "that differ from what lnzoo wrote (edited on purpose); every output "
                                           "then says which.")]
QuickOpt = Annotated[bool, typer.Option("--quick", metavar="", help="The quick profile: small backbone and images, few "
                                                        "epochs, one fold (see the docs: Recipes).")]


# -- stopping on a signal: every command, one way ------------------------------------------------------------------
SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and a batch scheduler's or `kill`'s stop; exit 128 + number


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. Raised where the command is, so the command unwinds exactly as on Ctrl-C: every
    ``finally`` runs, a run directory is marked interrupted, a partial bundle is removed, child processes are
    stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


_STOPPING = threading.Event()  # set while the 'interrupted' line is printed: a second signal is ignored then


def _interrupt(signum: int, frame: Any) -> None:
    if not _STOPPING.is_set():
        raise Interrupted(signum)


@contextlib.contextmanager
def signals_interrupt():
    """For the block, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread. A signal the process was
    started with ignored (SIGINT of a background job, ``cmd &``) stays ignored; other threads change nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in SIGNALS:
        current = signal.getsignal(sig)
        if current in (signal.SIG_IGN, _interrupt) or current is None:  # ignored on purpose, nested, or not Python's
            continue
        previous[sig] = signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def on_interrupt(say: Callable[[], str]):
    """What the 'interrupted' line says when a signal stops the block: ``say()``, asked then (a run's status, say).
    The innermost block that says something wins; without one the line says what the command leaves
    (:data:`LEFT_BEHIND`)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if getattr(exc, "lnzoo_said", None) is None:
            with contextlib.suppress(Exception):  # the message must not hide the interruption
                exc.lnzoo_said = say()
        raise


# what a command leaves when a signal stops it, after "interrupted (SIGINT): "; {name}: the command's option
LEFT_BEHIND: dict[str, Callable[[dict[str, Any]], str]] = {
    **dict.fromkeys(("validate", "evaluate", "compare_cmd", "plugins"), lambda kw: "nothing was written"),
    "select_cmd": lambda kw: "nothing was written" if kw.get("out") is None or not Path(kw["out"]).exists() else
    f"{kw['out']} is marked interrupted, so readers refuse it: remove it and run lnzoo select again",
    "predict": lambda kw: f"{kw.get('out')} was not written (it is written whole, at the end)",
    "report": lambda kw: "report.html and evaluation.json are each whole, as before or new; run lnzoo report again "
    "for a matching pair",
    "explain": lambda kw: f"the overlays are written last and each whole; {kw.get('out')} may hold some without "
    "explain.csv: run lnzoo explain again",
    "export_cmd": lambda kw: f"no bundle was written (the partial one is removed; {kw.get('out')} is as it was)",
    "audit": lambda kw: "audit.json and audit.html are each whole, as before or new",
    "ingest": lambda kw: f"manifest.csv and ingest_log.csv in {kw.get('out')} list every frame written so far; "
    "the same command adds the rest",
    "synth": lambda kw: f"the phantom in {kw.get('out')} is incomplete (manifest.csv is written last); "
    f"`lnzoo synth --out {kw.get('out')}` again writes it whole",
    "serve": lambda kw: "the server stopped after answering the requests it had begun",
}


def stopped(exc: KeyboardInterrupt, command: str = "", kwargs: dict[str, Any] | None = None) -> int:
    """Print the one 'interrupted' line for ``exc`` and return the exit code: 128 + the signal's number (130 for
    SIGINT, Ctrl-C; 143 for SIGTERM)."""
    _STOPPING.set()  # a second Ctrl-C while this prints is not a traceback
    try:
        signum = getattr(exc, "signum", int(signal.SIGINT))
        if "RANK" in os.environ:  # imported only then: the signal may have cut an import (numpy's) short
            from lnzoo.train.distributed import world

            if not world().writer:  # a torchrun process beside rank 0: rank 0 says it
                return 128 + signum
        said = getattr(exc, "lnzoo_said", None)
        if said is None:
            left = LEFT_BEHIND.get(command)
            said = left(kwargs or {}) if left else f"lnzoo {command.removesuffix('_cmd')} stopped before it finished"
        err.print(f"[bold yellow]interrupted[/] ({signal.Signals(signum).name}): {escape(said)}", highlight=False,
                  soft_wrap=True)
        return 128 + signum
    finally:
        _STOPPING.clear()


def guarded(fn: Callable) -> Callable:
    """Turn lnzoo's own errors into a clear message and the documented exit code (2 usage/data, 1 runtime), and
    SIGINT/SIGTERM into one 'interrupted' line and 130/143, for every command."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from lnzoo.integrity import modified_allowed
        from lnzoo.rundir import partial_allowed

        with signals_interrupt():
            try:  # readers of run directories and bundles honour these two
                with partial_allowed(bool(kwargs.get("allow_partial"))), \
                        modified_allowed(bool(kwargs.get("allow_modified"))):
                    try:
                        return fn(*args, **kwargs)
                    finally:
                        _say_modified()
            except KeyboardInterrupt as exc:  # Ctrl-C, or a signal through signals_interrupt
                raise typer.Exit(stopped(exc, fn.__name__, kwargs)) from None
            except LnzooError as exc:
                from lnzoo.train.distributed import world

                if "RANK" in os.environ and not world().writer:  # beside torchrun's rank 0, which says the same
                    raise typer.Exit(exc.exit_code) from None
                # escaped: messages quote lists such as [full, crop], which rich would read as markup and drop
                err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
                raise typer.Exit(exc.exit_code) from None
            except OSError as exc:  # a full disk, a read-only folder: name the file, no traceback
                where = f"{exc.filename}: " if exc.filename else ""
                err.print(f"[bold red]error:[/] {escape(where + (exc.strerror or str(exc)))}", highlight=False,
                          soft_wrap=True)
                raise typer.Exit(1) from None
    wrapper.lnzoo_guarded = True  # type: ignore[attr-defined] # every command has it (tests/test_signals.py)
    return wrapper


def _say_modified() -> None:
    """Under --allow-modified: which files of a run or bundle were used although they are not as lnzoo wrote them."""
    from lnzoo.integrity import modified

    used = modified()
    if used:
        lines = "\n".join(f"  - {path}: {why}" for path, why in sorted(used.items()))
        err.print(escape(f"warning: made from {len(used)} modified file(s) (--allow-modified); every output says "
                         f"so:\n{lines}"), highlight=False, soft_wrap=True)


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
    """Print a run's held-out metrics: pooled CV (and mean ± sd over folds), test and external; a pretraining's
    summary."""
    if metrics.get("kind") == "pretrain":
        knn = metrics["knn_balanced_accuracy"]
        shown = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        console.print(f"pretrained {metrics['method']} on {metrics['images']} image(s), {metrics['epochs']} epoch(s) "
                      f"({metrics['seconds_per_epoch']} s each): loss {shown(metrics['final_loss'])}; k-NN probe "
                      f"({knn['task']}) balanced accuracy {shown(knn['first'])} after the first epoch, "
                      f"{shown(knn['last'])} at the end", highlight=False)
        return
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
