"""One fold of a run: fit it, calibrate it on its inner validation part, predict its held-out patients."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lnzoo import events
from lnzoo.data.samples import MISSING
from lnzoo.data.splits import small_validation
from lnzoo.rundir import RunDir
from lnzoo.tasks import Task


def fit_temperatures(val_pred, tasks: Mapping[str, Task]) -> dict[str, float | None]:
    """Temperature scaling per task, fitted on the validation part (None where it has too little data)."""
    from lnzoo.decision import fit_temperature

    out: dict[str, float | None] = {}
    for name in tasks:
        y = val_pred.labels(name)
        keep = y != MISSING
        out[name] = fit_temperature(val_pred.proba[name][keep], y[keep])
    return out


def _with_calibration(rd: RunDir, k: int, rows: list[dict[str, str]], info: dict[str, Any],
                      tasks: Mapping[str, Task]) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """A finished fold's stored rows and entry, with its temperatures and calibrated columns: a fold fitted before
    lnzoo stored them gets them from its model's record (the temperatures it was saved with)."""
    from lnzoo.decision import calibrate
    from lnzoo.rundir import Columns

    wanted = [Columns.calibrated(t, c) for t, task in tasks.items() for c in task.classes]
    if "temperature" in info and all(c in row for row in rows for c in wanted):
        return rows, info
    temperatures = dict(rd.record(k).temperature)
    for row in rows:
        for t, task in tasks.items():
            raw = np.array([[float(row[Columns.raw(t, c)]) for c in task.classes]])
            for c, v in zip(task.classes, calibrate(raw, temperatures.get(t))[0]):
                row[Columns.calibrated(t, c)] = f"{v:.6f}"
    return rows, {**info, "temperature": temperatures}


def kept_fold_events(rd: RunDir, k: int, info: Mapping[str, Any], recipe) -> tuple[Any, ...]:
    """The events trackers take of fold ``k``'s fitting, rebuilt from what it kept (its history.csv, values as saved,
    and its metrics.json entry ``info``): FoldStarted, each EpochEnded, FoldEnded (:class:`lnzoo.events.FoldKept`)."""
    from lnzoo.train.loop import best_so_far

    cfg = recipe.config
    columns = rd.read_history(k)
    rows = [{c: (int(v) if c == "epoch" else v) for c, v in zip(columns, values)}
            for values in zip(*columns.values())]
    best = best_so_far(rows, cfg.train.monitor)
    return (events.FoldStarted(k, cfg.cv.folds, info.get("n_train", 0), info.get("n_validation", 0),
                               info.get("n_held_out", 0), cfg.train.keep),
            *(events.EpochEnded(k, cfg.train.epochs, row, b) for row, b in zip(rows, best)),
            events.FoldEnded(k, dict((info.get("metrics") or {}).get(cfg.tasks.main, {}))))


def _fit_fold(k, n_folds, recipe, tasks, tasks_meta, pool, assignment, trainer, rd: RunDir, others, env, emit):
    """Fit fold k, save its checkpoints and curves; return its prediction rows, its metrics.json entry and
    its probabilities on the test and external sets."""
    from lnzoo.decision import calibrate_tasks
    from lnzoo.data.splits import check_leakage, inner_validation
    from lnzoo.evaluation.evaluate import run_metrics
    from lnzoo.evaluation.subgroups import row_groups
    from lnzoo.rundir import prediction_row
    from lnzoo.train.resume import remove_state

    cfg = recipe.config
    main = cfg.tasks.main
    held = [s for s in pool if assignment[s.patient] == k]
    rest = [s for s in pool if assignment[s.patient] != k]
    tr_idx, va_idx = inner_validation(rest, cfg.train.val_fraction, main, cfg.seed + k)
    train_s, val_s = [rest[i] for i in tr_idx], [rest[i] for i in va_idx]
    check_leakage({"train": train_s, "validation": val_s, "held-out fold": held})
    emit(events.FoldStarted(k, n_folds, len(train_s), len(val_s), len(held), cfg.train.keep))
    small = small_validation(val_s, tasks[main]) if cfg.train.keep == "best" else None
    if small:
        emit(events.Note(f"fold {k}: {small}", "warning"))
    result = trainer.fit(train_s, val_s, seed=cfg.seed + k, fold=k, state=rd.resume_state(k))
    predictor = result.predictor
    temperatures = fit_temperatures(predictor.predict(val_s), tasks)
    meta = {"recipe": recipe.data, "recipe_source": str(recipe.source) if recipe.source else None, "tasks": tasks_meta,
            "class_maps": {n: {str(i): c for i, c in enumerate(t.classes)} for n, t in tasks.items()},
            "views": list(cfg.data.views), "seed": cfg.seed + k, "fold": k, "best_epoch": result.best_epoch,
            # the metric that picked the epoch, on the inner-validation part (NaN: undefined there, e.g. one
            # class only, and the loss picked instead); lnzoo select chooses on it
            "monitor": {cfg.train.monitor: result.best_value}, "monitor_val_loss": result.best_val_loss,
            "temperature": temperatures, "init_from": result.init_report,
            "inputs": predictor.inputs.as_meta() if predictor.inputs else None, **env}
    rd.save_checkpoint(k, "best", predictor.model, meta)
    rd.save_checkpoint(k, "last", result.last_state, {**meta, "epoch": len(result.history), "kind": "last"})
    rd.write_history(k, result.history)
    pred = predictor.predict(held)
    cal = calibrate_tasks(pred.proba, temperatures)
    rows = [prediction_row("cv", k, s, {t: pred.proba[t][i] for t in tasks}, tasks, list(cfg.data.views),
                           {t: cal[t][i] for t in tasks}, row_groups(s, cfg.data)) for i, s in enumerate(held)]
    metrics = run_metrics(rows, tasks_meta)["cross_validation"]["pooled"]
    info = {"fold": k, "best_epoch": result.best_epoch, "epochs_run": len(result.history), "n_train": len(train_s),
            "n_validation": len(val_s), "n_held_out": len(held), "metrics": metrics, "temperature": temperatures,
            **({"validation_warning": small} if small else {})}
    proba = {part: predictor.predict(samples).proba for part, samples in others.items()}
    rd.write_fold_result(k, {"rows": rows, "info": info,  # what --resume keeps of a finished fold
                             "proba": {p: {t: v.tolist() for t, v in d.items()} for p, d in proba.items()}})
    remove_state(rd.resume_state(k))
    emit(events.FoldEnded(k, metrics.get(main, {})))
    return rows, info, proba
