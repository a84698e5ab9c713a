"""The one owner of a run directory's layout: every file a run writes is written and read here.

::

    RUN_DIR/
      recipe.toml         the fully resolved recipe          run.json        wall time, device, versions
      folds.csv           patient -> fold                    metrics.json    metrics of the run
      predictions.csv     one row per image and part         evaluation.json CIs, operating points (report)
      report.html         the self-contained report          explain/        Grad-CAM examples of the report
      selection.json      (lnzoo select only)
      fold{k}/best.safetensors + best.json, last.*, history.csv

A run with any ``cv.run_folds`` is read the same way: the folds are the ``fold{k}`` folders that hold
a best checkpoint, never assumed to start at 0.
"""
from __future__ import annotations

import csv
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lnzoo.errors import UsageError

NAN = float("nan")
_FOLD = re.compile(r"fold(\d+)")


class RunDir:
    """A run directory: its paths, and the readers and writers of each of its files."""

    RECIPE, FOLDS, PREDICTIONS, METRICS, RUN = "recipe.toml", "folds.csv", "predictions.csv", "metrics.json", "run.json"
    EVALUATION, REPORT, EXPLAIN, SELECTION = "evaluation.json", "report.html", "explain", "selection.json"
    KEPT_FOLD_FILES = ("best.safetensors", "best.json", "history.csv")  # what a fold's kept model needs

    def __init__(self, path: str | Path):
        self.path = Path(path)

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

    def first_checkpoint(self) -> Path:
        return self.checkpoint(self.first_fold())

    def sidecar(self, k: int, kind: str = "best") -> dict[str, Any]:
        path = self.checkpoint(k, kind).with_suffix(".json")
        if not path.is_file():
            raise UsageError(f"{self.path}: fold {k} has no {path.name} (was the run interrupted?)")
        return _read_json(path, strict=True)

    def save_checkpoint(self, k: int, kind: str, model_or_state: Any, meta: Mapping[str, Any]) -> Path:
        from lnzoo.checkpoint import save_checkpoint
        return save_checkpoint(model_or_state, self.fold_dir(k) / kind, dict(meta))

    def tasks_meta(self) -> dict[str, dict[str, Any]]:
        """Task -> {classes, positive, aliases} from the first fold's sidecar, else from predictions.csv's columns."""
        for k in self.folds():
            try:
                tasks = self.sidecar(k)["tasks"]
            except (UsageError, KeyError):
                continue
            return {n: {"classes": list(d["classes"]), "positive": d.get("positive"),
                        "aliases": dict(d.get("aliases") or {})} for n, d in tasks.items()}
        if (self / self.PREDICTIONS).is_file():
            from lnzoo.evaluation.cases import infer_tasks_meta
            return infer_tasks_meta(self.read_predictions()[0])
        raise UsageError(f"{self.path}: no fold*/best.json and no predictions.csv to read the tasks from")

    # -- history -----------------------------------------------------------------------------------
    def write_history(self, k: int, history: Sequence[Mapping[str, Any]]) -> None:
        if not history:
            return
        self.fold_dir(k).mkdir(parents=True, exist_ok=True)
        with (self.fold_dir(k) / "history.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(history[0]))
            w.writeheader()
            for row in history:
                w.writerow({key: (f"{v:.6g}" if isinstance(v, float) else v) for key, v in row.items()})

    def read_histories(self) -> dict[int, dict[str, list[float]]]:
        """Fold -> column -> values (numeric columns only) of every fold's history.csv."""
        out: dict[int, dict[str, list[float]]] = {}
        for path in self.path.glob("fold*/history.csv"):
            m = _FOLD.fullmatch(path.parent.name)
            if not m:
                continue
            with path.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            cols: dict[str, list[float]] = {}
            for key in rows[0] if rows else []:
                try:
                    cols[key] = [float(r[key]) if r[key] not in ("", None) else NAN for r in rows]
                except ValueError:
                    continue
            if cols:
                out[int(m.group(1))] = cols
        return dict(sorted(out.items()))

    # -- recipe, folds, predictions, JSON files ----------------------------------------------------
    def write_recipe(self, toml_text: str) -> None:
        (self / self.RECIPE).write_text(toml_text, encoding="utf-8")

    def read_recipe(self) -> dict[str, Any]:
        try:
            return tomllib.loads((self / self.RECIPE).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            return {}

    def write_folds(self, assignment: Mapping[str, int]) -> None:
        with (self / self.FOLDS).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["patient", "fold"])
            for p, k in sorted(assignment.items()):
                w.writerow([p, k])

    def read_folds(self) -> dict[str, int]:
        self.require(self.FOLDS)
        with (self / self.FOLDS).open(newline="", encoding="utf-8") as fh:
            return {row["patient"]: int(row["fold"]) for row in csv.DictReader(fh)}

    def write_predictions(self, header: Sequence[str], rows: Sequence[Mapping[str, str]]) -> None:
        with (self / self.PREDICTIONS).open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(header), restval="")
            w.writeheader()
            w.writerows(rows)

    def read_predictions(self) -> tuple[list[str], list[dict[str, str]]]:
        self.require(self.PREDICTIONS)
        with (self / self.PREDICTIONS).open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            return list(reader.fieldnames or []), list(reader)

    def write_json(self, name: str, obj: Any) -> Path:
        from lnzoo.evaluation import jsonable
        path = self / name
        path.write_text(json.dumps(jsonable(obj), indent=1, ensure_ascii=False, allow_nan=False), encoding="utf-8")
        return path

    def read_json(self, name: str) -> dict[str, Any]:
        """The JSON file, or {} when it is missing or unreadable (optional files: run.json, a report's inputs)."""
        return _read_json(self / name, strict=False)

    def metrics(self) -> dict[str, Any]:
        self.require(self.METRICS)
        return _read_json(self / self.METRICS, strict=True)

    def require(self, *names: str) -> None:
        for name in names:
            if not (self / name).is_file():
                raise UsageError(f"{self.path} is not a finished run directory: {name} is missing")



def _read_json(path: Path, strict: bool) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if strict:
            raise UsageError(f"{path}: not readable JSON ({exc})") from None
        return {}


def prediction_header(tasks: Mapping[str, Any], views: Sequence[str]) -> list[str]:
    """The columns of predictions.csv: where a row came from, its true labels, every class probability."""
    header = ["part", "fold", *[f"path_{v}" if v != "full" else "path" for v in views], "views_used", "patient",
              "center", "source"]
    for name, task in tasks.items():
        header.append(f"{name}_true")
        header += [f"p_{name}_{c}" for c in task.classes]
    return header


def prediction_row(part: str, fold: int | None, sample: Any, proba: Mapping[str, Any], tasks: Mapping[str, Any],
                   views: Sequence[str]) -> dict[str, str]:
    """One row of predictions.csv as the strings written (probabilities with 6 decimals): the run's metrics
    are computed from these very rows, so metrics.json and a later report agree to the last digit."""
    from lnzoo.data.samples import MISSING

    row = {"part": part, "fold": "" if fold is None else str(fold),
           **{(f"path_{v}" if v != "full" else "path"): str(sample.views.get(v) or "") for v in views},
           "views_used": "+".join(v for v in views if sample.views.get(v) is not None), "patient": sample.patient,
           "center": sample.center or "", "source": sample.origin}
    for name, task in tasks.items():
        label = sample.labels.get(name, MISSING)
        row[f"{name}_true"] = "" if label == MISSING else task.classes[label]
        for c, p in zip(task.classes, proba[name]):
            row[f"p_{name}_{c}"] = f"{p:.6f}"
    return row
