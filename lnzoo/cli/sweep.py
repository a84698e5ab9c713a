"""``lnzoo sweep``: several recipes x seeds, one job per fold, on Slurm or local processes (:mod:`lnzoo.sweep`)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lnzoo.cli._common import Command, QuickOpt, SetOpt, app, console, err, guarded, on_interrupt, plugin_host
from lnzoo.errors import UsageError

STATE_STYLE = {"done": "green", "running": "cyan", "pending": "yellow", "failed": "red"}


@app.command(cls=Command)
@guarded
def sweep(recipes: Annotated[Optional[list[Path]], typer.Argument(metavar="RECIPE", help="Recipe TOML files.")] = None,
          seeds: Annotated[str, typer.Option("--seeds", metavar="0,1,2", help="Seeds (the recipe's `seed`); one run "
                                             "per recipe and seed.")] = "0",
          executor: Annotated[str, typer.Option("--executor", metavar="local|slurm", help="Where the fold jobs run: "
                                                "local processes, or Slurm through submitit.")] = "local",
          partition: Annotated[Optional[str], typer.Option("--slurm-partition", metavar="P",
                                                           help="Slurm partition.")] = None,
          gpus_per_job: Annotated[int, typer.Option("--gpus-per-job", metavar="N", help="GPUs per fold job "
                                                    "(Slurm).")] = 1,
          timeout_min: Annotated[int, typer.Option("--timeout-min", metavar="M", help="Time limit per job in "
                                                   "minutes; a job that reaches it is requeued and continues.")] = 240,
          retries: Annotated[int, typer.Option("--retries", metavar="N", help="Resubmit a failed fold job up to N "
                                               "times.")] = 1,
          max_parallel: Annotated[Optional[int], typer.Option("--max-parallel", metavar="N", help="Jobs in flight at "
                                                              "once (default: 1 locally, all on Slurm).")] = None,
          out: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="New or empty folder for the sweep "
                                                      "(default sweeps/<time>).")] = None,
          status: Annotated[Optional[Path], typer.Option("--status", metavar="DIR", help="Show where each job of a "
                                                         "sweep stands, and stop.")] = None,
          resume: Annotated[Optional[Path], typer.Option("--resume", metavar="DIR", help="Continue a sweep: submit "
                                                         "what has no result and is not running, then finish its "
                                                         "runs.")] = None,
          quick: QuickOpt = False, set_: SetOpt = None) -> None:
    """Run RECIPE x seeds as one job per fold (submitit: Slurm, or local processes), then gather each recipe and
    seed into an ordinary run directory, as `lnzoo run` writes it.

    Example: lnzoo sweep recipes/stage1_aux.toml recipes/stage2_metastasis_lymphoma.toml --seeds 0,1,2
    --executor slurm --slurm-partition gpu --gpus-per-job 1 --timeout-min 120
    """
    from lnzoo import sweep as sw

    if sum((bool(recipes), status is not None, resume is not None)) != 1:
        raise UsageError("give RECIPE ... to start a sweep, or --status DIR, or --resume DIR")
    if status is not None:
        _show(sw, status)
        return
    sw.require_submitit()
    if resume is not None:
        folder = resume
        plan = sw.read_plan(folder)
        parallel = plan["executor"].get("max_parallel", 0) if max_parallel is None else max_parallel
    else:
        sw.check_options(executor, gpus_per_job, timeout_min, retries, max_parallel or 0)
        folder = out or Path("sweeps") / time.strftime("%Y%m%d-%H%M%S")
        parallel = (1 if executor == "local" else 0) if max_parallel is None else max_parallel
        settings = {"kind": executor, "partition": partition, "gpus_per_job": gpus_per_job,
                    "timeout_min": timeout_min, "max_parallel": parallel}
        with on_interrupt(lambda: f"nothing was submitted and nothing of the sweep is left in {folder}; start it "
                                  "again"):
            plan = sw.plan_sweep(list(recipes or []), sw.parse_seeds(seeds), folder, settings, list(set_ or []),
                                 quick, plugin_host())
        jobs = sum(len(r["folds"]) for r in plan["runs"])
        err.print(f"sweep {folder}: {len(plan['runs'])} run(s), {jobs} fold job(s) on {executor}", highlight=False)
    where = "the local jobs were stopped, each fold at its last finished epoch" \
        if plan["executor"]["kind"] == "local" else "the Slurm jobs keep running"
    with on_interrupt(lambda: f"{where}; `lnzoo sweep --resume {folder}` continues, `lnzoo sweep --status {folder}` "
                              "shows where each job stands."):
        result = sw.run_sweep(folder, retries=retries, max_parallel=parallel, host=plugin_host(),
                              say=lambda line: err.print(escape(line), highlight=False, soft_wrap=True))
    table = Table(title=f"sweep {folder}", title_justify="left")
    for col in ("run", "seed", "status", "folds", "AUC (pooled CV)"):
        table.add_column(col)
    for r in result["runs"]:
        table.add_row(r["run"], str(r["seed"]), r["status"] or "-", ",".join(map(str, r["folds"])),
                      "-" if r["auc"] is None else f"{r['auc']:.3f}")
    console.print(table)
    for key, errors in result["resubmitted"].items():
        err.print(f"resubmitted {key} after: {escape('; '.join(errors))}", highlight=False, soft_wrap=True)
    if result["failed"]:
        for key, why in result["failed"].items():
            err.print(f"[bold red]failed:[/] {escape(key)}: {escape(why)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _show(sw, folder: Path) -> None:
    states = sw.job_states(folder)
    table = Table(title=f"sweep {folder}", title_justify="left")
    for col in ("run", "fold", "state", "attempts", "job", "detail"):
        table.add_column(col)
    for s in states:
        style = STATE_STYLE[s.state]
        table.add_row(s.run, str(s.fold), f"[{style}]{s.state}[/]", str(s.attempts), s.job_id or "-",
                      escape(s.detail))
    console.print(table)
    counts = {k: sum(s.state == k for s in states) for k in STATE_STYLE}
    console.print(", ".join(f"{n} {k}" for k, n in counts.items()))
