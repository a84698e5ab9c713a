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
