"""Renders a run's :mod:`lnzoo.events` for people: rich progress bars on a terminal, one plain line per
epoch (and per finished phase) when the output is a log file or a pipe, each starting with the time of day."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lnzoo import events


def wide_console(stderr: bool = False) -> Console:
    """A console; off a terminal, wide enough that tables are printed whole instead of cut to 80 columns."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=max(console.width, 240))


def _epoch_text(e: events.EpochEnded, seconds: float | None = None) -> str:
    row = e.row
    # the monitored metric (a pretraining: its k-NN probe, when this epoch was probed)
    metric = next((k for k in row if (k.startswith("val_") and k != "val_loss") or k.startswith("knn_")), "val_loss")
    value = row.get(metric)
    shown = "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"
    best = f" (best {e.best:.3f})" if math.isfinite(e.best) else ""
    monitored = "" if metric == "val_loss" else f" {metric} {shown}"  # the loss as monitor: shown once
    took = "" if seconds is None else f" ({seconds:.1f} s)"
    val = f" val_loss {row['val_loss']:.3f}" if "val_loss" in row else ""
    return f"epoch {row['epoch']}/{e.epochs} loss {row['train_loss']:.3f}{val}{monitored}{best}{took}"


class RunView:
    """``on_event`` for :func:`lnzoo.run`; use as a context manager around the run.

    An epoch's time is measured here, from the fold's start or its previous epoch's end (the first epoch of a
    fold so includes building the model); ``clock`` is for tests.
    """

    def __init__(self, console: Console | None = None, clock: Callable[[], float] = time.monotonic):
        self.console = console or wide_console(stderr=True)
        self.live = self.console.is_terminal
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=False, disable=not self.live)
        self._bars: dict[str, Any] = {}
        self._clock = clock
        self._since: dict[int, float] = {}  # fold -> when its current epoch began
        self._labels: dict[int, str] = {}  # fold -> what its lines say it is ("fold 2"; a pretraining: "pretraining")

    def _print(self, text: str) -> None:
        """A message for people: on a terminal above the bars; in a log every line starts with the time of day
        (never wrapped, so no line goes without it)."""
        if self.live:
            self.console.print(text, highlight=False)
            return
        stamp = time.strftime("%H:%M:%S")
        for line in text.split("\n"):
            self.console.print(f"{stamp} {line}", highlight=False, soft_wrap=True)

    def __enter__(self) -> "RunView":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def _bar(self, key: str, description: str, total: int) -> Any:
        if key not in self._bars:
            self._bars[key] = self.progress.add_task(description, total=total, info="")
        return self._bars[key]

    def __call__(self, event: Any) -> None:
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)

    def _on_Progress(self, e: events.Progress) -> None:
        label = {"phantom": "phantom", "decode": "decode images"}.get(e.what, e.what)
        if self.live:
            if e.done == e.total or e.done % 25 == 0:
                self.progress.update(self._bar(e.what, label, e.total), completed=e.done)
        elif e.done == e.total:
            self._print(f"{label}: {e.total} done")

    def _on_Note(self, e: events.Note) -> None:
        text = escape(e.text)
        self._print(f"[yellow]warning:[/] {text}" if e.level == "warning" else text)

    def _on_FoldStarted(self, e: events.FoldStarted) -> None:
        self._since[e.fold] = self._clock()
        if e.n_validation == 0 and e.n_held_out == 0:  # a self-supervised pretraining: no labels, no folds
            self._labels[e.fold] = "pretraining"
            self._print(f"[bold]pretraining[/]: {e.n_train} unlabelled images")
            return
        role = "picks the epoch" if e.keep == "best" else "curves only: the last epoch is kept"
        self._print(f"[bold]fold {e.fold}[/]: train {e.n_train} images, validation {e.n_validation} ({role}), "
                    f"held-out {e.n_held_out}")

    def _on_InitLoaded(self, e: events.InitLoaded) -> None:
        r = e.report
        self._print(escape(f"init_from {r['source']}: {r['backbone_loaded']}/{r['backbone_total']} backbone "
                           f"tensors loaded; heads new" + (f"; not loaded: {', '.join(r['not_loaded'][:5])}"
                                                           if r["not_loaded"] else "")))

    def _on_StepEnded(self, e: events.StepEnded) -> None:
        if self.live:
            bar = self._bar(f"fold{e.fold}", self._labels.get(e.fold, f"fold {e.fold}"), e.epochs * e.steps)
            self.progress.update(bar, completed=e.epoch * e.steps + e.step,
                                 info=f"epoch {e.epoch + 1}/{e.epochs} loss {e.loss:.3f}")

    def _on_EpochEnded(self, e: events.EpochEnded) -> None:
        now, began = self._clock(), self._since.get(e.fold)
        self._since[e.fold] = now
        text = _epoch_text(e, None if began is None else now - began)
        if self.live and f"fold{e.fold}" in self._bars:
            self.progress.update(self._bars[f"fold{e.fold}"], info=text)
        elif not self.live:
            self._print(f"{self._labels.get(e.fold, f'fold {e.fold}')} {text}")

    def _on_FoldEnded(self, e: events.FoldEnded) -> None:
        bar = self._bars.get(f"fold{e.fold}")
        if bar is not None:  # early stopping ends a bar before its total
            self.progress.update(bar, total=self.progress.tasks[bar].completed)
        if e.metrics:
            self._print(f"fold {e.fold} held-out: AUC {e.metrics.get('auc', float('nan')):.3f}  "
                        f"ACC {e.metrics.get('accuracy', float('nan')):.3f}")
