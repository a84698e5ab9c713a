"""``lnzoo.run``: everything ``lnzoo run`` does, as one library call that emits typed events.

recipe -> data -> patient-level folds -> fit each fold -> calibration -> predictions -> metrics ->
Grad-CAM examples -> report, all written through :class:`lnzoo.rundir.RunDir`. The CLI is one
caller of :func:`run`; a script or notebook is another, and gets the same run directory.

The modules: :mod:`.folds` (a run's folds in one process, or beside torchrun's rank 0), :mod:`.fold` (one fold:
fit, calibrate, predict its held-out patients), :mod:`.jobs` (a run's folds as separate jobs for lnzoo sweep).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnzoo import events
from lnzoo.errors import UsageError
from lnzoo.rundir import RunDir

from lnzoo.pipeline.fold import _with_calibration  # noqa: F401  (a finished fold, brought up to date)
from lnzoo.pipeline.folds import _load_data, fit_folds, resumed_recipe  # noqa: F401
from lnzoo.pipeline.jobs import FoldBusy, fit_fold_job, prepare_run  # noqa: F401

__all__ = ["run", "RunResult", "fit_folds", "default_out", "prepare_run", "fit_fold_job", "FoldBusy"]


@dataclass
class RunResult:
    """What a run produced: its directory, its metrics (metrics.json), its report and Grad-CAM examples."""

    out: Path
    metrics: dict[str, Any]
    report: Path | None = None
    examples: list[Path] = field(default_factory=list)
    wall_seconds: float = 0.0


def default_out(recipe) -> Path:
    """``runs/<name>[-quick]-<time>``."""
    return Path("runs") / f"{recipe.name}{'-quick' if recipe.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(recipe, out: str | Path | None = None, on_event: Callable[[Any], None] | None = None, *,
        quick: bool = False, sets: Sequence[str] | None = None, host=None, report: bool = True,
        n_boot: int | None = None, resume: bool = False) -> RunResult:
    """Train and evaluate a recipe (a path or a loaded :class:`lnzoo.recipe.Recipe`) into the run directory
    ``out`` (default :func:`default_out`): every fold, calibration, predictions, metrics, the Grad-CAM
    examples and the HTML report. ``on_event`` receives the :mod:`lnzoo.events` as the run goes, and so do the
    trackers the recipe names in ``train.track`` (:mod:`lnzoo.track`), after it.

    ``resume=True`` continues the interrupted run in ``out`` with the recipe it started with (pass
    ``recipe=None``): finished folds are kept, the unfinished one goes on after its last finished epoch."""
    from lnzoo.recipe import Recipe, load_recipe

    if host is None:
        from lnzoo.plugins import get_host
        host = get_host()
    if resume:
        if out is None:
            raise UsageError("resume: give the run directory to continue")
        recipe = recipe if isinstance(recipe, Recipe) else resumed_recipe(RunDir(out), host)
    elif not isinstance(recipe, Recipe):
        recipe = load_recipe(Path(recipe), sets=list(sets or []), quick=quick, host=host)
    emit = on_event or (lambda event: None)
    out = Path(out) if out is not None else default_out(recipe)
    from lnzoo.track import open_tracking
    tracking = open_tracking(recipe, out, emit, host, resume)  # train.track: checked and built before training
    if tracking is None:
        return _run(recipe, out, emit, host, report, n_boot, resume)
    with tracking.following():  # the trackers see every event after the caller; finished however the run ends
        return _run(recipe, out, tracking, host, report, n_boot, resume)


def _run(recipe, out: Path, emit: Callable[[Any], None], host, report: bool, n_boot: int | None,
         resume: bool) -> RunResult:
    t0 = time.perf_counter()
    if recipe.config.pretrain.method:  # a self-supervised pretraining: a backbone, no folds (lnzoo.pretrain)
        from lnzoo.pretrain import pretrain
        summary = pretrain(recipe, host, out, emit, resume=resume)
        return RunResult(out, summary, out / RunDir.REPORT, [], round(time.perf_counter() - t0, 1))
    metrics = fit_folds(recipe, host, out, emit, resume=resume)
    from lnzoo.train import distributed
    if distributed.world().active:
        distributed.stop()  # every collective is done
        if not distributed.world().writer:  # beside rank 0, which writes the examples and the report
            return RunResult(out, metrics, None, [], round(time.perf_counter() - t0, 1))
    examples: list[Path] = []
    try:
        from lnzoo.explain import explain_examples
        examples = explain_examples(out, host=host)
    except Exception as exc:  # noqa: BLE001 - the run itself is done; its report must still be written
        emit(events.Note(f"Grad-CAM examples for the report failed ({type(exc).__name__}: {exc})", "warning"))
    report_path = None
    if report:
        from lnzoo.report import write_report
        report_path = write_report(out, **({"n_boot": n_boot} if n_boot is not None else {}))
    result = RunResult(out, metrics, report_path, examples, round(time.perf_counter() - t0, 1))
    emit(events.RunEnded(str(out), metrics, str(report_path) if report_path else None))
    return result
