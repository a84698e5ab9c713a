"""Paired comparison of two runs or prediction CSVs on the same cases: DeLong, bootstrap, McNemar.

What a side may be, and how cases and labels are matched, is :mod:`lnzoo.evaluation.sides`.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from lnzoo.errors import UsageError
from lnzoo.evaluation import N_BOOT, fmt, fmt_ci, fmt_p, jsonable, num
from lnzoo.evaluation.evaluate import auc_with_ci, choose_threshold
from lnzoo.evaluation.metrics import bootstrap_metric_fns, classification_metrics, predicted_class
from lnzoo.evaluation.stats import (
    auc_difference_test,
    bootstrap_ci,
    macro_auc,
    mcnemar_test,
    paired_bootstrap_auc_diff,
)
from lnzoo.evaluation.sides import (
    Side,
    align,
    choose_part,
    extract,
    groups_of,
    open_side,
    pick_task,
    registered_task,
    resolve_classes,
    true_labels,
)

__all__ = ["compare", "format_table", "as_json"]

NAN = float("nan")
RULES = ("0.5", "youden", "sensitivity")


def _ci(fn, y, p, groups, n_boot, seed) -> dict[str, float]:
    r = bootstrap_ci(fn, y, p, groups=groups, n_boot=n_boot, seed=seed)
    return {"value": r["value"], "lo": r["lo"], "hi": r["hi"]}


OPERATING_POINT = ("accuracy", "sensitivity", "specificity")


def _threshold(side: Side, key: str, y_bin, s, explicit, rule: str, target: float
               ) -> tuple[float | None, str, bool, str | None]:
    """(threshold, how it was set, optimistic?, why there is none) for one side. Scores that are not probabilities
    (a reader's 2-5 rating) have no threshold under the 0.5 rule: the side still gets its AUC and DeLong test, which
    need none, and only its operating-point rows and McNemar wait for a threshold or another rule."""
    if explicit is not None:
        return float(explicit), "given", False, None
    if rule == "0.5":
        if s.min() < 0.0 or s.max() > 1.0:
            return None, "none", False, (
                f"{side.name}'s scores run from {s.min():g} to {s.max():g}, not probabilities in [0, 1], so the 0.5 "
                f"rule does not apply: its AUC and the DeLong test need no threshold; for its accuracy, "
                f"sensitivity, specificity and McNemar pass threshold_{key}=... (--threshold-{key} T: positive if "
                "score ≥ T) or a rule (--threshold-rule youden or sensitivity)")
        return 0.5, "0.5", False, None
    try:
        chosen = choose_threshold(y_bin, s, rule, target)
    except ValueError as exc:
        raise UsageError(f"cannot choose a {rule} threshold for {side.name}: {exc}") from None
    return chosen, rule if rule == "youden" else f"sensitivity>={target:g}", True, None


def _binary_side(side: Side, key: str, y: np.ndarray, pos: int, s: np.ndarray, threshold, rule, target,
                 groups, n_boot, seed) -> tuple[dict, np.ndarray | None]:
    """One side of a binary comparison: its AUC with the DeLong CI, and at its threshold (None: no operating point,
    see :func:`_threshold`) the calls, accuracy, sensitivity, specificity, PPV and NPV."""
    y_bin = (y == pos).astype(int)
    t, how, optimistic, why_none = _threshold(side, key, y_bin, s, threshold, rule, target)
    d = auc_with_ci(y_bin, s)
    levels = np.unique(s)
    out = {"name": side.name, "source": str(side.file), "part": side.part,
           "auc": d["auc"], "auc_ci": [d["lo"], d["hi"]],
           "threshold": t, "threshold_rule": how, "threshold_optimistic": optimistic, "no_threshold": why_none,
           "hard_calls": bool(np.isin(s, (0.0, 1.0)).all()),
           "score_levels": [float(v) for v in levels] if len(levels) <= 10 else None}
    if t is None:
        return {**out, "tp": None, "fn": None, "fp": None, "tn": None, **dict.fromkeys(OPERATING_POINT),
                "ppv": None, "npv": None}, None
    p = np.empty((len(s), 2))
    p[:, pos], p[:, 1 - pos] = s, 1.0 - s  # the shared metric functions read class-probability columns
    pred = (predicted_class(p, pos, t) == pos).astype(int)
    tn, fp, fn, tp = map(int, np.bincount(2 * y_bin + pred, minlength=4))
    fns = bootstrap_metric_fns(2, pos, t)
    out.update(tp=tp, fn=fn, fp=fp, tn=tn, **{k: _ci(fns[k], y, p, groups, n_boot, seed) for k in OPERATING_POINT},
               ppv=tp / (tp + fp) if tp + fp else NAN, npv=tn / (tn + fn) if tn + fn else NAN)
    return out, pred


def _multi_side(side: Side, y: np.ndarray, classes: list[str], groups, n_boot, seed) -> dict:
    p = side.proba
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = classification_metrics(y, p, classes)
    fns = bootstrap_metric_fns(len(classes), None)
    per = {c: auc_with_ci((y == j).astype(int), p[:, j]) for j, c in enumerate(classes)}
    return {"name": side.name, "source": str(side.file), "part": side.part, "auc": m["auc"],
            "auc_per_class": per, "threshold_rule": "argmax",
            **{k: _ci(fns[k], y, p, groups, n_boot, seed) for k in ("accuracy", "balanced_accuracy")},
            "f1_macro": m["f1_macro"], "confusion_matrix": m["confusion_matrix"]}


def compare(a, b, task: str | None = None, threshold_rule: str = "0.5", n_boot: int = N_BOOT, *,
            threshold_a: float | None = None, threshold_b: float | None = None, intersect: bool = False,
            part: str | None = None, positive: str | None = None, sensitivity_target: float = 0.95,
            seed: int = 0, host=None) -> dict:
    """Compare A and B (run directories or prediction CSVs) on the same cases of one task.

    Cases are matched by id/path (by file name when no full id matches); sides covering different
    cases raise, listing the unmatched ids, unless ``intersect=True``. An lnzoo file with several
    parts uses ``part`` (default: the part holding the other side's cases; ``cv`` between two runs).
    Binary: both AUCs with DeLong 95% CIs, paired DeLong test, patient-clustered paired bootstrap
    of the AUC difference, each side's operating point (``threshold_a``/``threshold_b``, else
    ``threshold_rule``: "0.5", or "youden"/"sensitivity" chosen on these very cases, flagged
    optimistic) with accuracy/sensitivity/specificity (bootstrap CIs), and McNemar on the two sets
    of calls. Multi-class: macro AUC of each, per-class one-vs-rest DeLong, McNemar on argmax.
    """
    if threshold_rule not in RULES:
        raise UsageError(f"unknown threshold rule {threshold_rule!r}; use one of {list(RULES)}")
    sa, sb = open_side(a), open_side(b)
    task = pick_task(sa, sb, task)
    side_a, side_b = extract(sa, task), extract(sb, task)
    side_a = choose_part(side_a, side_b, part)
    side_b = choose_part(side_b, side_a, part)
    side_a, side_b, matching = align(side_a, side_b, intersect)
    if host is None:  # the registered task of that name gives label aliases and the positive class
        from lnzoo.plugins import get_host
        host = get_host()
    shipped = registered_task(task, host)
    classes, pos = resolve_classes(side_a, side_b, task, positive, shipped)
    y = true_labels(side_a, side_b, classes, pos, shipped)
    n = int(y.size)
    groups, unit = groups_of(side_a, side_b)
    notes: list[str] = []
    if matching["key"] == "file name":
        notes.append("no full id matched, so cases were matched by file name")
    test = (f"DeLong clustered by patient (Obuchowski; {len(set(groups))} patients)" if groups is not None
            else "DeLong (cases independent: no patient ids)")
    notes.append(f"AUC test: {test}")
    if groups is not None and len(set(groups)) < n:
        notes.append(f"McNemar treats the {n} cases as independent although they come from {len(set(groups))} "
                     "patients; DeLong and the bootstrap count whole patients")
    if matching["n_only_a"] or matching["n_only_b"]:
        notes.append(f"compared on the {n} common cases only ({matching['n_only_a']} only in {side_a.name}, "
                     f"{matching['n_only_b']} only in {side_b.name})")
    result: dict[str, Any] = {
        "task": task, "classes": classes, "binary": pos is not None,
        "positive": classes[pos] if pos is not None else None,
        "part": {"a": side_a.part, "b": side_b.part}, "n": n,
        "n_patients": len(set(groups)) if groups is not None else None, "resampling_unit": unit,
        "class_counts": {c: int(np.sum(y == j)) for j, c in enumerate(classes)},
        "matching": matching, "n_boot": n_boot,
    }
    if pos is not None:
        if len(set(y.tolist())) < 2:
            raise UsageError(f"all {n} common cases are {classes[int(y[0])]!r}: AUCs and their test need both classes")
        s_a = side_a.proba[:, pos] if side_a.proba is not None else side_a.score
        s_b = side_b.proba[:, pos] if side_b.proba is not None else side_b.score
        ra, pred_a = _binary_side(side_a, "a", y, pos, s_a, threshold_a, threshold_rule, sensitivity_target, groups,
                                  n_boot, seed)
        rb, pred_b = _binary_side(side_b, "b", y, pos, s_b, threshold_b, threshold_rule, sensitivity_target, groups,
                                  n_boot, seed)
        y_bin = (y == pos).astype(int)
        result.update(a=ra, b=rb, delong={**auc_difference_test(y_bin, s_a, s_b, groups=groups), "test": test},
                      auc_diff_bootstrap={**paired_bootstrap_auc_diff(y_bin, s_a, s_b, groups=groups, n_boot=n_boot,
                                                                      seed=seed), "resampling_unit": unit},
                      mcnemar=None if pred_a is None or pred_b is None else mcnemar_test(y_bin, pred_a, pred_b))
        for r in (ra, rb):
            if r["threshold_optimistic"]:
                notes.append(f"{r['name']}'s threshold ({r['threshold_rule']}) was chosen on the compared cases: "
                             "its accuracy, sensitivity and specificity are optimistic")
            if r["hard_calls"]:
                notes.append(f"{r['name']} gives hard 0/1 calls: its ROC has a single operating point and its AUC "
                             "is (sensitivity + specificity) / 2")
            elif r["score_levels"] is not None and len(r["score_levels"]) > 2:
                levels = r["score_levels"]
                notes.append(f"{r['name']} gives {len(levels)} score levels ({fmt_levels(levels)}): its ROC "
                             f"has {len(levels) - 1} operating points and tied cases count half in its AUC and the "
                             "DeLong test")
            if r["no_threshold"]:
                notes.append(r["no_threshold"])
    else:
        if threshold_a is not None or threshold_b is not None:
            raise UsageError(f"thresholds apply to binary tasks only; {task or 'this task'} has {len(classes)} "
                             "classes and is compared at argmax")
        pa, pb = side_a.proba, side_b.proba
        ra = _multi_side(side_a, y, classes, groups, n_boot, seed)
        rb = _multi_side(side_b, y, classes, groups, n_boot, seed)
        per_class = {}
        for j, c in enumerate(classes):
            yb = (y == j).astype(int)
            if yb.all() or not yb.any():
                per_class[c] = {"auc_a": NAN, "auc_b": NAN, "z": NAN, "p_value": NAN, "note": "one class only"}
                continue
            t = auc_difference_test(yb, pa[:, j], pb[:, j], groups=groups)
            per_class[c] = {"auc_a": t["auc_a"], "ci_a": [ra["auc_per_class"][c]["lo"], ra["auc_per_class"][c]["hi"]],
                            "auc_b": t["auc_b"], "ci_b": [rb["auc_per_class"][c]["lo"], rb["auc_per_class"][c]["hi"]],
                            "diff": t["diff"], "z": t["z"], "p_value": t["p_value"]}
        k = len(classes)

        def macro_diff(yy, pp):
            return macro_auc(yy, pp[:, :k]) - macro_auc(yy, pp[:, k:])

        boot = bootstrap_ci(macro_diff, y, np.hstack([pa, pb]), groups=groups, n_boot=n_boot, seed=seed)
        result.update(a=ra, b=rb, per_class=per_class,
                      macro_delong={**auc_difference_test(y, pa, pb, groups=groups), "test": test},
                      macro_auc_diff_bootstrap={"diff": boot["value"], "lo": boot["lo"], "hi": boot["hi"],
                                                "n_boot_valid": boot["n_boot_valid"], "resampling_unit": unit},
                      mcnemar=mcnemar_test(y, pa.argmax(axis=1), pb.argmax(axis=1)))
        notes.append("per-class p-values are not corrected for multiple comparisons")
    result["notes"] = notes
    return result


def as_json(result: Mapping[str, Any]) -> str:
    """The result of :func:`compare` as JSON (NaN as null)."""
    return json.dumps(jsonable(result), indent=2, ensure_ascii=False, allow_nan=False)


def fmt_levels(levels) -> str:
    return ", ".join(f"{v:g}" for v in levels)


def _mcnemar_cell(m: Mapping[str, Any] | None) -> str:
    if m is None:
        return "n/a: needs both sides' calls (a threshold for each)"
    kind = "exact" if m["exact"] else "χ²"
    return f"A right/B wrong {m['b']}, A wrong/B right {m['c']}; {kind} p={fmt_p(m['p_value'])}"


def _test_cell(t: Mapping[str, Any]) -> str:
    return f"z={fmt(t['z'], 2)}, p={fmt_p(t['p_value'])}" + (f" ({t['test']})" if t.get("test") else "")


def format_table(result: Mapping[str, Any]):
    """A rich Table of :func:`compare`'s result for the command line."""
    from rich.table import Table

    a, b = result["a"], result["b"]
    who = f"{result['n']} cases" + (f", {result['n_patients']} patients" if result.get("n_patients") else "")
    part = result["part"]["a"] or result["part"]["b"]
    title = f"{result['task'] or 'comparison'}: A = {a['name']} vs B = {b['name']} ({who}" + \
        (f", part {part})" if part else ")")
    table = Table(title=title, title_justify="left", caption="\n".join(result.get("notes", [])) or None,
                  caption_justify="left")
    table.add_column("")
    table.add_column(f"A: {a['name']}", justify="right")
    table.add_column(f"B: {b['name']}", justify="right")
    table.add_column("A − B / test", justify="left")
    if result["binary"]:
        d, bd = result["delong"], result["auc_diff_bootstrap"]
        table.add_row("AUC (95% DeLong CI)", *[fmt_ci(r["auc"], {"lo": r["auc_ci"][0], "hi": r["auc_ci"][1]})
                                               for r in (a, b)], f"Δ {fmt(d['diff'])}; {_test_cell(d)}")
        table.add_row(f"AUC Δ ({bd['resampling_unit']} bootstrap)", "", "",
                      f"{fmt_ci(bd['diff'], bd)}, p={fmt_p(bd['p_value'])}")
        thr = [f"{fmt(r['threshold'])} ({r['threshold_rule']}{', optimistic' if r['threshold_optimistic'] else ''})"
               if r["threshold"] is not None else "none (see below)" for r in (a, b)]
        table.add_row("Threshold (positive if ≥)", *thr, "")
        for key, label in (("accuracy", "Accuracy"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity")):
            ka, kb = a[key] or {"value": None}, b[key] or {"value": None}  # None: no threshold on that side
            diff = fmt(num(ka["value"]) - num(kb["value"]))
            table.add_row(f"{label} (95% CI)", fmt_ci(ka["value"], ka), fmt_ci(kb["value"], kb),
                          "" if diff == "n/a" else f"Δ {diff}")
        table.add_row("PPV / NPV", *[f"{fmt(r['ppv'])} / {fmt(r['npv'])}" for r in (a, b)], "")
    else:
        bd, md = result["macro_auc_diff_bootstrap"], result["macro_delong"]
        table.add_row("Macro AUC (one-vs-rest)", fmt(a["auc"]), fmt(b["auc"]),
                      f"Δ {fmt_ci(bd['diff'], bd)} ({bd['resampling_unit']} bootstrap); {_test_cell(md)}")
        for c, r in result["per_class"].items():
            ca, cb = a["auc_per_class"][c], b["auc_per_class"][c]
            table.add_row(f"  AUC {c}", fmt_ci(ca["auc"], ca), fmt_ci(cb["auc"], cb), f"DeLong {_test_cell(r)}")
        for key, label in (("accuracy", "Accuracy (argmax)"), ("balanced_accuracy", "Balanced accuracy")):
            table.add_row(f"{label} (95% CI)", fmt_ci(a[key]["value"], a[key]), fmt_ci(b[key]["value"], b[key]), "")
    table.add_row("McNemar (paired correctness)", "", "", _mcnemar_cell(result["mcnemar"]))
    return table
