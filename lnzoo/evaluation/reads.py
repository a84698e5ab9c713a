"""A reader study's ratings, one row per (reader, modality, case), read and checked for the MRMC analysis.

The input of :func:`lnzoo.evaluation.mrmc.or_analysis`: a CSV file (or rows as mappings) with the columns
``reader``, ``modality`` (or ``treatment``), ``case``, ``truth`` and ``rating``, and optionally ``patient``
(several cases, e.g. images or nodes, of one patient: the analysis then treats the patient as the sampling
unit). A higher rating means more confidence that the case is diseased. Every problem names the file and,
where it applies, the line and the reader, modality and case; all problems of the rows are reported at once.

The design must be fully crossed: every reader reads every case in every modality. Split-plot designs (each
reader reads only a subset of the cases) are out of scope and refused with the missing cases named.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lnzoo.errors import DataError, UsageError

__all__ = ["Reads", "read_reads"]

TRUTH_ALIASES = ("truth", "disease", "diseased", "label")
MODALITY_ALIASES = ("modality", "treatment")
_FULLY_CROSSED = ("every reader must read every case in every modality (a fully crossed design); split-plot "
                  "designs, where readers read different cases, are not supported")


@dataclass(frozen=True)
class Reads:
    """A fully crossed reader study: ``ratings[i, j, k]`` is reader j's rating of case k in modality i.

    ``readers``, ``modalities`` and ``cases`` keep the order in which they first appear in the input;
    ``truth[k]`` is True for a diseased case; ``patients[k]`` the patient of case k, or None without a patient
    column; ``source`` names the input in messages.
    """

    source: str
    readers: list[str]
    modalities: list[str]
    cases: list[str]
    truth: np.ndarray
    ratings: np.ndarray
    patients: list[str] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(modalities, readers, cases)."""
        return tuple(self.ratings.shape)


def _rows(path_or_rows) -> tuple[str, list[str], Iterable[tuple[str, Mapping]]]:
    """(source, column names, ((where, row), ...)): ``where`` is ``file:line`` (a row's first line, as the
    CSV reader counts it, so quoted cells over several lines count) or ``source: row N`` for given rows."""
    if isinstance(path_or_rows, (str, os.PathLike)):
        from lnzoo.data.tables import csv_reader

        path = Path(path_or_rows)
        reader, _ = csv_reader(path)
        names = [n for n in (reader.fieldnames or []) if n is not None]

        def numbered():
            for row in reader:
                breaks = sum(v.count("\n") for v in row.values() if isinstance(v, str))
                yield f"{path}:{reader.line_num - breaks}", row
        return str(path), names, numbered()
    rows = path_or_rows.to_dict("records") if hasattr(path_or_rows, "to_dict") else list(path_or_rows)
    names = list(dict.fromkeys(k for row in rows for k in row))
    return "<rows>", names, ((f"<rows>: row {n}", row) for n, row in enumerate(rows, start=1))


def _columns(source: str, names: list[str], truth_aliases, modality_aliases) -> dict[str, str | None]:
    """The file's column for each role (names match without case or surrounding spaces); missing ones raise."""
    by_key = {str(n).strip().lower(): n for n in names}
    roles = {"reader": ("reader",), "modality": tuple(modality_aliases), "case": ("case",),
             "truth": tuple(truth_aliases), "rating": ("rating",), "patient": ("patient",)}
    found: dict[str, str | None] = {}
    missing = []
    for role, aliases in roles.items():
        hits = [by_key[a] for a in aliases if a in by_key]
        if len(hits) > 1:
            raise UsageError(f"{source}: the columns {' and '.join(map(repr, hits))} both name the {role}; "
                             "keep one")
        found[role] = hits[0] if hits else None
        if not hits and role != "patient":
            missing.append(" or ".join(repr(a) for a in aliases))
    if missing:
        have = ", ".join(repr(n) for n in names) or "none"
        raise UsageError(f"{source}: missing required column(s) {'; '.join(missing)}; the file has the columns "
                         f"{have}. A reader study has one row per (reader, modality, case) with the columns reader, "
                         "modality (or treatment), case, truth, rating and optionally patient")
    return found


def _truth(text: str, positive_labels, negative_labels) -> bool | None:
    """True/False for a diseased/non-diseased case, None when ``text`` is not a truth value."""
    if positive_labels is not None:
        if text in positive_labels:
            return True
        return False if negative_labels is None or text in negative_labels else None
    try:
        value = float(text)
    except ValueError:
        return None
    return bool(value) if value in (0.0, 1.0) else None


def read_reads(path_or_rows, *, truth_aliases: Iterable[str] = TRUTH_ALIASES,
               modality_aliases: Iterable[str] = MODALITY_ALIASES, positive_labels: set[str] | None = None,
               negative_labels: set[str] | None = None) -> Reads:
    """Read and check a reader study: a CSV path, or an iterable of row mappings (or a DataFrame).

    ``truth_aliases`` / ``modality_aliases``: the accepted names of the truth and modality columns. Truth is 0/1
    (1 = diseased) unless ``positive_labels`` is given: then a truth in ``positive_labels`` is diseased and any
    other is not, or, with ``negative_labels`` too, a truth in neither set is an error. One modality is accepted
    here (per-reader AUCs and the single-modality analysis); comparing modalities needs two or more.
    Raises :class:`~lnzoo.errors.UsageError` (a :class:`~lnzoo.errors.DataError` listing every problem of the
    rows) naming the file, line, reader, modality and case.
    """
    source, names, rows = _rows(path_or_rows)
    col = _columns(source, names, [a.lower() for a in truth_aliases], [a.lower() for a in modality_aliases])
    positive_labels = None if positive_labels is None else {str(v).strip() for v in positive_labels}
    negative_labels = None if negative_labels is None else {str(v).strip() for v in negative_labels}
    problems: list[str] = []
    readers: dict[str, int] = {}
    modalities: dict[str, int] = {}
    cases: dict[str, int] = {}
    seen: dict[tuple[str, str, str], str] = {}
    truth: dict[str, tuple[bool, str, str]] = {}
    patient: dict[str, tuple[str, str]] = {}
    values: list[tuple[str, str, str, float]] = []
    for where, row in rows:
        cell = {role: ("" if name is None or row.get(name) is None else str(row.get(name)).strip())
                for role, name in col.items()}
        empty = [col[role] for role in ("reader", "modality", "case", "truth", "rating") if not cell[role]]
        if col["patient"] is not None and not cell["patient"]:
            empty.append(col["patient"])
        if empty:
            problems.append(f"{where}: empty {', '.join(map(repr, empty))}")
            continue
        r, t, c = cell["reader"], cell["modality"], cell["case"]
        what = f"reader {r}, modality {t}, case {c}"
        try:
            rating = float(cell["rating"])
        except ValueError:
            rating = math.nan
        if not math.isfinite(rating):
            problems.append(f"{where}: {what}: the rating {cell['rating']!r} is not a (finite) number")
        y = _truth(cell["truth"], positive_labels, negative_labels)
        if y is None:
            want = ("0 or 1 (1 = diseased); for label names pass positive_labels" if positive_labels is None else
                    f"one of the positive labels {sorted(positive_labels)} or negative labels "
                    f"{sorted(negative_labels or ())}")
            problems.append(f"{where}: {what}: the truth {cell['truth']!r} is not {want}")
        elif c in truth and truth[c][0] != y:
            problems.append(f"{where}: case {c} has the truth {cell['truth']!r} here but {truth[c][1]!r} at "
                            f"{truth[c][2]} (inconsistent truth for one case)")
        else:
            truth.setdefault(c, (y, cell["truth"], where))
        if col["patient"] is not None:
            p = cell["patient"]
            if c in patient and patient[c][0] != p:
                problems.append(f"{where}: case {c} belongs to patient {p!r} here but to {patient[c][0]!r} at "
                                f"{patient[c][1]}")
            patient.setdefault(c, (p, where))
        if (r, t, c) in seen:
            problems.append(f"{where}: {what} is also at {seen[r, t, c]} (duplicated row)")
            continue
        seen[r, t, c] = where
        for index, key in ((readers, r), (modalities, t), (cases, c)):
            index.setdefault(key, len(index))
        values.append((r, t, c, rating))
    if problems:
        raise DataError(problems, f"problem(s) in the reader study {source}")
    if not values:
        raise UsageError(f"{source}: no rows; a reader study has one row per (reader, modality, case)")
    ratings = np.full((len(modalities), len(readers), len(cases)), np.nan)
    for r, t, c, rating in values:
        ratings[modalities[t], readers[r], cases[c]] = rating
    y = np.array([truth[c][0] for c in cases], dtype=bool)
    if y.all() or not y.any():
        label = "diseased (truth 1)" if y.all() else "non-diseased (truth 0)"
        raise UsageError(f"{source}: all {len(y)} cases are {label}; the ROC AUC needs diseased and non-diseased "
                         "cases")
    case_ids = list(cases)
    for t, i in modalities.items():
        for r, j in readers.items():
            gone = [case_ids[k] for k in np.flatnonzero(np.isnan(ratings[i, j]))]
            if gone:
                shown = ", ".join(gone[:10]) + (f", ... ({len(gone) - 10} more)" if len(gone) > 10 else "")
                problems.append(f"{source}: reader {r} did not read {len(gone)} of the {len(case_ids)} cases in "
                                f"modality {t} (missing: {shown})")
    if problems:
        problems.append(f"{source}: {_FULLY_CROSSED}")
        raise DataError(problems, f"problem(s) in the reader study {source}")
    return Reads(source=source, readers=list(readers), modalities=list(modalities), cases=case_ids, truth=y,
                 ratings=ratings, patients=[patient[c][0] for c in case_ids] if col["patient"] is not None else None)
