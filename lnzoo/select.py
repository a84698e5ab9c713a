"""``lnzoo select``: a nested choice between cross-validation runs that share their folds.

Every candidate run (another recipe, backbone or setting) was trained fold by fold on the same
patient folds. For each fold the candidate with the best *inner-validation* score wins: the score of
the epoch it kept (its best with ``train.keep = "best"``, its last with ``"last"``; ``monitor`` in
``fold{k}/best.json``), measured on a part of that fold's training patients. The held-out fold is
never looked at to choose, so the chosen models' held-out predictions honestly estimate "pick the
best of these settings on my training data", unlike picking the run with the best cross-validated
AUC, which reads the test folds.

With ``keep = "best"`` a candidate that ran more epochs had more draws at a high inner score:
compare candidates of equal epochs, or keep "last", when that matters. The inner parts are small
(a 15% patient split), so the choice is noisy too: the price of not reading the test folds, and
the estimate says what it costs.

The output is a run directory: ``selection.json`` (who won each fold and on what scores),
``predictions.csv`` (the winners' out-of-fold rows), ``metrics.json``, ``folds.csv`` and each
winner's ``fold{k}/`` checkpoint, so ``lnzoo evaluate``, ``compare`` and ``predict --model`` work on
it like on any run.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lnzoo.errors import UsageError
from lnzoo.evaluation import fmt, jsonable
from lnzoo.evaluation.evaluate import mean_sd, run_metrics
from lnzoo.rundir import Columns, RunDir

__all__ = ["select_runs", "format_selection"]


class _Candidate:
    """One finished cross-validation run directory."""

    def __init__(self, path: Path):
        self.rd = RunDir(Path(path))
        self.path = self.rd.path
        self.name = self.path.name
        self.rd.require(RunDir.METRICS, RunDir.FOLDS, RunDir.PREDICTIONS)
        self.metrics = self.rd.metrics()
        self.folds = self.rd.read_folds()
        self.header, self.rows = self.rd.read_predictions()
        self.main = self.metrics.get("main_task")
        self.records = {k: self.rd.record(k) for k in self.metrics.get("folds_run") or []}
        if not self.records:
            raise UsageError(f"{self.path}: no cross-validation folds were run (linear probe or test-only run?)")

    def inner_score(self, k: int) -> tuple[str, float]:
        """(metric name, value): the inner-validation metric of fold k's kept epoch (NaN: undefined)."""
        monitor = self.records[k].monitor
        if len(monitor) != 1:
            raise UsageError(f"{self.path}/fold{k}/best.json: no inner-validation score ('monitor') recorded")
        name, value = next(iter(monitor.items()))
        value = float("nan") if value is None else float(value)
        if name == "loss" and value < 0:  # runs before lnzoo stored the metric itself kept minus the loss
            value = -value
        return name, value

    def inner_loss(self, k: int) -> float:
        """The inner-validation loss at the chosen epoch (breaks ties between equal scores)."""
        value = self.records[k].monitor_val_loss
        return float("inf") if value is None or not math.isfinite(float(value)) else float(value)

    def cv_rows(self, k: int) -> list[dict[str, str]]:
        return [r for r in self.rows if r["part"] == "cv" and r["fold"] == str(k)]

    def task_columns(self) -> list[str]:
        return [c for c in self.header if Columns.is_task_column(c)]

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        return {n: t.as_dict() for n, t in next(iter(self.records.values())).tasks.items()}


def _check_same(cands: list[_Candidate]) -> tuple[list[int], str]:
    first = cands[0]
    for c in cands[1:]:
        if c.main != first.main:
            raise UsageError(f"{c.path}: main task {c.main!r}, but {first.path} has {first.main!r}; "
                             "a choice needs runs of the same task")
        if c.folds != first.folds:
            differ = sorted(p for p in set(c.folds) | set(first.folds) if c.folds.get(p) != first.folds.get(p))
            raise UsageError(f"{c.path}/folds.csv and {first.path}/folds.csv assign patients to different folds "
                             f"(first: {differ[:3]}); give every candidate the same folds with "
                             f"--set cv.folds_file=\"{first.path / 'folds.csv'}\"")
        if set(c.records) != set(first.records):
            raise UsageError(f"{c.path} ran folds {sorted(c.records)}, {first.path} ran {sorted(first.records)}")
        a = {n: t["classes"] for n, t in c.tasks.items()}
        b = {n: t["classes"] for n, t in first.tasks.items()}
        if a != b:
            raise UsageError(f"{c.path}: tasks/classes {a} differ from {first.path}'s {b}")
        if c.task_columns() != first.task_columns():
            extra = sorted(set(c.task_columns()) ^ set(first.task_columns()))
            raise UsageError(f"{c.path}/predictions.csv and {first.path}/predictions.csv differ in their task "
                             f"columns {extra}; a choice needs the same tasks")
        for key, get in (("seed", lambda m: m.recipe.get("seed")),
                         ("train.val_fraction", lambda m: m.recipe.get("train", {}).get("val_fraction"))):
            mine, theirs = get(c.records[min(c.records)]), get(first.records[min(first.records)])
            if mine != theirs:
                raise UsageError(f"{c.path} has {key} = {mine}, {first.path} {theirs}: their inner-validation "
                                 "parts hold other patients, so their scores cannot choose between them")
        for k in first.records:
            held_a = {(r["patient"], r["source"]) for r in c.cv_rows(k)}
            held_b = {(r["patient"], r["source"]) for r in first.cv_rows(k)}
            if held_a != held_b:
                diff = sorted(held_a ^ held_b)[:3]
                raise UsageError(f"fold {k}: {c.path} and {first.path} scored other held-out images (first: {diff}); "
                                 "were rows skipped (data.skip_bad_rows, data.empty_roi) in one of them?")
    metrics = {c.inner_score(k)[0] for c in cands for k in c.records}
    if len(metrics) != 1:
        raise UsageError(f"the candidates picked their epochs on different metrics {sorted(metrics)}; "
                         "set the same train.monitor in every recipe")
    return sorted(first.records), metrics.pop()


def _fold_metrics(rows: list[dict[str, str]], tasks: dict[str, dict[str, Any]]) -> dict[str, dict]:
    return run_metrics(rows, tasks)["cross_validation"]["pooled"]


def _place(src: Path, dst: Path) -> None:
    """``src`` (checked against its run's manifest) at ``dst``, bound to the new run's manifest."""
    from lnzoo.integrity import bind, read_bytes, replace_atomic

    data = read_bytes(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with bind(dst, data):
        try:
            os.link(src, dst)  # no second copy of the weights where the file system allows
        except OSError:
            replace_atomic(dst, data)


def select_runs(runs: Sequence[Path], out: Path | None = None) -> dict[str, Any]:
    """Choose, per fold, the candidate run with the best inner-validation score; optionally write
    the chosen folds as a run directory ``out``. Returns the selection summary."""
    if len(runs) < 2:
        raise UsageError("a choice needs at least two candidate runs")
    paths = [Path(r).resolve() for r in runs]
    if len(set(paths)) != len(paths):
        raise UsageError("the same run is given twice")
    cands = [_Candidate(p) for p in paths]
    names = [c.name for c in cands]
    if len(set(names)) != len(names):
        names = [str(c.path) for c in cands]
    folds, metric = _check_same(cands)
    main = cands[0].main
    tasks = cands[0].tasks
    per_fold_rows: dict[int, list[dict[str, str]]] = {}
    fold_info, per_fold_metrics, table = [], [], []
    sign = -1.0 if metric == "loss" else 1.0  # the loss is minimised, every other metric maximised
    for k in folds:
        inner = {n: c.inner_score(k)[1] for n, c in zip(names, cands)}
        finite = {n: v for n, v in inner.items() if math.isfinite(v)}
        if not finite:
            raise UsageError(f"fold {k}: no candidate has an inner-validation {metric} (undefined on every "
                             "inner part, e.g. a single class there, or linear-probe runs)")
        best = max(sign * v for v in finite.values())
        tied = [n for n in names if n in finite and sign * finite[n] == best]
        # equal scores (common on a small inner part): the lower inner-validation loss, then the first listed
        winner = min(tied, key=lambda n: (cands[names.index(n)].inner_loss(k), names.index(n)))
        chosen = cands[names.index(winner)]
        per_fold_rows[k] = chosen.cv_rows(k)
        held_out = {n: _fold_metrics(c.cv_rows(k), tasks) for n, c in zip(names, cands)}
        held = {n: {key: m.get(main, {}).get(key) for key in ("auc", "balanced_accuracy")}
                for n, m in held_out.items()}
        metrics = held_out[winner]
        per_fold_metrics.append(metrics)
        fold_info.append({"fold": k, "chosen": winner, "chosen_path": str(chosen.path),
                          "best_epoch": chosen.records[k].best_epoch, "metrics": metrics})
        table.append({"fold": k, "chosen": winner, "inner": inner, "tied": tied if len(tied) > 1 else [],
                      "held_out": held})
    all_rows = [r for k in folds for r in per_fold_rows[k]]
    pooled = _fold_metrics(all_rows, tasks)
    result = jsonable({
        "candidates": [str(c.path) for c in cands], "names": names, "main_task": main, "metric": metric,
        "folds": table,
        "chosen_count": {n: sum(t["chosen"] == n for t in table) for n in names},
        "cross_validation": {"pooled": pooled,
                             "mean_sd": {t: mean_sd([m[t] for m in per_fold_metrics if t in m])
                                         for t in pooled},
                             "folds": fold_info},
        "note": (f"per fold, the candidate with the {'lowest' if metric == 'loss' else 'highest'} inner-validation "
                 f"{metric} (on training patients only; ties: the lower inner-validation loss) "
                 "was chosen; held-out figures of the other candidates are shown but were not used to choose. "
                 "Only cross-validation rows are carried over: predict a test set with lnzoo predict --model "
                 "on the written directory (the chosen fold models, averaged)"),
    })
    if out is not None:
        _write(Path(out), cands, names, folds, table, all_rows, result)
    return result


def _write(out: Path, cands, names, folds, table, rows, result) -> None:
    if any(out.resolve() == c.path for c in cands):
        raise UsageError("--out must not be one of the candidates")
    with RunDir(out, writer=True).writing() as rd:  # a new or empty folder, locked, its status in run.json
        _write_chosen(rd, cands, names, folds, table, rows, result)


def _write_chosen(rd: RunDir, cands, names, folds, table, rows, result) -> None:
    first = cands[0]
    rd.write_folds(first.folds)
    for t in table:
        k, c = t["fold"], cands[names.index(t["chosen"])]
        for f in RunDir.KEPT_FOLD_FILES:
            if (c.rd.fold_dir(k) / f).is_file():
                _place(c.rd.fold_dir(k) / f, rd.fold_dir(k) / f)
    header = list(first.header)
    for c in cands[1:]:  # candidates on other views (full vs roi) add their path columns
        header += [h for h in c.header if h not in header]
    rd.write_predictions(header, rows)
    metrics = {"recipe": "nested choice of " + ", ".join(names), "main_task": result["main_task"],
               "data": first.metrics.get("data"), "folds_run": folds,
               "cross_validation": result["cross_validation"]}
    rd.write_json(RunDir.METRICS, metrics)
    rd.write_json(RunDir.SELECTION, result)


def format_selection(result: dict[str, Any]):
    """A rich table: per fold the inner scores that chose, and every candidate's held-out AUC."""
    from rich.table import Table

    names = result["names"]
    metric = result["metric"]
    tab = Table(title=f"Nested choice on inner-validation {metric} (main task {result['main_task']})")
    tab.add_column("fold", justify="right")
    tab.add_column("chosen")
    for n in names:
        tab.add_column(f"{n}\ninner {metric}", justify="right")
    for n in names:
        tab.add_column(f"{n}\nheld-out AUC*", justify="right")

    for row in result["folds"]:
        chosen = row["chosen"] + (" (tie: lower loss)" if row.get("tied") else "")
        tab.add_row(str(row["fold"]), chosen, *[fmt(row["inner"][n]) for n in names],
                    *[fmt(row["held_out"][n]["auc"]) for n in names])
    ms = result["cross_validation"]["mean_sd"].get(result["main_task"], {})
    pooled = result["cross_validation"]["pooled"].get(result["main_task"], {})
    lines = []
    for key in ("auc", "balanced_accuracy"):
        if key in ms:
            lines.append(f"nested {key}: {fmt(ms[key]['mean'])} ± {fmt(ms[key]['sd'])} over "
                         f"folds, pooled {fmt(pooled.get(key))}")
    note = "* held-out figures are shown for reading only; they did not take part in the choice."
    tab.caption = "\n".join([note, *lines])
    return tab
