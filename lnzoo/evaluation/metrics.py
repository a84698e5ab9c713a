"""Classification metrics, calibration, decision thresholds and temperature scaling (no torch)."""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    cohen_kappa_score,
    confusion_matrix,
    log_loss,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_curve,
)

from lnzoo.evaluation.stats import binary_auc, task_auc

__all__ = [
    "classification_metrics",
    "expected_calibration_error",
    "reliability_curve",
    "youden_threshold",
    "threshold_for_sensitivity",
    "fit_temperature",
    "apply_temperature",
    "aggregate_by_group",
    "bootstrap_metric_fns",
]

NAN = float("nan")


def _labels(y_true, n_classes: int | None = None) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if y.dtype == bool:
        y = y.astype(int)
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(int)
    if n_classes is not None and y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y_true holds indices outside [0, {n_classes})")
    return y


def _proba2d(proba, n: int | None = None) -> np.ndarray:
    """(n, K) probabilities; a 1-D array is read as the positive-class probability of a binary task."""
    p = np.asarray(proba, dtype=float)
    if p.ndim == 1:
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2:
        raise ValueError(f"proba must be (n,) or (n, K), got shape {p.shape}")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"proba has {p.shape[0]} rows but y_true has {n}")
    return p


def _safe_div(a: float, b: float) -> float:
    return float(a) / float(b) if b else NAN


def classification_metrics(y_true, proba, classes: list[str], positive_index: int | None = None,
                           threshold: float | None = None) -> dict:
    """All headline metrics of one evaluation as a flat, JSON-serialisable dict.

    Predictions are the argmax of ``proba``; for a binary task with ``threshold`` given, the
    positive class (``positive_index``, default 1) is predicted iff its probability >= threshold.
    ``positive_index`` and ``threshold`` apply to binary tasks only (threshold raises otherwise).

    Every value equals the scikit-learn function of the same name on these predictions:
    ``precision_*``/``recall_*``/``f1_*`` use sklearn's default label set (classes present in
    y_true or the predictions) with zero_division=0; per-class entries for classes in neither
    are NaN. ``auc`` is the positive-class AUC (binary) or the macro one-vs-rest AUC over classes
    with at least one positive and one negative (K > 2; equals sklearn's ``multi_class="ovr"``
    macro when all classes are present); NaN when undefined. ``brier`` is the Brier score of the
    positive probability (binary) or, for K > 2, the MEAN over classes of the one-vs-rest Brier
    score (i.e. sklearn's multi-class Brier divided by K). ``ece`` is the top-label ECE (15 bins).
    Binary tasks add ``sensitivity``, ``specificity``, ``ppv``, ``npv`` (from the confusion matrix,
    NaN when a denominator is 0), ``precision``, ``recall``, ``f1`` (sklearn, positive class) and
    ``threshold`` (argmax is reported as 0.5; exact ties at 0.5 go to the negative class there).
    """
    k = len(classes)
    if k < 2:
        raise ValueError("need at least two classes")
    y = _labels(y_true, k)
    p = _proba2d(proba, y.shape[0])
    if p.shape[1] != k:
        raise ValueError(f"proba has {p.shape[1]} columns for {k} classes")
    n = y.shape[0]
    if n == 0:
        raise ValueError("no cases to evaluate")
    binary = k == 2
    if binary:
        pos = 1 if positive_index is None else int(positive_index)
        if pos not in (0, 1):
            raise ValueError(f"positive_index must be 0 or 1, got {positive_index}")
    elif threshold is not None:
        raise ValueError("threshold applies to binary tasks only")

    pred = predicted_class(p, pos if binary else None, threshold)
    labels = list(range(k))

    with warnings.catch_warnings():
        # undefined cases are reported as NaN/0 on purpose, not warned about per call
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        for msg in ("A single label was found", "y_pred contains classes not in y_true"):
            warnings.filterwarnings("ignore", message=msg, category=UserWarning)
        present = np.union1d(y, pred)
        prec, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=present, zero_division=0)
        scores = (("precision", prec), ("recall", rec), ("f1", f1))
        per = {name: {c: NAN for c in classes} | {classes[i]: float(v) for i, v in zip(present, vs)}
               for name, vs in scores}
        brier_of = [pos] if binary else labels
        brier = float(np.mean([brier_score_loss(y == j, p[:, j]) for j in brier_of]))
        out = {
            "n": int(n),
            "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "auc": task_auc(y, p, pos if binary else None),
            "auc_per_class": {c: binary_auc(y == j, p[:, j]) for j, c in enumerate(classes)},
            "precision_macro": float(np.mean(prec)),
            "recall_macro": float(np.mean(rec)),
            "f1_macro": float(np.mean(f1)),
            "f1_per_class": per["f1"],
            "precision_per_class": per["precision"],
            "recall_per_class": per["recall"],
            "mcc": float(matthews_corrcoef(y, pred)),
            "kappa": float(cohen_kappa_score(y, pred)),
            "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
            "log_loss": float(log_loss(y, p, labels=labels)),
            "brier": brier,
            "ece": expected_calibration_error(y, p),
        }

    if binary:
        cm = out["confusion_matrix"]
        neg = 1 - pos
        tp, fn, fp, tn = cm[pos][pos], cm[pos][neg], cm[neg][pos], cm[neg][neg]
        out.update(
            sensitivity=_safe_div(tp, tp + fn),
            specificity=_safe_div(tn, tn + fp),
            ppv=_safe_div(tp, tp + fp),
            npv=_safe_div(tn, tn + fn),
            **{name: per[name][classes[pos]] if pos in present else 0.0
               for name in ("precision", "recall", "f1")},
            threshold=0.5 if threshold is None else float(threshold),
        )
    return out


def predicted_class(p: np.ndarray, pos: int | None = None, threshold: float | None = None) -> np.ndarray:
    """Argmax, or for a binary task with a threshold: the positive class iff its probability >= threshold."""
    if pos is not None and threshold is not None:
        return np.where(p[:, pos] >= threshold, pos, 1 - pos)
    return p.argmax(axis=1)


def bootstrap_metric_fns(k: int, pos: int | None, threshold: float | None = None) -> dict:
    """``fn(y, p) -> float`` per metric, as defined in :func:`classification_metrics`, cheap enough to call
    on every bootstrap resample: auc, accuracy, balanced_accuracy (+ sensitivity, specificity if binary)."""
    def accuracy(y, p):
        return float(np.mean(predicted_class(p, pos, threshold) == y))

    def balanced_accuracy(y, p):
        pred = predicted_class(p, pos, threshold)
        return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))

    fns = {"auc": lambda y, p: task_auc(y, p, pos), "accuracy": accuracy, "balanced_accuracy": balanced_accuracy}
    if pos is not None:
        def sensitivity(y, p):
            m = y == pos
            return float(np.mean(predicted_class(p[m], pos, threshold) == pos)) if m.any() else NAN

        def specificity(y, p):
            m = y != pos
            return float(np.mean(predicted_class(p[m], pos, threshold) != pos)) if m.any() else NAN

        fns.update(sensitivity=sensitivity, specificity=specificity)
    return fns


def expected_calibration_error(y_true, proba, n_bins: int = 15) -> float:
    """Top-label (confidence) ECE with ``n_bins`` equal-width bins on [0, 1]; 1-D proba = P(class 1)."""
    return reliability_curve(y_true, proba, n_bins)["ece"]


def reliability_curve(y_true, proba, n_bins: int = 10) -> dict:
    """Top-label reliability diagram data: ``bin_edges`` and per-bin ``confidence``, ``accuracy``, ``count``.

    Empty bins have NaN confidence and accuracy; the ECE over the same bins is under ``ece``.
    """
    y = _labels(y_true)
    p = _proba2d(proba, y.shape[0])
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    # bins are (lo, hi]; a confidence of exactly 0 falls into the first one
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    n = count.sum()
    return {
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": acc.tolist(),
        "count": count.astype(int).tolist(),
        "ece": float(np.abs(acc_sum - conf_sum).sum() / n) if n else NAN,
    }


def _binary_inputs(y_true_binary, score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true_binary)
    s = np.asarray(score, dtype=float)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"y_true_binary and score must be 1-D of equal length, got {y.shape}, {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true_binary must be 0/1 (or bool)")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("need both positive and negative cases to choose a threshold")
    return y, s


def youden_threshold(y_true_binary, score) -> float:
    """Score threshold maximising Youden's J = sensitivity + specificity - 1 (positive iff score >= t).

    The result is one of the observed scores; among equally good ones the highest is returned.
    """
    y, s = _binary_inputs(y_true_binary, score)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    # thr[0] is +inf (nothing predicted positive), never a useful operating point
    j = (tpr - fpr)[1:]
    return float(thr[1:][int(np.argmax(j))])


def threshold_for_sensitivity(y_true_binary, score, target: float = 0.95) -> float:
    """The highest threshold t whose sensitivity (positive iff score >= t) is >= ``target``."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y, s = _binary_inputs(y_true_binary, score)
    pos = np.sort(s[y])[::-1]
    # the fewest positives k with k / n_pos >= target, computed the way callers will check it
    k = next(k for k in range(1, pos.size + 1) if k / pos.size >= target)
    return float(pos[k - 1])


def _logits2d(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=float)
    if z.ndim == 1:
        # a single binary logit is the log-odds of class 1: softmax([0, z]) == sigmoid(z)
        z = np.column_stack([np.zeros_like(z), z])
    if z.ndim != 2:
        raise ValueError(f"logits must be (n,) or (n, K), got shape {z.shape}")
    return z


def fit_temperature(logits, y_true, bounds: tuple[float, float] = (1e-2, 1e2)) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T); 1-D logits are binary log-odds.

    Searched over log T within ``bounds`` (a bound is returned for separable data).
    """
    z = _logits2d(logits)
    y = _labels(y_true, z.shape[1])
    if y.shape[0] != z.shape[0] or y.shape[0] == 0:
        raise ValueError("logits and y_true must have the same, non-zero number of rows")
    rows = np.arange(y.shape[0])

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t), axis=1)[rows, y].mean())

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-8})
    return float(math.exp(res.x))


def apply_temperature(logits, T: float) -> np.ndarray:
    """softmax(logits / T) as (n, K) probabilities; 1-D binary logits give (n, 2)."""
    if not T > 0:
        raise ValueError(f"temperature must be > 0, got {T}")
    return softmax(_logits2d(logits) / float(T), axis=1)


def aggregate_by_group(groups: Sequence, y_true, proba) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean probability per group (patient or node), groups in order of first appearance.

    Returns ``(group_ids, y_true_g, proba_g)``; raises ValueError naming a group whose cases
    carry different true labels.
    """
    g = list(groups.tolist() if isinstance(groups, np.ndarray) else groups)
    y = _labels(y_true)
    p = np.asarray(proba, dtype=float)
    if not (len(g) == y.shape[0] == p.shape[0]):
        raise ValueError(f"groups ({len(g)}), y_true ({y.shape[0]}) and proba ({p.shape[0]}) differ in length")
    index: dict = {}
    codes = np.fromiter((index.setdefault(x, len(index)) for x in g), dtype=np.intp, count=len(g))
    n_groups = len(index)
    ids = np.empty(n_groups, dtype=object)
    ids[:] = list(index)
    counts = np.bincount(codes, minlength=n_groups)

    y_min = np.full(n_groups, np.iinfo(np.int64).max, dtype=np.int64)
    y_max = np.full(n_groups, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(y_min, codes, y)
    np.maximum.at(y_max, codes, y)
    bad = np.flatnonzero(y_min != y_max)
    if bad.size:
        first = bad[0]
        labels = sorted(set(y[codes == first].tolist()))
        more = f" (and {bad.size - 1} more group(s))" if bad.size > 1 else ""
        raise ValueError(f"group {ids[first]!r} has conflicting true labels {labels}{more}")

    flat = p.reshape(p.shape[0], -1)
    sums = np.zeros((n_groups, flat.shape[1]))
    np.add.at(sums, codes, flat)
    mean = (sums / counts[:, None]).reshape((n_groups,) + p.shape[1:])
    # a plain dtype when all ids share one type; mixed ids stay objects rather than be coerced to str
    kinds = {type(x) for x in index}
    if len(kinds) == 1 and kinds <= {str, int, float, bool}:
        ids = np.asarray(list(index))
    return ids, y_min.astype(int), mean
