"""The commands that read finished run directories: ``lnzoo evaluate``, ``report``, ``compare`` and ``select``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lnzoo.cli._common import (Command, JsonOpt, ModifiedOpt, PartialOpt, app, console, err, guarded, plugin_host,
                               summary_table)
from lnzoo.errors import UsageError
from lnzoo.evaluation import N_BOOT


@app.command(cls=Command)
@guarded
def evaluate(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory written by lnzoo run.")],
             allow_partial: PartialOpt = False, allow_modified: ModifiedOpt = False) -> None:
    """Reload each fold's best checkpoint, recompute the held-out metrics and compare with metrics.json.

    Example: lnzoo evaluate runs/stage1_aux-20261201-101500
    """
    from lnzoo.evaluate import evaluate_run

    stored, fresh = evaluate_run(run_dir, plugin_host())
    summary_table(fresh)
    diffs = _compare(stored.get("cross_validation", {}).get("pooled", {}), fresh["cross_validation"]["pooled"])
    if diffs:
        err.print("[bold red]differs from the stored metrics.json:[/]\n" + "\n".join(diffs[:20]))
        raise typer.Exit(1)
    console.print("[green]reproduced[/]: recomputed metrics match metrics.json")


@app.command(cls=Command, name="select")
@guarded
def select_cmd(runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Two or more run directories trained on the same "
                                                              "folds (e.g. with cv.folds_file).")],
               out: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Write the chosen folds as a run "
                                                                          "directory here.")] = None,
               as_json: JsonOpt = False, allow_partial: PartialOpt = False,
               allow_modified: ModifiedOpt = False) -> None:
    """Nested choice between runs: per fold, the run with the best inner-validation score (training
    patients only) wins; its held-out predictions give an honest estimate of choosing that way.

    Example: lnzoo select runs/A runs/B --out runs/chosen
    """
    from lnzoo.select import format_selection, select_runs

    result = select_runs(runs, out)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(format_selection(result))
    if out is not None:
        console.print(f"chosen folds written to {out} (lnzoo evaluate / compare / predict --model work on it)")


@app.command(cls=Command, name="report")
@guarded
def report(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory written by lnzoo run.")],
           out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE.html", help="HTML file (default RUN_DIR/report.html).")] = None,
           n_boot: Annotated[int, typer.Option("--n-boot", metavar="N", help="Patient bootstrap resamples for the CIs.")] = N_BOOT,
           aggregate: Annotated[Optional[str], typer.Option(metavar="patient", help="'patient': also score mean probability per patient.")] = None,
           allow_partial: PartialOpt = False, allow_modified: ModifiedOpt = False) -> None:
    """Write a self-contained HTML report (plots embedded) and evaluation.json for a run.

    Example: lnzoo report runs/RUN --aggregate patient
    """
    from lnzoo.report import write_report

    if aggregate not in (None, "patient"):
        raise UsageError(f"--aggregate {aggregate!r}: the only level is 'patient'")
    path = write_report(run_dir, out, n_boot=n_boot, aggregate=aggregate)
    numbers = path.parent / "evaluation.json"
    console.print(f"report: {path}" + (f"\nnumbers: {numbers}" if numbers.is_file() else ""))


@app.command(cls=Command, name="compare")
@guarded
def compare_cmd(a: Annotated[Path, typer.Argument(metavar="A", help="Run directory or prediction CSV (e.g. the model).")],
                b: Annotated[Path, typer.Argument(metavar="B", help="Run directory or prediction CSV (e.g. a reader's calls).")],
                task: Annotated[Optional[str], typer.Option("--task", metavar="TASK", help="Task to compare (default: the main one).")] = None,
                part: Annotated[Optional[str], typer.Option("--part", metavar="cv|test|external", help="cv, test or external.")] = None,
                rule: Annotated[str, typer.Option(
                    "--threshold-rule", metavar="0.5|youden|sensitivity",
                    help="How a side without --threshold-a/-b is called, for the operating-point rows and McNemar "
                         "only (AUC and DeLong need no threshold): 0.5 (probabilities; scores such as a 2-5 rating "
                         "get no operating point), youden or sensitivity.")] = "0.5",
                threshold_a: Annotated[Optional[float], typer.Option(
                    "--threshold-a", metavar="T", help="A's calls: positive if its score >= T.")] = None,
                threshold_b: Annotated[Optional[float], typer.Option(
                    "--threshold-b", metavar="T",
                    help="B's calls: positive if its score >= T (e.g. 4 for a BI-RADS 2-5 rating).")] = None,
                positive: Annotated[Optional[str], typer.Option("--positive", metavar="CLASS", help="Positive class of a binary task.")] = None,
                intersect: Annotated[bool, typer.Option("--intersect", metavar="", help="Compare on the common cases only.")] = False,
                n_boot: Annotated[int, typer.Option("--n-boot", metavar="N")] = N_BOOT, as_json: JsonOpt = False,
                allow_partial: PartialOpt = False) -> None:
    """Compare two models (or a model and a reader): paired DeLong for AUC, McNemar at the operating points.
    A reader's rating (BI-RADS 2-5, say) gets its AUC and DeLong test as it is; its operating point needs
    --threshold-b or a rule.

    Example: lnzoo compare runs/A runs/B --threshold-rule youden
    """
    from lnzoo.evaluation.compare import as_json as to_json, compare, format_table

    result = compare(a, b, task, rule, n_boot, threshold_a=threshold_a, threshold_b=threshold_b,
                     intersect=intersect, part=part, positive=positive)
    if as_json:
        print(to_json(result))
    else:
        console.print(format_table(result))


def _compare(a: dict, b: dict, tol: float = 1e-4) -> list[str]:
    diffs = []
    for task in set(a) | set(b):
        for key in set(a.get(task, {})) | set(b.get(task, {})):
            x, y = a.get(task, {}).get(key), b.get(task, {}).get(key)
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                if abs(x - y) > tol:
                    diffs.append(f"  {task}.{key}: stored {x} vs recomputed {y}")
            elif x != y and not isinstance(x, (dict, list)):
                diffs.append(f"  {task}.{key}: stored {x} vs recomputed {y}")
    return diffs
