"""Paired comparison of two runs or prediction CSVs on the same cases: DeLong, bootstrap, McNemar.

A side is a run directory (its ``predictions.csv``), lnzoo's ``predictions.csv`` or a simple CSV
(e.g. a human reader's): an ``id`` or ``path`` column, a ``label`` (or ``<task>_true``) column,
and either ``p_<class>`` columns or one ``prob``/``probability``/``score`` column (binary; hard
0/1 calls are accepted as scores), optionally ``patient``.
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from lnzoo.errors import UsageError
from lnzoo.evaluation import jsonable
from lnzoo.evaluation.cases import infer_tasks_meta
from lnzoo.evaluation.evaluate import PART_ORDER, choose_threshold
from lnzoo.evaluation.metrics import bootstrap_metric_fns, classification_metrics
from lnzoo.evaluation.stats import (
    auc_difference_test,
    bootstrap_ci,
    delong_ci,
    macro_auc,
    mcnemar_test,
    paired_bootstrap_auc_diff,
)
from lnzoo.rundir import RunDir

__all__ = ["compare", "format_table", "as_json"]

NAN = float("nan")
SCORE_COLUMNS = ("prob", "probability", "score")
RULES = ("0.5", "youden", "sensitivity")
SHOW = 10  # ids named in an error message


@dataclass
class _Source:
    """One opened side: its CSV rows and what its run directory says about the tasks."""

    name: str
    file: Path
    header: list[str]
    rows: list[dict[str, str]]
    tasks_meta: dict[str, dict[str, Any]]
    main_task: str | None

    @property
    def lnzoo_tasks(self) -> list[str]:
        return [t for t in self.tasks_meta if f"{t}_true" in self.header]


@dataclass
class _Side:
    """The labelled cases of one side for the compared task."""

    name: str
    file: Path
    ids: list[str]
    labels: list[str]
    proba: np.ndarray | None  # (n, K) in ``classes`` order
    score: np.ndarray | None  # (n,) positive-class score of a simple binary file
    classes: list[str] | None
    positive: str | None
    aliases: dict[str, list[str]]
    patients: list[str] | None
    parts: list[str] | None
    part: str | None = None

    def take(self, idx: Sequence[int]) -> "_Side":
        idx = list(idx)
        pick = np.asarray(idx, dtype=int)
        return _Side(self.name, self.file, [self.ids[i] for i in idx], [self.labels[i] for i in idx],
                     None if self.proba is None else self.proba[pick], None if self.score is None else self.score[pick],
                     self.classes, self.positive, self.aliases,
                     None if self.patients is None else [self.patients[i] for i in idx],
                     None if self.parts is None else [self.parts[i] for i in idx], self.part)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{path}: cannot read the CSV: {exc}") from None
    if not header:
        raise UsageError(f"{path}: empty file, no header row")
    return header, rows


def _open(src: Any) -> _Source:
    p = Path(src)
    if p.is_dir():
        file = p / "predictions.csv"
        if not file.is_file():
            raise UsageError(f"{p}: not a finished run directory (predictions.csv is missing)")
        run_dir, name = p, p.name
    elif p.is_file():
        file, name = p, p.name
        run_dir = p.parent if p.name == RunDir.PREDICTIONS and RunDir(p.parent).folds() else None
        if run_dir is not None:
            name = f"{run_dir.name}/{p.name}"
    else:
        raise UsageError(f"{p}: no such run directory or prediction CSV")
    header, rows = _read_csv(file)
    meta = infer_tasks_meta(header)
    main = None
    if run_dir is not None:
        rd = RunDir(run_dir)
        meta.update({t: m for t, m in rd.tasks_meta().items() if t in meta})
        main = rd.read_json(rd.METRICS).get("main_task")
    return _Source(name, file, header, rows, meta, main)


def _registered_task(name: str | None):
    """The task registered under that name (shipped or a plugin's: positive class, label aliases), or None."""
    if not name:
        return None
    from lnzoo.plugins import get_host

    registry = get_host().registry("task")
    try:
        return registry.get(name).build() if name in registry else None
    except Exception:  # a broken task plugin only costs the aliases
        return None


def _pick_task(a: _Source, b: _Source, task: str | None) -> str | None:
    if task is not None:
        for s in (a, b):
            if f"{task}_true" not in s.header and "label" not in s.header:
                known = s.lnzoo_tasks
                hint = f" (its tasks: {', '.join(known)})" if known else ""
                raise UsageError(f"{s.file}: no label column for task {task!r}: expected {task + '_true'!r} or "
                                 f"'label'{hint}")
        return task
    lnzoo_sides = [s for s in (a, b) if "label" not in s.header and s.lnzoo_tasks]
    if not lnzoo_sides:
        return None
    common = [t for t in lnzoo_sides[0].lnzoo_tasks if all(t in s.lnzoo_tasks for s in lnzoo_sides)]
    if not common:
        raise UsageError(f"{a.name} and {b.name} share no task: " + "; ".join(
            f"{s.name} has {', '.join(s.lnzoo_tasks)}" for s in lnzoo_sides))
    if len(common) == 1:
        return common[0]
    for s in lnzoo_sides:
        if s.main_task in common:
            return s.main_task
    raise UsageError(f"several tasks to compare ({', '.join(common)}): pass task=... (--task)")


def _extract(s: _Source, task: str | None) -> _Side:
    h = s.header
    id_col = "id" if "id" in h else "path" if "path" in h else next((c for c in h if c.startswith("path_")), None)
    if id_col is None:
        raise UsageError(f"{s.file}: no case id column: expected 'id' or 'path' (columns: {', '.join(h)})")
    label_col = f"{task}_true" if task and f"{task}_true" in h else "label" if "label" in h else None
    if label_col is None:
        raise UsageError(f"{s.file}: no label column: expected 'label' or '<task>_true' (columns: {', '.join(h)})")
    meta = s.tasks_meta.get(task or "", {}) if label_col != "label" else {}
    classes: list[str] | None
    if meta:
        classes = list(meta["classes"])
        prob_cols = [f"p_{task}_{c}" for c in classes]
    else:
        prob_cols = [c for c in h if c.startswith("p_") and len(c) > 2]
        classes = [c[2:] for c in prob_cols] or None
    score_col = next((c for c in SCORE_COLUMNS if c in h), None)
    if classes is not None and len(classes) < 2:
        raise UsageError(f"{s.file}: only one probability column ({prob_cols[0]}); give one p_<class> column per "
                         f"class, or a single {'/'.join(SCORE_COLUMNS)} column for a binary task")
    if classes is None and score_col is None:
        raise UsageError(f"{s.file}: no probability column: expected p_<class> columns or one of "
                         f"{', '.join(SCORE_COLUMNS)} (columns: {', '.join(h)})")
    ids, labels, values, patients, parts, bad = [], [], [], [], [], []
    cols = prob_cols if classes is not None else [score_col]
    for i, row in enumerate(s.rows):
        label = row.get(label_col, "")
        if label == "":
            continue  # no label for this task: not a case of it
        try:
            values.append([float(row[c]) for c in cols])
        except (ValueError, KeyError):
            bad.append(f"line {i + 2} ({row.get(id_col, '')})")
            continue
        ids.append(row.get(id_col, ""))
        labels.append(label)
        patients.append(row.get("patient", ""))
        parts.append(row.get("part", ""))
    if bad:
        raise UsageError(f"{s.file}: a probability is empty or not a number on {len(bad)} row(s): "
                         + ", ".join(bad[:SHOW]) + (" ..." if len(bad) > SHOW else ""))
    if not ids:
        raise UsageError(f"{s.file}: no labelled case in column {label_col!r}")
    arr = np.asarray(values, dtype=float)
    pat = patients if "patient" in h and all(patients) else None
    return _Side(s.name, s.file, ids, labels, arr if classes is not None else None,
                 arr[:, 0] if classes is None else None, classes, meta.get("positive") if meta else None,
                 dict(meta.get("aliases") or {}) if meta else {}, pat, parts if "part" in h else None)


def _basename(x: str) -> str:
    return PurePath(x.replace("\\", "/")).name


def _keys(ids: Sequence[str], by_name: bool) -> list[str]:
    return [_basename(i) for i in ids] if by_name else list(ids)


def _match_mode(ids_a: Sequence[str], ids_b: Sequence[str]) -> bool | None:
    """False: match by exact id; True: by file name (only when exact ids share nothing); None: nothing matches."""
    if set(ids_a) & set(ids_b):
        return False
    na, nb = _keys(ids_a, True), _keys(ids_b, True)
    if len(set(na)) == len(na) and len(set(nb)) == len(nb) and set(na) & set(nb):
        return True
    return None


def _choose_part(side: _Side, other: _Side, part: str | None) -> _Side:
    if side.parts is None:
        return side
    present = [p for p in dict.fromkeys(side.parts)]
    if part is None:
        if len(present) == 1:
            part = present[0]
        elif other.parts is not None:
            common = [p for p in present if p in set(other.parts)]
            order = [p for p in PART_ORDER if p in common] + sorted(set(common) - set(PART_ORDER))
            if not order:
                raise UsageError(f"{side.name} and {other.name} share no part (parts {present} vs "
                                 f"{sorted(set(other.parts))}): pass part=... (--part)")
            part = order[0]
        else:
            # the part that holds the other side's cases, e.g. the test set a reader read
            best, hits = None, -1
            for p in present:
                ids = [i for i, q in zip(side.ids, side.parts) if q == p]
                mode = _match_mode(ids, other.ids)
                n = 0 if mode is None else len(set(_keys(ids, mode)) & set(_keys(other.ids, mode)))
                if n > hits:
                    best, hits = p, n
            part = best
    idx = [i for i, q in enumerate(side.parts) if q == part]
    if not idx:
        raise UsageError(f"{side.file}: no labelled row of part {part!r} (parts: {', '.join(present)})")
    out = side.take(idx)
    out.part = part
    return out


def _check_unique(side: _Side, keys: list[str]) -> None:
    seen, dup = set(), []
    for k in keys:
        if k in seen and k not in dup:
            dup.append(k)
        seen.add(k)
    if dup:
        raise UsageError(f"{side.file}: {len(dup)} case id(s) appear more than once: " + ", ".join(dup[:SHOW])
                         + (" ..." if len(dup) > SHOW else ""))


def _align(a: _Side, b: _Side, intersect: bool) -> tuple[_Side, _Side, dict]:
    mode = _match_mode(a.ids, b.ids)
    if mode is None:
        raise UsageError(f"no common cases: {a.name} ({len(a.ids)} cases, e.g. {', '.join(a.ids[:3])}) and "
                         f"{b.name} ({len(b.ids)} cases, e.g. {', '.join(b.ids[:3])}) share no id or file name")
    ka, kb = _keys(a.ids, mode), _keys(b.ids, mode)
    _check_unique(a, ka)
    _check_unique(b, kb)
    pos_b = {k: i for i, k in enumerate(kb)}
    set_a = set(ka)
    only_a = [k for k in ka if k not in pos_b]
    only_b = [k for k in kb if k not in set_a]
    if (only_a or only_b) and not intersect:
        parts = []
        for name, only in ((a.name, only_a), (b.name, only_b)):
            if only:
                more = " ..." if len(only) > SHOW else ""
                parts.append(f"{len(only)} only in {name}: " + ", ".join(only[:SHOW]) + more)
        common = len(ka) - len(only_a)
        raise UsageError(f"{a.name} and {b.name} do not cover the same cases ({'; '.join(parts)}). "
                         f"Pass intersect=True (--intersect) to compare on the {common} common case(s) only.")
    ia = [i for i, k in enumerate(ka) if k in pos_b]
    ib = [pos_b[ka[i]] for i in ia]
    info = {"key": "file name" if mode else "id", "n_a": len(ka), "n_b": len(kb), "n_common": len(ia),
            "only_a": only_a[:100], "only_b": only_b[:100], "n_only_a": len(only_a), "n_only_b": len(only_b),
            "intersect": bool(intersect)}
    return a.take(ia), b.take(ib), info


def _label_indexer(classes: list[str], aliases: Mapping[str, Sequence[str]], task: str | None):
    """label string -> class index: class name, then alias (sidecar or shipped task), then integer index."""
    index = {c: i for i, c in enumerate(classes)}
    for cls, names in aliases.items():
        for n in names:
            if cls in index:
                index.setdefault(n, index[cls])
    shipped = _registered_task(task)
    if shipped is not None and set(shipped.classes) == set(classes):
        for cls, names in shipped.aliases.items():
            for n in names:
                index.setdefault(n, index[cls])

    def lookup(label: str) -> int | None:
        if label in index:
            return index[label]
        folded = {k.casefold(): v for k, v in index.items()}
        if label.casefold() in folded:
            return folded[label.casefold()]
        try:
            v = float(label)
        except ValueError:
            return None
        return int(v) if v.is_integer() and 0 <= v < len(classes) else None
    return lookup


def _resolve_classes(a: _Side, b: _Side, task: str | None, positive: str | None) -> tuple[list[str], int | None]:
    ca, cb = a.classes, b.classes
    if ca is not None and cb is not None and set(ca) != set(cb):
        raise UsageError(f"the two sides name different classes: {a.name} has {ca}, {b.name} has {cb}")
    classes = list(ca or cb or [])
    if not classes:
        shipped = _registered_task(task)
        values = sorted(set(a.labels) | set(b.labels))
        if shipped is not None and len(shipped.classes) == 2:
            classes = list(shipped.classes)
        elif set(values) <= {"0", "1"}:
            classes = ["0", "1"]
        elif len(values) == 2:
            classes = values
        else:
            raise UsageError(f"both sides give a single score column, so the labels must name two classes; "
                             f"found {values}")
    for s in (a, b):
        if s.proba is None and len(classes) != 2:
            raise UsageError(f"{s.file}: a single score column only works for a binary task; this one has "
                             f"{len(classes)} classes ({', '.join(classes)}): give p_<class> columns")
        if s.proba is not None and s.classes != classes:
            s.proba = s.proba[:, [s.classes.index(c) for c in classes]]
            s.classes = classes
    if len(classes) != 2:
        if positive is not None:
            raise UsageError(f"positive applies to binary tasks only; {task or 'this task'} has {len(classes)} classes")
        return classes, None
    if positive is None:
        positive = next((s.positive for s in (a, b) if s.positive), None)
    if positive is None:
        shipped = _registered_task(task)
        positive = shipped.positive if shipped is not None and list(shipped.classes) == classes else None
    if positive is None:
        if not (a.classes or b.classes) and classes != ["0", "1"]:
            raise UsageError(f"cannot tell which of {classes} is the positive class: pass positive=... (--positive)")
        positive = classes[1]
    if positive not in classes:
        raise UsageError(f"positive class {positive!r} is not one of {classes}")
    return classes, classes.index(positive)


def _labels(a: _Side, b: _Side, classes: list[str], pos: int | None, task: str | None) -> np.ndarray:
    ys = []
    for s in (a, b):
        look = _label_indexer(classes, s.aliases, task)
        if s.proba is None and pos is not None:
            # beside a single positive-class score, 0/1 labels mean negative/positive, not class indices
            y = [pos if lab == "1" else 1 - pos if lab == "0" else look(lab) for lab in s.labels]
        else:
            y = [look(lab) for lab in s.labels]
        unknown = [f"{i} ({lab!r})" for i, lab, v in zip(s.ids, s.labels, y) if v is None]
        if unknown:
            raise UsageError(f"{s.file}: {len(unknown)} label(s) are not a class of {classes}: "
                             + ", ".join(unknown[:SHOW]) + (" ..." if len(unknown) > SHOW else ""))
        ys.append(np.asarray(y, dtype=int))
    differ = np.flatnonzero(ys[0] != ys[1])
    if differ.size:
        shown = [f"{a.ids[i]} ({a.name}: {classes[ys[0][i]]}, {b.name}: {classes[ys[1][i]]})" for i in differ[:SHOW]]
        raise UsageError(f"the two sides disagree on the true label of {differ.size} case(s): " + "; ".join(shown)
                         + (" ..." if differ.size > SHOW else ""))
    return ys[0]


def _groups(a: _Side, b: _Side) -> tuple[list[str] | None, str]:
    pats = a.patients or b.patients
    if pats is None:
        return None, "case"
    return list(pats), "patient"


def _ci(fn, y, p, groups, n_boot, seed) -> dict[str, float]:
    r = bootstrap_ci(fn, y, p, groups=groups, n_boot=n_boot, seed=seed)
    return {"value": r["value"], "lo": r["lo"], "hi": r["hi"]}


def _delong_ci(y_bin, s) -> dict[str, float]:
    try:
        auc, lo, hi = delong_ci(y_bin, s)
    except ValueError:
        return {"auc": NAN, "lo": NAN, "hi": NAN}
    return {"auc": auc, "lo": lo, "hi": hi}


def _threshold(side: _Side, key: str, y_bin, s, explicit, rule: str, target: float) -> tuple[float, str, bool]:
    """(threshold, how it was set, optimistic?) for one side."""
    if explicit is not None:
        return float(explicit), "given", False
    if rule == "0.5":
        if s.min() < 0.0 or s.max() > 1.0:
            raise UsageError(f"{side.file}: scores run outside [0, 1] ({s.min():g} to {s.max():g}), so the 0.5 rule "
                             f"does not apply: pass threshold_{key}=... (--threshold-{key}) or a rule")
        return 0.5, "0.5", False
    try:
        return choose_threshold(y_bin, s, rule, target), rule if rule == "youden" else f"sensitivity>={target:g}", True
    except ValueError as exc:
        raise UsageError(f"cannot choose a {rule} threshold for {side.name}: {exc}") from None


def _binary_side(side: _Side, key: str, y: np.ndarray, pos: int, s: np.ndarray, threshold, rule, target,
                 groups, n_boot, seed) -> tuple[dict, np.ndarray]:
    y_bin = (y == pos).astype(int)
    t, how, optimistic = _threshold(side, key, y_bin, s, threshold, rule, target)
    pred = (s >= t).astype(int)
    tp = int(np.sum((y_bin == 1) & (pred == 1)))
    fn = int(np.sum((y_bin == 1) & (pred == 0)))
    fp = int(np.sum((y_bin == 0) & (pred == 1)))
    tn = int(np.sum((y_bin == 0) & (pred == 0)))

    p = np.empty((len(s), 2))
    p[:, pos], p[:, 1 - pos] = s, 1.0 - s  # the shared metric functions read class-probability columns
    fns = bootstrap_metric_fns(2, pos, t)
    d = _delong_ci(y_bin, s)
    out = {"name": side.name, "source": str(side.file), "part": side.part,
           "auc": d["auc"], "auc_ci": [d["lo"], d["hi"]],
           "threshold": t, "threshold_rule": how, "threshold_optimistic": optimistic,
           "hard_calls": bool(np.isin(s, (0.0, 1.0)).all()),
           "tp": tp, "fn": fn, "fp": fp, "tn": tn,
           **{k: _ci(fns[k], y, p, groups, n_boot, seed) for k in ("accuracy", "sensitivity", "specificity")},
           "ppv": tp / (tp + fp) if tp + fp else NAN, "npv": tn / (tn + fn) if tn + fn else NAN}
    return out, pred


def _multi_side(side: _Side, y: np.ndarray, classes: list[str], groups, n_boot, seed) -> dict:
    p = side.proba
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = classification_metrics(y, p, classes)

    fns = bootstrap_metric_fns(len(classes), None)
    per = {c: _delong_ci((y == j).astype(int), p[:, j]) for j, c in enumerate(classes)}
    return {"name": side.name, "source": str(side.file), "part": side.part, "auc": m["auc"],
            "auc_per_class": per, "threshold_rule": "argmax",
            **{k: _ci(fns[k], y, p, groups, n_boot, seed) for k in ("accuracy", "balanced_accuracy")},
            "f1_macro": m["f1_macro"], "confusion_matrix": m["confusion_matrix"]}


def compare(a, b, task: str | None = None, threshold_rule: str = "0.5", n_boot: int = 1000, *,
            threshold_a: float | None = None, threshold_b: float | None = None, intersect: bool = False,
            part: str | None = None, positive: str | None = None, sensitivity_target: float = 0.95,
            seed: int = 0) -> dict:
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
    sa, sb = _open(a), _open(b)
    task = _pick_task(sa, sb, task)
    side_a, side_b = _extract(sa, task), _extract(sb, task)
    chosen_a = _choose_part(side_a, side_b, part)
    side_b = _choose_part(side_b, chosen_a, part)
    side_a = chosen_a
    side_a, side_b, matching = _align(side_a, side_b, intersect)
    classes, pos = _resolve_classes(side_a, side_b, task, positive)
    y = _labels(side_a, side_b, classes, pos, task)
    n = int(y.size)
    groups, unit = _groups(side_a, side_b)
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
                      mcnemar=mcnemar_test(y_bin, pred_a, pred_b))
        for r in (ra, rb):
            if r["threshold_optimistic"]:
                notes.append(f"{r['name']}'s threshold ({r['threshold_rule']}) was chosen on the compared cases: "
                             "its accuracy, sensitivity and specificity are optimistic")
            if r["hard_calls"]:
                notes.append(f"{r['name']} gives hard 0/1 calls: its ROC has a single operating point and its AUC "
                             "is (sensitivity + specificity) / 2")
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


def _num(x: Any) -> float:
    return NAN if x is None else float(x)


def _f(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def _p(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "n/a"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _with_ci(d: Mapping[str, Any], key: str = "value") -> str:
    v, lo, hi = _f(d.get(key)), _f(d.get("lo")), _f(d.get("hi"))
    return v if "n/a" in (v, lo, hi) else f"{v} ({lo}–{hi})"


def _mcnemar_cell(m: Mapping[str, Any]) -> str:
    kind = "exact" if m["exact"] else "χ²"
    return f"A right/B wrong {m['b']}, A wrong/B right {m['c']}; {kind} p={_p(m['p_value'])}"


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
        d = result["delong"]
        table.add_row("AUC (95% DeLong CI)", _with_ci({"value": a["auc"], "lo": a["auc_ci"][0], "hi": a["auc_ci"][1]}),
                      _with_ci({"value": b["auc"], "lo": b["auc_ci"][0], "hi": b["auc_ci"][1]}),
                      f"Δ {_f(d['diff'])}; z={_f(d['z'], 2)}, p={_p(d['p_value'])} ({d['test']})")
        bd = result["auc_diff_bootstrap"]
        table.add_row(f"AUC Δ ({bd['resampling_unit']} bootstrap)", "", "",
                      f"{_with_ci(bd, 'diff')}, p={_p(bd['p_value'])}")
        thr = [f"{_f(r['threshold'])} ({r['threshold_rule']}{', optimistic' if r['threshold_optimistic'] else ''})"
               for r in (a, b)]
        table.add_row("Threshold (positive if ≥)", *thr, "")
        for key, label in (("accuracy", "Accuracy"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity")):
            diff = _f(_num(a[key]["value"]) - _num(b[key]["value"]))
            table.add_row(f"{label} (95% CI)", _with_ci(a[key]), _with_ci(b[key]), "" if diff == "n/a" else f"Δ {diff}")
        table.add_row("PPV / NPV", f"{_f(a['ppv'])} / {_f(a['npv'])}", f"{_f(b['ppv'])} / {_f(b['npv'])}", "")
    else:
        bd = result["macro_auc_diff_bootstrap"]
        md = result["macro_delong"]
        table.add_row("Macro AUC (one-vs-rest)", _f(a["auc"]), _f(b["auc"]),
                      f"Δ {_with_ci(bd, 'diff')} ({bd['resampling_unit']} bootstrap); z={_f(md['z'], 2)}, "
                      f"p={_p(md['p_value'])} ({md['test']})")
        for c, r in result["per_class"].items():
            ca, cb = a["auc_per_class"][c], b["auc_per_class"][c]
            table.add_row(f"  AUC {c}", _with_ci(ca, "auc"), _with_ci(cb, "auc"),
                          f"DeLong z={_f(r['z'], 2)}, p={_p(r['p_value'])}")
        for key, label in (("accuracy", "Accuracy (argmax)"), ("balanced_accuracy", "Balanced accuracy")):
            table.add_row(f"{label} (95% CI)", _with_ci(a[key]), _with_ci(b[key]), "")
    table.add_row("McNemar (paired correctness)", "", "", _mcnemar_cell(result["mcnemar"]))
    return table
