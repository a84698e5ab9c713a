"""The ``mlflow`` tracker: an lnzoo run as an MLflow run (``train.track = ["mlflow"]``, ``pip install "lnzoo[track]"``).

Where it records: ``MLFLOW_TRACKING_URI`` when set (a server, a database, anything MLflow takes), else an embedded
store beside the run directory, shared by the runs of that folder: ``<parent>/mlruns/mlflow.db``, a SQLite
database that MLflow 3.x reads and writes without a server (its plain-folder store is in maintenance mode and
refused unless ``MLFLOW_ALLOW_FILE_STORE`` is set), with the artifacts in ``<parent>/mlruns/artifacts/`` (a new
experiment in any SQLite store keeps its files beside the database). Read it back with
``MlflowClient(tracking_uri="sqlite:///<parent>/mlruns/mlflow.db")``, or browse it with ``mlflow ui
--backend-store-uri`` that URI (the UI is in the full ``mlflow`` package).

What it records: the resolved recipe as parameters (dotted keys); each epoch's ``fold{k}/train_loss``,
``val_loss``, ``val_<monitor>``, ``lr`` as the epoch ends (step = the epoch); each fold's held-out metrics; the
final metrics with their confidence intervals once the report is written (:func:`lnzoo.track.final_metrics`);
the report, evaluation.json, tripod_ai.md, the model card when present, metrics.json and recipe.toml as
artifacts. The experiment is the recipe's name (``MLFLOW_EXPERIMENT_NAME`` when set), the run is named after the
run directory. The MLflow run id is kept in the run's run.json (``tracking.mlflow``), so ``lnzoo run --resume``
continues the same MLflow run.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lnzoo import events
from lnzoo.track import (epoch_metrics, final_metrics, fold_metrics, missing_extra, recall, recipe_params, remember,
                         report_files)

NAME = "mlflow"
STORE = "mlruns"  # the embedded store's folder, beside the run directory
STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def default_tracking_uri(run_dir: str | Path) -> str:
    """The embedded store of a run directory: SQLite in ``<parent>/mlruns/mlflow.db``."""
    return f"sqlite:///{(Path(run_dir).resolve().parent / STORE / 'mlflow.db').as_posix()}"


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its files: beside a SQLite store's database (``<folder>/artifacts``; MLflow's own
    default would be ``./mlruns`` in whatever folder lnzoo runs from); elsewhere (a server, another database) what
    the store decides."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's and alembic's start-up chatter (creating and migrating the store's tables, SQLAlchemy's deprecation
    warnings) kept off the run's output; real errors still raise."""
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class MlflowTracker:
    """:class:`lnzoo.contracts.Tracker` recording into MLflow; ``tracking_uri`` and ``experiment`` override where."""

    def __init__(self, run_dir: str | Path, recipe, *, tracking_uri: str | None = None,
                 experiment: str | None = None):
        try:
            with _quiet():
                from mlflow.entities import Metric, Param
                from mlflow.tracking import MlflowClient
        except ImportError:
            raise missing_extra("mlflow (mlflow-skinny)", NAME) from None
        self._Client, self._Metric, self._Param = MlflowClient, Metric, Param
        self.run_dir = Path(run_dir)
        self.recipe = recipe
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(run_dir)
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or recipe.name
        self.client: Any = None
        self.run_id: str | None = None

    # -- the store and the run -------------------------------------------------------------------------------
    def _connect(self, uri: str) -> Any:
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        with _quiet():
            return self._Client(tracking_uri=uri)

    def _experiment_id(self, client: Any, uri: str) -> str:
        from mlflow.exceptions import MlflowException

        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                return client.create_experiment(self.experiment, artifact_location=artifact_root(uri))
            except MlflowException:  # another run created it at the same moment
                found = client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def _find(self, uri: str | None, run_id: str) -> Any:
        """The client of ``uri`` when the run ``run_id`` is there (a SQLite store that no longer exists is not
        created anew just to look)."""
        if not uri or (uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file()):
            return None
        try:
            client = self._connect(uri)
            client.get_run(run_id)
            return client
        except Exception:  # noqa: BLE001 - moved, deleted or unreachable: looked for elsewhere
            return None

    def start(self, resume: bool) -> None:
        kept = recall(self.run_dir, NAME) if resume else {}
        run_id = kept.get("run_id")
        if run_id:  # --resume: the MLflow run this run started, where it was made, else where the store is now
            for uri in dict.fromkeys([kept.get("tracking_uri"), self.tracking_uri]):
                client = self._find(uri, run_id)
                if client is not None:
                    self.client, self.run_id, self.tracking_uri = client, run_id, uri
                    client.update_run(run_id, status="RUNNING")
                    break
        if self.run_id is None:
            self.client = self._connect(self.tracking_uri)
            tags = {"lnzoo.run_dir": str(self.run_dir.resolve()), "lnzoo.recipe": self.recipe.name,
                    "lnzoo.quick": str(bool(self.recipe.quick)).lower(), "mlflow.source.type": "LOCAL"}
            if self.recipe.source:
                tags["mlflow.source.name"] = str(Path(self.recipe.source).resolve())
            if run_id:
                tags["lnzoo.resumed_from_run_id"] = run_id  # the first MLflow run could not be found any more
            run = self.client.create_run(self._experiment_id(self.client, self.tracking_uri), tags=tags,
                                         run_name=self.run_dir.name)
            self.run_id = run.info.run_id
        remember(self.run_dir, NAME, run_id=self.run_id, tracking_uri=self.tracking_uri,
                 experiment=self.experiment)
        self._log_params()

    def _log_params(self) -> None:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        logged = self.client.get_run(self.run_id).data.params  # a resumed run has them: MLflow refuses a change
        params = [self._Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in recipe_params(self.recipe).items()
                  if k not in logged]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        rows = [self._Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(rows), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=rows[i:i + MAX_METRICS_PER_BATCH])

    # -- events ---------------------------------------------------------------------------------------------
    def event(self, event: Any) -> None:
        if isinstance(event, events.EpochEnded):
            step, metrics = epoch_metrics(event)
            self._log_metrics(metrics, step)
        elif isinstance(event, events.FoldEnded):
            self._log_metrics(fold_metrics(event), 0)
        elif isinstance(event, events.RunEnded):
            self._log_metrics(final_metrics(event.out, event.metrics), 0)
            for path in report_files(event.out, event.report):
                self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))
