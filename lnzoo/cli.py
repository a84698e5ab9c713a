"""The ``lnzoo`` command line (typer + rich). Heavy modules are imported inside commands only."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lnzoo import __version__
from lnzoo.errors import LnzooError, UsageError
from lnzoo.evaluation import N_BOOT
from lnzoo.ui import wide_console

class _Command(typer.core.TyperCommand):
    """A command whose --help row shows no type placeholder (typer would print ``<bool>``)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


app = typer.Typer(name="lnzoo", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Plugin-based multi-task model zoo for lymph node ultrasound.")
console = wide_console()
err = wide_console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print JSON for machines instead of a table.")]
PartialOpt = Annotated[bool, typer.Option("--allow-partial", metavar="", help="Read a run directory that did not "
                                          "finish (interrupted, failed or still running).")]


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


def _host():
    from lnzoo.plugins import get_host
    return get_host()


def _list(kind: str, as_json: bool) -> None:
    registry = _host().registry(kind)
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
         "input": "the registered input kinds besides the image views (data.inputs.NAME = {name = KIND, ...})"}


def _lister(kind: str, what: str) -> Callable:
    def command(as_json: JsonOpt = False) -> None:
        _list(kind, as_json)
    command.__name__ = f"list_{kind}s"
    command.__doc__ = f"List {what}.\n\n    Example: lnzoo list-{kind}s --json\n    "
    return command


for _kind, _what in LISTS.items():
    app.command(cls=_Command, name=f"list-{_kind}s")(guarded(_lister(_kind, _what)))


@app.command(cls=_Command, name="plugins")
@guarded
def plugins(as_json: JsonOpt = False) -> None:
    """List every plugin: distribution, version, what it registered, its load error if any.

    Example: lnzoo plugins --json
    """
    host = _host()
    if as_json:
        print(json.dumps([{**p.as_dict(), "warnings": [w for w in host.overrides if f"from {p.distribution} " in w]}
                          for p in host.plugins], ensure_ascii=False, indent=2))
        return
    table = Table(title=f"plugins ({len(host.plugins)})", title_justify="left")
    for col in ("entry point", "distribution", "registered", "status"):
        table.add_column(col)
    for p in host.plugins:
        reg = "; ".join(f"{k}: {', '.join(v)}" for k, v in p.registered.items()) or "-"
        status = f"[red]error: {p.error}[/]" if p.error else "[green]ok[/]"
        table.add_row(p.name, f"{p.distribution} {p.version}", reg, status)
    console.print(table)
    for line in host.overrides:
        err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


SetOpt = Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe key: --set train.epochs=3 "
                                                    "(value parsed as TOML). Repeatable.")]
QuickOpt = Annotated[bool, typer.Option("--quick", metavar="", help="The quick profile: small backbone and images, few "
                                                        "epochs, one fold (see README).")]


def _load(recipe: Path, sets: list[str] | None, quick: bool):
    from lnzoo.recipe import load_recipe
    return load_recipe(recipe, sets=sets, quick=quick, host=_host())


@app.command(cls=_Command)
@guarded
def validate(recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe TOML file.")], set_: SetOpt = None,
             quick: QuickOpt = False) -> None:
    """Check a recipe and its data without training; every problem is listed, exit 2 if any.

    Example: lnzoo validate recipes/stage1_aux.toml --set data.train=my_nodes.csv
    """
    from lnzoo.data.run_data import load_run_data, plan_folds, recipe_tasks

    r = _load(recipe, set_, quick)
    console.print(f"[green]recipe ok[/]: {recipe} ({r.name}; tasks {', '.join(r.tasks)})")
    tasks = recipe_tasks(r, _host())
    data = load_run_data(r, tasks)
    plan_folds(data.pool, r, tasks)
    _check_model(r, tasks, data)
    if data.skipped:
        err.print(f"[yellow]{len(data.skipped)} bad row(s)/image(s) will be left out[/] (data.skip_bad_rows):\n"
                  + "\n".join(f"  - {escape(p)}" for p in data.skipped[:50]))
    n_pat = len({s.patient for s in data.pool})
    console.print(f"[green]data ok[/]: {len(data.pool)} images of {n_pat} patients for cross-validation"
                  + (f", {len(data.test)} test" if data.test else "")
                  + (f", {len(data.external)} external" if data.external else "") + f" ({data.description})")


def _check_model(r, tasks, data) -> None:
    """Build the recipe's model once, without downloading weights: an unknown timm name, a bad plugin
    argument or views a fusion cannot take fail here as they would at the first fold."""
    import copy

    from lnzoo.model import build_model

    probe = copy.deepcopy(r)
    probe.data["model"]["backbone"] = {**probe.data["model"]["backbone"], "pretrained": False}
    from lnzoo.inputs import fit_inputs
    model = build_model(probe, _host(), tasks, fit_inputs(data.inputs, data.pool) if data.inputs else None)
    if r.data["train"]["method"] != "linear_probe":
        from lnzoo.model import require_trainable
        require_trainable(model)
    backbone = escape(str(r.data['model']['backbone'].get('model_name') or r.data['model']['backbone']['name'])) \
        if model.views else "no image backbone (no view)"
    console.print(f"[green]model ok[/]: {backbone} builds with the recipe's heads and fusion; fusion members "
                  f"{', '.join(model.members)}", highlight=False)


@app.command(cls=_Command)
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
    import signal

    from lnzoo.pipeline import default_out, resumed_recipe, run as run_pipeline
    from lnzoo.rundir import RunDir
    from lnzoo.train.distributed import world
    from lnzoo.ui import RunView

    if nproc != 1:
        _launch_torchrun(nproc)
    if not world().writer:  # a torchrun process beside rank 0: it trains, rank 0 writes and prints
        r = resumed_recipe(RunDir(resume), _host()) if resume is not None else _load(recipe, set_, quick)
        run_pipeline(r, out or default_out(r), host=_host(), n_boot=n_boot, resume=resume is not None)
        return

    if resume is not None:
        if recipe is not None or set_ or quick or out is not None:
            raise UsageError("--resume RUN_DIR continues a run with the recipe it started with; give no RECIPE, "
                             "--set, --quick or --out with it")
        if RunDir(resume).status() == "sweeping":
            raise UsageError(f"--resume {resume}: lnzoo sweep is fitting this run's folds as separate jobs; "
                             f"`lnzoo sweep --resume {RunDir(resume).read_json(RunDir.RUN).get('sweep') or 'SWEEP_DIR'}` "
                             "finishes it")
        r, out = resumed_recipe(RunDir(resume), _host()), resume
    elif recipe is None:
        raise UsageError("give a RECIPE to run, or --resume RUN_DIR to continue an interrupted run")
    else:
        r = _load(recipe, set_, quick)
        out = out or default_out(r)
    console.print(f"[bold]lnzoo run[/] {escape(str(recipe or r.source))}{' --quick' if r.quick else ''}"
                  f"{' (resumed)' if resume else ''} -> {escape(str(out))}", highlight=False)

    def stop(signum, frame):  # a batch scheduler's SIGTERM ends the run like Ctrl-C: saved, resumable
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with RunView(err) as view:
            result = run_pipeline(r, out, on_event=view, host=_host(), n_boot=n_boot, resume=resume is not None)
    except KeyboardInterrupt:
        if RunDir(out).status() == "finished":  # stopped while writing the examples or the report
            err.print(f"[bold yellow]interrupted[/]: the run itself finished; `lnzoo report {escape(str(out))}` writes "
                      "its report.", highlight=False, soft_wrap=True)
        else:
            err.print(f"[bold yellow]interrupted[/]: every finished epoch is saved; `lnzoo run --resume "
                      f"{escape(str(out))}` continues from the last one.", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    _summary_table(result.metrics)
    console.print(f"run directory: {out}\nreport: {result.report}", highlight=False)


def _launch_torchrun(nproc: int) -> None:
    """``lnzoo run --nproc N ...``: the same command under torchrun, N processes on this machine."""
    import os
    import subprocess

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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "lnzoo",
           *rest]
    raise typer.Exit(subprocess.call(cmd))


@app.command(cls=_Command)
@guarded
def evaluate(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory written by lnzoo run.")],
             allow_partial: PartialOpt = False) -> None:
    """Reload each fold's best checkpoint, recompute the held-out metrics and compare with metrics.json.

    Example: lnzoo evaluate runs/stage1_aux-20261201-101500
    """
    from lnzoo.evaluate import evaluate_run

    stored, fresh = evaluate_run(run_dir, _host())
    _summary_table(fresh)
    diffs = _compare(stored.get("cross_validation", {}).get("pooled", {}), fresh["cross_validation"]["pooled"])
    if diffs:
        err.print("[bold red]differs from the stored metrics.json:[/]\n" + "\n".join(diffs[:20]))
        raise typer.Exit(1)
    console.print("[green]reproduced[/]: recomputed metrics match metrics.json")


@app.command(cls=_Command, name="select")
@guarded
def select_cmd(runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Two or more run directories trained on the same "
                                                              "folds (e.g. with cv.folds_file).")],
               out: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Write the chosen folds as a run "
                                                                          "directory here.")] = None,
               as_json: JsonOpt = False, allow_partial: PartialOpt = False) -> None:
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


@app.command(cls=_Command)
@guarded
def synth(out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder to write the phantom into.")],
          patients: Annotated[int, typer.Option(metavar="N", help="Number of patients.")] = 160,
          seed: Annotated[int, typer.Option(metavar="N", help="Seed; the same seed writes the same files.")] = 0,
          difficulty: Annotated[float, typer.Option(metavar="0..1", help="0 easy ... 1 heavily overlapping classes.")] = 0.5) -> None:
    """Write the synthetic lymph node phantom (development/demo data, NOT clinical data).

    Example: lnzoo synth --out phantom --patients 80 --seed 1
    """
    from rich.progress import Progress

    from lnzoo.data.phantom import generate_phantom

    with Progress(console=err) as progress:
        bar = progress.add_task("phantom", total=patients)
        try:
            manifest = generate_phantom(out, patients=patients, seed=seed, difficulty=difficulty,
                                        progress=lambda d, t: progress.update(bar, completed=d, total=t))
        except ValueError as exc:
            raise LnzooError(str(exc)) from None
    console.print(f"phantom written: {manifest} (+ lists/ with the seed-style list files)")


@app.command(cls=_Command, name="report")
@guarded
def report(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory written by lnzoo run.")],
           out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE.html", help="HTML file (default RUN_DIR/report.html).")] = None,
           n_boot: Annotated[int, typer.Option("--n-boot", metavar="N", help="Patient bootstrap resamples for the CIs.")] = N_BOOT,
           aggregate: Annotated[Optional[str], typer.Option(metavar="patient", help="'patient': also score mean probability per patient.")] = None,
           allow_partial: PartialOpt = False) -> None:
    """Write a self-contained HTML report (plots embedded) and evaluation.json for a run.

    Example: lnzoo report runs/RUN --aggregate patient
    """
    from lnzoo.report import write_report

    if aggregate not in (None, "patient"):
        raise UsageError(f"--aggregate {aggregate!r}: the only level is 'patient'")
    path = write_report(run_dir, out, n_boot=n_boot, aggregate=aggregate)
    console.print(f"report: {path}\nnumbers: {path.parent / 'evaluation.json'}")


@app.command(cls=_Command, name="compare")
@guarded
def compare_cmd(a: Annotated[Path, typer.Argument(metavar="A", help="Run directory or prediction CSV (e.g. the model).")],
                b: Annotated[Path, typer.Argument(metavar="B", help="Run directory or prediction CSV (e.g. a reader's calls).")],
                task: Annotated[Optional[str], typer.Option("--task", metavar="TASK", help="Task to compare (default: the main one).")] = None,
                part: Annotated[Optional[str], typer.Option("--part", metavar="cv|test|external", help="cv, test or external.")] = None,
                rule: Annotated[str, typer.Option("--threshold-rule", metavar="0.5|youden|sensitivity", help="0.5, youden or sensitivity.")] = "0.5",
                threshold_a: Annotated[Optional[float], typer.Option("--threshold-a", metavar="T")] = None,
                threshold_b: Annotated[Optional[float], typer.Option("--threshold-b", metavar="T")] = None,
                positive: Annotated[Optional[str], typer.Option("--positive", metavar="CLASS", help="Positive class of a binary task.")] = None,
                intersect: Annotated[bool, typer.Option("--intersect", metavar="", help="Compare on the common cases only.")] = False,
                n_boot: Annotated[int, typer.Option("--n-boot", metavar="N")] = N_BOOT, as_json: JsonOpt = False,
                allow_partial: PartialOpt = False) -> None:
    """Compare two models (or a model and a reader): paired DeLong for AUC, McNemar at the operating points.

    Example: lnzoo compare runs/A runs/B --threshold-rule youden
    """
    from lnzoo.evaluation.compare import as_json as to_json, compare, format_table

    result = compare(a, b, task, rule, n_boot, threshold_a=threshold_a, threshold_b=threshold_b,
                     intersect=intersect, part=part, positive=positive)
    if as_json:
        print(to_json(result))
    else:
        console.print(format_table(result))


def _summary_table(metrics: dict) -> None:
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


from lnzoo import cli_models  # noqa: E402,F401 - registers explain, predict, export and serve on ``app``
from lnzoo import cli_sweep  # noqa: E402,F401 - registers sweep on ``app``


def main() -> None:
    """Console entry point: load plugins (warning about broken ones), then dispatch."""
    args = sys.argv[1:]
    if args[:1] != ["--version"]:
        from lnzoo.plugins import STRICT_ENV, get_host
        try:
            for p in get_host().failures:
                err.print("[yellow]warning:[/] " + escape(f"plugin {p.name!r} from {p.distribution} {p.version} was "
                          f"skipped: {p.error}. Set {STRICT_ENV}=1 to make this fatal."), highlight=False, soft_wrap=True)
        except LnzooError as exc:  # strict mode
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
    app()
