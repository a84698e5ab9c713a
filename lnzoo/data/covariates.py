"""Clinical covariates (age, sex, axis ratio, elastography score, flow pattern, hilum...) as model inputs.

Whether a column is numeric is decided once, on the whole manifest; numeric columns are standardised
with the training part's mean and sd; text columns are one-hot over the values seen in training; every column gets a missing-value indicator, so an absent
covariate is information, not a zero that looks like a value. The encoder is stored in the
checkpoint sidecar, so serving encodes exactly as training did.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lnzoo.data.samples import Sample
from lnzoo.errors import DataError


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def missing_values(tokens: Sequence[Any]) -> list[str]:
    """``data.missing_covariates`` as compared: stripped, case-folded."""
    return [str(t).strip().casefold() for t in tokens]


def _is_missing(text: str, missing: Sequence[str]) -> bool:
    return not text or text.casefold() in missing or text.casefold() == "nan"  # NaN: how pandas writes a gap


def covariate_kinds(samples: Sequence[Sample], names: Sequence[str], declared: Mapping[str, str],
                    missing: Sequence[str], problems: list[str]) -> tuple[dict[str, str], set[int]]:
    """Numeric or categorical per covariate, decided once on all of a run's rows (never per fold), and the
    rows whose cell does not fit: a numeric column (more than half of its cells numbers, or declared in
    ``data.covariate_types``) stays numeric, and each other cell in it is a problem naming file, line and
    value, unless it is a missing value (empty, NaN, or listed in ``data.missing_covariates``)."""
    kinds: dict[str, str] = {}
    bad: set[int] = set()
    fatal = [f"data.covariate_types.{name}: {name!r} is not in data.covariates {list(names)}"
             for name in declared if name not in names]
    fatal += [f"data.covariate_types.{name}: {kind!r} is not numeric or categorical"
              for name, kind in declared.items() if kind not in ("numeric", "categorical")]
    fatal += [f"data.covariates: no row of the data has a column {name!r} (covariates come from CSV manifest "
              "columns)" for name in names if not any(name in s.cells for s in samples)]
    if fatal:  # the recipe's mistake, not a bad row: data.skip_bad_rows must not hide it
        raise DataError(fatal, "problem(s) with the covariates")
    for name in names:
        given = [(i, s.cells.get(name, "").strip()) for i, s in enumerate(samples)]
        given = [(i, v) for i, v in given if not _is_missing(v, missing)]
        numbers = sum(_number(v) is not None for _, v in given)
        kind = declared.get(name) or ("numeric" if given and 2 * numbers > len(given) else "categorical")
        kinds[name] = kind if kind in ("numeric", "categorical") else "categorical"
        if kinds[name] != "numeric":
            continue
        for i, v in given:
            if _number(v) is None:
                bad.add(i)
                problems.append(f"{samples[i].origin}: covariate {name!r} is {v!r}, not a number ({numbers} of "
                                f"{len(given)} cells of the column are). Correct it, list it in data.missing_covariates "
                                f"if it means unknown, or set data.covariate_types.{name} = \"categorical\"")
    return kinds, bad


class CovariateEncoder:
    def __init__(self, spec: list[dict[str, Any]], missing: Sequence[str] = ()):
        self.spec = spec
        self.missing = missing_values(missing)

    @property
    def width(self) -> int:
        return sum((1 if c["kind"] == "numeric" else len(c["levels"])) + 1 for c in self.spec)

    @classmethod
    def fit(cls, samples: Sequence[Sample], names: Sequence[str], kinds: Mapping[str, str] | None = None,
            missing: Sequence[str] = ()) -> "CovariateEncoder":
        """Fit on the training part only (mean, sd, levels); ``kinds`` as :func:`covariate_kinds` decided on
        the whole manifest (decided here, on ``samples``, when not given)."""
        missing = missing_values(missing)
        if kinds is None:
            problems: list[str] = []
            kinds, _ = covariate_kinds(samples, names, {}, missing, problems)
            if problems:
                raise DataError(problems)
        spec = []
        for name in names:
            present = [v for s in samples if not _is_missing(v := s.cells.get(name, "").strip(), missing)]
            if kinds[name] == "numeric":
                arr = np.array([n for v in present if (n := _number(v)) is not None], dtype=np.float64)
                spec.append({"name": name, "kind": "numeric", "mean": float(arr.mean()) if arr.size else 0.0,
                             "sd": (float(arr.std()) if arr.size else 0.0) or 1.0})
            else:
                spec.append({"name": name, "kind": "categorical", "levels": sorted(set(present))})
        return cls(spec, missing)

    def transform(self, sample: Sample) -> np.ndarray:
        out: list[float] = []
        for c in self.spec:
            text = sample.cells.get(c["name"], "").strip()
            if c["kind"] == "numeric":
                value = _number(text)
                if value is None and not _is_missing(text, self.missing):
                    raise DataError([f"{sample.origin}: covariate {c['name']!r} is {text!r}; the model was trained "
                                     "on it as a number (leave the cell empty if it is unknown)"])
                out += [0.0, 1.0] if value is None else [(value - c["mean"]) / c["sd"], 0.0]
            else:
                onehot = [1.0 if text == level else 0.0 for level in c["levels"]]
                out += onehot + [0.0 if any(onehot) else 1.0]  # an unseen or empty value counts as missing
        return np.asarray(out, dtype=np.float32)

    def as_dict(self) -> dict[str, Any]:
        return {"covariates": self.spec, "missing": self.missing}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CovariateEncoder":
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

    def check(self, samples: Sequence[Sample], problems: list[str]) -> set[int]:
        self.kinds, bad = covariate_kinds(samples, self.columns, self.types, self.missing, problems)
        return bad

    def fit(self, samples: Sequence[Sample]) -> dict[str, Any]:
        if self.kinds is None:  # numeric or categorical is decided on all rows (check), never on a fold
            raise DataError(["data.covariates: the covariates' types were not decided on the run's rows before "
                             "fitting (input kind 'covariates' needs check() first)"])
        return {**CovariateEncoder.fit(samples, self.columns, self.kinds, self.missing).as_dict(), "hidden": self.hidden}

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
