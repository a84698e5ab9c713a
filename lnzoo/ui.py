"""Rich progress display for long work: phantom generation, image decoding, training steps."""
from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress:
    """One live display for a run; callbacks are cheap no-ops when nothing changes."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=False)
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "RunProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def _bar(self, key: str, description: str, total: int) -> Any:
        if key not in self._tasks:
            self._tasks[key] = self.progress.add_task(description, total=total, info="")
        return self._tasks[key]

    def phantom(self, done: int, total: int) -> None:
        self.progress.update(self._bar("phantom", "phantom", total), completed=done)

    def decode(self, done: int, total: int) -> None:
        if done == total or done % 25 == 0:
            self.progress.update(self._bar("decode", "decode images", total), completed=done)

    def start_fold(self, k: int, n_folds: int, n_train: int, n_val: int, n_held: int, keep: str = "best") -> None:
        role = "picks the epoch" if keep == "best" else "curves only: the last epoch is kept"
        self.console.print(f"[bold]fold {k}[/]: train {n_train} images, validation {n_val} ({role}), "
                           f"held-out {n_held}")

    def train(self, event: str, **kw: Any) -> None:
        if event == "init":
            r = kw["report"]
            self.console.print(f"init_from {r['source']}: {r['backbone_loaded']}/{r['backbone_total']} backbone "
                               f"tensors loaded; heads new" + (f"; not loaded: {', '.join(r['not_loaded'][:5])}"
                                                               if r["not_loaded"] else ""))
            return
        key = f"fold{kw['fold']}"
        if event == "step":
            total = kw["epochs"] * kw["steps"]
            bar = self._bar(key, f"fold {kw['fold']}", total)
            done = kw["epoch"] * kw["steps"] + kw["step"]
            self.progress.update(bar, completed=done, info=f"epoch {kw['epoch'] + 1}/{kw['epochs']} loss {kw['loss']:.3f}")
        else:
            row = kw["row"]
            metric = next(k for k in row if k.startswith("val_") and k != "val_loss")
            best = kw["best"]
            self.progress.update(self._tasks[key], info=f"epoch {row['epoch']}/{kw['epochs']} loss {row['train_loss']:.3f} "
                                 f"{metric} {row[metric]:.3f}" + (f" (best {best:.3f})" if math.isfinite(best) else ""))

    def end_fold(self, k: int, main_metrics: dict[str, Any]) -> None:
        bar = self._tasks.get(f"fold{k}")
        if bar is not None:  # early stopping ends a bar before its total
            self.progress.update(bar, total=self.progress.tasks[bar].completed)
        if main_metrics:
            self.console.print(f"fold {k} held-out: AUC {main_metrics.get('auc', float('nan')):.3f}  "
                               f"ACC {main_metrics.get('accuracy', float('nan')):.3f}")
