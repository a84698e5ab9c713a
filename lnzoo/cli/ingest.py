"""``lnzoo ingest``: DICOM ultrasound folders into a dataset (:mod:`lnzoo.ingest.dataset`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lnzoo.cli._common import Command, app, console, err, guarded


@app.command(cls=Command)
@guarded
def ingest(sources: Annotated[list[Path], typer.Argument(metavar="DICOM_DIR", help="Folders (searched "
                                                          "recursively) or files of DICOM ultrasound.")],
           out: Annotated[Path, typer.Option("--out", metavar="DATASET_DIR", help="Folder to write the PNG frames, "
                                             "manifest.csv and ingest_log.csv into; ingesting into it again adds "
                                             "the files not yet there.")],
           labels: Annotated[Optional[Path], typer.Option("--labels", metavar="LABELS.csv", help="Label table "
                                                           "joined by accession_number, study, series or file "
                                                           "(default: labels.csv at the top of the DICOM folder, "
                                                           "if there is one).")] = None,
           frames: Annotated[str, typer.Option("--frames", metavar="RULE", help="Frames of a cine loop to keep: "
                                               "all, middle, every:N or max:N.")] = "all",
           inside_marks: Annotated[str, typer.Option("--inside-marks", metavar="flag|mask|keep", help="Calipers "
                                                     "and text burned into the image: flag them in the manifest "
                                                     "(marks_caliper, marks_text), mask them (filled from around "
                                                     "them) and flag, or keep them unexamined.")] = "flag",
           key_file: Annotated[Optional[Path], typer.Option("--key-file", metavar="FILE", help="Secret key of the "
                                                             "patient pseudonyms (default: $LNZOO_INGEST_KEY, or "
                                                             "DATASET_DIR.ingest-key beside the dataset, created "
                                                             "on first use).")] = None,
           any_modality: Annotated[bool, typer.Option("--any-modality", help="Take DICOM images of modalities "
                                                      "other than ultrasound too.")] = False,
           mapping: Annotated[Optional[Path], typer.Option("--mapping", metavar="FILE.csv", help="Also write which "
                                                           "PatientID each patient pseudonym stands for (outside "
                                                           "the dataset; it re-identifies).")] = None,
           study_days: Annotated[bool, typer.Option("--study-days", help="Add study_day: days since the "
                                                    "patient's first study (the dates are not written).")] = False
           ) -> None:
    """Turn DICOM ultrasound (single frames and cine loops) into PNG frames and a manifest `lnzoo run` reads.

    Each frame is cut to its ultrasound region; patients, studies and loops become keyed pseudonyms; of the header only modality, manufacturer, model, transducer and frame time are written; every file that cannot be read is named with its reason in ingest_log.csv.

    Example: lnzoo ingest exports/ --out dataset --labels labels.csv --frames max:8
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lnzoo.ingest.dataset import ingest as run_ingest

    with Progress(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                  transient=True) as progress:
        bar = progress.add_task("ingest", total=None)
        done = run_ingest(sources, out, labels=labels, frames=frames, inside_marks=inside_marks, key_file=key_file,
                          any_modality=any_modality, mapping=mapping, study_days=study_days,
                          progress=lambda d, t: progress.update(bar, completed=d, total=t))
    table = Table(title=f"lnzoo ingest -> {escape(str(out))}", title_justify="left")
    table.add_column("files")
    table.add_column("count", justify="right")
    for status in ("ingested", "skipped", "refused"):
        table.add_row(status, str(done.counts.get(status, 0)))
    table.add_row("frames written", str(done.frames))
    table.add_row("BurnedInAnnotation YES", str(done.burned_in))
    console.print(table)
    rate = done.frames / done.seconds if done.seconds > 0 else 0.0
    console.print(f"manifest: {escape(str(done.manifest))} ({done.frames} new frame(s), {rate:.1f} frames/s)\n"
                  f"log: {escape(str(out / 'ingest_log.csv'))}\npseudonym key: {escape(done.key_source)} (keep it "
                  "private and keep it: the same key gives the same pseudonyms next time)", highlight=False)
    if done.counts.get("refused"):
        err.print(f"[yellow]warning:[/] {done.counts['refused']} file(s) could not be ingested; "
                  "ingest_log.csv says why for each", highlight=False)
    if done.warnings:
        err.print(f"[yellow]warning:[/] {done.warnings} file(s) ingested with a warning (e.g. no usable "
                  "ultrasound region); see ingest_log.csv", highlight=False)
    if done.unlabelled:
        err.print(f"[yellow]warning:[/] {done.unlabelled} frame(s) found no row in the label table", highlight=False)
