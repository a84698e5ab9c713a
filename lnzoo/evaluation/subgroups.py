"""Performance in subgroups (TRIPOD+AI item 23a, CLAIM): centre, scanner, sex, age band, any manifest column.

``data.subgroups = ["center", "scanner", "sex", "age_band"]`` names the columns; ``data.subgroup_bands = {age_band =
{column = "age", cuts = [40, 60]}}`` cuts a numeric column into bands (``< 40``, ``40 to < 60``, ``>= 60``). Each
prediction row carries its subgroup values (``group_<name>`` columns of predictions.csv, written from the row's
cells when it is predicted: :func:`group_values`), so a report of the run, or of its predictions.csv alone, finds
them.

Per subgroup value and part (cross-validation held-out, test, external): the images, patients and prevalence (a
task of several classes: the class counts); the AUC (several classes: the macro one-vs-rest AUC) with a 95% CI that
resamples whole patients; for a binary task also sensitivity and specificity at the operating
point the model is served at (chosen on the pooled cross-validation, applied to the calibrated probabilities); and
the calibration slope (the logistic regression of the outcome on the logit of the calibrated probability: 1 is
ideal, below 1 the probabilities are too extreme in that subgroup). A subgroup with fewer than
:data:`MIN_PER_CLASS` images of either class gets no figures, only the counts and the reason. The largest AUC gap
between two subgroups of a column is named.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MIN_PER_CLASS = 5  # fewer positive or negative images than this in a subgroup: counts only, no figures
MISSING_VALUE = "missing"


def band_label(cuts: Sequence[float], i: int) -> str:
    """The name of band ``i`` of ``cuts``: "< 40", "40 to < 60", ">= 60"."""
    def f(x: float) -> str:
        return f"{x:g}"

    if i == 0:
        return f"< {f(cuts[0])}"
    if i == len(cuts):
        return f">= {f(cuts[-1])}"
    return f"{f(cuts[i - 1])} to < {f(cuts[i])}"


def band_of(text: str | None, cuts: Sequence[float]) -> str:
    """The band of a cell's number; "missing" for an empty or non-numeric cell."""
    try:
        value = float(str(text).strip())
    except (TypeError, ValueError):
        return MISSING_VALUE
    if not math.isfinite(value):
        return MISSING_VALUE
    return band_label(cuts, int(np.searchsorted(np.asarray(cuts, float), value, side="right")))


def group_values(sample, subgroups: Sequence[str], bands: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """A sample's value of each subgroup: its band of a banded column, its centre, else its row's cell."""
    out = {}
    for name in subgroups:
        if name in bands:
            out[name] = band_of(sample.cells.get(bands[name]["column"]), bands[name]["cuts"])
            continue
        value = sample.cells.get(name)
        if name in ("center", "centre") and not value:
            value = sample.center
        out[name] = str(value).strip() if value is not None and str(value).strip() else MISSING_VALUE
    return out


def row_groups(sample, data_cfg) -> dict[str, str]:
    """A sample's subgroup values under a recipe's data section (``data.subgroups``, ``data.subgroup_bands``)."""
    return group_values(sample, list(data_cfg.subgroups or []), dict(data_cfg.subgroup_bands or {}))


def band_problems(subgroups: Sequence[str], bands: Any) -> list[str]:
    """What is wrong with ``data.subgroup_bands`` (each a {column, cuts} with increasing numbers)."""
    if not isinstance(bands, Mapping):
        return [f"data.subgroup_bands: a table of {{column = ..., cuts = [...]}} per band name, got {bands!r}"]
    problems = []
    for name, spec in bands.items():
        where = f"data.subgroup_bands.{name}"
        if not isinstance(spec, Mapping) or not isinstance(spec.get("column"), str) or "cuts" not in spec:
            problems.append(f"{where}: needs column = \"...\" and cuts = [...], got {spec!r}")
            continue
        cuts = spec["cuts"]
        if not isinstance(cuts, list) or not cuts or not all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                             for c in cuts):
            problems.append(f"{where}.cuts: a list of numbers, got {cuts!r}")
        elif any(b <= a for a, b in zip(cuts, cuts[1:])):
            problems.append(f"{where}.cuts: must increase, got {cuts}")
        extra = set(spec) - {"column", "cuts"}
        if extra:
            problems.append(f"{where}: unknown key(s) {sorted(extra)} (column, cuts)")
        if name not in subgroups:
            problems.append(f"{where}: the band is not used; add {name!r} to data.subgroups")
    return problems


def calibration_slope(y_bin: np.ndarray, p: np.ndarray) -> float:
    """The slope of the logistic recalibration of ``y_bin`` on logit(``p``) (1: well calibrated); NaN when it
    cannot be fitted (one class, or every probability the same)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y_bin, dtype=int)
    if y.min(initial=1) == y.max(initial=0) or np.ptp(p) == 0:
        return float("nan")
    q = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    x = np.log(q / (1 - q))[:, None]
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(x, y)  # no penalty: the plain recalibration fit
    return float(fit.coef_[0, 0])


def _group_entry(c, pos: int | None, threshold: float | None, n_boot: int, seed: int) -> dict[str, Any]:
    from lnzoo.evaluation.metrics import bootstrap_metric_fns
    from lnzoo.evaluation.stats import bootstrap_ci, task_auc

    counts = np.bincount(c.y, minlength=c.p.shape[1])
    entry: dict[str, Any] = {"n": len(c), "n_patients": len(set(c.patient.tolist())), "auc": None,
                             "sensitivity": None, "specificity": None, "calibration_slope": None, "too_few": None}
    if pos is not None:
        y = c.y == pos
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        entry.update(n_positive=n_pos, prevalence=n_pos / len(c) if len(c) else None)
        if min(n_pos, n_neg) < MIN_PER_CLASS:
            entry["too_few"] = (f"{n_pos} positive and {n_neg} negative image(s): fewer than {MIN_PER_CLASS} of a "
                                "class is too few for figures")
    else:  # several classes: the macro one-vs-rest AUC over the classes with enough cases
        entry["class_counts"] = counts.tolist()
        entry["prevalence"] = None
        if int((counts >= MIN_PER_CLASS).sum()) < 2:
            entry["too_few"] = (f"class counts {counts.tolist()}: fewer than two classes with {MIN_PER_CLASS} or more "
                                "image(s) is too few for figures")
    if entry["too_few"]:
        return entry
    auc = bootstrap_ci(lambda yy, pp: task_auc(yy, pp, pos), c.y, c.p, groups=c.patient.tolist(), n_boot=n_boot,
                       seed=seed)
    entry["auc"] = {"auc": task_auc(c.y, c.p, pos), "lo": auc["lo"], "hi": auc["hi"]}
    if pos is None:
        return entry
    if threshold is not None:
        fns = bootstrap_metric_fns(2, pos, threshold)
        entry["sensitivity"] = fns["sensitivity"](c.y, c.cal)
        entry["specificity"] = fns["specificity"](c.y, c.cal)
        entry["threshold"] = threshold
    entry["calibration_slope"] = calibration_slope(c.y == pos, c.cal[:, pos])
    return entry


def subgroup_analysis(c, pos: int | None, threshold: float | None, n_boot: int, seed: int) -> dict[str, Any]:
    """Per subgroup column of the cases ``c`` (a :class:`lnzoo.evaluation.cases.Cases` with ``groups``): the
    figures of each value and the largest AUC gap between two of them."""
    out: dict[str, Any] = {}
    for column, values in (c.groups or {}).items():
        groups = {}
        for value in sorted(set(values.tolist()), key=lambda v: (v == MISSING_VALUE, v)):
            groups[value] = _group_entry(c.take(values == value), pos, threshold, n_boot, seed)
        scored = {v: g["auc"]["auc"] for v, g in groups.items() if g["auc"] is not None}
        gap = None
        if len(scored) >= 2:
            low, high = min(scored, key=scored.get), max(scored, key=scored.get)
            gap = {"metric": "auc", "between": [high, low], "gap": scored[high] - scored[low]}
        out[column] = {"groups": groups, "largest_gap": gap}
    return out
