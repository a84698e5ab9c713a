"""Typed progress events of a run. The pipeline emits them to ``on_event``; only the CLI renders them."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Progress:
    """Long work other than training advanced: ``what`` is "phantom" or "decode"."""

    what: str
    done: int
    total: int


@dataclass(frozen=True)
class Note:
    """Something the user should read (``level`` "info" or "warning")."""

    text: str
    level: str = "info"


@dataclass(frozen=True)
class FoldStarted:
    fold: int
    n_folds: int
    n_train: int
    n_validation: int
    n_held_out: int
    keep: str  # "best": the validation part picks the epoch; "last": it only draws curves


@dataclass(frozen=True)
class InitLoaded:
    """``model.init_from`` loaded a backbone: what was loaded and what was not."""

    report: dict[str, Any]


@dataclass(frozen=True)
class StepEnded:
    fold: int
    epoch: int       # 0-based
    epochs: int
    step: int        # 1-based within the epoch
    steps: int
    loss: float      # running mean training loss of the epoch


@dataclass(frozen=True)
class EpochEnded:
    fold: int
    epochs: int
    row: dict[str, Any]  # the history row: epoch (1-based), train_loss, val_loss, val_<monitor>, lr
    best: float          # the monitored value at the best epoch so far (NaN where it was undefined)


@dataclass(frozen=True)
class FoldEnded:
    fold: int
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out metrics of the main task


@dataclass(frozen=True)
class FoldKept:
    """A fold fitted before this process (by a job of ``lnzoo sweep``, or before a resumed run stopped), kept as it
    was. ``replay()`` rebuilds, from what the fold kept, the events trackers take of a fitting: FoldStarted, an
    EpochEnded per row of its history.csv (values as saved there), FoldEnded. :mod:`lnzoo.track` sends a tracker
    the part of it that tracker has not had; it reads the fold's files only then."""

    fold: int
    replay: Callable[[], tuple[Any, ...]] = field(default=tuple, repr=False)


@dataclass(frozen=True)
class RunEnded:
    out: str
    metrics: dict[str, Any]
    report: str | None
