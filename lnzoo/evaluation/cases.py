"""Prediction rows (a predictions.csv, dicts or a DataFrame) -> the labelled cases of each task."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lnzoo.errors import UsageError
from lnzoo.rundir import Columns
from lnzoo.evaluation.metrics import aggregate_by_group

def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and math.isnan(v):
        return ""
    return str(v).strip()


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a CSV file, column names and cells stripped."""
    from lnzoo.integrity import read_text  # a run's predictions.csv is checked against the run's manifest

    try:
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        header = [h.strip() for h in reader.fieldnames or []]
        # a row's cells beyond the header (key None) belong to no column
        rows = [{k.strip(): _cell(v) for k, v in row.items() if k is not None}
                for row in reader]
    except csv.Error as exc:
        raise UsageError(f"{path}: cannot read the CSV: {exc}") from None
    return header, rows


def read_prediction_rows(source: Any) -> list[dict[str, str]]:
    """Rows of a predictions CSV (a path), or of given rows (dicts or a DataFrame), as dicts of stripped strings."""
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise UsageError(f"{source}: no such predictions file")
        return read_csv(Path(source))[1]
    if hasattr(source, "to_dict"):  # a pandas DataFrame, without importing pandas
        source = source.to_dict("records")
    return [{str(k): _cell(v) for k, v in row.items()} for row in source]


def infer_tasks_meta(columns: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Tasks and class order from lnzoo's columns (:meth:`lnzoo.rundir.Columns.infer_tasks`)."""
    return Columns.infer_tasks(columns)


def task_spec(meta: Any) -> tuple[list[str], int | None]:
    """(classes, positive index or None) from a sidecar task dict or a Task-like object."""
    if isinstance(meta, Mapping):
        classes, positive = list(meta["classes"]), meta.get("positive")
    else:
        classes, positive = list(meta.classes), getattr(meta, "positive", None)
    if len(classes) != 2:
        return classes, None
    if positive is None:
        return classes, 1
    if positive not in classes:
        raise UsageError(f"positive class {positive!r} is not one of {classes}")
    return classes, classes.index(positive)


@dataclass
class Cases:
    """The labelled cases of one task: class index, probabilities and where each row came from."""

    y: np.ndarray
    p: np.ndarray
    patient: np.ndarray
    part: np.ndarray
    fold: np.ndarray  # -1 where the row belongs to no fold
    center: np.ndarray | None
    # the probabilities calls are made on (lnzoo.decision): calibrated by each row's own model where the rows
    # carry cal_ columns (space "calibrated"), else the raw ones (space "raw")
    cal: np.ndarray | None = None
    space: str = "raw"
    # subgroup column -> each row's value (predictions.csv's group_<name> columns; lnzoo.evaluation.subgroups)
    groups: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.cal is None:
            self.cal = self.p

    def take(self, mask: np.ndarray) -> "Cases":
        return Cases(self.y[mask], self.p[mask], self.patient[mask], self.part[mask], self.fold[mask],
                     None if self.center is None else self.center[mask], self.cal[mask], self.space,
                     None if self.groups is None else {k: v[mask] for k, v in self.groups.items()})

    def __len__(self) -> int:
        return int(self.y.shape[0])


def task_cases(rows: Sequence[Mapping[str, str]], task: str, classes: list[str]) -> Cases | None:
    cols = [Columns.raw(task, c) for c in classes]
    label_col = Columns.true(task)
    if not rows or label_col not in rows[0]:
        return None
    missing = [c for c in cols if c not in rows[0]]
    if missing:
        raise UsageError(f"predictions lack the probability column(s) {missing} of task {task!r}")
    index = {c: i for i, c in enumerate(classes)}
    cal_cols = [Columns.calibrated(task, c) for c in classes]
    calibrated = all(c in rows[0] for c in cal_cols)
    ys, ps, cals, pats, parts, folds, centers, problems = [], [], [], [], [], [], [], []
    has_center = "center" in rows[0]
    group_cols = {Columns.group_name(c): c for c in rows[0] if Columns.group_name(c)}
    groups: dict[str, list[str]] = {name: [] for name in group_cols}
    for i, row in enumerate(rows):
        label = row.get(label_col, "")
        if label == "":
            continue
        if label not in index:
            problems.append(f"row {i + 2}: label {label!r} is not a class of {task!r} ({classes})")
            continue
        try:
            values = [_probability(row[c]) for c in cols]
            cal_values = [_probability(row[c]) for c in cal_cols] if calibrated else values
            fold = row.get("fold", "")
            fold = _whole(fold) if fold not in ("", None) else -1
        except (ValueError, TypeError):
            problems.append(f"row {i + 2}: a probability of {task!r} is not a number in [0, 1], or its fold is not "
                            "a whole number")
            continue
        ps.append(values)
        cals.append(cal_values)
        ys.append(index[label])
        # without patient ids every image is its own resampling unit
        pats.append(row.get("patient", "") or f"row{i + 2}")
        parts.append(row.get("part", "") or "all")
        folds.append(fold)
        centers.append(row.get("center", "") or "unknown")
        for name, col in group_cols.items():
            groups[name].append(row.get(col) or "missing")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise UsageError(f"bad prediction rows for task {task!r}: {shown}")
    if not ys:
        return None
    p, cal = (_rows_summing_to_one(np.asarray(v, dtype=float).reshape(len(ys), len(classes))) for v in (ps, cals))
    return Cases(np.asarray(ys, dtype=int), p,
                 np.asarray(pats, dtype=object), np.asarray(parts, dtype=object), np.asarray(folds, dtype=int),
                 np.asarray(centers, dtype=object) if has_center else None, cal,
                 "calibrated" if calibrated else "raw",
                 {name: np.asarray(v, dtype=object) for name, v in groups.items()} if groups else None)


def _probability(cell: Any) -> float:
    """A probability cell: a finite number in [0, 1] (the CSV's rounding allowed for), else ValueError."""
    value = float(cell)
    if not -1e-6 <= value <= 1 + 1e-6:  # also false for NaN
        raise ValueError(cell)
    return min(max(value, 0.0), 1.0)


def _whole(cell: Any) -> int:
    """A fold cell: a whole number ('2', or '2.0' as a spreadsheet writes it), else ValueError."""
    value = float(cell)
    if not value.is_integer():
        raise ValueError(cell)
    return int(value)


def _rows_summing_to_one(p: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):  # the CSV's 6 decimals leave row sums a hair off 1
        return np.where(p.sum(1, keepdims=True) > 0, p / p.sum(1, keepdims=True), p)


def aggregate_patients(c: Cases) -> Cases:
    """Mean probability per patient within each part and fold (a patient lives in one fold)."""
    keys = list(zip(c.part.tolist(), c.fold.tolist(), c.patient.tolist()))
    ids, y, p = aggregate_by_group(keys, c.y, c.p)
    _, _, cal = aggregate_by_group(keys, c.y, c.cal)
    first = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    at = np.array([first[tuple(k)] for k in ids], dtype=int)
    return Cases(y, p, c.patient[at], c.part[at], c.fold[at], None if c.center is None else c.center[at], cal,
                 c.space, None if c.groups is None else {k: v[at] for k, v in c.groups.items()})


