"""``lnzoo evaluate``: reload each fold's best checkpoint, predict its held-out patients again, and recompute
the run's metrics with the code that wrote ``metrics.json`` (a check that the run directory reproduces)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lnzoo.errors import UsageError


def evaluate_run(run_dir: Path, host) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (stored metrics.json, recomputed metrics) for the cross-validation folds of a run."""
    from lnzoo.data.run_data import load_run_data
    from lnzoo.decision import calibrate_tasks
    from lnzoo.evaluation import jsonable
    from lnzoo.evaluation.evaluate import run_metrics
    from lnzoo.inference import load
    from lnzoo.recipe import resolve
    from lnzoo.rundir import RunDir, prediction_row

    rd = RunDir(run_dir)
    rd.check_files()  # "reproduced" speaks of the run as lnzoo wrote it: every file of it, not only those read here
    stored = rd.metrics()
    assignment = rd.read_folds()
    rows: list[dict[str, str]] = []
    tasks_meta: dict[str, Any] = {}
    for ckpt in rd.checkpoints():
        predictor = load(ckpt, host, as_trained=True)  # the device and precision the run predicted with
        recipe = resolve(dict(predictor.recipe), host=host, source=predictor.record.recipe_source)
        data = load_run_data(recipe, predictor.tasks, host)
        k = predictor.record.fold
        held = [s for s in data.pool if assignment.get(s.patient) == k]
        if not held:
            raise UsageError(f"{ckpt}: no sample of fold {k} found in the recipe's data; has the data moved?")
        pred = predictor.predict(held)
        cal = calibrate_tasks(pred.proba, predictor.temperature)
        rows += [prediction_row("cv", k, s, {t: pred.proba[t][i] for t in predictor.tasks}, predictor.tasks,
                                predictor.views, {t: cal[t][i] for t in predictor.tasks}) for i, s in enumerate(held)]
        tasks_meta = {n: t.as_dict() for n, t in predictor.tasks.items()}
    cv = run_metrics(rows, tasks_meta)["cross_validation"]
    fresh = {"recipe": stored.get("recipe"), "main_task": stored.get("main_task"),
             "folds_run": stored.get("folds_run"),
             "cross_validation": {"pooled": cv["pooled"], "mean_sd": cv["mean_sd"]}}
    return stored, jsonable(fresh)
