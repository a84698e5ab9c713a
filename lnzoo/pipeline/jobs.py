"""A run's folds as separate jobs (lnzoo sweep): prepare the run directory, then fit one fold per job."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any


from lnzoo.errors import UsageError
from lnzoo.rundir import RunDir
from lnzoo.pipeline.folds import _prepare, resumed_recipe


def prepare_run(recipe, host, out_dir: Path, emit: Callable[[Any], None] | None = None, sweep: str = "") -> list[int]:
    """Make a new run directory ready for its folds to be fitted as separate jobs (:func:`fit_fold_job`): the
    recipe, the data digest and the fold assignment, status "sweeping"; returns the folds to fit. The run is
    finished by :func:`run` with ``resume=True`` once every fold has its result."""
    emit = emit or (lambda event: None)
    with RunDir(out_dir, writer=True).writing(done="sweeping") as rd:
        folds = _prepare(recipe, host, rd, emit, resume=False).folds
        rd.update_run(sweep=sweep)
    return folds


class FoldBusy(UsageError):
    """Another job holds this fold's lock: a duplicate submission, not a failure of the fold."""


def fit_fold_job(out_dir: Path, k: int, host=None, emit: Callable[[Any], None] | None = None) -> bool:
    """Fit fold ``k`` of a run directory :func:`prepare_run` made (one job of lnzoo sweep): its checkpoints,
    curves and ``fold{k}/result.json``, nothing else of the run, so the folds of one run can fit at the same
    time in separate processes or on separate machines. A fold that already has its result is left as it is
    (False); an interrupted one continues after its last saved epoch."""
    from filelock import FileLock, Timeout

    if host is None:
        from lnzoo.plugins import get_host
        host = get_host()
    emit = emit or (lambda event: None)
    rd = RunDir(out_dir, writer=True)
    if rd.status() != "sweeping":
        raise UsageError(f"{rd}: not a run prepared for lnzoo sweep (its status is {rd.status()!r})")
    if rd.read_fold_result(k) is not None:
        return False
    rd.fold_dir(k).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(rd.fold_dir(k) / ".lock"), is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FoldBusy(f"{rd}: fold {k} is being fitted by another job") from None
    try:
        if rd.read_fold_result(k) is not None:  # finished by the job that held the lock a moment ago
            return False
        recipe = resumed_recipe(rd, host)
        prep = _prepare(recipe, host, rd, emit, resume=True)
        if k not in prep.folds:
            raise UsageError(f"{rd}: fold {k} is not one of the run's folds {prep.folds}")
        prep.fit_fold(k, rd, emit)
    finally:
        lock.release()
        with contextlib.suppress(OSError):  # the fold then holds what lnzoo run writes there, nothing more
            (rd.fold_dir(k) / ".lock").unlink()
    return True
