"""An experiment tracker's checks: built by its factory for a run directory lnzoo has claimed, it follows a small
run's events (every kind of event, undefined values, events it does not know) and is finished with any status,
resumes a run in a new process's tracker, and leaves the run's own files as lnzoo wrote them.

The tracker runs for real: into a temporary folder, one run directory per check (an MLflow store beside them is
shared by one component's checks). A tracker whose package is missing (``TrackerUnavailable``) is not checked:
its checks are skipped with what to install. A tracker configured by the environment (``MLFLOW_TRACKING_URI``)
records where that points, so a plugin's tests should point it at a scratch store."""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lnzoo import contracts, events
from lnzoo.testing._component import Component
from lnzoo.testing._registry import NotApplicable, checks_of

check = checks_of("tracker")

# the recipe every tracker is checked with: the phantom's stage-I lists, timm's tiny test model
RECIPE = {"name": "lnzoo-kit", "tasks": {"main": "malignancy", "task_weights": {"malignancy": 1.0}},
          "data": {"phantom": {"source": "stage1_lists"}},
          "model": {"backbone": {"name": "timm", "model_name": "test_resnet"}}}
FOLDS, EPOCHS = 2, 2
_ROOT: list[Path] = []


@dataclasses.dataclass(frozen=True)
class FutureEvent:
    """An event of a kind lnzoo may add after the tracker was written: a tracker passes over what it does not know."""

    what: str
    value: float


def _root(c: Component) -> Path:
    """This component's folder in the process's kit folder (removed when the process ends)."""
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="lnzoo-kit-trackers-")))
        atexit.register(shutil.rmtree, _ROOT[0], True)
    folder = _ROOT[0] / re.sub(r"[^A-Za-z0-9_.=-]+", "_", c.label)
    folder.mkdir(exist_ok=True)
    return folder


def _recipe() -> Any:
    from lnzoo.recipe import resolve

    return resolve(RECIPE)


@contextlib.contextmanager
def _run(c: Component, name: str, resume: Path | None = None, status: str = "finished") -> Iterator[Path]:
    """A run directory claimed as ``lnzoo run`` claims it (``resume``: the same one again, as ``--resume``), its
    recipe written; released with ``status`` when the block ends."""
    from lnzoo.rundir import RunDir

    path = resume or Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_root(c)))
    rd = RunDir(path, writer=True)
    with rd.writing(resume=resume is not None, done=status):
        if resume is None:
            rd.write_recipe(_recipe().to_toml())
        yield path


def _build(c: Component, run_dir: Path) -> Any:
    from lnzoo.track import TrackerUnavailable

    try:
        return c.entry().build(run_dir, _recipe(), **c.factory_options())
    except TrackerUnavailable as exc:
        raise NotApplicable(f"the tracker cannot work here: {exc}") from None


def _epoch(fold: int, epoch: int, defined: bool = True) -> list[Any]:
    """The events of one epoch (1-based) of a fold: its steps, then its history row."""
    loss = 0.7 - 0.05 * epoch - 0.01 * fold
    auc = 0.6 + 0.05 * epoch if defined else math.nan  # a one-class validation part leaves its AUC undefined
    row = {"epoch": epoch, "train_loss": loss, "val_loss": loss + 0.02, "val_auc": auc, "lr": 1e-3 / epoch}
    return [*(events.StepEnded(fold, epoch - 1, EPOCHS, step, 2, loss) for step in (1, 2)),
            events.EpochEnded(fold, EPOCHS, row, auc)]


def _fold(fold: int, epochs: range = range(1, EPOCHS + 1), defined: bool = True) -> list[Any]:
    metrics = {"auc": 0.7 if defined else math.nan, "balanced_accuracy": 0.65, "n": 10,
               "auc_per_class": {"benign": 0.7, "malignant": 0.7}, "confusion_matrix": [[4, 1], [2, 3]]}
    return [events.FoldStarted(fold, FOLDS, 16, 4, 10, "best"),
            *(e for epoch in epochs for e in _epoch(fold, epoch, defined)), events.FoldEnded(fold, metrics)]


def _end(run_dir: Path) -> events.RunEnded:
    """The run's end: metrics.json and report.html written, as lnzoo writes them before RunEnded."""
    from lnzoo.files import write_atomic
    from lnzoo.rundir import RunDir

    metrics = {"recipe": RECIPE["name"], "main_task": "malignancy", "folds_run": list(range(FOLDS)),
               "cross_validation": {"pooled": {"malignancy": {"n": 20, "auc": 0.71, "balanced_accuracy": 0.66,
                                                              "confusion_matrix": [[8, 2], [4, 6]]}}}}
    rd = RunDir(run_dir, writer=True)
    rd.write_json(rd.METRICS, metrics)
    report = write_atomic(run_dir / "report.html", "<!doctype html><title>lnzoo kit run</title><p>AUC 0.71</p>\n")
    return events.RunEnded(str(run_dir), metrics, str(report))


def run_events(run_dir: Path) -> list[Any]:
    """Every kind of :mod:`lnzoo.events` event, in the order of a two-fold run of two epochs each."""
    first = [events.Note("training on the phantom"), events.Progress("phantom", 1, 1),
             events.InitLoaded({"loaded": 10, "missing": [], "unexpected": []})]
    return [*first, *_fold(0), *_fold(1), _end(run_dir)]


def _follow(tracker: Any, evs: list[Any], resume: bool = False, status: str | None = "finished") -> None:
    """Start, every event, finish with ``status``; a tracker that raises is finished "failed" (as lnzoo finishes
    it), its own error the one reported."""
    tracker.start(resume)
    try:
        for event in evs:
            tracker.event(event)
    except BaseException:
        with contextlib.suppress(Exception):
            tracker.finish("failed")
        raise
    if status is not None:
        tracker.finish(status)


@check("builds")
def _builds(c: Component) -> None:
    with _run(c, "builds") as run_dir:
        tracker = _build(c, run_dir)
    assert tracker is not None, "the factory returned None: it must return the tracker"


@check("satisfies_protocol")
def _protocol(c: Component) -> None:
    with _run(c, "protocol") as run_dir:
        tracker = _build(c, run_dir)
    missing = contracts.missing_members(tracker, contracts.Tracker)
    assert not missing, f"{type(tracker).__name__} does not satisfy lnzoo.contracts.Tracker: missing {missing}"
    uncallable = [n for n in ("start", "event", "finish") if not callable(getattr(tracker, n))]
    assert not uncallable, f"not methods: {uncallable}"


@check("follows_a_run")
def _follows(c: Component) -> None:
    with _run(c, "follows") as run_dir:
        tracker = _build(c, run_dir)
        _follow(tracker, run_events(run_dir))


@check("takes_undefined_values")
def _undefined(c: Component) -> None:  # NaN: a validation AUC of a one-class part, a fold whose AUC is undefined
    with _run(c, "undefined") as run_dir:
        tracker = _build(c, run_dir)
        _follow(tracker, [*_fold(0, defined=False), _end(run_dir)])


@check("passes_over_unknown_events")
def _unknown(c: Component) -> None:
    with _run(c, "unknown") as run_dir:
        tracker = _build(c, run_dir)
        _follow(tracker, [FutureEvent("calibration", 0.5), *_fold(0), FutureEvent("audit", 1.0), _end(run_dir)])


@check("finishes_with_every_status")
def _statuses(c: Component) -> None:
    from lnzoo.track import STATUSES

    for status in STATUSES:  # after an epoch, and as soon as it started (a run that fails before its first epoch)
        for evs in (_epoch(0, 1), []):
            with _run(c, status, status=status) as run_dir:
                tracker = _build(c, run_dir)
                try:
                    _follow(tracker, evs, status=status)
                except Exception as exc:
                    raise AssertionError(f"finish({status!r}) after {len(evs)} events: "
                                         f"{type(exc).__name__}: {exc}") from exc


@check("resumes_in_a_new_tracker")
def _resumes(c: Component) -> None:  # Ctrl-C in fold 0's second epoch, then lnzoo run --resume: a new process
    with _run(c, "resumes", status="interrupted") as run_dir:
        _follow(_build(c, run_dir), _fold(0, range(1, 2))[:-1], status="interrupted")
    with _run(c, "resumes", resume=run_dir):
        _follow(_build(c, run_dir), [*_fold(0, range(2, EPOCHS + 1)), *_fold(1), _end(run_dir)], resume=True)


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    from lnzoo.integrity import MANIFEST

    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, ".lock")}


def _without_tracking(text: bytes) -> dict[str, Any]:
    doc = json.loads(text)
    doc.pop("tracking", None)
    return doc


@check("leaves_the_run_alone")
def _alone(c: Component) -> None:
    """The run directory is lnzoo's record: a tracker may add its own files, and keep its state in run.json's
    ``tracking`` entry (``lnzoo.track.remember``), but changes and removes nothing lnzoo wrote."""
    with _run(c, "alone") as run_dir:  # judged inside: lnzoo itself refuses a run.json changed behind its back
        tracker = _build(c, run_dir)
        evs = run_events(run_dir)  # metrics.json and report.html are written here, before the tracker starts
        before = _snapshot(run_dir)
        _follow(tracker, evs)
        after = _snapshot(run_dir)
        removed = sorted(set(before) - set(after))
        changed = sorted(name for name in set(before) & set(after) if before[name] != after[name] and not (
            name == "run.json" and _without_tracking(before[name]) == _without_tracking(after[name])))
        assert not removed, f"the tracker removed files of the run: {removed}"
        assert not changed, (f"the tracker changed files of the run: {changed} (keep state in run.json through "
                             "lnzoo.track.remember, which writes its 'tracking' entry only)")
