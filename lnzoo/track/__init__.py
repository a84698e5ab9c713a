"""Experiment tracking: the trackers named in ``train.track`` follow a run through its :mod:`lnzoo.events`.

A tracker is a plugin (kind "tracker", hook ``lnzoo_register_trackers``; the built-ins are ``mlflow`` and
``tensorboard``) whose factory ``factory(run_dir, recipe, **kw)`` returns a :class:`lnzoo.contracts.Tracker`.
:func:`open_tracking` checks the names and builds the trackers before anything is trained; :class:`Tracking`
stands between the pipeline and the caller's ``on_event``: every event goes to the caller first, then to each
tracker; a fold fitted where a tracker was not (a job of ``lnzoo sweep``; :class:`lnzoo.events.FoldKept`) is replayed
to it from the fold's record, once (run.json's ``tracked_folds`` says which folds each tracker has). A tracker is
started on the run's first event (the run directory is claimed and its recipe written by
then), and finished when the run ends. A tracker that raises, when built, started, on an event or at the end, is
reported once by a warning Note and records nothing more; the run itself never stops for it.

The helpers every tracker shares are here too: the resolved recipe as flat parameters (:func:`recipe_params`),
the metrics of an epoch and of a fold (:func:`epoch_metrics`, :func:`fold_metrics`), the final metrics with their
confidence intervals (:func:`final_metrics`), the report's files (:func:`report_files`), and a tracker's state
kept in the run's run.json, where ``--resume`` finds it (:func:`remember`, :func:`recall`).
"""
from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lnzoo import events
from lnzoo.errors import LnzooError, RecipeError, did_you_mean

INSTALL_HINT = 'pip install "lnzoo[track]"'
STATUSES = ("finished", "failed", "interrupted")

__all__ = ["TrackerUnavailable", "Tracking", "open_tracking", "track_problems", "missing_extra", "recipe_params",
           "epoch_metrics", "fold_metrics", "final_metrics", "report_files", "remember", "recall", "metric_name",
           "INSTALL_HINT", "STATUSES"]


class TrackerUnavailable(LnzooError):
    """A tracker cannot work in this environment (a package it needs is missing); the message says what to do."""


def missing_extra(package: str, tracker: str) -> TrackerUnavailable:
    """The error a built-in tracker raises when its optional package is not installed."""
    return TrackerUnavailable(f"the {tracker} tracker needs {package}, which is not installed: {INSTALL_HINT}")


# --- the names in train.track -------------------------------------------------------------------------------

def track_problems(names: Any, registered: Iterable[str]) -> list[str]:
    """What is wrong with ``train.track`` (an empty list when nothing is): each entry must name a registered
    tracker, once. Every problem names the registered trackers."""
    known = sorted(registered)
    listed = ", ".join(known) if known else "none (install a tracker plugin)"
    if not isinstance(names, list):
        return [f"train.track: expected a list of tracker names, e.g. [\"mlflow\"], got {names!r}; "
                f"registered trackers: {listed}"]
    problems, seen = [], set()
    for name in names:
        if not isinstance(name, str) or name not in known:
            close = did_you_mean(name, known) if isinstance(name, str) and known else ""
            hint = close if close.startswith("; did you mean") else ""
            problems.append(f"train.track: unknown tracker {name!r}{hint}; registered trackers: {listed}")
        elif name in seen:
            problems.append(f"train.track: tracker {name!r} is named twice")
        else:
            seen.add(name)
    return problems


def tracker_names(recipe, host) -> list[str]:
    """The recipe's ``train.track``, checked against the registered trackers (a RecipeError, exit 2, otherwise)."""
    names = (recipe.data.get("train") or {}).get("track", [])
    problems = track_problems(names, host.registry("tracker").names())
    if problems:
        raise RecipeError(problems, str(recipe.source) if recipe.source else None)
    return list(names)


# --- the trackers of one run ---------------------------------------------------------------------------------

class Tracking:
    """``on_event`` for the pipeline when the recipe names trackers: the caller's ``emit`` sees every event first,
    then each tracker that still works; :meth:`close` finishes them with how the run ended.

    What each tracker was given of the run's folds is kept in run.json (``given_to_trackers``: per tracker, the last
    epoch it had of each fold and the folds it had whole). A fold fitted where the tracker was not
    (:class:`lnzoo.events.FoldKept`: a job of ``lnzoo sweep``, a process before ``--resume``) is replayed to it from
    the fold's record, only what it lacks; ``start(resume)`` is True only for a tracker that followed the run before.
    """

    def __init__(self, trackers: Mapping[str, Any], emit: Callable[[Any], None], resume: bool = False,
                 run_dir: str | Path | None = None):
        self._emit = emit
        self._resume = resume
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self._waiting = dict(trackers)  # built, not started yet
        self._live: dict[str, Any] = {}  # started, receiving events
        self._open: dict[str, Any] = {}  # started, to be finished (a tracker that failed on an event too)
        self.failed: dict[str, str] = {}  # name -> what went wrong (reported once)
        self._given: dict[str, dict[str, Any]] | None = None  # run.json's given_to_trackers, read when first needed
        self._kept: tuple[Any, tuple[Any, ...] | None] = (None, None)  # a FoldKept and its replay, built once
        self._unsaved = False

    @property
    def names(self) -> list[str]:
        return [*self._waiting, *self._live]

    def __call__(self, event: Any) -> None:
        self._emit(event)
        for name in list(self._waiting):
            tracker = self._waiting.pop(name)
            before = self._run_dir is None or name in self.given() or bool(recall(self._run_dir, name))
            if self._call(name, "when it started", tracker.start, self._resume and before):
                self._live[name] = self._open[name] = tracker
                self.given().setdefault(name, {"epochs": {}, "whole": []})
                self._unsaved = True
        for name, tracker in list(self._live.items()):
            if isinstance(event, events.FoldKept):
                self._replay(name, tracker, event)
            else:
                self._deliver(name, tracker, event)
        self._save()

    def given(self) -> dict[str, dict[str, Any]]:
        """Tracker -> ``{"epochs": {fold: the last epoch it had}, "whole": [the folds it had to their end]}``."""
        if self._given is None:
            from lnzoo.rundir import RunDir

            kept = RunDir(self._run_dir).read_json(RunDir.RUN).get("given_to_trackers") if self._run_dir else None
            self._given = {name: {"epochs": dict(g.get("epochs") or {}), "whole": list(g.get("whole") or [])}
                           for name, g in (kept or {}).items() if isinstance(g, Mapping)}
        return self._given

    def _deliver(self, name: str, tracker: Any, event: Any) -> bool:
        if not self._call(name, f"on {type(event).__name__}", tracker.event, event):
            return False
        mine = self.given()[name]
        if isinstance(event, events.FoldStarted):
            mine["epochs"].setdefault(str(event.fold), 0)
        elif isinstance(event, events.EpochEnded):
            fold = str(event.fold)
            mine["epochs"][fold] = max(int(event.row.get("epoch", 0)), int(mine["epochs"].get(fold, 0)))
        elif isinstance(event, events.FoldEnded) and event.fold not in mine["whole"]:
            mine["whole"].append(event.fold)
        else:
            return True
        self._unsaved = True
        return True

    def _replay(self, name: str, tracker: Any, event: events.FoldKept) -> None:
        """What ``name`` lacks of a kept fold: its start, the epochs after the last it had, its end."""
        mine = self.given()[name]
        fold = str(event.fold)
        if event.fold in mine["whole"]:
            return
        for kept in self._replayed(event):
            if isinstance(kept, events.FoldStarted) and fold in mine["epochs"]:
                continue
            if isinstance(kept, events.EpochEnded) and int(kept.row.get("epoch", 0)) <= mine["epochs"].get(fold, 0):
                continue
            if not self._deliver(name, tracker, kept):
                return

    def _replayed(self, event: events.FoldKept) -> tuple[Any, ...]:
        """The kept fold's events, rebuilt once for every tracker; none (with a warning) when its record cannot be
        read: the trackers then lack that fold's curves, and the run goes on."""
        if self._kept[0] is not event:
            try:
                replay: tuple[Any, ...] | None = tuple(event.replay())
            except Exception as exc:  # noqa: BLE001 - tracking never stops the run
                replay = None
                self._emit(events.Note(f"fold {event.fold} could not be replayed to the trackers ({type(exc).__name__}:"
                                       f" {exc}); they lack its curves and held-out figures", "warning"))
            self._kept = (event, replay)
        return self._kept[1] or ()

    def _save(self) -> None:
        """Keep :meth:`given` in run.json, where the next ``--resume`` reads it."""
        if not self._unsaved or self._run_dir is None:
            return
        self._unsaved = False
        from lnzoo.rundir import RunDir

        try:
            RunDir(self._run_dir, writer=True).update_run(given_to_trackers=self.given())
        except Exception as exc:  # noqa: BLE001 - tracking never stops the run; lnzoo's own next write will say more
            self._emit(events.Note(f"what the trackers were given could not be written to run.json "
                                   f"({type(exc).__name__}: {exc}); a later --resume may send them events again",
                                   "warning"))

    @contextlib.contextmanager
    def following(self) -> Iterator["Tracking"]:
        """Around the run: :meth:`close` with "finished" when the block ends, "interrupted" on Ctrl-C (or a
        scheduler's SIGTERM, which lnzoo turns into it), "failed" when it raises anything else."""
        try:
            yield self
        except KeyboardInterrupt:
            self.close("interrupted")
            raise
        except BaseException:
            self.close("failed")
            raise
        self.close("finished")

    def close(self, status: str) -> None:
        """Finish every started tracker (``status``: one of :data:`STATUSES`); never raises."""
        self._waiting.clear()
        for name, tracker in list(self._open.items()):  # one that failed on an event is closed too, quietly
            self._call(name, "when it finished", tracker.finish, status)
        self._live.clear()
        self._open.clear()

    def _call(self, name: str, when: str, fn: Callable[..., Any], *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except (Exception, SystemExit) as exc:  # a tracker never stops the run; Ctrl-C still does
            self._fail(name, when, exc)
            return False

    def _fail(self, name: str, when: str, exc: BaseException) -> None:
        self._live.pop(name, None)
        if name in self.failed:
            return
        self.failed[name] = f"{type(exc).__name__}: {exc}"
        self._emit(events.Note(f"tracker {name!r} failed {when} ({self.failed[name]}); it records nothing more of "
                               "this run, which goes on", "warning"))


def open_tracking(recipe, out: str | Path, emit: Callable[[Any], None], host, resume: bool = False) -> Tracking | None:
    """The trackers of ``train.track``, checked (an unknown name: RecipeError) and built before training; None when
    the recipe names none, or in a torchrun process other than rank 0 (only the process that writes the run
    tracks it). A tracker that cannot be built (its extra not installed) is reported by a warning Note and left
    out."""
    names = tracker_names(recipe, host)
    if not names:
        return None
    from lnzoo.train.distributed import world

    if not world().writer:
        return None
    from lnzoo.contracts import Tracker, missing_members

    built: dict[str, Any] = {}
    for name in names:
        try:
            tracker = host.get("tracker", name).build(Path(out), recipe)
        except TrackerUnavailable as exc:
            emit(events.Note(f"tracker {name!r} is off for this run: {exc}", "warning"))
            continue
        except (Exception, SystemExit) as exc:
            emit(events.Note(f"tracker {name!r} is off for this run: it could not be built "
                             f"({type(exc).__name__}: {exc})", "warning"))
            continue
        missing = missing_members(tracker, Tracker)
        if missing:
            emit(events.Note(f"tracker {name!r} is off for this run: its factory returned a "
                             f"{type(tracker).__name__} without {', '.join(missing)}", "warning"))
            continue
        built[name] = tracker
    return Tracking(built, emit, resume, out)


# --- what trackers record ------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- /]")


def metric_name(*parts: Any) -> str:
    """A metric or parameter name from its parts, joined by "/", in the characters every tracker accepts."""
    return "/".join(_UNSAFE.sub("_", str(p)) for p in parts if p is not None and str(p) != "")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _leaves(obj: Any, prefix: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], float]]:
    """The finite numbers of a nested dict, each with its path (lists, such as a confusion matrix, left out)."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _leaves(value, (*prefix, str(key)))
    else:
        number = _number(obj)
        if number is not None and prefix:
            yield prefix, number


def recipe_params(recipe) -> dict[str, str]:
    """The resolved recipe as parameters: dotted keys (``train.lr``), values as text (lists and empty tables as
    JSON); unset (None) values left out, as recipe.toml leaves them out."""
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif value is not None:
            out[_UNSAFE.sub("_", key)] = value if isinstance(value, str) else json.dumps(value, default=str)
    walk(recipe.data, "")
    return out


def epoch_metrics(event: events.EpochEnded) -> tuple[int, dict[str, float]]:
    """(step, metrics) of an epoch's history row: step = the epoch (1-based); metrics ``fold{k}/train_loss``,
    ``fold{k}/val_loss``, ``fold{k}/val_<monitor>``, ``fold{k}/lr`` (undefined values, NaN, left out)."""
    step = int(event.row.get("epoch", 0))
    return step, {metric_name(f"fold{event.fold}", key): number for key, value in event.row.items()
                  if key != "epoch" and (number := _number(value)) is not None}


def fold_metrics(event: events.FoldEnded) -> dict[str, float]:
    """A finished fold's held-out metrics of the main task: ``fold{k}/held_out/<metric>``."""
    return {metric_name(f"fold{event.fold}", "held_out", *path): v for path, v in _leaves(event.metrics)}


def final_metrics(run_dir: str | Path, metrics: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The run's final metrics, from its evaluation.json when the report was written (with the confidence
    intervals): ``final/<task>/<level>/<part>/<metric>``, its bounds ``<metric>_lo`` / ``<metric>_hi``, DeLong's
    AUC interval ``auc_delong_lo`` / ``_hi``, and the folds' mean and SD ``final/<task>/<level>/cv_mean/<metric>``,
    ``cv_sd/<metric>``. Without a report, from metrics.json (``metrics``, or read from the run): the pooled
    cross-validation figures, ``final/<task>/image/cv/<metric>``, without intervals."""
    from lnzoo.rundir import RunDir

    rd = RunDir(run_dir)
    evaluation = rd.read_json(rd.EVALUATION) if (rd / rd.EVALUATION).is_file() else {}
    out: dict[str, float] = {}
    for task, entry in (evaluation.get("tasks") or {}).items():
        for level, lv in (entry.get("levels") or {}).items():
            for part, figures in (lv.get("parts") or {}).items():
                base = ("final", task, level, part)
                for path, v in _leaves(figures.get("metrics") or {}):
                    out[metric_name(*base, *path)] = v
                for key in ("n_patients",):
                    if _number(figures.get(key)) is not None:
                        out[metric_name(*base, key)] = float(figures[key])
                for metric, ci in (figures.get("ci") or {}).items():
                    for bound in ("lo", "hi"):
                        if isinstance(ci, Mapping) and _number(ci.get(bound)) is not None:
                            out[metric_name(*base, f"{metric}_{bound}")] = float(ci[bound])
                delong = figures.get("auc_delong") or {}
                for bound in ("lo", "hi"):
                    if _number(delong.get(bound)) is not None:
                        out[metric_name(*base, f"auc_delong_{bound}")] = float(delong[bound])
            for metric, stats in (lv.get("cv_mean_sd") or {}).items():
                for stat in ("mean", "sd"):
                    if isinstance(stats, Mapping) and _number(stats.get(stat)) is not None:
                        out[metric_name("final", task, level, f"cv_{stat}", metric)] = float(stats[stat])
    if out:
        return out
    if metrics is None:
        metrics = rd.read_json(rd.METRICS)
    pooled = (metrics.get("cross_validation") or {}).get("pooled") or {}
    return {metric_name("final", task, "image", "cv", *path): v
            for task, figures in pooled.items() for path, v in _leaves(figures)}


REPORT_FILES = ("report.html", "evaluation.json", "tripod_ai.md", "MODEL_CARD.md", "metrics.json", "recipe.toml")


def report_files(run_dir: str | Path, report: str | Path | None = None) -> list[Path]:
    """The files a tracker keeps of a finished run, those present: the report (report.html, or the path RunEnded
    gives), evaluation.json and tripod_ai.md beside it, the model card (MODEL_CARD.md) when there is one,
    metrics.json and recipe.toml."""
    run_dir = Path(run_dir)
    page = Path(report) if report else run_dir / REPORT_FILES[0]
    candidates = [page, *(page.parent / name for name in REPORT_FILES[1:3]), *(run_dir / n for n in REPORT_FILES[3:])]
    return [path for path in candidates if path.is_file()]


# --- a tracker's state in run.json ---------------------------------------------------------------------------

def recall(run_dir: str | Path, tracker: str) -> dict[str, Any]:
    """What ``tracker`` remembered of this run (``run.json``'s ``tracking.<tracker>``), {} when nothing."""
    from lnzoo.rundir import RunDir

    rd = RunDir(run_dir)
    state = (rd.read_json(rd.RUN).get("tracking") or {}).get(tracker)
    return dict(state) if isinstance(state, Mapping) else {}


def remember(run_dir: str | Path, tracker: str, **state: Any) -> None:
    """Keep ``state`` (JSON values) for ``tracker`` in the run's run.json, where ``--resume`` finds it; only the
    process writing the run calls this (trackers run there)."""
    from lnzoo.rundir import RunDir

    rd = RunDir(run_dir, writer=True)
    tracking = dict(rd.read_json(rd.RUN).get("tracking") or {})
    tracking[tracker] = {**dict(tracking.get(tracker) or {}), **state}
    rd.update_run(tracking=tracking)
