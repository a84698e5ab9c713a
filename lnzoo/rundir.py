"""The one owner of a run directory's layout: every file a run writes is written and read here.

::

    RUN_DIR/
      recipe.toml         the fully resolved recipe          run.json        wall time, device, versions
      folds.csv           patient -> fold                    metrics.json    metrics of the run
      predictions.csv     one row per image and part         evaluation.json CIs, operating points (report)
      report.html         the self-contained report          explain/        Grad-CAM examples of the report
      selection.json      (lnzoo select only)
      fold{k}/best.safetensors + best.json, last.*, history.csv
      integrity.json      the sha256 of every file above: readers refuse one that differs (lnzoo.integrity)

A run with any ``cv.run_folds`` is read the same way: the folds are the ``fold{k}`` folders that hold
a best checkpoint, never assumed to start at 0.

Every file is written atomically (a temporary file, fsync, rename), so a crash or a full disk leaves the
previous version or nothing, never half a file. A run holds ``.lock`` while it writes; ``run.json`` says
its status (running, interrupted, failed, finished, or sweeping while lnzoo sweep fits its folds as separate
jobs), and readers refuse a run that did not finish unless
the caller allows partial runs (:func:`partial_allowed`).
"""
from __future__ import annotations

import contextlib
import contextvars
import csv
import io
import json
import os
import re
import socket
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lnzoo.errors import UsageError
from lnzoo.files import OutputError, csv_text, write_atomic  # noqa: F401  (re-exported)
from lnzoo.integrity import read_text

NAN = float("nan")
_FOLD = re.compile(r"fold(\d+)")
STATUSES = ("running", "interrupted", "failed", "finished", "sweeping")  # sweeping: its folds are separate jobs
_partial = contextvars.ContextVar("lnzoo_partial_runs", default=False)


@contextlib.contextmanager
def partial_allowed(allow: bool = True) -> Iterator[None]:
    """Within this block, readers accept run directories that did not finish (``--allow-partial``)."""
    token = _partial.set(allow)
    try:
        yield
    finally:
        _partial.reset(token)


class RunLocked(UsageError):
    """Another process is writing this run directory."""


class RunDir:
    """A run directory: its paths, and the readers and writers of each of its files."""

    RECIPE, FOLDS, PREDICTIONS, METRICS, RUN = "recipe.toml", "folds.csv", "predictions.csv", "metrics.json", "run.json"
    EVALUATION, REPORT, EXPLAIN, SELECTION = "evaluation.json", "report.html", "explain", "selection.json"
    INPUTS = "inputs.json"  # the inputs' named features between the main task's classes (the report's table)
    KEPT_FOLD_FILES = ("best.safetensors", "best.json", "history.csv")  # what a fold's kept model needs

    LOCK = ".lock"

    def __init__(self, path: str | Path, writer: bool = False):
        self.path = Path(path)
        self.writer = writer  # the run writing this folder reads its own unfinished files
        self._lock = None
        self._checked = False

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # -- folds and checkpoints ---------------------------------------------------------------------
    def fold_dir(self, k: int) -> Path:
        return self.path / f"fold{k}"

    def checkpoint(self, k: int, kind: str = "best") -> Path:
        """The weights file of fold k (``kind`` "best" or "last"); its sidecar is the same stem + .json."""
        return self.fold_dir(k) / f"{kind}.safetensors"

    def folds(self) -> list[int]:
        """The folds that hold a best checkpoint, in order."""
        self.check_finished()
        found = [int(m.group(1)) for p in self.path.glob("fold*/best.safetensors")
                 if (m := _FOLD.fullmatch(p.parent.name))]
        return sorted(found)

    def checkpoints(self, kind: str = "best") -> list[Path]:
        folds = self.folds()
        if not folds:
            raise UsageError(f"{self.path}: no fold*/best.safetensors inside; is it a run directory?")
        return [self.checkpoint(k, kind) for k in folds]

    def first_fold(self) -> int:
        """The lowest-numbered fold that was run (explain and init_from use its model)."""
        self.checkpoints()  # raises when there is none
        return self.folds()[0]

    def record(self, k: int, kind: str = "best"):
        """Fold k's model record (:class:`lnzoo.record.ModelRecord`), verified against its weights."""
        from lnzoo.record import ModelRecord

        path = self.checkpoint(k, kind).with_suffix(".json")
        if not path.is_file():
            raise UsageError(f"{self.path}: fold {k} has no {path.name} (was the run interrupted?)")
        return ModelRecord.read(path)

    def save_checkpoint(self, k: int, kind: str, model_or_state: Any, meta: Mapping[str, Any]) -> Path:
        from lnzoo.checkpoint import save_checkpoint
        return save_checkpoint(model_or_state, self.fold_dir(k) / kind, dict(meta))

    def tasks_meta(self) -> dict[str, dict[str, Any]]:
        """Task -> {classes, positive, aliases} from the first fold's sidecar, else from predictions.csv's columns."""
        for k in self.folds():
            try:
                tasks = self.record(k).tasks
            except UsageError:
                continue
            return {n: {"classes": list(t.classes), "positive": t.positive,
                        "aliases": {c: list(a) for c, a in t.aliases.items()}} for n, t in tasks.items()}
        if (self / self.PREDICTIONS).is_file():
            return Columns.infer_tasks(self.read_predictions()[0])
        raise UsageError(f"{self.path}: no fold*/best.json and no predictions.csv to read the tasks from")

    def resume_state(self, k: int) -> Path:
        """The stem of fold k's resumable state (``resume.safetensors`` + ``resume.json``) while it trains."""
        return self.fold_dir(k) / "resume"

    def write_fold_result(self, k: int, result: Mapping[str, Any]) -> None:
        """A finished fold's prediction rows, metrics and test-set probabilities, exact (floats as repr)."""
        write_atomic(self.fold_dir(k) / "result.json", json.dumps(result, ensure_ascii=False))

    def read_fold_result(self, k: int) -> dict[str, Any] | None:
        path = self.fold_dir(k) / "result.json"
        return _read_json(path, strict=True) if path.is_file() else None

    # -- history -----------------------------------------------------------------------------------
    def write_history(self, k: int, history: Sequence[Mapping[str, Any]]) -> None:
        if not history:
            return
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(history[0]))
        w.writeheader()
        for row in history:
            w.writerow({key: (f"{v:.6g}" if isinstance(v, float) else v) for key, v in row.items()})
        write_atomic(self.fold_dir(k) / "history.csv", buf.getvalue())

    def read_history(self, k: int) -> dict[str, list[float]]:
        """Column -> values (numeric columns only) of fold ``k``'s history.csv; {} when it has none."""
        path = self.fold_dir(k) / "history.csv"
        if not path.is_file():
            return {}
        rows = list(csv.DictReader(io.StringIO(read_text(path), newline="")))
        cols: dict[str, list[float]] = {}
        for key in rows[0] if rows else []:
            try:
                cols[key] = [float(r[key]) if r[key] not in ("", None) else NAN for r in rows]
            except ValueError:
                continue
        return cols

    def read_histories(self) -> dict[int, dict[str, list[float]]]:
        """Fold -> column -> values (numeric columns only) of every fold's history.csv."""
        folds = sorted(int(m.group(1)) for path in self.path.glob("fold*/history.csv")
                       if (m := _FOLD.fullmatch(path.parent.name)))
        return {k: cols for k in folds if (cols := self.read_history(k))}

    # -- recipe, folds, predictions, JSON files ----------------------------------------------------
    def write_recipe(self, toml_text: str) -> None:
        write_atomic(self / self.RECIPE, toml_text)

    def read_recipe(self) -> dict[str, Any]:
        if not (self / self.RECIPE).is_file():
            return {}
        try:
            return tomllib.loads(read_text(self / self.RECIPE))
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{self / self.RECIPE}: not valid TOML ({exc})") from None

    def write_folds(self, assignment: Mapping[str, int]) -> None:
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(["patient", "fold"])
        for p, k in sorted(assignment.items()):
            w.writerow([p, k])
        write_atomic(self / self.FOLDS, buf.getvalue())

    def read_folds(self) -> dict[str, int]:
        self.require(self.FOLDS)
        try:
            return {row["patient"]: int(row["fold"])
                    for row in csv.DictReader(io.StringIO(read_text(self / self.FOLDS), newline=""))}
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{self / self.FOLDS}: not a patient,fold table ({exc})") from None

    def write_predictions(self, header: Sequence[str], rows: Sequence[Mapping[str, str]]) -> None:
        write_atomic(self / self.PREDICTIONS, csv_text(header, rows))

    def read_predictions(self) -> tuple[list[str], list[dict[str, str]]]:
        self.check_finished()
        self.require(self.PREDICTIONS)
        reader = csv.DictReader(io.StringIO(read_text(self / self.PREDICTIONS), newline=""))
        return list(reader.fieldnames or []), list(reader)

    def write_json(self, name: str, obj: Any) -> Path:
        from lnzoo.evaluation import jsonable
        return write_atomic(self / name, json.dumps(jsonable(obj), indent=1, ensure_ascii=False, allow_nan=False))

    def read_json(self, name: str) -> dict[str, Any]:
        """The JSON file, or {} when it is missing or unreadable (optional files: run.json, a report's inputs)."""
        return _read_json(self / name, strict=False)

    def metrics(self) -> dict[str, Any]:
        self.check_finished()
        self.require(self.METRICS)
        return _read_json(self / self.METRICS, strict=True)

    def check_files(self) -> None:
        """Every file of the run as lnzoo wrote it (:func:`lnzoo.integrity.check_tree`), all at once."""
        from lnzoo.integrity import check_tree
        self.check_finished()
        check_tree(self.path)

    def require(self, *names: str) -> None:
        for name in names:
            if not (self / name).is_file():
                raise UsageError(f"{self.path} is not a finished run directory: {name} is missing")

    # -- status and lock ---------------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether an lnzoo run wrote (or is writing) this folder."""
        return (self / self.RUN).is_file() or ((self / self.RECIPE).is_file() and (self / self.FOLDS).is_file())

    def status(self) -> str | None:
        """running / interrupted / failed / finished; None for a folder no lnzoo run has claimed.

        A run killed outright (``kill -9``, a power cut) cannot say so: it reads "running" with its lock
        free, and is reported as interrupted. Runs from before the status existed count as finished
        when they wrote metrics.json."""
        info = self.read_json(self.RUN)
        status = info.get("status")
        if status is None:
            return "finished" if (self / self.METRICS).is_file() else None
        if status == "running" and not self._lock_held_elsewhere():
            return "interrupted"
        return status

    def check_finished(self) -> None:
        """Refuse to read a run that did not finish, unless partial runs are allowed."""
        if self.writer or self._checked or _partial.get():
            return
        status = self.status()
        if status not in (None, "finished"):
            info = self.read_json(self.RUN)
            why = {"running": f"it is still being written by pid {info.get('pid')} on {info.get('host')} "
                              f"(started {info.get('started')})",
                   "interrupted": "it was interrupted before it finished; `lnzoo run --resume "
                                  f"{self.path}` continues it",
                   "failed": f"it failed: {info.get('error', 'see its log')}",
                   "sweeping": "its folds are being fitted as separate jobs; `lnzoo sweep --status "
                               f"{info.get('sweep') or 'SWEEP_DIR'}` shows them"}[status]
            raise UsageError(f"{self.path} is not a finished run ({why}). Pass --allow-partial to read "
                             "what it holds anyway.")
        self._checked = True

    def _lock_held_elsewhere(self) -> bool:
        if self._lock is not None or not (self / self.LOCK).exists():
            return False
        from filelock import FileLock, Timeout
        probe = FileLock(str(self / self.LOCK), is_singleton=False)
        try:
            probe.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:
            return False  # a read-only copy of a run: nobody can be writing it
        probe.release()
        return False

    def claim(self, resume: bool = False) -> None:
        """Take the run directory for writing: refuse a folder another run is writing, a non-empty
        folder that is not this run, and (unless ``resume``) a run that already started."""
        from filelock import FileLock, Timeout

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            created = not (self / self.LOCK).exists()
            lock = FileLock(str(self / self.LOCK), is_singleton=False)
            lock.acquire(timeout=0)
        except Timeout:
            info = self.read_json(self.RUN)
            raise RunLocked(f"{self.path} is being written by another run (pid {info.get('pid', '?')} on "
                            f"{info.get('host', '?')}, started {info.get('started', '?')}); pick another "
                            "--out") from None
        except OSError as exc:
            raise OutputError(f"cannot write the run directory {self.path}: {exc.strerror or exc}") from None
        self._lock = lock
        try:
            others = sorted(p.name for p in self.path.iterdir() if p.name != self.LOCK)
            status = self.read_json(self.RUN).get("status")
            if resume:
                if not (self / self.RECIPE).is_file():
                    raise UsageError(f"--resume {self.path}: no recipe.toml there; it is not an lnzoo run")
                if status == "finished":
                    raise UsageError(f"--resume {self.path}: this run already finished")
            elif others:
                hint = {"finished": " It holds a finished run.", None: ""}.get(
                    status, f" It is an unfinished run: `lnzoo run --resume {self.path}` continues it.")
                raise UsageError(f"--out {self.path} is not empty (holds {', '.join(others[:6])}"
                                 f"{', ...' if len(others) > 6 else ''}); lnzoo never writes over files it did "
                                 f"not start. Pick a new folder.{hint}")
        except BaseException:
            self.release()
            if created:  # a refused folder is left exactly as it was
                with contextlib.suppress(OSError):
                    (self / self.LOCK).unlink()
            raise
        from lnzoo.integrity import start
        start(self.path)  # from here every file written into the run is bound (lnzoo.integrity)
        self.update_run(status="running", pid=os.getpid(), host=socket.gethostname(),
                        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), error=None)

    def update_run(self, **fields: Any) -> None:
        """Merge ``fields`` into run.json (atomically)."""
        self.write_json(self.RUN, {**self.read_json(self.RUN), **fields})

    @contextlib.contextmanager
    def writing(self, resume: bool = False, done: str | None = "finished") -> Iterator["RunDir"]:
        """Hold the run directory (:meth:`claim`) for the block; its status after it: ``done`` when the block ends,
        "interrupted" on Ctrl-C, "failed" with the error otherwise."""
        self.claim(resume=resume)
        try:
            yield self
        except KeyboardInterrupt:
            self.release("interrupted")
            raise
        except BaseException as exc:
            self.release("failed", f"{type(exc).__name__}: {exc}")
            raise
        self.release(done)

    def release(self, status: str | None = None, error: str | None = None) -> None:
        """Record the run's final status (when given) and free the lock."""
        if self._lock is None:
            return
        try:
            if status is not None:
                self.update_run(status=status, error=error, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        finally:
            self._lock.release()
            self._lock = None



def _read_json(path: Path, strict: bool) -> dict[str, Any]:
    """A JSON file of the run, checked against the run's manifest; unless ``strict``, {} when missing or not
    JSON (a modified file is refused either way)."""
    if not strict and not path.is_file():
        return {}
    try:
        return json.loads(read_text(path))
    except ValueError as exc:
        if strict:
            raise UsageError(f"{path}: not readable JSON ({exc})") from None
        return {}


class Columns:
    """The names of predictions.csv's columns (and of lnzoo predict's CSV): the one place that spells them."""

    @staticmethod
    def raw(task: str, cls: str) -> str:
        return f"p_{task}_{cls}"

    @staticmethod
    def calibrated(task: str, cls: str) -> str:
        return f"cal_{task}_{cls}"

    @staticmethod
    def true(task: str) -> str:
        return f"{task}_true"

    @staticmethod
    def path(view: str) -> str:
        return "path" if view == "full" else f"path_{view}"

    @staticmethod
    def group(name: str) -> str:
        """A subgroup's column (data.subgroups): the row's value of it."""
        return f"group_{name}"

    @staticmethod
    def group_name(column: str) -> str | None:
        """The subgroup a column holds, or None."""
        return column[len("group_"):] or None if column.startswith("group_") else None

    @staticmethod
    def infer_tasks(columns: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Tasks and class order from the columns (``<task>_true``, ``p_<task>_<class>``); positive: the 2nd class."""
        cols = list(columns)
        tasks = [c[:-5] for c in cols if c.endswith("_true") and c != "_true"]
        out = {}
        for t in tasks:
            # a longer task name sharing this prefix owns its own columns (task "a" vs task "a_b")
            longer = [u for u in tasks if u != t and u.startswith(t + "_")]
            classes = [c[len(f"p_{t}_"):] for c in cols if c.startswith(f"p_{t}_")
                       and not any(c.startswith(f"p_{u}_") for u in longer)]
            if len(classes) >= 2:
                out[t] = {"classes": classes, "positive": None}
        return out

    @staticmethod
    def is_task_column(name: str) -> bool:
        """A column that holds a task's label or a probability (raw or calibrated)."""
        return name.endswith("_true") or name.startswith(("p_", "cal_"))


def prediction_header(tasks: Mapping[str, Any], views: Sequence[str], groups: Sequence[str] = ()) -> list[str]:
    """The columns of predictions.csv: where a row came from, its subgroups (``group_``), its true labels, every
    class probability, raw (``p_``: what the metrics are computed from) and calibrated (``cal_``: what calls are
    made on)."""
    header = ["part", "fold", *[Columns.path(v) for v in views], "views_used", "patient", "center", "source",
              *[Columns.group(g) for g in groups]]
    for name, task in tasks.items():
        header.append(Columns.true(name))
        header += [Columns.raw(name, c) for c in task.classes]
        header += [Columns.calibrated(name, c) for c in task.classes]
    return header


def prediction_row(part: str, fold: int | None, sample: Any, proba: Mapping[str, Any], tasks: Mapping[str, Any],
                   views: Sequence[str], calibrated: Mapping[str, Any],
                   groups: Mapping[str, str] | None = None) -> dict[str, str]:
    """One row of predictions.csv as the strings written (probabilities with 6 decimals): the run's metrics
    are computed from these very rows, so metrics.json and a later report agree to the last digit.
    ``calibrated``: the probabilities as served (lnzoo.decision.calibrate with the model's temperature);
    ``groups``: the row's subgroup values (lnzoo.evaluation.subgroups.row_groups)."""
    from lnzoo.tasks import MISSING

    row = {"part": part, "fold": "" if fold is None else str(fold),
           **{Columns.path(v): str(sample.views.get(v) or "") for v in views},
           "views_used": "+".join(v for v in views if sample.views.get(v) is not None), "patient": sample.patient,
           "center": sample.center or "", "source": sample.origin,
           **{Columns.group(g): v for g, v in (groups or {}).items()}}
    for name, task in tasks.items():
        label = sample.labels.get(name, MISSING)
        row[Columns.true(name)] = "" if label == MISSING else task.classes[label]
        for c, p in zip(task.classes, proba[name]):
            row[Columns.raw(name, c)] = f"{p:.6f}"
        for c, p in zip(task.classes, calibrated[name]):
            row[Columns.calibrated(name, c)] = f"{p:.6f}"
    return row
