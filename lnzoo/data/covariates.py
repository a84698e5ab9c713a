"""Clinical covariates (age, sex, axis ratio, elastography score, flow pattern, hilum...) as model inputs.

Whether a column is numeric is decided once, on the whole manifest, by one rule (:func:`column_type`); numeric
columns are standardised with the training part's mean and sd; text columns are one-hot over the values seen in
training; every column gets a missing-value indicator, so an absent covariate is information, not a zero that
looks like a value. The encoder is stored in the checkpoint sidecar, so serving encodes exactly as training did.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnzoo.data.samples import Sample
from lnzoo.errors import DataError

# a number as a cell holds it: an optional sign, digits with one decimal mark, an optional exponent; nothing
# else (no unit, no thousands separator, no spaces, no 'inf')
# (ASCII digits: the digits a spreadsheet writes)
_NUMBER = {".": re.compile(r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII),
           ",": re.compile(r"[+-]?(?:\d+(?:,\d+)?|,\d+)(?:[eE][+-]?\d+)?", re.ASCII)}
_LOOKS_NUMERIC = re.compile(r"[+-]?[.,]?\d", re.ASCII)  # a cell that starts as a number does ('12 mm', '4a')
_WITH_UNIT = re.compile(r"([+-]?(?:\d+(?:[.,]\d+)?|[.,]\d+))\s*([^\d\s.,+-].*)", re.ASCII)
DECIMAL_NAMES = {".": "decimal point", ",": "decimal comma"}


def parse_number(text: str, decimal: str = ".") -> float | None:
    """The number a stripped cell holds when read with ``decimal`` as its decimal mark, or None.

    Only a plain number is one (``12``, ``-3.5``, ``1e-3``; ``3,5`` with a decimal comma): a unit, a thousands
    separator or a word makes the cell not a number, never a number with the rest dropped."""
    if not _NUMBER[decimal].fullmatch(text):
        return None
    value = float(text.replace(",", ".")) if decimal == "," else float(text)
    return value if np.isfinite(value) else None


def missing_values(tokens: Sequence[Any]) -> list[str]:
    """``data.missing_covariates`` as compared: stripped, case-folded."""
    return [str(t).strip().casefold() for t in tokens]


def _is_missing(text: str, missing: Sequence[str]) -> bool:
    return not text or text.casefold() in missing or text.casefold() == "nan"  # NaN: how pandas writes a gap


@dataclass(frozen=True)
class ColumnType:
    """What :func:`column_type` decided for one column, and what it found wrong."""

    name: str
    kind: str                       # "numeric" or "categorical"
    decimal: str = "."              # the decimal mark a numeric column's cells are read with
    declared: bool = False          # data.covariate_types said so
    problems: tuple[str, ...] = ()  # cells a numeric column cannot read: bad rows (data.skip_bad_rows leaves out)
    bad: frozenset[int] = frozenset()   # their indices in the cells given
    errors: tuple[str, ...] = ()    # why the column's type cannot be decided: never skipped

    def describe(self) -> str:
        if self.kind != "numeric":
            return f"{self.name} categorical"
        return f"{self.name} numeric" + (" (decimal comma)" if self.decimal == "," else "")


def _why_not(text: str, comma_ok: bool) -> str:
    """Why a cell that a numeric column needs is not a number, and what to do about it."""
    unit = _WITH_UNIT.fullmatch(text)
    if unit and (parse_number(unit[1], ".") is not None or parse_number(unit[1], ",") is not None):
        return (f"{text!r} is not a number: it has {unit[2].strip()!r} after one (a unit? write the number alone "
                "and name the unit in the column's name)")
    if parse_number(text, ",") is not None and not comma_ok:
        return (f"{text!r} has a decimal comma, which is read as one only when every row of the column comes from a "
                "';'- or tab-delimited file: write a decimal point, or save the file with ';'")
    return f"{text!r} is not a number"


def column_type(name: str, cells: Sequence[tuple[str, str, str | None]], declared: str | None = None,
                missing: Sequence[str] = ()) -> ColumnType:
    """The one rule that decides a covariate column's type; every reader and check of covariates calls it.

    ``cells`` are the column's ``(file:line, stripped cell, delimiter of its file)``; a cell that is empty,
    ``NaN`` or in ``missing`` (:func:`missing_values`) is a missing value and counts for nothing.

    - Declared in ``data.covariate_types``: that type. In a column declared numeric, each cell that is not a
      number is a bad row naming its file, line and value.
    - Otherwise the column is **numeric when every non-missing cell is a number**: a plain number with a
      decimal point, or, when every cell of the column comes from a file whose delimiter is not a comma, with a
      decimal comma, provided the whole column writes its decimals that way (a column mixing ``3.5`` and
      ``3,5`` is an error naming the lines of the rarer mark).
    - It is **categorical when no cell is a number or starts like one** (``M``/``F``, ``present``/``absent``).
    - Anything between (numbers beside words, ``12 mm`` or ``3.4cm`` with units, ``4a``, ``3,5`` from a
      comma-delimited file) is an error naming file, line, value and what to do: correct the cell, list it in
      ``data.missing_covariates`` if it means unknown, or declare the column's type. A column is never made a
      category because most of its cells are not numbers, nor numeric because most of them are.
    """
    present = [(i, where, text, delim) for i, (where, text, delim) in enumerate(cells)
               if not _is_missing(text, missing)]
    comma_ok = bool(present) and all(delim not in (None, ",") for _, _, _, delim in present)
    point = {i for i, _, text, _ in present if parse_number(text, ".") is not None}
    comma = {i for i, _, text, _ in present if comma_ok and parse_number(text, ",") is not None}
    numbers = point | comma
    by_index = {i: (where, text, delim) for i, where, text, delim in present}
    decimal = "," if comma - point else "."
    if declared == "categorical" or (not declared and not numbers and not any(_LOOKS_NUMERIC.match(t)
                                                                               for _, _, t, _ in present)):
        return ColumnType(name, "categorical", declared=declared == "categorical")
    if (comma - point) and (point - comma):  # 3.5 beside 3,5: which one is meant cannot be known
        commas, points = comma - point, point - comma
        rare, usual, other = (commas, ".", points) if len(commas) <= len(points) else (points, ",", commas)
        mark = "," if usual == "." else "."
        errors = tuple(f"{by_index[i][0]}: covariate {name!r} is {by_index[i][1]!r}, written with a "
                       f"{DECIMAL_NAMES[mark]} where {len(other)} other cell(s) of the column use a "
                       f"{DECIMAL_NAMES[usual]}; write every decimal of the column the same way" for i in sorted(rare))
        return ColumnType(name, "numeric", usual, bool(declared), errors=errors)
    others = [i for i, _, _, _ in present if i not in numbers]
    if declared == "numeric":
        problems = tuple(f"{by_index[i][0]}: covariate {name!r}: {_why_not(by_index[i][1], comma_ok)} (the column is "
                         "declared numeric in data.covariate_types); correct it, or list it in "
                         "data.missing_covariates if it means unknown" for i in others)
        return ColumnType(name, "numeric", decimal, True, problems, frozenset(others))
    if not others:
        return ColumnType(name, "numeric", decimal)
    counts = f"{len(numbers)} of {len(present)} non-missing cells are numbers"
    summary = (f"data.covariates: column {name!r} is neither numeric (every cell a number) nor categorical (no cell "
               f"a number) ({counts}; the cells are named below): correct them, list a value that means unknown in "
               f"data.missing_covariates, or declare the column's type: data.covariate_types.{name} = "
               f"\"categorical\" (or \"numeric\", which leaves out as bad rows those whose cell is not a number)")
    looks = [i for i in others if _LOOKS_NUMERIC.match(by_index[i][1])]
    if len(others) > len(numbers) and not looks:  # words with a few numbers among them: name the numbers
        cells = [f"{by_index[i][0]}: covariate {name!r} is {by_index[i][1]!r}, a number among words"
                 for i in sorted(numbers)]
    else:
        cells = [f"{by_index[i][0]}: covariate {name!r}: {_why_not(by_index[i][1], comma_ok)}" for i in others]
    errors = (summary, *cells)
    return ColumnType(name, "numeric", decimal, errors=errors)


def covariate_types(samples: Sequence[Sample], names: Sequence[str], declared: Mapping[str, str],
                    missing: Sequence[str], problems: list[str]) -> tuple[dict[str, ColumnType], set[int]]:
    """:func:`column_type` for each covariate, decided once on all of a run's rows (never per fold), and the rows
    whose cell a numeric column cannot read (each a problem in ``problems`` naming file, line and value).

    What no skipping may hide is raised at the end as one DataError, after every column was looked at: a
    covariate no row has, a declared type that is not one, a column whose type the rule cannot decide."""
    kinds: dict[str, ColumnType] = {}
    bad: set[int] = set()
    fatal = [f"data.covariate_types.{name}: {name!r} is not in data.covariates {list(names)}"
             for name in declared if name not in names]
    fatal += [f"data.covariate_types.{name}: {kind!r} is not numeric or categorical"
              for name, kind in declared.items() if kind not in ("numeric", "categorical")]
    for name in names:
        if not any(name in s.cells for s in samples):
            fatal.append(f"data.covariates: no row of the data has a column {name!r} (covariates come from CSV "
                         "manifest columns)")
            continue
        kind = declared.get(name)
        ct = column_type(name, [(s.origin, (s.cells.get(name) or "").strip(), s.delimiter) for s in samples],
                         kind if kind in ("numeric", "categorical") else None, missing)
        kinds[name] = ct
        problems += ct.problems
        bad |= ct.bad
        fatal += ct.errors
    if fatal:  # the recipe's mistake, or a column to declare, not a bad row: data.skip_bad_rows must not hide it
        raise DataError(fatal, "problem(s) with the covariates")
    return kinds, bad


def covariate_kinds(samples: Sequence[Sample], names: Sequence[str], declared: Mapping[str, str],
                    missing: Sequence[str], problems: list[str]) -> tuple[dict[str, str], set[int]]:
    """:func:`covariate_types` as {column: "numeric" or "categorical"}, and the bad rows."""
    types, bad = covariate_types(samples, names, declared, missing, problems)
    return {name: t.kind for name, t in types.items()}, bad


class CovariateEncoder:
    def __init__(self, spec: list[dict[str, Any]], missing: Sequence[str] = ()):
        self.spec = spec
        self.missing = missing_values(missing)

    @property
    def width(self) -> int:
        return sum((1 if c["kind"] == "numeric" else len(c["levels"])) + 1 for c in self.spec)

    @classmethod
    def fit(cls, samples: Sequence[Sample], names: Sequence[str], kinds: Mapping[str, str] | None = None,
            missing: Sequence[str] = (), decimals: Mapping[str, str] | None = None) -> CovariateEncoder:
        """Fit on the training part only (mean, sd, levels); ``kinds`` and ``decimals`` (a numeric column's
        decimal mark, "." unless given) as :func:`column_type` decided on the whole manifest (decided here, on
        ``samples``, when not given)."""
        missing = missing_values(missing)
        if kinds is None:
            problems: list[str] = []
            types, _ = covariate_types(samples, names, {}, missing, problems)
            if problems:
                raise DataError(problems)
            kinds = {n: t.kind for n, t in types.items()}
            decimals = {n: t.decimal for n, t in types.items()}
        decimals = decimals or {}
        spec = []
        for name in names:
            present = [v for s in samples if not _is_missing(v := (s.cells.get(name) or "").strip(), missing)]
            if kinds[name] == "numeric":
                mark = decimals.get(name, ".")
                arr = np.array([n for v in present if (n := parse_number(v, mark)) is not None], dtype=np.float64)
                spec.append({"name": name, "kind": "numeric", "mean": float(arr.mean()) if arr.size else 0.0,
                             "sd": (float(arr.std()) if arr.size else 0.0) or 1.0,
                             **({"decimal": ","} if mark == "," else {})})
            else:
                spec.append({"name": name, "kind": "categorical", "levels": sorted(set(present))})
        return cls(spec, missing)

    def transform(self, sample: Sample) -> np.ndarray:
        out: list[float] = []
        for c in self.spec:
            text = (sample.cells.get(c["name"]) or "").strip()
            if c["kind"] == "numeric":
                mark = c.get("decimal", ".")
                value = parse_number(text, mark)
                if value is None and not _is_missing(text, self.missing):
                    raise DataError([(f"{sample.origin}: covariate {c['name']!r} is {text!r}; the model was "
                                      f"trained on it as a number written with a {DECIMAL_NAMES[mark]} (leave the cell "
                                      "empty if it is unknown)")])
                out += [0.0, 1.0] if value is None else [(value - c["mean"]) / c["sd"], 0.0]
            else:
                onehot = [1.0 if text == level else 0.0 for level in c["levels"]]
                out += onehot + [0.0 if any(onehot) else 1.0]  # an unseen or empty value counts as missing
        return np.asarray(out, dtype=np.float32)

    def as_dict(self) -> dict[str, Any]:
        return {"covariates": self.spec, "missing": self.missing}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CovariateEncoder:
        return cls(list(data["covariates"]), data.get("missing", ()))


class CovariatesInput:
    """The built-in input kind ``covariates`` (``data.covariates``): a row's clinical covariates, encoded by
    :class:`CovariateEncoder` (fitted per fold) and embedded by a small MLP before the fusion."""

    dtype = "float32"
    reads = "text"  # the cell is the input (the server takes it as a form field)

    def __init__(self, columns: list[str], types: dict[str, str] | None = None, missing: list[str] | None = None,
                 hidden: int = 32):
        self.columns, self.types, self.hidden = list(columns), dict(types or {}), int(hidden)
        self.missing = missing_values(missing or [])
        self.column = self.columns[0] if self.columns else ""  # the contract's one column; all are in columns
        self.kinds: dict[str, str] | None = None  # numeric or categorical, decided by check on all rows
        self.decimals: dict[str, str] = {}  # a numeric column's decimal mark, decided with its type
        self.described: list[str] = []  # each column's type as decided ("age numeric (decimal comma)")

    def check(self, samples: Sequence[Sample], problems: list[str]) -> set[int]:
        types, bad = covariate_types(samples, self.columns, self.types, self.missing, problems)
        self.kinds = {name: t.kind for name, t in types.items()}
        self.decimals = {name: t.decimal for name, t in types.items()}
        self.described = [t.describe() for t in types.values()]
        return bad

    def data_note(self) -> str | None:
        """The columns' types as :func:`column_type` decided them, for the run's data line and ``lnzoo validate``."""
        return ", ".join(self.described) or None

    def fit(self, samples: Sequence[Sample]) -> dict[str, Any]:
        if self.kinds is None:  # numeric or categorical is decided on all rows (check), never on a fold
            raise DataError([("data.covariates: the covariates' types were not decided on the run's rows before "
                              "fitting (input kind 'covariates' needs check() first)")])
        return {**CovariateEncoder.fit(samples, self.columns, self.kinds, self.missing, self.decimals).as_dict(),
                "hidden": self.hidden}

    def shape(self, state: Mapping[str, Any]) -> tuple[int, ...]:
        return (CovariateEncoder.from_dict(dict(state)).width,)

    def encode(self, sample: Sample, state: Mapping[str, Any]) -> np.ndarray | None:
        if all(_is_missing((sample.cells.get(c) or "").strip(), self.missing) for c in self.columns):
            return None  # nothing known: the fusion leaves the member out, as it does a missing view
        return CovariateEncoder.from_dict(dict(state)).transform(sample)

    def encoder(self, state: Mapping[str, Any], out_features: int):
        from lnzoo.nn.inputs import FeatureMLP

        return FeatureMLP(self.shape(state)[0], int(state.get("hidden", self.hidden)), out_features)

    def feature_names(self, state: Mapping[str, Any]) -> list[str]:
        names = []
        for c in state["covariates"]:
            levels = ["value"] if c["kind"] == "numeric" else [f"={level}" for level in c["levels"]]
            names += [f"{c['name']}{'' if lv == 'value' else lv}" for lv in levels] + [f"{c['name']} missing"]
        return names
