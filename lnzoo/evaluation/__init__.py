"""Evaluation: metrics, AUC / DeLong / patient bootstrap, per-run summaries and comparisons (torch-free).

One implementation of each: :mod:`.stats` (the AUC, DeLong, the cluster bootstrap, McNemar),
:mod:`.metrics` (classification metrics, calibration, thresholds), :mod:`.cases` (prediction rows
-> labelled cases per task), :mod:`.evaluate` (metrics.json and evaluation.json), :mod:`.compare`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

N_BOOT = 1000  # patient-bootstrap resamples of every CI, whoever asks (report, compare, lnzoo run)


def jsonable(obj: Any) -> Any:
    """Plain JSON types: NaN and inf become null, floats keep 6 significant digits, numpy scalars unwrap."""
    import numpy as np  # here, so that importing N_BOOT stays cheap for the command line

    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(f"{float(obj):.6g}") if math.isfinite(obj) else None
    return obj


def num(x: Any) -> float:
    """A stored figure as a float: None (null in JSON, an undefined metric) is NaN."""
    return float("nan") if x is None else float(x)


def fmt(x: Any, digits: int = 3) -> str:
    """A figure for people: fixed decimals, integers as they are, "n/a" where it is undefined."""
    if x is None or isinstance(x, bool):
        return "n/a" if x is None else str(x)
    if isinstance(x, int) or type(x).__name__.startswith("int"):
        return str(int(x))
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def fmt_ci(value: Any, ci: Mapping[str, Any] | None) -> str:
    """"0.812 (0.741–0.873)"; the value alone when the interval is undefined."""
    v = fmt(value)
    if v == "n/a" or not ci:
        return v
    lo, hi = fmt(ci.get("lo")), fmt(ci.get("hi"))
    return v if "n/a" in (lo, hi) else f"{v} ({lo}–{hi})"


def fmt_p(x: Any) -> str:
    """A p-value: three decimals, "<0.001" below that, "n/a" where undefined."""
    v = fmt(x)
    return v if v == "n/a" else "<0.001" if float(x) < 0.001 else v
