"""The commands that start from a recipe: ``lnzoo run``, ``validate`` and ``synth`` (the phantom to run on)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from lnzoo.cli._common import (Command, QuickOpt, SetOpt, app, console, err, guarded, load, on_interrupt,
                               plugin_host, summary_table)
from lnzoo.errors import UsageError
from lnzoo.evaluation import N_BOOT


@app.command(cls=Command)
@guarded
def validate(recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe TOML file.")], set_: SetOpt = None,
             quick: QuickOpt = False) -> None:
    """Check a recipe, its data and its model without training; every problem is listed, exit 2 if any.

    The checks run in stages (recipe, data, leakage, folds, model) and the problems of all of them are
    listed together, by stage; a stage that cannot run on what an earlier one found broken says so.

    Example: lnzoo validate recipes/stage1_aux.toml --set data.train=my_nodes.csv
    """
    from lnzoo.data.tables import delimiter_name
    from lnzoo.validate import validate as validate_recipe

    v = validate_recipe(recipe, plugin_host(), sets=list(set_ or []), quick=quick)
    console.print(f"[green]recipe ok[/]: {escape(str(recipe))} ({escape(v.name)}; tasks {', '.join(v.tasks)})",
                  highlight=False)
    backbone = escape(v.backbone) if v.backbone is not None else "no image backbone (no view)"
    console.print(f"[green]model ok[/]: {backbone} builds with the recipe's heads and fusion; fusion members "
                  f"{', '.join(v.members)}", highlight=False)
    if v.skipped:
        err.print(f"[yellow]{len(v.skipped)} bad row(s)/image(s) will be left out[/] (data.skip_bad_rows):\n"
                  + "\n".join(f"  - {escape(p)}" for p in v.skipped[:50]))
    console.print(f"[green]data ok[/]: {v.n_images} images of {v.n_patients} patients for cross-validation"
                  + (f", {v.n_test} test" if v.n_test else "")
                  + (f", {v.n_external} external" if v.n_external else "") + f" ({escape(v.description)})",
                  highlight=False)
    for path, delimiter in v.delimiters.items():
        console.print(f"  {escape(path)}: delimiter {escape(delimiter_name(delimiter))}", highlight=False)
    if v.columns:
        console.print(f"  covariates: {escape(', '.join(v.columns))}", highlight=False)


@app.command(cls=Command)
@guarded
def run(recipe: Annotated[Optional[Path], typer.Argument(metavar="RECIPE", help="Recipe TOML file.")] = None,
        quick: QuickOpt = False, set_: SetOpt = None,
        out: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Run directory, new or empty "
                                                    "(default runs/<name>-<time>).")] = None,
        resume: Annotated[Optional[Path], typer.Option("--resume", metavar="RUN_DIR", help="Continue an interrupted "
                                                       "run: finished folds are kept, the unfinished one goes on "
                                                       "after its last finished epoch.")] = None,
        n_boot: Annotated[int, typer.Option("--n-boot", metavar="N", help="Patient bootstrap resamples for the "
                                            "report's CIs.")] = N_BOOT,
        nproc: Annotated[int, typer.Option("--nproc", metavar="N", help="Train each fold on N processes "
                                           "(DistributedDataParallel; one per GPU): lnzoo starts them with "
                                           "torchrun.")] = 1) -> None:
    """Train and evaluate a recipe: patient-level CV, checkpoints, metrics, Grad-CAM examples, HTML report.

    Example: lnzoo run recipes/stage1_aux.toml --quick --set train.epochs=3
    """
    from lnzoo.pipeline import default_out, resumed_recipe, run as run_pipeline
    from lnzoo.rundir import RunDir
    from lnzoo.train.distributed import world
    from lnzoo.ui import RunView

    if nproc != 1:
        _launch_torchrun(nproc)
    if not world().writer:  # a torchrun process beside rank 0: it trains, rank 0 writes and prints
        r = resumed_recipe(RunDir(resume), plugin_host()) if resume is not None else load(recipe, set_, quick)
        run_pipeline(r, out or default_out(r), host=plugin_host(), n_boot=n_boot, resume=resume is not None)
        return

    if resume is not None:
        if recipe is not None or set_ or quick or out is not None:
            raise UsageError("--resume RUN_DIR continues a run with the recipe it started with; give no RECIPE, "
                             "--set, --quick or --out with it")
        if RunDir(resume).status() == "sweeping":
            raise UsageError(f"--resume {resume}: lnzoo sweep is fitting this run's folds as separate jobs; "
                             f"`lnzoo sweep --resume {RunDir(resume).read_json(RunDir.RUN).get('sweep') or 'SWEEP_DIR'}` "
                             "finishes it")
        r, out = resumed_recipe(RunDir(resume), plugin_host()), resume
    elif recipe is None:
        raise UsageError("give a RECIPE to run, or --resume RUN_DIR to continue an interrupted run")
    else:
        r = load(recipe, set_, quick)
        out = out or default_out(r)
    console.print(f"[bold]lnzoo run[/] {escape(str(recipe or r.source))}{' --quick' if r.quick else ''}"
                  f"{' (resumed)' if resume else ''} -> {escape(str(out))}", highlight=False)

    def stopped() -> str:  # Ctrl-C or a batch scheduler's SIGTERM (lnzoo.cli._common.guarded): saved, resumable
        if RunDir(out).status() == "finished":  # stopped while writing the examples or the report
            return f"the run itself finished; `lnzoo report {out}` writes its report."
        return f"every finished epoch is saved; `lnzoo run --resume {out}` continues from the last one."
    with on_interrupt(stopped), RunView(err) as view:
        result = _run_or_list_every_problem(r, out, view, n_boot, resume is not None)
    summary_table(result.metrics)
    console.print(f"run directory: {out}\nreport: {result.report}", highlight=False)


def _run_or_list_every_problem(r, out: Path, view, n_boot: int, resume: bool):
    """``lnzoo.run`` on a recipe; refused for its data before any fold was planned (a DataError), the refusal
    lists every problem of every stage, as ``lnzoo validate`` does, not only the first stage's."""
    from lnzoo.errors import DataError, ValidationError
    from lnzoo.pipeline import run as run_pipeline
    from lnzoo.rundir import RunDir
    from lnzoo.validate import validate as validate_recipe

    try:
        return run_pipeline(r, out, on_event=view, host=plugin_host(), n_boot=n_boot, resume=resume)
    except DataError as exc:
        if resume or RunDir(out).read_json(RunDir.RUN).get("data_sha256") is not None:
            raise  # the folds were planned: the problem arose in training, and it is the one to name
        try:
            validate_recipe(r, plugin_host())
        except ValidationError as every:
            raise every from None
        raise exc from None


def _launch_torchrun(nproc: int) -> None:
    """``lnzoo run --nproc N ...``: the same command under torchrun, N processes on this machine
    (:mod:`lnzoo.train.launch`: a signal stops them all, rank 0 says what is left)."""
    import os

    from lnzoo.train.launch import start

    if nproc < 1:
        raise UsageError(f"--nproc {nproc}: give 1 or more processes")
    if "RANK" in os.environ:
        raise UsageError("--nproc starts torchrun itself; under torchrun, leave it out")
    rest, skip = [], False
    for arg in sys.argv[1:]:  # the command line as given, without --nproc N
        if skip or arg == "--nproc" or arg.startswith("--nproc="):
            skip = arg == "--nproc"
            continue
        rest.append(arg)
    raise typer.Exit(start(nproc, rest))


@app.command(cls=Command)
@guarded
def synth(out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder to write the phantom into.")],
          patients: Annotated[int, typer.Option(metavar="N", help="Number of patients.")] = 160,
          seed: Annotated[int, typer.Option(metavar="N", help="Seed; the same seed writes the same files.")] = 0,
          difficulty: Annotated[float, typer.Option(metavar="0..1", help="0 easy ... 1 heavily overlapping classes.")] = 0.5,
          dicom: Annotated[bool, typer.Option("--dicom", help="Write the phantom as ultrasound DICOM scanner screens "
                                              "(fake PHI burned in, calipers, cine, compressed syntaxes) with "
                                              "labels.csv and truth.json, to try `lnzoo ingest` on.")] = False,
          shortcut: Annotated[Optional[list[str]], typer.Option(
              "--shortcut", metavar="KIND:STRENGTH",
              help="Plant a spurious cue that correlates with malignancy (repeatable): calipers (burned-in "
                   "calipers + readout), doppler_box (a Doppler box outline) or scanner (a brighter scanner B "
                   "with a logo). STRENGTH s in 0..1: present on a malignant image with probability (1+s)/2, on a "
                   "benign one (1-s)/2. Adds manifest columns marks_caliper / doppler_box / scanner.")] = None,
          readers: Annotated[int, typer.Option("--readers", metavar="N", help="Also write reads.csv: a simulated "
                                               "reader study of every image by N readers of different skill, "
                                               "unaided and AI-aided, on a 5-point scale (for lnzoo "
                                               "reader-study).")] = 0) -> None:
    """Write the synthetic lymph node phantom (development/demo data, NOT clinical data).

    Example: lnzoo synth --out phantom --patients 80 --seed 1
    Example: lnzoo synth --dicom --out dicom_phantom --patients 24
    Example: lnzoo synth --out cheat --shortcut calipers:0.8 --shortcut scanner:0.7
    Example: lnzoo synth --out phantom --readers 5
    """
    from rich.progress import Progress

    from lnzoo.data.phantom_shortcuts import describe_shortcuts, parse_shortcuts, shortcut_columns

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; the phantom goes into a folder (new, or one it wrote before)")
    try:
        shortcuts = parse_shortcuts(shortcut)
    except ValueError as exc:
        raise UsageError(f"--shortcut: {exc}") from None
    if readers and (readers < 2 or dicom):
        raise UsageError(f"--readers {readers}: " + ("a reader study needs at least 2 readers" if readers < 2 else
                                                     "the simulated reads are of the PNG phantom, not --dicom"))
    if shortcuts and dicom:
        raise UsageError("--shortcut plants cues in the PNG phantom; the DICOM phantom (--dicom) draws its own "
                         "calipers on 40% of its files at random, so the two do not combine: leave one out")
    options = {"shortcuts": shortcuts} if shortcuts else {}
    if dicom:
        try:
            from lnzoo.data.phantom_dicom import check_dicom_support, generate_dicom_phantom

            check_dicom_support()
        except ImportError as exc:
            raise UsageError(f"lnzoo synth --dicom: {exc}") from None
        write, what = generate_dicom_phantom, "DICOM phantom"
    else:
        from lnzoo.data.phantom import generate_phantom as write
        what = "phantom"
    with Progress(console=err) as progress:
        bar = progress.add_task(what, total=patients)
        try:
            written = write(out, patients=patients, seed=seed, difficulty=difficulty,
                            progress=lambda d, t: progress.update(bar, completed=d, total=t), **options)
        except (ValueError, FileExistsError) as exc:  # a refused argument (too few patients, difficulty out of
            raise UsageError(str(exc)) from None       # 0..1), or a dicom/ folder the DICOM phantom did not write
    if dicom:
        console.print(f"DICOM phantom written (SYNTHETIC, NOT CLINICAL DATA): {out / 'dicom'}\n"
                      f"labels: {out / 'labels.csv'}\ntruth: {written}", highlight=False)
    else:
        console.print(f"phantom written: {written} (+ lists/ with the seed-style list files)")
        if readers:
            from lnzoo.data.phantom_readers import write_reads

            reads = write_reads(Path(written).parent, readers, seed)
            console.print(f"simulated reader study (SYNTHETIC reads): {reads} ({readers} readers, unaided and "
                          "AI-aided); analyse it with lnzoo reader-study", highlight=False)
        if shortcuts:
            console.print(f"planted shortcuts: {describe_shortcuts(shortcuts)} (see README.txt; manifest columns "
                          f"{', '.join(shortcut_columns(shortcuts))})", highlight=False)
