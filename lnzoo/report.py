"""Evaluation of a run's predictions (metrics with patient-bootstrap CIs, operating points) and its HTML report.

``evaluate_predictions`` turns the rows of a ``predictions.csv`` into numbers; ``write_report``
renders them, with plots embedded as base64 PNGs, into a self-contained ``report.html`` next to
an ``evaluation.json`` holding the same numbers.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import time
import tomllib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lnzoo.errors import UsageError
from lnzoo.metrics import (
    aggregate_by_group,
    classification_metrics,
    reliability_curve,
    threshold_for_sensitivity,
    youden_threshold,
)
from lnzoo.stats import bootstrap_ci, delong_ci

__all__ = ["evaluate_predictions", "choose_threshold", "write_report", "read_prediction_rows",
           "infer_tasks_meta", "load_tasks_meta"]

NAN = float("nan")
PART_ORDER = ("cv", "test", "external")
PART_LABELS = {"cv": "Pooled CV", "test": "Test", "external": "External"}
CI_METRICS = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")
THRESHOLD_RULES = ("youden", "sensitivity")
FPR_GRID = np.linspace(0.0, 1.0, 101)
ALPHA = 0.05
MAX_GRADCAM = 60  # embedded images inflate the page; the rest stay in explain/


# ----------------------------------------------------------------------------------------------
# reading predictions

def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and math.isnan(v):
        return ""
    return str(v).strip()


def read_prediction_rows(source: Any) -> list[dict[str, str]]:
    """Rows of a predictions CSV (a path), or of given rows (dicts or a DataFrame), as dicts of stripped strings."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"{path}: no such predictions file")
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return [{k: _cell(v) for k, v in row.items() if k is not None} for row in csv.DictReader(fh)]
    if hasattr(source, "to_dict"):  # a pandas DataFrame, without importing pandas
        source = source.to_dict("records")
    return [{str(k): _cell(v) for k, v in row.items()} for row in source]


def infer_tasks_meta(columns: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Tasks and class order from lnzoo's columns (``<task>_true``, ``p_<task>_<class>``); positive: the 2nd class."""
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


def load_tasks_meta(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Task class order and positive class from a fold sidecar (``fold*/best.json``), else from predictions.csv."""
    run_dir = Path(run_dir)
    for sidecar in sorted(run_dir.glob("fold*/best.json")):
        try:
            tasks = json.loads(sidecar.read_text(encoding="utf-8"))["tasks"]
        except (OSError, ValueError, KeyError):
            continue
        return {n: {"classes": list(d["classes"]), "positive": d.get("positive")} for n, d in tasks.items()}
    pred = run_dir / "predictions.csv"
    if pred.is_file():
        with pred.open(newline="", encoding="utf-8-sig") as fh:
            return infer_tasks_meta(next(csv.reader(fh), []))
    raise UsageError(f"{run_dir}: no fold*/best.json and no predictions.csv to read the tasks from")


def _task_spec(meta: Any) -> tuple[list[str], int | None]:
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
class _Cases:
    """The labelled cases of one task: class index, probabilities and where each row came from."""

    y: np.ndarray
    p: np.ndarray
    patient: np.ndarray
    part: np.ndarray
    fold: np.ndarray  # -1 where the row belongs to no fold
    center: np.ndarray | None

    def take(self, mask: np.ndarray) -> "_Cases":
        return _Cases(self.y[mask], self.p[mask], self.patient[mask], self.part[mask], self.fold[mask],
                      None if self.center is None else self.center[mask])

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _task_cases(rows: Sequence[Mapping[str, str]], task: str, classes: list[str]) -> _Cases | None:
    cols = [f"p_{task}_{c}" for c in classes]
    label_col = f"{task}_true"
    if not rows or label_col not in rows[0]:
        return None
    missing = [c for c in cols if c not in rows[0]]
    if missing:
        raise UsageError(f"predictions lack the probability column(s) {missing} of task {task!r}")
    index = {c: i for i, c in enumerate(classes)}
    ys, ps, pats, parts, folds, centers, problems = [], [], [], [], [], [], []
    has_center = "center" in rows[0]
    for i, row in enumerate(rows):
        label = row.get(label_col, "")
        if label == "":
            continue
        if label not in index:
            problems.append(f"row {i + 2}: label {label!r} is not a class of {task!r} ({classes})")
            continue
        try:
            ps.append([float(row[c]) for c in cols])
        except ValueError:
            problems.append(f"row {i + 2}: a probability of {task!r} is not a number")
            continue
        ys.append(index[label])
        # without patient ids every image is its own resampling unit
        pats.append(row.get("patient", "") or f"row{i + 2}")
        parts.append(row.get("part", "") or "all")
        fold = row.get("fold", "")
        folds.append(int(float(fold)) if fold not in ("", None) else -1)
        centers.append(row.get("center", "") or "unknown")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise UsageError(f"bad prediction rows for task {task!r}: {shown}")
    if not ys:
        return None
    return _Cases(np.asarray(ys, dtype=int), np.asarray(ps, dtype=float).reshape(len(ys), len(classes)),
                  np.asarray(pats, dtype=object), np.asarray(parts, dtype=object), np.asarray(folds, dtype=int),
                  np.asarray(centers, dtype=object) if has_center else None)


def _aggregate_patients(c: _Cases) -> _Cases:
    """Mean probability per patient within each part and fold (a patient lives in one fold)."""
    keys = list(zip(c.part.tolist(), c.fold.tolist(), c.patient.tolist()))
    ids, y, p = aggregate_by_group(keys, c.y, c.p)
    first = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    at = np.array([first[tuple(k)] for k in ids], dtype=int)
    return _Cases(y, p, c.patient[at], c.part[at], c.fold[at], None if c.center is None else c.center[at])


# ----------------------------------------------------------------------------------------------
# thresholds

def choose_threshold(y, score, rule: str = "youden", target: float = 0.95) -> float:
    """Threshold (positive iff score >= t) chosen on validation data by ``rule`` ("youden" or "sensitivity").

    Youden: max sensitivity + specificity; sensitivity: the highest t whose sensitivity reaches
    ``target``. ``y`` is binary (1 = positive). Never choose it on the data it is then reported on.
    """
    if rule == "youden":
        return youden_threshold(y, score)
    if rule == "sensitivity":
        return threshold_for_sensitivity(y, score, target)
    raise UsageError(f"unknown threshold rule {rule!r}; use one of {list(THRESHOLD_RULES)}")


def _rule_key(rule: str, target: float) -> str:
    return "youden" if rule == "youden" else f"sensitivity_{target:g}"


def _rule_label(rule: str, target: float) -> str:
    return "Youden J (max sensitivity + specificity)" if rule == "youden" else f"sensitivity ≥ {target:g}"


# ----------------------------------------------------------------------------------------------
# fast metrics for the bootstrap (same definitions as classification_metrics, without sklearn's overhead)

def _predict(p: np.ndarray, pos: int | None, threshold: float | None) -> np.ndarray:
    if pos is not None and threshold is not None:
        return np.where(p[:, pos] >= threshold, pos, 1 - pos)
    return p.argmax(axis=1)


def _auc(y_bin: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC with midranks for ties (as sklearn); NaN with one class. Cheaper than scipy's rankdata."""
    m = int(y_bin.sum())
    n = y_bin.size - m
    if m == 0 or n == 0:
        return NAN
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    edges = np.concatenate(([0], np.flatnonzero(ss[1:] != ss[:-1]) + 1, [ss.size]))
    ranks = np.empty(ss.size)
    ranks[order] = np.repeat((edges[:-1] + edges[1:] + 1) / 2.0, np.diff(edges))
    return float((ranks[y_bin].sum() - m * (m + 1) / 2.0) / (m * n))


def _metric_fns(k: int, pos: int | None, threshold: float | None = None) -> dict[str, Any]:
    def accuracy(y, p):
        return float(np.mean(_predict(p, pos, threshold) == y))

    def balanced_accuracy(y, p):
        pred = _predict(p, pos, threshold)
        return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))

    def auc(y, p):
        if pos is not None:
            return _auc(y == pos, p[:, pos])
        vals = [_auc(y == j, p[:, j]) for j in range(k)]
        vals = [v for v in vals if not math.isnan(v)]
        return float(np.mean(vals)) if vals else NAN

    fns = {"auc": auc, "accuracy": accuracy, "balanced_accuracy": balanced_accuracy}
    if pos is not None:
        def sensitivity(y, p):
            m = y == pos
            return float(np.mean(_predict(p[m], pos, threshold) == pos)) if m.any() else NAN

        def specificity(y, p):
            m = y != pos
            return float(np.mean(_predict(p[m], pos, threshold) != pos)) if m.any() else NAN

        fns.update(sensitivity=sensitivity, specificity=specificity)
    return fns


def _ci(fn, c: _Cases, n_boot: int, seed: int) -> dict[str, Any]:
    r = bootstrap_ci(fn, c.y, c.p, groups=c.patient.tolist(), n_boot=n_boot, seed=seed, alpha=ALPHA)
    return {"lo": r["lo"], "hi": r["hi"], "n_boot_valid": r["n_boot_valid"]}


def _delong(y_bin: np.ndarray, score: np.ndarray) -> dict[str, float]:
    try:
        auc, lo, hi = delong_ci(y_bin, score, alpha=ALPHA)
    except ValueError:  # one class only
        return {"auc": NAN, "lo": NAN, "hi": NAN}
    return {"auc": auc, "lo": lo, "hi": hi}


def _quiet_metrics(*args, **kwargs) -> dict:
    with warnings.catch_warnings():
        # tiny or single-class parts give undefined metrics on purpose: they are shown as n/a
        warnings.simplefilter("ignore")
        return classification_metrics(*args, **kwargs)


def _block(c: _Cases, classes: list[str], pos: int | None, n_boot: int, seed: int, with_ci: bool = True) -> dict:
    """Metrics of one set of cases, with patient-bootstrap CIs and DeLong AUC CIs."""
    out: dict[str, Any] = {
        "n": len(c), "n_patients": int(len(set(c.patient.tolist()))),
        "class_counts": {cls: int(np.sum(c.y == j)) for j, cls in enumerate(classes)},
        "metrics": _quiet_metrics(c.y, c.p, classes, pos),
    }
    if pos is not None:
        out["auc_delong"] = _delong(c.y == pos, c.p[:, pos])
    else:
        out["auc_per_class_delong"] = {cls: _delong(c.y == j, c.p[:, j]) for j, cls in enumerate(classes)}
    if with_ci:
        fns = _metric_fns(len(classes), pos)
        out["ci"] = {name: _ci(fn, c, n_boot, seed) for name, fn in fns.items()}
    return out


def _mean_sd(blocks: Mapping[str, dict]) -> dict[str, dict[str, float]]:
    """Mean and sd (ddof 1; NaN with one fold) over folds of every scalar metric."""
    if not blocks:
        return {}
    first = next(iter(blocks.values()))["metrics"]
    keys = [k for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = {}
    for k in keys:
        vals = np.array([b["metrics"].get(k, NAN) for b in blocks.values()], dtype=float)
        vals = vals[np.isfinite(vals)]
        out[k] = {"mean": float(vals.mean()) if vals.size else NAN,
                  "sd": float(vals.std(ddof=1)) if vals.size > 1 else NAN, "n_folds": int(vals.size)}
    return out


# ----------------------------------------------------------------------------------------------
# ROC curves with a patient-bootstrap band

def _roc(y_bin: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr) from (0, 0) to (1, 1), one per distinct score."""
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y_bin[order]
    tps = np.cumsum(yy)
    fps = np.cumsum(~yy)
    last = np.concatenate((np.flatnonzero(ss[1:] != ss[:-1]), [ss.size - 1]))
    tpr = np.concatenate(([0.0], tps[last] / max(tps[-1], 1)))
    fpr = np.concatenate(([0.0], fps[last] / max(fps[-1], 1)))
    return fpr, tpr


def _tpr_on_grid(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    # the top of each vertical step is the point the next (sloped or flat) segment starts from
    ufpr, inv = np.unique(fpr, return_inverse=True)
    top = np.full(ufpr.shape, -np.inf)
    np.maximum.at(top, inv, tpr)
    return np.interp(FPR_GRID, ufpr, top)


class _ClusterSampler:
    """Draws patient-cluster bootstrap resamples (all images of each drawn patient)."""

    def __init__(self, groups: Sequence, seed: int):
        codes = {}
        code = np.fromiter((codes.setdefault(g, len(codes)) for g in groups), dtype=np.intp, count=len(groups))
        self.order = np.argsort(code, kind="stable")
        self.sizes = np.bincount(code, minlength=len(codes))
        self.starts = np.cumsum(self.sizes) - self.sizes
        self.rng = np.random.default_rng(seed)

    def draw(self) -> np.ndarray:
        g = self.rng.integers(0, self.sizes.size, size=self.sizes.size)
        lens = self.sizes[g]
        offsets = np.repeat(self.starts[g] - (np.cumsum(lens) - lens), lens)
        return self.order[offsets + np.arange(lens.sum())]


def _roc_data(c: _Cases, classes: list[str], pos: int | None, n_boot: int, seed: int) -> dict:
    """Per curve (binary: the positive class; multi-class: each class one-vs-rest) points, AUC and TPR band."""
    which = [pos] if pos is not None else list(range(len(classes)))
    curves: dict[str, Any] = {}
    todo = []
    for j in which:
        yb = c.y == j
        if yb.all() or not yb.any():
            curves[classes[j]] = None  # undefined with one class
            continue
        fpr, tpr = _roc(yb, c.p[:, j])
        curves[classes[j]] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": _auc(yb, c.p[:, j])}
        todo.append(j)
    if todo and n_boot > 0:
        sampler = _ClusterSampler(c.patient.tolist(), seed)
        bands: dict[int, list[np.ndarray]] = {j: [] for j in todo}
        for _ in range(n_boot):
            idx = sampler.draw()
            y, p = c.y[idx], c.p[idx]
            for j in todo:
                yb = y == j
                if yb.all() or not yb.any():
                    continue
                bands[j].append(_tpr_on_grid(*_roc(yb, p[:, j])))
        for j in todo:
            if len(bands[j]) >= 2:
                lo, hi = np.quantile(np.vstack(bands[j]), [ALPHA / 2, 1 - ALPHA / 2], axis=0)
                curves[classes[j]]["band"] = {"fpr": FPR_GRID.tolist(), "tpr_lo": lo.tolist(), "tpr_hi": hi.tolist(),
                                              "n_boot_valid": len(bands[j])}
    return curves


# ----------------------------------------------------------------------------------------------
# operating points

def _at_threshold(c: _Cases, classes: list[str], pos: int, t: float, n_boot: int, seed: int) -> dict:
    m = _quiet_metrics(c.y, c.p, classes, pos, threshold=t)
    cm = m["confusion_matrix"]
    neg = 1 - pos
    fns = _metric_fns(2, pos, t)
    return {"threshold": t, "n": len(c), "n_patients": int(len(set(c.patient.tolist()))),
            "tp": cm[pos][pos], "fn": cm[pos][neg], "fp": cm[neg][pos], "tn": cm[neg][neg],
            **{k: m[k] for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy", "balanced_accuracy")},
            "ci": {k: _ci(fns[k], c, n_boot, seed) for k in ("sensitivity", "specificity")}}


def _counts_summary(tp: int, fn: int, fp: int, tn: int) -> dict[str, Any]:
    def div(a, b):
        return a / b if b else NAN
    return {"tp": tp, "fn": fn, "fp": fp, "tn": tn, "sensitivity": div(tp, tp + fn), "specificity": div(tn, tn + fp),
            "ppv": div(tp, tp + fp), "npv": div(tn, tn + fn), "accuracy": div(tp + tn, tp + fn + fp + tn)}


def _cross_fitted(cv: _Cases, pos: int, rule: str, target: float) -> dict | None:
    """Honest CV operating point: each fold's threshold is chosen on the other folds' held-out predictions."""
    folds = sorted(set(cv.fold.tolist()) - {-1})
    if len(folds) < 2:
        return None
    pred = np.full(len(cv), -1)
    thresholds = {}
    for k in folds:
        other, this = cv.fold != k, cv.fold == k
        try:
            t = choose_threshold(cv.y[other] == pos, cv.p[other, pos], rule, target)
        except ValueError:
            continue
        thresholds[str(k)] = t
        pred[this] = np.where(cv.p[this, pos] >= t, pos, 1 - pos)
    done = pred >= 0
    if not done.any():
        return None
    y, pr = cv.y[done], pred[done]
    tp = int(np.sum((y == pos) & (pr == pos)))
    fn = int(np.sum((y == pos) & (pr != pos)))
    fp = int(np.sum((y != pos) & (pr == pos)))
    tn = int(np.sum((y != pos) & (pr != pos)))
    return {"thresholds_per_fold": thresholds, "n": int(done.sum()), **_counts_summary(tp, fn, fp, tn)}


def _operating_points(parts: Mapping[str, _Cases], classes: list[str], pos: int, n_boot: int, seed: int,
                      rules: Sequence[str], target: float) -> dict:
    cv = parts.get("cv")
    out: dict[str, Any] = {"chosen_on": "cv", "rules": {}}
    if cv is None:
        out["note"] = "no cross-validation predictions: no validation data to choose a threshold on"
        return out
    for rule in rules:
        key = _rule_key(rule, target)
        try:
            t = choose_threshold(cv.y == pos, cv.p[:, pos], rule, target)
        except ValueError as exc:
            out["rules"][key] = {"label": _rule_label(rule, target), "error": str(exc)}
            continue
        entry: dict[str, Any] = {"label": _rule_label(rule, target), "threshold": t,
                                 "chosen_on": "pooled cross-validation predictions (held-out folds)", "parts": {}}
        for name, c in parts.items():
            res = _at_threshold(c, classes, pos, t, n_boot, seed)
            # on the data that chose it the operating point flatters the model
            res["optimistic"] = name == "cv"
            entry["parts"][name] = res
        fitted = _cross_fitted(cv, pos, rule, target)
        if fitted is not None:
            entry["cv_cross_fitted"] = fitted
        out["rules"][key] = entry
    return out


# ----------------------------------------------------------------------------------------------
# evaluation

def _ordered_parts(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [p for p in PART_ORDER if p in names] + sorted(names - set(PART_ORDER))


def _evaluate_level(c: _Cases, classes: list[str], pos: int | None, n_boot: int, seed: int,
                    rules: Sequence[str], target: float) -> dict:
    parts = {name: c.take(c.part == name) for name in _ordered_parts(c.part.tolist())}
    level: dict[str, Any] = {"parts": {}, "folds": {}, "roc": {}, "reliability": {}}
    for name, pc in parts.items():
        level["parts"][name] = _block(pc, classes, pos, n_boot, seed)
        level["roc"][name] = _roc_data(pc, classes, pos, n_boot, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            level["reliability"][name] = reliability_curve(pc.y, pc.p, n_bins=10)
    cv = parts.get("cv")
    if cv is not None:
        for k in sorted(set(cv.fold.tolist()) - {-1}):
            level["folds"][str(k)] = _block(cv.take(cv.fold == k), classes, pos, n_boot, seed)
        level["cv_mean_sd"] = _mean_sd(level["folds"])
    if c.center is not None:
        level["centers"] = {name: {str(ctr): _block(pc.take(pc.center == ctr), classes, pos, n_boot, seed,
                                                    with_ci=False)
                                   for ctr in sorted(set(pc.center.tolist()))}
                            for name, pc in parts.items()}
    if pos is not None:
        level["operating_points"] = _operating_points(parts, classes, pos, n_boot, seed, rules, target)
    return level


def evaluate_predictions(pred_csv_or_df_rows: Any, tasks_meta: Mapping[str, Any] | None,
                         aggregate: str | None = None, n_boot: int = 1000, seed: int = 0, *,
                         threshold_rules: Sequence[str] = THRESHOLD_RULES,
                         sensitivity_target: float = 0.95) -> dict:
    """Metrics of every part (pooled CV, each fold, test, external, other) and task, with 95% CIs.

    Input: a predictions CSV path, its rows (dicts) or a DataFrame, in lnzoo's ``predictions.csv``
    layout; ``tasks_meta`` maps task -> ``{"classes", "positive"}`` (a sidecar's ``tasks``; None
    infers them from the columns). Output ``tasks[task]["levels"]["image"|"patient"]`` holds
    ``parts`` and ``folds`` (each: ``n``, ``n_patients``, ``class_counts``, ``metrics`` from
    ``classification_metrics``, ``ci`` = patient-bootstrap percentile CIs of auc, accuracy,
    balanced_accuracy (+ sensitivity, specificity if binary), ``auc_delong`` (binary) or
    ``auc_per_class_delong``), ``cv_mean_sd``, ``roc``, ``reliability``, ``centers`` (if a
    ``center`` column exists) and, for binary tasks, ``operating_points``: thresholds chosen on the
    pooled CV only, applied to every part (the CV row flagged ``optimistic``) plus a cross-fitted
    CV estimate. ``aggregate="patient"`` adds the patient level (mean probability per patient).
    """
    if aggregate not in (None, "image", "patient"):
        raise UsageError(f"aggregate must be None, 'image' or 'patient', got {aggregate!r}")
    for rule in threshold_rules:
        if rule not in THRESHOLD_RULES:
            raise UsageError(f"unknown threshold rule {rule!r}; use one of {list(THRESHOLD_RULES)}")
    rows = read_prediction_rows(pred_csv_or_df_rows)
    if not rows:
        raise UsageError("no prediction rows to evaluate")
    if tasks_meta is None:
        tasks_meta = infer_tasks_meta(rows[0].keys())
    if not tasks_meta:
        raise UsageError("no task found in the predictions (expected <task>_true and p_<task>_<class> columns)")
    levels = ["image", "patient"] if aggregate == "patient" else ["image"]
    result: dict[str, Any] = {
        "settings": {"n_boot": n_boot, "seed": seed, "alpha": ALPHA, "aggregate": aggregate, "levels": levels,
                     "threshold_rules": [_rule_key(r, sensitivity_target) for r in threshold_rules],
                     "ci_method": "percentile bootstrap resampling whole patients (all images of a drawn patient)",
                     "auc_ci_method": "DeLong (normal approximation, clipped to [0, 1])",
                     "threshold_chosen_on": "pooled cross-validation predictions (held-out folds)"},
        "tasks": {},
    }
    for task, meta in tasks_meta.items():
        classes, pos = _task_spec(meta)
        cases = _task_cases(rows, task, classes)
        if cases is None:
            continue
        entry: dict[str, Any] = {"classes": classes, "binary": pos is not None,
                                 "positive": classes[pos] if pos is not None else None, "levels": {}}
        for level in levels:
            c = cases
            if level == "patient":
                try:
                    c = _aggregate_patients(cases)
                except ValueError as exc:
                    entry["levels"][level] = {"error": f"patient-level aggregation impossible: {exc}"}
                    continue
            entry["levels"][level] = _evaluate_level(c, classes, pos, n_boot, seed, threshold_rules,
                                                     sensitivity_target)
        result["tasks"][task] = entry
    return result


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


# ----------------------------------------------------------------------------------------------
# plots

PART_COLORS = {"cv": "#1f77b4", "test": "#d62728", "external": "#2ca02c"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> str:
    plt = _plt()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'


def _part_color(name: str, i: int) -> str:
    return PART_COLORS.get(name, f"C{(i + 3) % 10}")


def _part_label(name: str) -> str:
    return PART_LABELS.get(name, name)


def _num(x: Any) -> float:
    return NAN if x is None else float(x)


def _plot_roc(level: dict, classes: list[str], binary: bool, title: str) -> str:
    plt = _plt()
    names = list(level["roc"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.4 * len(names), 4.6), squeeze=False, layout="constrained")
    ops = level.get("operating_points", {}).get("rules", {}).get("youden", {})
    for i, (ax, name) in enumerate(zip(axes[0], names)):
        curves = level["roc"][name]
        block = level["parts"][name]
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
        drawn = 0
        for j, (cls, cur) in enumerate(curves.items()):
            if cur is None:
                continue
            color = _part_color(name, i) if binary else f"C{j % 10}"
            if binary:
                d = block["auc_delong"]
                label = f"AUC {_fmt(d['auc'])} (95% CI {_fmt(d['lo'])}–{_fmt(d['hi'])})"
            else:
                d = block["auc_per_class_delong"][cls]
                label = f"{cls}: AUC {_fmt(d['auc'])}"
            ax.plot(cur["fpr"], cur["tpr"], color=color, lw=1.8, label=label, drawstyle="default")
            band = cur.get("band")
            if band:
                ax.fill_between(band["fpr"], band["tpr_lo"], band["tpr_hi"], color=color, alpha=0.15 if binary else 0.08,
                                lw=0, label="95% patient-bootstrap band" if binary else None)
            drawn += 1
        if binary and ops.get("parts", {}).get(name):
            op = ops["parts"][name]
            fpr, tpr = 1 - _num(op["specificity"]), _num(op["sensitivity"])
            if math.isfinite(fpr) and math.isfinite(tpr):
                tag = "Youden threshold (chosen here: optimistic)" if name == "cv" else "Youden threshold from CV"
                ax.plot([fpr], [tpr], "o", ms=7, mfc="white", mec="k", label=f"{tag}, t={op['threshold']:.3f}")
        if not drawn:
            ax.text(0.5, 0.5, "ROC undefined:\nonly one class present", ha="center", va="center", fontsize=10)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("False positive rate (1 − specificity)")
        ax.set_ylabel("True positive rate (sensitivity)")
        ax.set_title(f"{title}: {_part_label(name)} (n={block['n']})", fontsize=10)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(loc="lower right", fontsize=7 if not binary and len(classes) > 3 else 8)
    return _png(fig)


def _plot_confusion(level: dict, classes: list[str], title: str) -> str:
    plt = _plt()
    names = list(level["parts"])
    size = 3.2 + 0.45 * len(classes)
    fig, axes = plt.subplots(1, len(names), figsize=(size * len(names), size + 0.3), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes[0], names):
        cm = np.asarray(level["parts"][name]["metrics"]["confusion_matrix"], dtype=float)
        rows = cm.sum(axis=1, keepdims=True)
        frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for r in range(cm.shape[0]):
            for col in range(cm.shape[1]):
                ax.text(col, r, f"{int(cm[r, col])}\n{frac[r, col]:.0%}", ha="center", va="center", fontsize=9,
                        color="white" if frac[r, col] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 2 else 0, ha="right"
                      if len(classes) > 2 else "center")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("Predicted class (argmax)")
        ax.set_ylabel("True class")
        ax.set_title(f"{title}: {_part_label(name)} (n={int(cm.sum())})", fontsize=10)
    return _png(fig)


def _plot_reliability(level: dict, title: str) -> str:
    plt = _plt()
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.2, 6.0), gridspec_kw={"height_ratios": [3, 1]}, sharex=True,
                               layout="constrained")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.5", label="perfect calibration")
    for i, (name, rel) in enumerate(level["reliability"].items()):
        conf = np.array([_num(v) for v in rel["confidence"]])
        acc = np.array([_num(v) for v in rel["accuracy"]])
        ok = np.isfinite(conf) & np.isfinite(acc)
        color = _part_color(name, i)
        ax.plot(conf[ok], acc[ok], "o-", color=color, ms=4, label=f"{_part_label(name)} (ECE {_fmt(rel['ece'])})")
        edges = np.asarray(rel["bin_edges"])
        hx.stairs(rel["count"], edges, color=color, label=_part_label(name))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Observed accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    hx.set_xlabel("Confidence (top-class probability)")
    hx.set_ylabel("Cases")
    return _png(fig)


def _plot_folds(level: dict, title: str) -> str:
    plt = _plt()
    folds = level["folds"]
    keys = list(folds)
    x = np.arange(len(keys))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(keys) + 2.5), 4.0), layout="constrained")
    for off, metric, color in ((-width / 2, "auc", "C0"), (width / 2, "accuracy", "C1")):
        vals = np.array([_num(folds[k]["metrics"].get(metric)) for k in keys])
        lo = np.array([_num(folds[k]["ci"][metric]["lo"]) for k in keys])
        hi = np.array([_num(folds[k]["ci"][metric]["hi"]) for k in keys])
        err = np.vstack([np.where(np.isfinite(lo), vals - lo, 0), np.where(np.isfinite(hi), hi - vals, 0)])
        err = np.where(np.isfinite(err), np.clip(err, 0, None), 0)
        heights = np.nan_to_num(vals)
        bars = ax.bar(x + off, heights, width, color=color, yerr=err, capsize=3,
                      label=f"{'AUC' if metric == 'auc' else 'Accuracy'} (95% CI)")
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, 0.02, _fmt(v), ha="center", va="bottom", fontsize=7,
                    color="white", rotation=90)
        pooled = _num(level["parts"]["cv"]["metrics"].get(metric))
        if math.isfinite(pooled):
            ax.axhline(pooled, color=color, ls=":", lw=1.2)
    ax.set_xticks(x, [f"fold {k}" for k in keys])
    ax.set_xlim(-0.8, len(keys) - 0.2)
    ax.set_ylim(0, 1.22)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("Held-out value")
    ax.set_title(title + " (dotted lines: pooled CV)")
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _read_histories(run_dir: Path) -> dict[int, dict[str, list[float]]]:
    out = {}
    for path in sorted(run_dir.glob("fold*/history.csv")):
        m = re.fullmatch(r"fold(\d+)", path.parent.name)
        if not m:
            continue
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            continue
        cols: dict[str, list[float]] = {}
        for key in rows[0]:
            try:
                cols[key] = [float(r[key]) if r[key] not in ("", None) else NAN for r in rows]
            except ValueError:
                continue
        out[int(m.group(1))] = cols
    return dict(sorted(out.items()))


def _plot_training(histories: dict[int, dict[str, list[float]]], best_epochs: dict[int, int]) -> str:
    plt = _plt()
    fig, (lx, mx) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    metric_name = None
    for i, (k, h) in enumerate(histories.items()):
        color = f"C{i % 10}"
        ep = h.get("epoch") or list(range(1, len(next(iter(h.values()))) + 1))
        if "train_loss" in h:
            lx.plot(ep, h["train_loss"], "-o", ms=3, color=color, label=f"fold {k} train")
        if "val_loss" in h:
            lx.plot(ep, h["val_loss"], "--s", ms=3, color=color, label=f"fold {k} validation")
        metric = next((c for c in h if c.startswith("val_") and c != "val_loss"), None)
        if metric:
            metric_name = metric[4:]
            mx.plot(ep, h[metric], "-o", ms=3, color=color, label=f"fold {k}")
            best = best_epochs.get(k)
            if best is not None and best in ep:
                j = ep.index(best)
                mx.plot([best], [h[metric][j]], "*", ms=12, color=color, mec="k",
                        label=f"fold {k} best epoch ({best})")
    lx.set_title("Loss per epoch")
    lx.set_xlabel("Epoch")
    lx.set_ylabel("Loss")
    lx.grid(alpha=0.3)
    lx.legend(fontsize=7)
    mx.set_title(f"Validation {metric_name or 'metric'} per epoch (picks the best epoch)")
    mx.set_xlabel("Epoch")
    mx.set_ylabel(metric_name or "metric")
    mx.grid(alpha=0.3)
    if metric_name:
        mx.legend(fontsize=7)
    n_epochs = max((len(h.get("epoch", [])) for h in histories.values()), default=0)
    for ax in (lx, mx):
        if 0 < n_epochs <= 15:
            ax.set_xticks(range(1, n_epochs + 1))
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


# ----------------------------------------------------------------------------------------------
# HTML

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:1.7em;margin-bottom:4px}h2{border-bottom:2px solid #1f77b4;padding-bottom:4px;margin-top:40px}
h3{margin-top:28px;color:#1f4e79}h4{margin:22px 0 8px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.9em}
th,td{border:1px solid #ddd;padding:4px 9px;text-align:right;vertical-align:top}
th{background:#f0f4f8}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fbfbfb}
.note{color:#555;font-size:0.88em;max-width:900px}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px}
.na{color:#999}.opt{color:#a05a00}img{max-width:100%;margin:6px 0}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}figcaption{font-size:0.8em;color:#555}
nav a{margin-right:12px}code{background:#f3f3f3;padding:0 3px}
"""


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def _fmt_ci(value: Any, ci: Mapping[str, Any] | None) -> str:
    v = _fmt(value)
    if v == "n/a" or not ci:
        return v
    lo, hi = _fmt(ci.get("lo")), _fmt(ci.get("hi"))
    return v if "n/a" in (lo, hi) else f"{v} ({lo}–{hi})"


def _e(s: Any) -> str:
    return html.escape(str(s))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = []
        for v in r:
            text = _e(v)
            cells.append(f'<td class="na">{text}</td>' if text == "n/a" else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def _metric_rows(binary: bool) -> list[tuple[str, str, str | None]]:
    """(label, metric key, CI key) rows of the metrics table."""
    rows = [("AUC (patient bootstrap CI)", "auc", "auc")]
    if binary:
        rows.append(("AUC (DeLong CI)", "auc", "delong"))
    rows += [("Accuracy", "accuracy", "accuracy"), ("Balanced accuracy", "balanced_accuracy", "balanced_accuracy")]
    if binary:
        rows += [("Sensitivity (at p ≥ 0.5)", "sensitivity", "sensitivity"),
                 ("Specificity (at p ≥ 0.5)", "specificity", "specificity"),
                 ("PPV (at p ≥ 0.5)", "ppv", None), ("NPV (at p ≥ 0.5)", "npv", None), ("F1", "f1", None)]
    else:
        rows += [("Precision (macro)", "precision_macro", None), ("Recall (macro)", "recall_macro", None),
                 ("F1 (macro)", "f1_macro", None)]
    rows += [("MCC", "mcc", None), ("Cohen's kappa", "kappa", None), ("ECE (top-label, 15 bins)", "ece", None),
             ("Brier score", "brier", None), ("Log loss", "log_loss", None)]
    return rows


def _metrics_table(level: dict, classes: list[str], binary: bool) -> str:
    parts = list(level["parts"])
    mean_sd = level.get("cv_mean_sd") or {}
    n_folds = len(level.get("folds", {}))
    header = ["Metric"]
    for p in parts:
        header.append(_part_label(p))
        if p == "cv" and n_folds:
            header.append(f"CV mean ± sd ({n_folds} fold{'s' if n_folds != 1 else ''})")
    rows = []

    def add(label, cells_for):
        row = [label]
        for p in parts:
            blk = level["parts"][p]
            row.append(cells_for(blk, None))
            if p == "cv" and n_folds:
                row.append(cells_for(blk, mean_sd))
        rows.append(row)

    add("Images (n)", lambda b, ms: str(b["n"]) if ms is None else "")
    add("Patients", lambda b, ms: str(b["n_patients"]) if ms is None else "")
    add("Cases per class", lambda b, ms: ", ".join(f"{c} {n}" for c, n in b["class_counts"].items())
        if ms is None else "")
    for label, key, ci in _metric_rows(binary):
        def cell(b, ms, key=key, ci=ci):
            if ms is not None:
                if ci == "delong" or key not in ms:
                    return ""
                m, s = ms[key]["mean"], ms[key]["sd"]
                return _fmt(m) if _fmt(s) == "n/a" else f"{_fmt(m)} ± {_fmt(s)}"
            if ci == "delong":
                return _fmt_ci(b["auc_delong"]["auc"], b["auc_delong"])
            return _fmt_ci(b["metrics"].get(key), b.get("ci", {}).get(ci) if ci else None)
        add(label, cell)
    out = _table(header, rows)
    if not binary:
        pc_rows = []
        for j, cls in enumerate(classes):
            row = [cls]
            for p in parts:
                d = level["parts"][p]["auc_per_class_delong"][cls]
                row.append(_fmt_ci(d["auc"], d))
            pc_rows.append(row)
        out += "<p class='note'>One-vs-rest AUC per class (95% DeLong CI):</p>"
        out += _table(["Class"] + [_part_label(p) for p in parts], pc_rows)
    return out


def _operating_section(level: dict) -> str:
    ops = level.get("operating_points")
    if not ops:
        return ""
    parts = ["<h4>Operating points</h4>"]
    if ops.get("note"):
        return parts[0] + f"<p class='note warn'>{_e(ops['note'])}</p>"
    parts.append("<p class='note'>Each threshold is <b>chosen on the pooled cross-validation predictions</b> "
                 "(the held-out folds act as validation data) and then applied unchanged to the test and external "
                 "sets. Rows marked <span class='opt'>optimistic</span> report the threshold on the very data that "
                 "chose it. The cross-fitted CV row chooses each fold's threshold on the other folds only. "
                 "CIs (patient bootstrap) treat the threshold as fixed."
                 + (" Test and external probabilities of an lnzoo run average the fold models, whose scores may "
                    "spread differently from one fold model's held-out scores." if set(level["parts"]) - {"cv"} else "")
                 + "</p>")
    header = ["Rule", "Threshold", "Evaluated on", "n", "Sensitivity", "Specificity", "PPV", "NPV", "Accuracy",
              "TP / FN / FP / TN"]
    rows = []
    for entry in ops["rules"].values():
        if "error" in entry:
            rows.append([entry["label"], "n/a", f"not chosen: {entry['error']}", "", "", "", "", "", "", ""])
            continue
        for name, r in entry["parts"].items():
            where = _part_label(name) + (" (optimistic: chose the threshold)" if r.get("optimistic") else "")
            rows.append([entry["label"], _fmt(r["threshold"], 4), where, r["n"],
                         _fmt_ci(r["sensitivity"], r["ci"]["sensitivity"]),
                         _fmt_ci(r["specificity"], r["ci"]["specificity"]), _fmt(r["ppv"]), _fmt(r["npv"]),
                         _fmt(r["accuracy"]), f"{r['tp']} / {r['fn']} / {r['fp']} / {r['tn']}"])
        cf = entry.get("cv_cross_fitted")
        if cf:
            ts = ", ".join(f"fold {k}: {_fmt(v, 4)}" for k, v in cf["thresholds_per_fold"].items())
            rows.append([entry["label"], ts, "CV, cross-fitted (honest)", cf["n"], _fmt(cf["sensitivity"]),
                         _fmt(cf["specificity"]), _fmt(cf["ppv"]), _fmt(cf["npv"]), _fmt(cf["accuracy"]),
                         f"{cf['tp']} / {cf['fn']} / {cf['fp']} / {cf['tn']}"])
    parts.append(_table(header, rows))
    return "".join(parts)


def _folds_section(level: dict, binary: bool, title: str) -> str:
    folds = level.get("folds") or {}
    if not folds:
        return ""
    header = ["Fold", "Images", "Patients", "AUC (95% CI)", "Accuracy (95% CI)", "Balanced accuracy"]
    if binary:
        header += ["Sensitivity", "Specificity"]
    rows = []
    for k, b in folds.items():
        m, ci = b["metrics"], b.get("ci", {})
        row = [f"fold {k}", b["n"], b["n_patients"], _fmt_ci(m["auc"], ci.get("auc")),
               _fmt_ci(m["accuracy"], ci.get("accuracy")), _fmt(m["balanced_accuracy"])]
        if binary:
            row += [_fmt(m.get("sensitivity")), _fmt(m.get("specificity"))]
        rows.append(row)
    return ("<h4>Per-fold results</h4>" + _table(header, rows)
            + _img(_plot_folds(level, title), f"{title}: per-fold AUC and accuracy"))


def _centers_section(level: dict) -> str:
    centers = level.get("centers")
    if not centers:
        return ""
    rows = []
    for part, per in centers.items():
        for ctr, b in per.items():
            d = b.get("auc_delong")
            auc = _fmt_ci(d["auc"], d) if d else _fmt(b["metrics"]["auc"])
            rows.append([_part_label(part), ctr, b["n"], b["n_patients"], auc, _fmt(b["metrics"]["accuracy"]),
                         _fmt(b["metrics"]["balanced_accuracy"])])
    return "<h4>Per-center results</h4>" + _table(
        ["Part", "Center", "Images", "Patients", "AUC (DeLong CI)", "Accuracy", "Balanced accuracy"], rows)


def _level_section(task: str, level_name: str, level: dict, entry: dict, show_level: bool) -> str:
    classes, binary = entry["classes"], entry["binary"]
    title = f"{task}" + (f", {level_name} level" if show_level else "")
    out = [f"<h3>{_e(level_name.capitalize())} level</h3>"] if show_level else []
    if "error" in level:
        return "".join(out) + f"<p class='warn'>{_e(level['error'])}</p>"
    if level_name == "patient":
        out.append("<p class='note'>One case per patient: the mean probability over the patient's images.</p>")
    out.append("<h4>Metrics (95% CI)</h4>")
    out.append(_metrics_table(level, classes, binary))
    out.append("<h4>ROC curves</h4>")
    if not binary:
        out.append("<p class='note'>One-vs-rest curve per class; shaded: 95% patient-bootstrap band of the TPR.</p>")
    out.append(_img(_plot_roc(level, classes, binary, title), f"ROC curves of {title}"))
    out.append(_operating_section(level))
    out.append("<h4>Confusion matrices</h4>")
    out.append(_img(_plot_confusion(level, classes, title), f"confusion matrices of {title}"))
    out.append("<h4>Calibration</h4>")
    cal_rows = [[_part_label(p), _fmt(b["metrics"]["ece"]), _fmt(b["metrics"]["brier"]), _fmt(b["metrics"]["log_loss"])]
                for p, b in level["parts"].items()]
    out.append(_table(["Part", "ECE (top-label, 15 bins)", "Brier score", "Log loss"], cal_rows))
    out.append(_img(_plot_reliability(level, f"Reliability: {title}"), f"reliability diagram of {title}"))
    out.append(_folds_section(level, binary, title))
    out.append(_centers_section(level))
    return "".join(out)


def _gradcam_section(run_dir) -> str:
    """Grad-CAM examples: every PNG under ``run_dir/explain/`` embedded with its file name as caption; "" when none."""
    root = Path(run_dir) / "explain"
    pngs = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".png") if root.is_dir() else []
    if not pngs:
        return ""
    figs = []
    for p in pngs[:MAX_GRADCAM]:
        b64 = base64.b64encode(p.read_bytes()).decode("ascii")
        name = p.relative_to(root).as_posix()
        figs.append(f"<figure>{_img(b64, name)}<figcaption>{_e(name)}</figcaption></figure>")
    more = len(pngs) - MAX_GRADCAM
    tail = f"<p class='note'>{more} more PNG(s) in {_e(root)} are not embedded.</p>" if more > 0 else ""
    return "<h2 id='grad-cam'>Grad-CAM examples</h2>" + "".join(figs) + tail


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _run_summary(run_dir: Path) -> dict[str, Any]:
    metrics = _read_json(run_dir / "metrics.json")
    run = _read_json(run_dir / "run.json")
    recipe: dict[str, Any] = {}
    try:
        recipe = tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        pass
    folds: dict[int, int] = {}
    try:
        with (run_dir / "folds.csv").open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                folds[int(row["fold"])] = folds.get(int(row["fold"]), 0) + 1
    except (OSError, KeyError, ValueError):
        pass
    best_epochs = {}
    for sidecar in run_dir.glob("fold*/best.json"):
        meta = _read_json(sidecar)
        if "fold" in meta and "best_epoch" in meta:
            best_epochs[int(meta["fold"])] = meta["best_epoch"]
    return {
        "run_dir": str(run_dir), "recipe": metrics.get("recipe") or recipe.get("name") or run_dir.name,
        "description": recipe.get("description", ""), "data": metrics.get("data", ""),
        "main_task": metrics.get("main_task"), "folds_total": len(folds) or None,
        "patients_per_fold": {str(k): v for k, v in sorted(folds.items())},
        "folds_run": metrics.get("folds_run"), "device": run.get("device"), "wall_seconds": run.get("wall_seconds"),
        "quick": run.get("quick"), "overrides": run.get("overrides") or [], "versions": run.get("versions") or {},
        "test_note": metrics.get("test_note") or metrics.get("external_note"),
        "best_epochs": {str(k): v for k, v in sorted(best_epochs.items())},
    }


def _summary_section(s: dict, evaluation: dict) -> str:
    def dur(x):
        if x is None:
            return "n/a"
        x = float(x)
        return f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min"

    parts_n = {}
    for entry in evaluation["tasks"].values():
        lvl = entry["levels"].get("image", {})
        for p, b in lvl.get("parts", {}).items():
            parts_n[p] = max(parts_n.get(p, 0), b["n"])
    folds = s["folds_total"]
    folds_txt = "n/a" if folds is None else f"{folds}-fold patient-grouped CV"
    if s.get("folds_run") is not None:
        folds_txt += f"; folds run: {', '.join(map(str, s['folds_run']))}"
    rows = [["Recipe", s["recipe"]], ["Description", s["description"] or "n/a"], ["Data", s["data"] or "n/a"],
            ["Main task", s["main_task"] or "n/a"], ["Folds", folds_txt],
            ["Patients per fold", ", ".join(f"fold {k}: {v}" for k, v in s["patients_per_fold"].items()) or "n/a"],
            ["Best epoch per fold", ", ".join(f"fold {k}: {v}" for k, v in s["best_epochs"].items()) or "n/a"],
            ["Labelled images per part (max over tasks)",
             ", ".join(f"{_part_label(p)}: {n}" for p, n in parts_n.items()) or "n/a"],
            ["Device", s["device"] or "n/a"], ["Wall time", dur(s["wall_seconds"])],
            ["Quick profile", {True: "yes", False: "no"}.get(s["quick"], "n/a")],
            ["Overrides", "; ".join(s["overrides"]) or "none"],
            ["Versions", ", ".join(f"{k} {v}" for k, v in s["versions"].items()) or "n/a"],
            ["Bootstrap", f"{evaluation['settings']['n_boot']} patient-cluster resamples, seed "
                          f"{evaluation['settings']['seed']}"]]
    out = "<h2 id='run-summary'>Run summary</h2>" + _table(["", ""], rows)
    if "phantom" in (s["data"] or "").lower():
        out += "<p class='warn'>These results come from the synthetic phantom, not clinical data.</p>"
    note = s.get("test_note")
    out += ("<p class='note'><b>How to read this report.</b> Pooled CV: every held-out fold's predictions together; "
            "each fold model predicts only patients it never trained on. 95% CIs: percentile bootstrap that resamples "
            "whole patients (all of a patient's images together); AUC also with DeLong's CI. Sensitivity and "
            "specificity in the metrics tables are at p ≥ 0.5 (argmax); chosen operating points are in their own "
            "tables. "
            + (f"Test/external predictions: {_e(note)}. " if note else "") + "</p>")
    return out


def _training_section(run_dir: Path, summary: dict) -> str:
    histories = _read_histories(run_dir)
    if not histories:
        return ""
    best = {int(k): int(v) for k, v in summary["best_epochs"].items() if v is not None}
    return ("<h2 id='training-curves'>Training curves</h2>"
            "<p class='note'>Loss on the training and inner-validation data, and the validation metric of the main "
            "task, per epoch and fold. The star marks the epoch whose weights were kept.</p>"
            + _img(_plot_training(histories, best), "training curves"))


def _render(run_dir: Path, summary: dict, evaluation: dict) -> str:
    tasks = list(evaluation["tasks"])
    main = summary.get("main_task")
    if main in tasks:
        tasks.remove(main)
        tasks.insert(0, main)
    nav = "".join(f"<a href='#task-{_slug(t)}'>{_e(t)}</a>" for t in tasks)
    body = [f"<h1>Evaluation report: {_e(summary['recipe'])}</h1>",
            f"<p class='note'>{_e(summary['run_dir'])} · generated {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
            f"<nav>Tasks: {nav} <a href='#training-curves'>Training curves</a></nav>",
            _summary_section(summary, evaluation)]
    show_level = len(evaluation["settings"]["levels"]) > 1
    for t in tasks:
        entry = evaluation["tasks"][t]
        kind = f"binary, positive class: {entry['positive']}" if entry["binary"] else f"{len(entry['classes'])} classes"
        body.append(f"<h2 id='task-{_slug(t)}'>Task: {_e(t)}</h2>")
        body.append(f"<p class='note'>Classes: {_e(', '.join(entry['classes']))} ({_e(kind)}).</p>")
        for level_name, level in entry["levels"].items():
            body.append(_level_section(t, level_name, level, entry, show_level))
    body.append(_training_section(run_dir, summary))
    body.append(_gradcam_section(run_dir))
    title = _e(f"lnzoo report: {summary['recipe']}")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{title}</title>"
            f"<style>{CSS}</style></head><body><main>{''.join(body)}</main></body></html>")


def write_report(run_dir, out_html=None, n_boot: int = 1000, *, aggregate: str | None = None, seed: int = 0,
                 sensitivity_target: float = 0.95) -> Path:
    """Write a self-contained ``report.html`` (default: in the run dir) and ``evaluation.json`` beside it; return its path."""
    run_dir = Path(run_dir)
    pred = run_dir / "predictions.csv"
    if not pred.is_file():
        raise UsageError(f"{run_dir} is not a finished run directory: predictions.csv is missing")
    evaluation = evaluate_predictions(pred, load_tasks_meta(run_dir), aggregate=aggregate, n_boot=n_boot, seed=seed,
                                      sensitivity_target=sensitivity_target)
    summary = _run_summary(run_dir)
    out = Path(out_html) if out_html else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    page = _render(run_dir, summary, evaluation)
    (out.parent / "evaluation.json").write_text(
        json.dumps(_jsonable({"run": summary, **evaluation}), indent=1, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    out.write_text(page, encoding="utf-8")
    return out
