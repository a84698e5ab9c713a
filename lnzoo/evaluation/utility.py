"""Clinical utility: decision curve analysis (Vickers & Elkin, Med Decis Making 2006).

A decision curve asks whether acting on the model's calls does more good than harm, over the range of
threshold probabilities a clinician might hold. At threshold probability ``t`` a clinician who would biopsy a node
when its probability of malignancy is at least ``t`` weighs a missed cancer as (1 - t) / t unnecessary biopsies;
the model's **net benefit** there is

    NB(t) = TP / n - FP / n * t / (1 - t)

with TP and FP the true and false positives of calling every image with probability >= t positive. It is set
against the two default strategies: treat none (NB = 0) and treat all (NB = prevalence - (1 - prevalence) *
t / (1 - t)). A model is useful at ``t`` where its net benefit exceeds both. The probabilities are the calibrated
ones calls are made on (a decision curve of miscalibrated probabilities misstates the benefit), and the curve is
drawn per part (cross-validation held-out, test, external) and task.
"""
from __future__ import annotations

from typing import Any

import numpy as np

THRESHOLDS = np.round(np.arange(1, 100) / 100.0, 2)  # 0.01 ... 0.99


def net_benefit(y_bin, p, thresholds=THRESHOLDS) -> np.ndarray:
    """The net benefit of calling ``p >= t`` positive, for each threshold ``t`` (binary truth ``y_bin``)."""
    y = np.asarray(y_bin, dtype=bool)
    s = np.asarray(p, dtype=float)
    t = np.asarray(thresholds, dtype=float)
    n = y.size
    if n == 0:
        return np.full(t.shape, np.nan)
    # images at or above each threshold: count by searching the sorted scores of each class
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    tp = pos.size - np.searchsorted(pos, t, side="left")
    fp = neg.size - np.searchsorted(neg, t, side="left")
    return tp / n - fp / n * t / (1.0 - t)


def treat_all(prevalence: float, thresholds=THRESHOLDS) -> np.ndarray:
    t = np.asarray(thresholds, dtype=float)
    return prevalence - (1.0 - prevalence) * t / (1.0 - t)


def _useful_range(thresholds: np.ndarray, model: np.ndarray, everyone: np.ndarray) -> list[float] | None:
    """The widest run of consecutive thresholds where the model beats both treat-all and treat-none."""
    better = model > np.maximum(everyone, 0.0) + 1e-12
    best, start = None, None
    for i, b in enumerate([*better.tolist(), False]):
        if b and start is None:
            start = i
        elif not b and start is not None:
            if best is None or i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return None if best is None else [float(thresholds[best[0]]), float(thresholds[best[1] - 1])]


def decision_curve(y_bin, p, operating_threshold: float | None = None, space: str = "calibrated",
                   thresholds=THRESHOLDS) -> dict[str, Any]:
    """The decision curve of one set of cases: net benefit of the model, treat-all and treat-none (0) at each
    threshold; the widest range of thresholds where the model is useful; the net benefits at the operating
    threshold the model is served at (when given, in the same probability ``space``)."""
    y = np.asarray(y_bin, dtype=bool)
    t = np.asarray(thresholds, dtype=float)
    if operating_threshold is not None and 0.0 < operating_threshold < 1.0:  # the served point is on the curve
        t = np.unique(np.append(t, operating_threshold))
    prevalence = float(y.mean()) if y.size else float("nan")
    model, everyone = net_benefit(y, p, t), treat_all(prevalence, t)
    at = None
    if operating_threshold is not None and 0.0 < operating_threshold < 1.0:
        (nb,), (nb_all,) = net_benefit(y, p, [operating_threshold]), treat_all(prevalence, [operating_threshold])
        at = {"threshold": float(operating_threshold), "model": float(nb), "treat_all": float(nb_all)}
    return {"thresholds": t.tolist(), "model": model.tolist(), "treat_all": everyone.tolist(), "treat_none": 0.0,
            "prevalence": prevalence, "n": int(y.size), "space": space,
            "useful_range": _useful_range(t, model, everyone), "at_operating_point": at}
