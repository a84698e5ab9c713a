"""Default plugin: the experiment trackers MLflow and TensorBoard (their packages: ``pip install "lnzoo[track]"``)."""
from __future__ import annotations

import lnzoo


@lnzoo.hookimpl
def lnzoo_register_trackers(register):
    register("mlflow", "lnzoo.track.mlflow:MlflowTracker",
             "MLflow: MLFLOW_TRACKING_URI, else a SQLite store in the run directory's parent (mlruns/mlflow.db).")
    register("tensorboard", "lnzoo.track.tensorboard:TensorBoardTracker",
             "TensorBoard event files in the run directory (RUN/tensorboard/).")
