"""The one decision rule: calibrate a model's probabilities, choose its operating threshold, make the call.

Every place that turns probabilities into a class goes through here: ``lnzoo predict``, the cascade's
routing, ``lnzoo serve``, ``lnzoo explain`` (which explains the class called), the report's operating
points and the model card. A threshold lives in one *space*: the calibrated probabilities (each fold
model's temperature applied; what is served) or, for a run written before lnzoo stored calibrated
columns, the raw ones. It is shown in that space, with its raw-probability equivalent per fold model.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lnzoo.errors import UsageError

THRESHOLD_RULES = ("youden", "sensitivity")


def calibrate(proba: np.ndarray, temperature: float | None) -> np.ndarray:
    """Probabilities after temperature scaling (log-probabilities as logits); unchanged without a temperature."""
    from lnzoo.evaluation.metrics import apply_temperature

    if not temperature:
        return np.asarray(proba, dtype=np.float64)
    return apply_temperature(np.log(np.clip(proba, 1e-12, 1.0)), temperature)


def calibrate_tasks(proba: Mapping[str, np.ndarray], temperatures: Mapping[str, float | None]
                    ) -> dict[str, np.ndarray]:
    """One model's probabilities per task as served: each task's temperature applied."""
    return {t: calibrate(p, temperatures.get(t)) for t, p in proba.items()}


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float | None:
    """The temperature minimising the NLL of ``y`` under the calibrated ``proba``; None with too little data
    (under two labelled rows or one class only)."""
    from lnzoo.evaluation.metrics import fit_temperature as fit

    y = np.asarray(y)
    if y.size < 2 or len(np.unique(y)) < 2:
        return None
    return round(fit(np.log(np.clip(proba, 1e-12, 1.0)), y), 6)


def choose_threshold(y, score, rule: str = "youden", target: float = 0.95) -> float:
    """Threshold (positive iff score >= t) chosen by ``rule`` ("youden" or "sensitivity") on validation data.

    Youden: max sensitivity + specificity; sensitivity: the highest t whose sensitivity reaches ``target``.
    ``y`` is binary (1 = positive). Never choose it on the data it is then reported on.
    """
    from lnzoo.evaluation.metrics import threshold_for_sensitivity, youden_threshold

    if rule == "youden":
        return youden_threshold(y, score)
    if rule == "sensitivity":
        return threshold_for_sensitivity(y, score, target)
    raise UsageError(f"unknown threshold rule {rule!r}; use one of {list(THRESHOLD_RULES)}")


def raw_equivalent(threshold: float, temperature: float | None) -> float:
    """The raw positive-class probability at which one binary model's calibrated probability reaches
    ``threshold``: calibrated = sigmoid(logit(raw) / T), so raw = sigmoid(T * logit(threshold))."""
    if not temperature or threshold <= 0.0 or threshold >= 1.0:
        return float(threshold)
    z = float(temperature) * math.log(threshold / (1.0 - threshold))
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


def raw_equivalents(threshold: float, temperatures: Mapping[str, float | None]) -> dict[str, float]:
    """Per fold model (fold -> its temperature), the raw probability at which it reaches ``threshold``."""
    return {str(k): raw_equivalent(threshold, T) for k, T in temperatures.items()}


@dataclass(frozen=True)
class OperatingPoint:
    """How one task's call is made: the positive class at or above ``value`` in ``space``, else the other; with
    no value (more than two classes, too little data, an average of several models) the most probable class."""

    classes: tuple[str, ...]
    positive: str | None = None
    value: float | None = None
    rule: str = "argmax"                        # youden | sensitivity_0.95 | 0.5 | argmax
    space: str = "calibrated"                   # the probabilities the value applies to: calibrated | raw
    raw: Mapping[str, float] = field(default_factory=dict)  # per fold model: the value in raw probability
    chosen_on: str = ""
    note: str = ""

    @property
    def thresholded(self) -> bool:
        return self.value is not None and self.positive in self.classes and len(self.classes) == 2

    def call_index(self, raw: np.ndarray, calibrated: np.ndarray) -> np.ndarray:
        """The called class index per row of (n, K) probabilities: the one rule."""
        from lnzoo.evaluation.metrics import predicted_class

        p = np.atleast_2d(calibrated if self.space == "calibrated" else raw)
        if not self.thresholded:
            return predicted_class(p)
        return predicted_class(p, self.classes.index(self.positive), self.value)

    def calls(self, raw: np.ndarray, calibrated: np.ndarray) -> list[str]:
        return [self.classes[i] for i in self.call_index(raw, calibrated)]

    def score_of(self, raw: Sequence[float], calibrated: Sequence[float], cls: str) -> float:
        """The probability the call of ``cls`` was made on (in the operating point's space)."""
        row = calibrated if self.space == "calibrated" else raw
        return float(row[self.classes.index(cls)])

    def text(self) -> str:
        """For a CSV column, a caption or a card: 'cal_p(malignant) >= 0.28 (youden)' or 'most probable class'."""
        if not self.thresholded:
            return "most probable class"
        prefix = "cal_p" if self.space == "calibrated" else "p"
        return f"{prefix}({self.positive}) >= {self.value:g} ({self.rule})"

    def raw_text(self) -> str:
        """The raw-probability equivalent per fold model, e.g. 'raw p >= 0.421 (fold 0)'; empty if the same."""
        if not self.thresholded or self.space != "calibrated" or not self.raw:
            return ""
        shown = [f"{v:.3g} (fold {k})" for k, v in self.raw.items() if abs(v - self.value) > 5e-4]
        return f"raw p({self.positive}) >= " + ", ".join(shown) if shown else ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "value": None if self.value is None else round(self.value, 6),
                               "space": self.space}
        if self.positive is not None:
            out["positive"] = self.positive
        if self.raw:
            out["raw_equivalent"] = {k: round(v, 6) for k, v in self.raw.items()}
        if self.chosen_on:
            out["chosen_on"] = self.chosen_on
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_dict(cls, classes: Sequence[str], positive: str | None, d: Mapping[str, Any] | None) -> "OperatingPoint":
        """From a bundle's config.json or a model's info; a stored threshold without a space predates the
        calibrated rule and was applied to calibrated probabilities."""
        d = d or {}
        return cls(tuple(classes), d.get("positive", positive), d.get("value"), d.get("rule", "argmax"),
                   d.get("space", "calibrated"), dict(d.get("raw_equivalent") or {}), d.get("chosen_on", ""),
                   d.get("note", ""))


def argmax_point(classes: Sequence[str], positive: str | None, note: str) -> OperatingPoint:
    return OperatingPoint(tuple(classes), positive, None, "argmax", note=note)


def choose_operating_point(cases, classes: Sequence[str], positive: str | None,
                           temperatures: Mapping[str, float | None] | None = None,
                           rule: str = "youden", target: float = 0.95) -> OperatingPoint:
    """The served operating point of a binary task, chosen on the pooled cross-validation cases (each row in the
    space the model is served in: calibrated by its own fold model's temperature). ``cases``: the task's
    :class:`lnzoo.evaluation.cases.Cases`, or None; ``temperatures``: fold -> temperature, for the raw equivalents."""
    classes = list(classes)
    if len(classes) != 2 or not positive:
        return argmax_point(classes, positive, "more than two classes: the call is the most probable class"
                            if len(classes) != 2 else "no positive class: the call is the most probable class")
    cv = None if cases is None else cases.take(cases.part == "cv")
    pos = classes.index(positive)
    y = None if cv is None else cv.y == pos
    if cv is None or len(cv) < 2 or y.all() or not y.any():
        return OperatingPoint(tuple(classes), positive, 0.5, "0.5", cases.space if cases is not None else "calibrated",
                              note="too few cross-validation cases to choose on")
    where = "each calibrated with its fold model's temperature"
    if cv.space == "raw" and any((temperatures or {}).values()):
        # a run from before lnzoo stored calibrated columns: each row calibrated here with its fold's temperature
        cal = cv.p.copy()
        for k, T in temperatures.items():
            if str(k).lstrip("-").isdigit():
                rows = cv.fold == int(k)
                cal[rows] = calibrate(cv.p[rows], T)
        cv = replace(cv, cal=cal, space="calibrated")
        where += " (calibrated here: the run predates lnzoo's calibrated prediction columns)"
    elif cv.space == "raw":
        where = "raw probabilities: no temperature was fitted and the run predates lnzoo's calibrated columns"
    t = float(choose_threshold(y, cv.cal[:, pos], rule, target))
    key = "youden" if rule == "youden" else f"sensitivity_{target:g}"
    raw = raw_equivalents(t, temperatures or {}) if cv.space == "calibrated" else {}
    return OperatingPoint(tuple(classes), positive, t, key, cv.space, raw,
                          f"{len(cv)} pooled cross-validation predictions, {where}")


@dataclass(frozen=True)
class Call:
    """One case's call of one task: the class, the probability of that class it was made on, the rule, and why
    (the comparison that decided it), as every caption and answer states it."""

    cls: str
    score: float
    rule: str
    reason: str

    def caption(self, task: str) -> list[str]:
        """Two caption lines: the call, and the comparison that made it."""
        return [f"{task}: called {self.cls}", self.reason]


def call_one(op: OperatingPoint, raw: Sequence[float], calibrated: Sequence[float]) -> Call:
    cls = op.calls(np.asarray(raw)[None], np.asarray(calibrated)[None])[0]
    score = op.score_of(raw, calibrated, cls)
    if op.thresholded:
        value = op.score_of(raw, calibrated, op.positive)
        prefix = "cal_p" if op.space == "calibrated" else "p"
        reason = (f"{prefix}({op.positive}) = {value:.3f} {'>=' if cls == op.positive else '<'} {op.value:g} "
                  f"({op.rule})")
    else:
        reason = f"most probable class ({'cal_p' if op.space == 'calibrated' else 'p'} = {score:.3f})"
    return Call(cls, score, op.text(), reason)
