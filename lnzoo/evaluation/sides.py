"""The two sides of a comparison: reading a run directory or prediction CSV, matching their cases, their labels.

A side is a run directory (its ``predictions.csv``), lnzoo's ``predictions.csv`` or a simple CSV
(e.g. a human reader's): an ``id`` or ``path`` column, a ``label`` (or ``<task>_true``) column,
and either ``p_<class>`` columns or one ``prob``/``probability``/``score`` column (binary; hard
0/1 calls are accepted as scores), optionally ``patient``.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from lnzoo.errors import UsageError
from lnzoo.evaluation.cases import infer_tasks_meta, read_csv
from lnzoo.evaluation.evaluate import ordered_parts
from lnzoo.rundir import Columns, RunDir

SCORE_COLUMNS = ("prob", "probability", "score")
SHOW = 10  # ids named in an error message


@dataclass
class Source:
    """One opened side: its CSV rows and what its run directory says about the tasks."""

    name: str
    file: Path
    header: list[str]
    rows: list[dict[str, str]]
    tasks_meta: dict[str, dict[str, Any]]
    main_task: str | None

    @property
    def lnzoo_tasks(self) -> list[str]:
        return [t for t in self.tasks_meta if Columns.true(t) in self.header]


@dataclass
class Side:
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

    def take(self, idx: Sequence[int]) -> "Side":
        idx = list(idx)
        pick = np.asarray(idx, dtype=int)
        return Side(self.name, self.file, [self.ids[i] for i in idx], [self.labels[i] for i in idx],
                     None if self.proba is None else self.proba[pick], None if self.score is None else self.score[pick],
                     self.classes, self.positive, self.aliases,
                     None if self.patients is None else [self.patients[i] for i in idx],
                     None if self.parts is None else [self.parts[i] for i in idx], self.part)


def _some(items: Sequence[str], sep: str = ", ") -> str:
    """The first SHOW items of a list for an error message, " ..." where there are more."""
    return sep.join(items[:SHOW]) + (" ..." if len(items) > SHOW else "")


def open_side(src: Any) -> Source:
    p = Path(src)
    if p.is_dir():
        file = RunDir(p) / RunDir.PREDICTIONS
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
    header, rows = read_csv(file)
    if not header:
        raise UsageError(f"{file}: empty file, no header row")
    meta = infer_tasks_meta(header)
    main = None
    if run_dir is not None:
        rd = RunDir(run_dir)
        meta.update({t: m for t, m in rd.tasks_meta().items() if t in meta})
        main = rd.read_json(rd.METRICS).get("main_task")
    return Source(name, file, header, rows, meta, main)


def registered_task(name: str | None, host):
    """The task registered under that name with ``host`` (shipped or a plugin's: positive class, label aliases),
    or None."""
    if not name:
        return None
    registry = host.registry("task")
    try:
        return registry.get(name).build() if name in registry else None
    except Exception:  # a broken task plugin only costs the aliases
        return None


def pick_task(a: Source, b: Source, task: str | None) -> str | None:
    if task is not None:
        for s in (a, b):
            if Columns.true(task) not in s.header and "label" not in s.header:
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


def extract(s: Source, task: str | None) -> Side:
    h = s.header
    id_col = "id" if "id" in h else "path" if "path" in h else next((c for c in h if c.startswith("path_")), None)
    if id_col is None:
        raise UsageError(f"{s.file}: no case id column: expected 'id' or 'path' (columns: {', '.join(h)})")
    label_col = Columns.true(task) if task and Columns.true(task) in h else "label" if "label" in h else None
    if label_col is None:
        raise UsageError(f"{s.file}: no label column: expected 'label' or '<task>_true' (columns: {', '.join(h)})")
    meta = s.tasks_meta.get(task or "", {}) if label_col != "label" else {}
    classes: list[str] | None
    if meta:
        classes = list(meta["classes"])
        prob_cols = [Columns.raw(task, c) for c in classes]
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
                         + _some(bad))
    if not ids:
        raise UsageError(f"{s.file}: no labelled case in column {label_col!r}")
    arr = np.asarray(values, dtype=float)
    pat = patients if "patient" in h and all(patients) else None
    return Side(s.name, s.file, ids, labels, arr if classes is not None else None,
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


def choose_part(side: Side, other: Side, part: str | None) -> Side:
    if side.parts is None:
        return side
    present = list(dict.fromkeys(side.parts))

    def hits(p: str) -> int:  # how many of the other side's cases part p holds
        ids = [i for i, q in zip(side.ids, side.parts) if q == p]
        mode = _match_mode(ids, other.ids)
        return 0 if mode is None else len(set(_keys(ids, mode)) & set(_keys(other.ids, mode)))

    if part is None:
        if len(present) == 1:
            part = present[0]
        elif other.parts is not None:
            order = ordered_parts(set(present) & set(other.parts))
            if not order:
                raise UsageError(f"{side.name} and {other.name} share no part (parts {present} vs "
                                 f"{sorted(set(other.parts))}): pass part=... (--part)")
            part = order[0]
        else:  # the part that holds the other side's cases, e.g. the test set a reader read
            part = max(present, key=hits)
    idx = [i for i, q in enumerate(side.parts) if q == part]
    if not idx:
        raise UsageError(f"{side.file}: no labelled row of part {part!r} (parts: {', '.join(present)})")
    out = side.take(idx)
    out.part = part
    return out


def _check_unique(side: Side, keys: list[str]) -> None:
    counts = Counter(keys)
    dup = [k for k, n in counts.items() if n > 1]
    if dup:
        raise UsageError(f"{side.file}: {len(dup)} case id(s) appear more than once: " + _some(dup))


def align(a: Side, b: Side, intersect: bool) -> tuple[Side, Side, dict]:
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
        parts = [f"{len(only)} only in {name}: " + _some(only)
                 for name, only in ((a.name, only_a), (b.name, only_b)) if only]
        common = len(ka) - len(only_a)
        raise UsageError(f"{a.name} and {b.name} do not cover the same cases ({'; '.join(parts)}). "
                         f"Pass intersect=True (--intersect) to compare on the {common} common case(s) only.")
    ia = [i for i, k in enumerate(ka) if k in pos_b]
    ib = [pos_b[ka[i]] for i in ia]
    info = {"key": "file name" if mode else "id", "n_a": len(ka), "n_b": len(kb), "n_common": len(ia),
            "only_a": only_a[:100], "only_b": only_b[:100], "n_only_a": len(only_a), "n_only_b": len(only_b),
            "intersect": bool(intersect)}
    return a.take(ia), b.take(ib), info


def _label_indexer(classes: list[str], aliases: Mapping[str, Sequence[str]], shipped):
    """label string -> class index: class name, then alias (sidecar or shipped task), then integer index."""
    index = {c: i for i, c in enumerate(classes)}
    same = shipped is not None and set(shipped.classes) == set(classes)
    for table in (aliases, shipped.aliases if same else {}):
        for cls, names in table.items():
            for n in names if cls in index else ():
                index.setdefault(n, index[cls])
    folded = {k.casefold(): v for k, v in index.items()}

    def lookup(label: str) -> int | None:
        found = index.get(label, folded.get(label.casefold()))
        if found is not None:
            return found
        try:
            v = float(label)
        except ValueError:
            return None
        return int(v) if v.is_integer() and 0 <= v < len(classes) else None
    return lookup


def resolve_classes(a: Side, b: Side, task: str | None, positive: str | None, shipped=None
                    ) -> tuple[list[str], int | None]:
    """The classes both sides name and the positive one's index; ``shipped``: the registered task of that name."""
    ca, cb = a.classes, b.classes
    if ca is not None and cb is not None and set(ca) != set(cb):
        raise UsageError(f"the two sides name different classes: {a.name} has {ca}, {b.name} has {cb}")
    classes = list(ca or cb or [])
    if not classes:
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
        positive = shipped.positive if shipped is not None and list(shipped.classes) == classes else None
    if positive is None:
        if not (a.classes or b.classes) and classes != ["0", "1"]:
            raise UsageError(f"cannot tell which of {classes} is the positive class: pass positive=... (--positive)")
        positive = classes[1]
    if positive not in classes:
        raise UsageError(f"positive class {positive!r} is not one of {classes}")
    return classes, classes.index(positive)


def true_labels(a: Side, b: Side, classes: list[str], pos: int | None, shipped=None) -> np.ndarray:
    ys = []
    for s in (a, b):
        look = _label_indexer(classes, s.aliases, shipped)
        if s.proba is None and pos is not None:
            # beside a single positive-class score, 0/1 labels mean negative/positive, not class indices
            y = [pos if lab == "1" else 1 - pos if lab == "0" else look(lab) for lab in s.labels]
        else:
            y = [look(lab) for lab in s.labels]
        unknown = [f"{i} ({lab!r})" for i, lab, v in zip(s.ids, s.labels, y) if v is None]
        if unknown:
            raise UsageError(f"{s.file}: {len(unknown)} label(s) are not a class of {classes}: "
                             + _some(unknown))
        ys.append(np.asarray(y, dtype=int))
    differ = np.flatnonzero(ys[0] != ys[1])
    if differ.size:
        shown = [f"{a.ids[i]} ({a.name}: {classes[ys[0][i]]}, {b.name}: {classes[ys[1][i]]})"
                 for i in differ]
        raise UsageError(f"the two sides disagree on the true label of {differ.size} case(s): "
                         + _some(shown, "; "))
    return ys[0]


def groups_of(a: Side, b: Side) -> tuple[list[str] | None, str]:
    pats = a.patients or b.patients
    if pats is None:
        return None, "case"
    return list(pats), "patient"
