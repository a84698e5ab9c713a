"""Clinical covariates (age, sex, axis ratio, elastography score, flow pattern, hilum...) as model inputs.

Numeric columns are standardised with the training part's mean and sd; text columns are one-hot
over the values seen in training; every column gets a missing-value indicator, so an absent
covariate is information, not a zero that looks like a value. The encoder is stored in the
checkpoint sidecar, so serving encodes exactly as training did.
"""
from __future__ import annotations

from collections.abc import Sequence
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


class CovariateEncoder:
    def __init__(self, spec: list[dict[str, Any]]):
        self.spec = spec

    @property
    def width(self) -> int:
        return sum((1 if c["kind"] == "numeric" else len(c["levels"])) + 1 for c in self.spec)

    @classmethod
    def fit(cls, samples: Sequence[Sample], names: Sequence[str]) -> "CovariateEncoder":
        spec = []
        for name in names:
            values = [s.covariates.get(name, "").strip() for s in samples]
            if not any(name in s.covariates for s in samples):
                raise DataError([f"data.covariates: no training row has a column {name!r} "
                                 f"(covariates come from CSV manifest columns)"])
            present = [v for v in values if v]
            numbers = [_number(v) for v in present]
            if present and all(n is not None for n in numbers):
                arr = np.array(numbers, dtype=np.float64)
                spec.append({"name": name, "kind": "numeric", "mean": float(arr.mean()),
                             "sd": float(arr.std()) or 1.0})
            else:
                spec.append({"name": name, "kind": "categorical", "levels": sorted(set(present))})
        return cls(spec)

    def transform(self, sample: Sample) -> np.ndarray:
        out: list[float] = []
        for c in self.spec:
            text = sample.covariates.get(c["name"], "").strip()
            if c["kind"] == "numeric":
                value = _number(text)
                out += [0.0, 1.0] if value is None else [(value - c["mean"]) / c["sd"], 0.0]
            else:
                onehot = [1.0 if text == level else 0.0 for level in c["levels"]]
                out += onehot + [0.0 if any(onehot) else 1.0]  # an unseen or empty value counts as missing
        return np.asarray(out, dtype=np.float32)

    def as_dict(self) -> dict[str, Any]:
        return {"covariates": self.spec}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CovariateEncoder":
        return cls(list(data["covariates"]))
