"""The ``tensorboard`` tracker: a run's curves as TensorBoard event files in ``RUN/tensorboard/``
(``train.track = ["tensorboard"]``; ``pip install "lnzoo[track]"``; ``tensorboard --logdir runs/`` shows every run).

Written with ``torch.utils.tensorboard.SummaryWriter``: each epoch's ``fold{k}/train_loss``, ``val_loss``,
``val_<monitor>``, ``lr`` as scalars (step = the epoch), flushed as the epoch ends so a TensorBoard open beside
the run follows it; each fold's held-out metrics (step = the fold's last epoch); the final metrics with their
confidence intervals (step 0) once the report is written; the recipe (TOML and its flat parameters) and the
report's files as text. TensorBoard has no artifact store: the report stays in the run directory, named there.
``lnzoo run --resume`` appends to the same folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lnzoo import events
from lnzoo.track import (epoch_metrics, final_metrics, fold_metrics, missing_extra, recipe_params, remember,
                         report_files)

NAME = "tensorboard"
FOLDER = "tensorboard"


def _table(rows: dict[str, str]) -> str:
    """A Markdown table (TensorBoard's text tab renders Markdown)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")
    return "| key | value |\n| --- | --- |\n" + "\n".join(f"| {cell(k)} | {cell(v)} |" for k, v in rows.items())


class TensorBoardTracker:
    """:class:`lnzoo.contracts.Tracker` writing TensorBoard event files; ``log_dir`` overrides ``RUN/tensorboard``."""

    def __init__(self, run_dir: str | Path, recipe, *, log_dir: str | Path | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises it when the tensorboard package is missing
            raise missing_extra("tensorboard", NAME) from None
        self._SummaryWriter = SummaryWriter
        self.run_dir = Path(run_dir)
        self.recipe = recipe
        self.log_dir = Path(log_dir) if log_dir is not None else self.run_dir / FOLDER
        self.writer: Any = None
        self._last_epoch: dict[int, int] = {}

    def start(self, resume: bool) -> None:
        self.writer = self._SummaryWriter(log_dir=str(self.log_dir))
        remember(self.run_dir, NAME, log_dir=str(self.log_dir.resolve()))
        if not resume:  # a resumed run's folder has them already
            self.writer.add_text("recipe/toml", "```toml\n" + self.recipe.to_toml() + "\n```", 0)
            self.writer.add_text("recipe/params", _table(recipe_params(self.recipe)), 0)
            self.writer.flush()

    def event(self, event: Any) -> None:
        if isinstance(event, events.EpochEnded):
            step, metrics = epoch_metrics(event)
            self._last_epoch[event.fold] = step
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()
        elif isinstance(event, events.FoldEnded):
            for name, value in fold_metrics(event).items():
                self.writer.add_scalar(name, value, self._last_epoch.get(event.fold, 0))
            self.writer.flush()
        elif isinstance(event, events.RunEnded):
            for name, value in final_metrics(event.out, event.metrics).items():
                self.writer.add_scalar(name, value, 0)
            files = report_files(event.out, event.report)
            if files:
                self.writer.add_text("report/files", "\n".join(f"- `{p.resolve()}`" for p in files), 0)
            self.writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.add_text("run/status", status, 0)
            self.writer.close()
            self.writer = None
