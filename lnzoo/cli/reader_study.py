"""``lnzoo reader-study``: the multi-reader multi-case analysis (:mod:`lnzoo.reader_study`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from lnzoo.cli._common import Command, JsonOpt, PartialOpt, app, console, err, guarded, plugin_host


@app.command(cls=Command, name="reader-study")
@guarded
def reader_study_cmd(
        reads: Annotated[Path, typer.Argument(metavar="READS.csv", help="One row per (reader, modality, case): columns "
                                              "reader, modality (or treatment), case, truth, rating; optional "
                                              "patient (clusters cases) and path (the case's image).")],
        model: Annotated[Optional[Path], typer.Option("--model", metavar="RUN|PREDICTIONS.csv|BUNDLE", help=(
            "Add the model as the modality 'AI (standalone)': a run directory (its held-out predictions), a "
            "predictions CSV, or a bundle or checkpoint that predicts the images of the reads' path column."))] = None,
        task: Annotated[Optional[str], typer.Option("--task", metavar="TASK", help="The task whose class names the "
                                                    "truth column may hold (default: the model's main task; or "
                                                    "the one registered task whose labels cover the truth).")] = None,
        cov: Annotated[str, typer.Option("--cov", metavar="delong|jackknife|unbiased", help="Covariance of the reader "
                                         "AUCs over cases.")] = "delong",
        alpha: Annotated[float, typer.Option("--alpha", metavar="A", help="1 - the CIs' level.")] = 0.05,
        out: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Folder for reader_study.json and "
                                                    "reader_study.html (default: the --model run directory, where "
                                                    "its report shows the study; else the reads' folder).")] = None,
        as_json: JsonOpt = False, allow_partial: PartialOpt = False) -> None:
    """A multi-reader multi-case study of the AUC: Obuchowski–Rockette with Hillis's degrees of freedom.

    Per modality and reader the AUC with its CI; the modality differences for random readers and cases, fixed
    readers and fixed cases; the variance components; each reader's ROC curve; reader_study.json and .html.

    Example: lnzoo reader-study reads.csv --model runs/stage1
    """
    from lnzoo.evaluation import jsonable
    from lnzoo.evaluation.mrmc import format_or
    from lnzoo.reader_study import format_ai, reader_study, write_reader_study
    from lnzoo.rundir import RunDir

    result = reader_study(reads, model, task, cov, alpha, plugin_host())
    if out is None:
        out = model if model is not None and model.is_dir() and RunDir(model).is_run() else reads.parent
    json_path, html_path = write_reader_study(result, out)
    if as_json:
        print(json.dumps(jsonable(result), indent=2))
    else:
        console.print(escape(format_or(result)), highlight=False)
        if result.get("ai"):
            console.print("\n" + escape(format_ai(result)), highlight=False)
        err.print(f"reader study: {escape(str(json_path))}, {escape(str(html_path))}", highlight=False)
