"""``lnzoo evaluate RUN_DIR``: reload the best checkpoints and recompute the held-out metrics."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from lnzoo.errors import UsageError


def evaluate_run(run_dir: Path, host) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (stored metrics.json, recomputed metrics) for the cross-validation folds of a run."""
    from lnzoo.checkpoint import load_model
    from lnzoo.data.dataset import ImageCache
    from lnzoo.data.images import Preprocessing
    from lnzoo.recipe import resolve
    from lnzoo.runner import _jsonable, load_run_data, summarise_folds, task_metrics
    from lnzoo.tasks import Task
    from lnzoo.train import Trainer

    run_dir = Path(run_dir)
    metrics_path, folds_path = run_dir / "metrics.json", run_dir / "folds.csv"
    for p in (metrics_path, folds_path):
        if not p.is_file():
            raise UsageError(f"{run_dir} is not a finished run directory: {p.name} is missing")
    stored = json.loads(metrics_path.read_text(encoding="utf-8"))
    with folds_path.open(newline="") as fh:
        assignment = {row["patient"]: int(row["fold"]) for row in csv.DictReader(fh)}
    checkpoints = sorted(run_dir.glob("fold*/best.safetensors"), key=lambda p: int(p.parent.name[4:]))
    if not checkpoints:
        raise UsageError(f"{run_dir}: no fold*/best.safetensors checkpoints")
    per_fold, samples_all, proba_all = [], [], None
    tasks = None
    for ckpt in checkpoints:
        model, meta = load_model(ckpt, host)
        recipe = resolve(meta["recipe"], host=host, source=meta.get("recipe_source"))
        tasks = {n: Task.from_dict(d) for n, d in meta["tasks"].items()}
        data = load_run_data(recipe, tasks)
        k = meta["fold"]
        held = [s for s in data.pool if assignment.get(s.patient) == k]
        if not held:
            raise UsageError(f"{ckpt}: no sample of fold {k} found in the recipe's data; has the data moved?")
        pre = Preprocessing(**{f: meta["preprocessing"][f] for f in ("image_size", "resize", "normalize", "roi_margin")
                               if f in meta["preprocessing"]})
        trainer = Trainer(recipe, host, tasks, ImageCache(pre))
        trainer.covariates = getattr(model, "covariate_encoder", None)
        pred = trainer.predict(model, held)
        per_fold.append(task_metrics(held, pred.proba, tasks))
        samples_all += held
        proba_all = {t: [pred.proba[t]] for t in tasks} if proba_all is None else \
            {t: proba_all[t] + [pred.proba[t]] for t in tasks}
    pooled = task_metrics(samples_all, {t: np.concatenate(v) for t, v in proba_all.items()}, tasks)
    fresh = {"recipe": stored.get("recipe"), "main_task": stored.get("main_task"),
             "folds_run": stored.get("folds_run"),
             "cross_validation": {"pooled": pooled, "mean_sd": summarise_folds(per_fold)}}
    return stored, _jsonable(fresh)
