"""``lnzoo zoo``: the index of published models (:mod:`lnzoo.zoo`): list them, pull one, check an index."""
from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lnzoo.cli._common import LEFT_BEHIND, Command, Group, JsonOpt, app, console, err, guarded

zoo_app = typer.Typer(name="zoo", cls=Group, no_args_is_help=True, rich_markup_mode="rich",
                      help="Published models: list the index, pull a model into the cache (then use it as "
                           "zoo:NAME), check an index. LNZOO_ZOO=FOLDER uses a lab's own index.")
app.add_typer(zoo_app, name="zoo")

LEFT_BEHIND["zoo_pull"] = lambda kw: ("the cache is as it was: a pull is unpacked aside and renamed into place "
                                      "whole; run lnzoo zoo pull again")
LEFT_BEHIND["zoo_list"] = LEFT_BEHIND["zoo_check"] = lambda kw: "nothing was written"


def _warn(problems: list[str]) -> None:
    if problems:
        err.print(escape(f"warning: {len(problems)} problem(s) in the index; the metafile(s) concerned are left "
                         "out (lnzoo zoo check lists them):\n" + "\n".join(f"  - {p}" for p in problems)),
                  highlight=False, soft_wrap=True)


def _auc(entry: dict[str, Any], task: str) -> str:
    m = entry.get("metrics", {}).get(task, {})
    if "auc" not in m:
        return "-"
    lo_hi = m.get("ci95", {}).get("auc")
    return f"{m['auc']:.3f}" + (f" ({lo_hi[0]:.3f}-{lo_hi[1]:.3f})" if lo_hi else "")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


@zoo_app.command(cls=Command, name="list")
@guarded
def zoo_list(task: Annotated[Optional[str], typer.Option("--task", metavar="TASK", help="Only the models that "
                                                         "predict this task.")] = None,
             as_json: JsonOpt = False) -> None:
    """List the models of the zoo index.

    Name, tasks, backbone, training data, the main task's AUC with its 95% CI and the folds it came from, size,
    licence. A metafile with a problem is left out, with a warning naming the file and the key.

    Example: lnzoo zoo list --task malignancy
    """
    from lnzoo.zoo import index_folder, read_index

    entries, problems = read_index()
    rows = [e.as_dict() for e in entries if task is None or task in e.tasks]
    _warn(problems)
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"zoo models ({len(rows)}) in {index_folder()}", title_justify="left")
    for col in ("name", "task(s)", "backbone", "data", "AUC (95% CI)", "folds", "size", "licence"):
        table.add_column(col, justify="right" if col in ("size",) else "left", style="bold cyan" if col == "name"
                         else None, overflow="fold")
    for r in rows:
        name = escape(r["name"]) + (" [yellow](demo)[/]" if r.get("demo") else "") + \
            (" [green](pulled)[/]" if r["pulled"] else "")
        table.add_row(name, escape(", ".join(r["tasks"])), escape(r["backbone"]), escape(r["data"]["name"]),
                      f"{r['tasks'][0]}: {_auc(r, r['tasks'][0])}", ", ".join(map(str, r["metrics"]["folds"])),
                      _size(r["bundle"]["size"]), escape(r["licence"]))
    console.print(table)
    if any(r.get("demo") for r in rows):
        console.print("[yellow](demo)[/]: trained on synthetic data, for trying lnzoo out; never for patients.")
    if rows:
        console.print(f"use one: lnzoo predict --model zoo:{escape(rows[0]['name'])} IMAGE, or model.init_from = "
                      f"\"zoo:{escape(rows[0]['name'])}\" in a recipe", highlight=False)


@zoo_app.command(cls=Command, name="pull")
@guarded
def zoo_pull(name: Annotated[str, typer.Argument(metavar="NAME", help="The model's name (lnzoo zoo list).")],
             force: Annotated[bool, typer.Option("--force", metavar="", help="Fetch and unpack it again even when "
                                                 "it is already in the cache.")] = False,
             as_json: JsonOpt = False) -> None:
    """Fetch a model's bundle into the cache; then --model zoo:NAME uses it.

    The archive goes to $LNZOO_CACHE/zoo/NAME-<sha8>/: its sha256 is checked before it is unpacked (a mismatch
    is refused, exit 2, nothing kept), it is unpacked safely and renamed into place whole. Already pulled: says so.

    Example: lnzoo zoo pull phantom-stage1-tiny
    """
    from lnzoo.zoo import pull

    say = (lambda text: err.print(escape(text), highlight=False, soft_wrap=True)) if as_json else \
        (lambda text: console.print(escape(text), highlight=False, soft_wrap=True))
    path = pull(name, force=force, say=say)
    if as_json:
        print(json.dumps({"name": name, "path": str(path)}, indent=2))
    else:
        console.print(f"use it: lnzoo predict --model zoo:{escape(name)} IMAGE (or --model {escape(str(path))})",
                      highlight=False, soft_wrap=True)


@zoo_app.command(cls=Command, name="check")
@guarded
def zoo_check() -> None:
    """Check the index: every metafile, and every archive on this machine; exit 2 on any problem.

    Each metafile's keys (unknown, missing, mistyped, a bad sha256) and, for each archive on this machine (a path
    or file:// URL), that its sha256 and size are the metafile's.

    Example: LNZOO_ZOO=/srv/lab-zoo lnzoo zoo check
    """
    from lnzoo.errors import UsageError
    from lnzoo.zoo import check_index, index_folder, read_index

    problems = check_index()
    if problems:
        raise UsageError(f"{len(problems)} problem(s) in the zoo index {index_folder()}:\n"
                         + "\n".join(f"  - {p}" for p in problems))
    console.print(f"{len(read_index()[0])} metafile(s) in {escape(str(index_folder()))}: ok", highlight=False)
