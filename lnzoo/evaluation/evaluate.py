"""A run's numbers from its prediction rows: ``metrics.json`` (:func:`run_metrics`) and ``evaluation.json``
(:func:`evaluate_predictions`: patient-bootstrap CIs, DeLong CIs, ROC bands, operating points).

Both read the same rows through :func:`lnzoo.evaluation.cases.task_cases` and the same metric
functions, so every figure they share is the same number.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lnzoo.decision import THRESHOLD_RULES, choose_threshold
from lnzoo.errors import UsageError
from lnzoo.evaluation import N_BOOT
from lnzoo.evaluation.cases import Cases, aggregate_patients, infer_tasks_meta, read_prediction_rows, task_cases, task_spec
from lnzoo.evaluation.metrics import (
    bootstrap_metric_fns,
    predicted_class,
    classification_metrics,
    reliability_curve,
)
from lnzoo.evaluation.stats import ClusterSampler, binary_auc, bootstrap_ci, delong_ci
from lnzoo.evaluation.subgroups import subgroup_analysis
from lnzoo.evaluation.utility import decision_curve

__all__ = ["evaluate_predictions", "run_metrics", "mean_sd", "choose_threshold", "PART_ORDER"]

NAN = float("nan")
PART_ORDER = ("cv", "test", "external")
FPR_GRID = np.linspace(0.0, 1.0, 101)
ALPHA = 0.05

# ----------------------------------------------------------------------------------------------
# thresholds

def _rule_key(rule: str, target: float) -> str:
    return "youden" if rule == "youden" else f"sensitivity_{target:g}"


def _rule_label(rule: str, target: float) -> str:
    return "Youden J (max sensitivity + specificity)" if rule == "youden" else f"sensitivity ≥ {target:g}"


def _ci(fn, c: Cases, n_boot: int, seed: int) -> dict[str, Any]:
    r = bootstrap_ci(fn, c.y, c.p, groups=c.patient.tolist(), n_boot=n_boot, seed=seed, alpha=ALPHA)
    return {"lo": r["lo"], "hi": r["hi"], "n_boot_valid": r["n_boot_valid"]}


def auc_with_ci(y_bin: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """{auc, lo, hi}: the AUC with its 95% DeLong CI; all NaN when one class is absent."""
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


def _case_metrics(c: Cases, classes: list[str], pos: int | None) -> dict:
    """The metrics of a set of cases from their raw probabilities, with the calibration (ECE, Brier) of the
    probabilities as served beside them where the rows carry them."""
    m = _quiet_metrics(c.y, c.p, classes, pos)
    if c.space == "calibrated":
        served = _quiet_metrics(c.y, c.cal, classes, pos)
        m["ece_calibrated"], m["brier_calibrated"] = served["ece"], served["brier"]
    return m


def _block(c: Cases, classes: list[str], pos: int | None, n_boot: int, seed: int, with_ci: bool = True) -> dict:
    """Metrics of one set of cases, with patient-bootstrap CIs and DeLong AUC CIs."""
    out: dict[str, Any] = {
        "n": len(c), "n_patients": int(len(set(c.patient.tolist()))),
        "class_counts": {cls: int(np.sum(c.y == j)) for j, cls in enumerate(classes)},
        "metrics": _case_metrics(c, classes, pos),
    }
    if pos is not None:
        out["auc_delong"] = auc_with_ci(c.y == pos, c.p[:, pos])
    else:
        out["auc_per_class_delong"] = {cls: auc_with_ci(c.y == j, c.p[:, j]) for j, cls in enumerate(classes)}
    if with_ci:
        fns = bootstrap_metric_fns(len(classes), pos)
        out["ci"] = {name: _ci(fn, c, n_boot, seed) for name, fn in fns.items()}
    return out


def mean_sd(per_fold: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sd (ddof 1; NaN with one fold: undefined) over folds of every scalar metric."""
    if not per_fold:
        return {}
    keys = [k for k, v in per_fold[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = {}
    for k in keys:
        vals = np.array([m.get(k, NAN) for m in per_fold], dtype=float)
        vals = vals[np.isfinite(vals)]
        out[k] = {"mean": float(vals.mean()) if vals.size else NAN,
                  "sd": float(vals.std(ddof=1)) if vals.size > 1 else NAN, "n_folds": int(vals.size)}
    return out


# ----------------------------------------------------------------------------------------------
# ROC curves with a patient-bootstrap band

def roc_points(y_bin: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _roc_data(c: Cases, classes: list[str], pos: int | None, n_boot: int, seed: int) -> dict:
    """Per curve (binary: the positive class; multi-class: each class one-vs-rest) points, AUC and TPR band."""
    which = [pos] if pos is not None else list(range(len(classes)))
    curves: dict[str, Any] = {}
    todo = []
    for j in which:
        yb = c.y == j
        if yb.all() or not yb.any():
            curves[classes[j]] = None  # undefined with one class
            continue
        fpr, tpr = roc_points(yb, c.p[:, j])
        curves[classes[j]] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": binary_auc(yb, c.p[:, j])}
        todo.append(j)
    if todo and n_boot > 0:
        sampler = ClusterSampler(c.patient.tolist(), len(c), seed)
        bands: dict[int, list[np.ndarray]] = {j: [] for j in todo}
        for _ in range(n_boot):
            idx = sampler.draw()
            y, p = c.y[idx], c.p[idx]
            for j in todo:
                yb = y == j
                if yb.all() or not yb.any():
                    continue
                bands[j].append(_tpr_on_grid(*roc_points(yb, p[:, j])))
        for j in todo:
            if len(bands[j]) >= 2:
                lo, hi = np.quantile(np.vstack(bands[j]), [ALPHA / 2, 1 - ALPHA / 2], axis=0)
                curves[classes[j]]["band"] = {"fpr": FPR_GRID.tolist(), "tpr_lo": lo.tolist(), "tpr_hi": hi.tolist(),
                                              "n_boot_valid": len(bands[j])}
    return curves


# ----------------------------------------------------------------------------------------------
# operating points

def _calls(m: Mapping[str, Any], pos: int) -> dict[str, Any]:
    """The confusion counts and the rates of one operating point, from classification_metrics."""
    cm, neg = m["confusion_matrix"], 1 - pos
    return {"tp": cm[pos][pos], "fn": cm[pos][neg], "fp": cm[neg][pos], "tn": cm[neg][neg],
            **{k: m[k] for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy", "balanced_accuracy")}}


def _at_threshold(c: Cases, classes: list[str], pos: int, t: float, n_boot: int, seed: int) -> dict:
    """Calls at threshold ``t`` on the probabilities calls are made on (``c.cal``), with patient-bootstrap CIs."""
    fns = bootstrap_metric_fns(2, pos, t)
    served = replace(c, p=c.cal)
    return {"threshold": t, "n": len(c), "n_patients": int(len(set(c.patient.tolist()))),
            **_calls(_quiet_metrics(c.y, c.cal, classes, pos, threshold=t), pos),
            "ci": {k: _ci(fns[k], served, n_boot, seed) for k in ("sensitivity", "specificity")}}


def _cross_fitted(cv: Cases, classes: list[str], pos: int, rule: str, target: float, n_boot: int,
                  seed: int) -> dict | None:
    """Honest CV operating point: each fold's threshold is chosen on the other folds' held-out predictions."""
    folds = sorted(set(cv.fold.tolist()) - {-1})
    if len(folds) < 2:
        return None
    pred = np.full(len(cv), -1)
    thresholds = {}
    for k in folds:
        other, this = cv.fold != k, cv.fold == k
        try:
            t = choose_threshold(cv.y[other] == pos, cv.cal[other, pos], rule, target)
        except ValueError:
            continue
        thresholds[str(k)] = t
        pred[this] = predicted_class(cv.cal[this], pos, t)
    done = pred >= 0
    if not done.any():
        return None
    calls = np.eye(2)[pred[done]]  # each fold's own calls, scored as 0/1 probabilities by the one metric code
    called = replace(cv.take(done), p=calls, cal=calls)
    fns = bootstrap_metric_fns(2, pos, 0.5)
    return {"thresholds_per_fold": thresholds, "n": int(done.sum()),
            **_calls(_quiet_metrics(cv.y[done], calls, classes, pos), pos),
            "ci": {k: _ci(fns[k], called, n_boot, seed) for k in ("sensitivity", "specificity")}}


def _operating_points(parts: Mapping[str, Cases], classes: list[str], pos: int, n_boot: int, seed: int,
                      rules: Sequence[str], target: float) -> dict:
    """Each rule's threshold, chosen by :func:`lnzoo.decision.choose_operating_point` (the rule the served model
    is called by) on the pooled CV, applied to every part, plus its cross-fitted CV estimate."""
    from lnzoo.decision import choose_operating_point

    cv = parts.get("cv")
    out: dict[str, Any] = {"chosen_on": "cv", "rules": {}}
    if cv is None:
        out["note"] = "no cross-validation predictions: no validation data to choose a threshold on"
        return out
    out["space"] = cv.space
    for rule in rules:
        key = _rule_key(rule, target)
        try:
            op = choose_operating_point(cv, classes, classes[pos], rule=rule, target=target)
        except ValueError as exc:
            out["rules"][key] = {"label": _rule_label(rule, target), "error": str(exc)}
            continue
        if op.rule != key:
            out["rules"][key] = {"label": _rule_label(rule, target), "error": op.note}
            continue
        t = float(op.value)
        entry: dict[str, Any] = {"label": _rule_label(rule, target), "threshold": t, "space": cv.space,
                                 "chosen_on": "pooled cross-validation predictions (held-out folds)", "parts": {}}
        for name, c in parts.items():
            res = _at_threshold(c, classes, pos, t, n_boot, seed)
            # on the data that chose it the operating point flatters the model
            res["optimistic"] = name == "cv"
            entry["parts"][name] = res
        fitted = _cross_fitted(cv, classes, pos, rule, target, n_boot, seed)
        if fitted is not None:
            entry["cv_cross_fitted"] = fitted
        out["rules"][key] = entry
    return out


# ----------------------------------------------------------------------------------------------
# evaluation

def ordered_parts(names: Iterable[str]) -> list[str]:
    """cv, test, external, then any other part by name."""
    names = set(names)
    return [p for p in PART_ORDER if p in names] + sorted(names - set(PART_ORDER))


def run_metrics(rows: Sequence[Mapping[str, str]], tasks_meta: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of ``metrics.json`` from prediction rows: per task the pooled CV, every fold and their
    mean ± sd, and each other part (test, external); the same metrics ``evaluation.json`` holds."""
    cv: dict[str, Any] = {"pooled": {}, "mean_sd": {}, "per_fold": {}}
    out: dict[str, Any] = {"cross_validation": cv}
    for task, meta in tasks_meta.items():
        classes, pos = task_spec(meta)
        cases = task_cases(rows, task, classes)
        if cases is None:
            continue
        for part in ordered_parts(cases.part.tolist()):
            pc = cases.take(cases.part == part)
            if part != "cv":
                out.setdefault(part, {})[task] = _case_metrics(pc, classes, pos)
                continue
            cv["pooled"][task] = _case_metrics(pc, classes, pos)
            folds = {k: _case_metrics(pc.take(pc.fold == k), classes, pos)
                     for k in sorted(set(pc.fold.tolist()) - {-1})}
            for k, m in folds.items():
                cv["per_fold"].setdefault(k, {})[task] = m
            cv["mean_sd"][task] = mean_sd(list(folds.values()))
    return out


def _evaluate_level(c: Cases, classes: list[str], pos: int | None, n_boot: int, seed: int,
                    rules: Sequence[str], target: float) -> dict:
    parts = {name: c.take(c.part == name) for name in ordered_parts(c.part.tolist())}
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
        level["cv_mean_sd"] = mean_sd([b["metrics"] for b in level["folds"].values()])
    if c.center is not None:
        level["centers"] = {name: {str(ctr): _block(pc.take(pc.center == ctr), classes, pos, n_boot, seed,
                                                    with_ci=False)
                                   for ctr in sorted(set(pc.center.tolist()))}
                            for name, pc in parts.items()}
    served = None
    if pos is not None:
        level["operating_points"] = _operating_points(parts, classes, pos, n_boot, seed, rules, target)
        # the point lnzoo predict and serve call at: the Youden rule (lnzoo.bundle, choose_operating_point's default)
        served = (level["operating_points"].get("rules", {}).get("youden") or {}).get("threshold")
        level["decision_curve"] = {name: decision_curve(pc.y == pos, pc.cal[:, pos], served, pc.space)
                                   for name, pc in parts.items()}
    if c.groups:
        level["subgroups"] = {name: subgroup_analysis(pc, pos, served, n_boot, seed) for name, pc in parts.items()}
    return level


def evaluate_predictions(pred_csv_or_df_rows: Any, tasks_meta: Mapping[str, Any] | None,
                         aggregate: str | None = None, n_boot: int = N_BOOT, seed: int = 0, *,
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
        classes, pos = task_spec(meta)
        cases = task_cases(rows, task, classes)
        if cases is None:
            continue
        entry: dict[str, Any] = {"classes": classes, "binary": pos is not None,
                                 "positive": classes[pos] if pos is not None else None, "levels": {}}
        for level in levels:
            c = cases
            if level == "patient":
                try:
                    c = aggregate_patients(cases)
                except ValueError as exc:
                    entry["levels"][level] = {"error": f"patient-level aggregation impossible: {exc}"}
                    continue
            entry["levels"][level] = _evaluate_level(c, classes, pos, n_boot, seed, threshold_rules,
                                                     sensitivity_target)
        result["tasks"][task] = entry
    return result


