"""Patient-level splits: grouped, stratified, seeded K-fold; an inner validation part; a leakage check."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lnzoo.data.samples import MISSING, Sample
from lnzoo.errors import DataError
from lnzoo.tasks import Task


def _strata(samples: Sequence[Sample], task: str) -> np.ndarray:
    # unlabelled rows form their own stratum so they spread over folds too
    return np.array([s.labels.get(task, MISSING) + 1 for s in samples])


def patient_folds(samples: Sequence[Sample], folds: int, main_task: str, seed: int) -> dict[str, int]:
    """Assign every patient to one of ``folds`` folds, stratified on the main task; returns patient -> fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.array([s.patient for s in samples])
    n_patients = len(set(groups))
    if n_patients < folds:
        raise DataError([f"{n_patients} patient(s) cannot fill {folds} folds; lower cv.folds"], "problem with the split")
    y = _strata(samples, main_task)
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment: dict[str, int] = {}
    for k, (_, test_idx) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
        for p in set(groups[test_idx]):
            assignment[p] = k
    return assignment


def inner_validation(samples: Sequence[Sample], fraction: float, main_task: str, seed: int) -> tuple[list[int], list[int]]:
    """Split a training part into (train, validation) indices by patient, stratified; picks epochs, never tests."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.array([s.patient for s in samples])
    n_splits = max(2, min(round(1.0 / fraction), len(set(groups))))
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + 1000)
    train_idx, val_idx = next(cv.split(np.zeros(len(groups)), _strata(samples, main_task), groups))
    return sorted(train_idx.tolist()), sorted(val_idx.tolist())


def leakage_problems(parts: dict[str, Sequence[Sample]]) -> list[str]:
    """A patient that sits in two parts of a train/test boundary, one line per offender (with a row of each)."""
    seen: dict[str, tuple[str, str]] = {}
    problems = []
    for part, samples in parts.items():
        first = {}
        for s in samples:
            first.setdefault(s.patient, s.origin)
        for p in sorted(first):
            if p in seen and seen[p][0] != part:
                problems.append(f"patient {p!r} is in both {seen[p][0]!r} and {part!r} ({seen[p][1]}, {first[p]})")
            seen.setdefault(p, (part, first[p]))
    return problems


def check_leakage(parts: dict[str, Sequence[Sample]]) -> None:
    """Refuse a patient that sits in two parts of a train/test boundary, naming the offenders."""
    problems = leakage_problems(parts)
    if problems:
        raise DataError(problems, "leak(s) across a train/test boundary")


def small_validation(val: Sequence[Sample], task: Task, min_images: int = 30, min_per_class: int = 5) -> str | None:
    """Why the inner validation part is too small to choose an epoch on, or None."""
    counts = {c: 0 for c in task.classes}
    for s in val:
        label = s.labels.get(task.name, MISSING)
        if label != MISSING:
            counts[task.classes[label]] += 1
    few = [f"{c} {n}" for c, n in counts.items() if n < min_per_class]
    if len(val) >= min_images and not few:
        return None
    return (f"the inner validation part has {len(val)} image(s)" + (f" ({', '.join(few)})" if few else "")
            + f"; under {min_images} images or {min_per_class} of a class, its choice of epoch is mostly noise. "
            "Raise train.val_fraction, add data, or set train.keep = \"last\"")
