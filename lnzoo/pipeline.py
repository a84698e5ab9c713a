"""``lnzoo.run``: everything ``lnzoo run`` does, as one library call that emits typed events.

recipe -> data -> patient-level folds -> fit each fold -> calibration -> predictions -> metrics ->
Grad-CAM examples -> report, all written through :class:`lnzoo.rundir.RunDir`. The CLI is one
caller of :func:`run`; a script or notebook is another, and gets the same run directory.
"""
from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnzoo import events
from lnzoo.data.samples import MISSING, Sample
from lnzoo.errors import UsageError
from lnzoo.rundir import RunDir
from lnzoo.tasks import Task

__all__ = ["run", "RunResult", "fit_folds", "default_out", "prepare_run", "fit_fold_job"]


@dataclass
class RunResult:
    """What a run produced: its directory, its metrics (metrics.json), its report and Grad-CAM examples."""

    out: Path
    metrics: dict[str, Any]
    report: Path | None = None
    examples: list[Path] = field(default_factory=list)
    wall_seconds: float = 0.0


def default_out(recipe) -> Path:
    """``runs/<name>[-quick]-<time>``."""
    return Path("runs") / f"{recipe.name}{'-quick' if recipe.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(recipe, out: str | Path | None = None, on_event: Callable[[Any], None] | None = None, *,
        quick: bool = False, sets: Sequence[str] | None = None, host=None, report: bool = True,
        n_boot: int | None = None, resume: bool = False) -> RunResult:
    """Train and evaluate a recipe (a path or a loaded :class:`lnzoo.recipe.Recipe`) into the run directory
    ``out`` (default :func:`default_out`): every fold, calibration, predictions, metrics, the Grad-CAM
    examples and the HTML report. ``on_event`` receives the :mod:`lnzoo.events` as the run goes.

    ``resume=True`` continues the interrupted run in ``out`` with the recipe it started with (pass
    ``recipe=None``): finished folds are kept, the unfinished one goes on after its last finished epoch."""
    from lnzoo.recipe import Recipe, load_recipe

    if host is None:
        from lnzoo.plugins import get_host
        host = get_host()
    if resume:
        if out is None:
            raise UsageError("resume: give the run directory to continue")
        recipe = recipe if isinstance(recipe, Recipe) else resumed_recipe(RunDir(out), host)
    elif not isinstance(recipe, Recipe):
        recipe = load_recipe(Path(recipe), sets=list(sets or []), quick=quick, host=host)
    emit = on_event or (lambda event: None)
    out = Path(out) if out is not None else default_out(recipe)
    t0 = time.perf_counter()
    metrics = fit_folds(recipe, host, out, emit, resume=resume)
    from lnzoo.train import distributed
    if distributed.world().active:
        distributed.stop()  # every collective is done
        if not distributed.world().writer:  # beside rank 0, which writes the examples and the report
            return RunResult(out, metrics, None, [], round(time.perf_counter() - t0, 1))
    examples: list[Path] = []
    try:
        from lnzoo.explain import explain_examples
        examples = explain_examples(out, host=host)
    except Exception as exc:  # noqa: BLE001 - the run itself is done; its report must still be written
        emit(events.Note(f"Grad-CAM examples for the report failed ({type(exc).__name__}: {exc})", "warning"))
    report_path = None
    if report:
        from lnzoo.report import write_report
        report_path = write_report(out, **({"n_boot": n_boot} if n_boot is not None else {}))
    result = RunResult(out, metrics, report_path, examples, round(time.perf_counter() - t0, 1))
    emit(events.RunEnded(str(out), metrics, str(report_path) if report_path else None))
    return result


def resumed_recipe(rd: RunDir, host):
    """The resolved recipe an interrupted run started with, as it stored it."""
    from lnzoo.recipe import resolve

    raw = rd.read_recipe()
    if not raw:
        raise UsageError(f"--resume {rd}: no readable recipe.toml; it is not an lnzoo run directory")
    info = rd.read_json(rd.RUN)
    recipe = resolve(raw, host=host, source=info.get("recipe_source") or rd / rd.RECIPE)
    recipe.quick, recipe.overrides = bool(info.get("quick")), list(info.get("overrides") or [])
    return recipe


def fit_temperatures(val_pred, tasks: Mapping[str, Task]) -> dict[str, float | None]:
    """Temperature scaling per task, fitted on the validation part (None where it has too little data)."""
    from lnzoo.decision import fit_temperature

    out: dict[str, float | None] = {}
    for name in tasks:
        y = val_pred.labels(name)
        keep = y != MISSING
        out[name] = fit_temperature(val_pred.proba[name][keep], y[keep])
    return out


def calibrated_proba(proba: Mapping[str, np.ndarray], temperatures: Mapping[str, float | None]
                     ) -> dict[str, np.ndarray]:
    """One model's probabilities per task as served (its temperatures applied)."""
    from lnzoo.decision import calibrate

    return {t: calibrate(p, temperatures.get(t)) for t, p in proba.items()}


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


def what_ran(recipe, folds: Sequence[int], epochs_run: Mapping[int, int]) -> dict[str, Any]:
    """What was actually trained (a quick profile or --set changes it from the recipe's description)."""
    cfg = recipe.config
    bb = cfg.model.backbone
    probe = cfg.train.method == "linear_probe"
    return {"backbone": " ".join(str(bb[k]) for k in ("name", "model_name") if bb.get(k)),
            "image_size": cfg.data.image_size, "views": list(cfg.data.views),
            "epochs": "linear probe" if probe else cfg.train.epochs,
            "epochs_run": {str(k): v for k, v in epochs_run.items()}, "folds": cfg.cv.folds,
            "folds_run": list(folds), "quick": recipe.quick}


def data_digest(data) -> str:
    """A fingerprint of the run's rows: images, patients, labels, parts and the cells the inputs read (covariates,
    reports, mask paths) (``--resume`` checks it; an edit to a column no input reads changes nothing)."""
    import hashlib

    read = sorted({c for kind, _ in data.inputs.values() for c in (getattr(kind, "columns", None) or [kind.column])})
    h = hashlib.sha256()
    for part, samples in (("cv", data.pool), ("test", data.test), ("external", data.external)):
        for s in samples:
            cells = [(c, s.cells.get(c)) for c in read]
            h.update(f"{part}|{s.key}|{s.patient}|{sorted(s.labels.items())}|{cells}\n".encode("utf-8"))
    return h.hexdigest()


def small_validation(val: Sequence[Sample], task: Task, min_images: int = 30, min_per_class: int = 5) -> str | None:
    """Why the inner validation part is too small to choose an epoch on, or None."""
    counts = {c: 0 for c in task.classes}
    for s in val:
        label = s.labels.get(task.name, MISSING)
        if label != MISSING:
            counts[task.classes[label]] += 1
    few = [f"{c} {n}" for c, n in counts.items() if n < min_per_class]
    if len(val) >= min_images and not few:
        return None
    return (f"the inner validation part has {len(val)} image(s)" + (f" ({', '.join(few)})" if few else "")
            + f"; under {min_images} images or {min_per_class} of a class, its choice of epoch is mostly noise. "
            "Raise train.val_fraction, add data, or set train.keep = \"last\"")


def fit_folds(recipe, host, out_dir: Path, emit: Callable[[Any], None] | None = None,
              resume: bool = False) -> dict[str, Any]:
    """Train and evaluate every fold the recipe asks for; write the run directory (holding its lock, its
    status in run.json); return metrics.json. ``resume`` continues an interrupted run in ``out_dir``:
    finished folds are kept, the unfinished one continues after its last finished epoch."""
    from lnzoo.train.distributed import world

    emit = emit or (lambda event: None)
    w = world()
    if w.active:  # torchrun started several processes: rank 0 writes the run, the others train beside it
        from lnzoo.train.distributed import per_rank_batch
        per_rank_batch(recipe.config.data.batch_size, w)  # refused before anything is written
        if resume:
            raise UsageError("--resume continues a run in one process; resuming across torchrun processes is not "
                             "supported yet")
        if not w.writer:
            return _fit_beside_rank0(recipe, host, w.rank)
    with RunDir(out_dir, writer=True).writing(resume=resume) as rd:
        return _fit_folds(recipe, host, rd, emit, resume)


def _fit_beside_rank0(recipe, host, rank: int) -> dict[str, Any]:
    """A torchrun process other than rank 0: the same folds, every step beside rank 0, its files in a private
    temporary folder removed at the end (the run directory has one writer)."""
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix=f"lnzoo-rank{rank}-"))
    try:
        with RunDir(scratch, writer=True).writing(done=None) as rd:
            return _fit_folds(recipe, host, rd, lambda event: None, resume=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class _Prepared:
    """A run directory made ready to fit its folds: the data, the image cache, the fold assignment, the trainer."""

    recipe: Any
    host: Any
    tasks: dict[str, Task]
    tasks_meta: dict[str, dict[str, Any]]
    data: Any
    cache: Any
    assignment: dict[str, int]
    folds: list[int]
    env: dict[str, Any]
    others: dict[str, list[Sample]]
    emit: Callable[[Any], None]

    @functools.cached_property
    def trainer(self):
        """Built when a fold is fitted here: preparing a sweep or gathering its folds needs no device."""
        from lnzoo.train import Trainer
        return Trainer(self.recipe, self.host, self.tasks, self.cache, on_event=self.emit,
                       inputs=self.data.inputs)

    def fit_fold(self, k: int, rd: RunDir, emit: Callable[[Any], None]):
        return _fit_fold(k, len(self.folds), self.recipe, self.tasks, self.tasks_meta, self.data.pool,
                         self.assignment, self.trainer, rd, self.others,
                         {**self.env, "preprocessing": self.cache.pre.as_dict()}, emit)


def _prepare(recipe, host, rd: RunDir, emit: Callable[[Any], None], resume: bool) -> _Prepared:
    """Load and check the data and fix the fold assignment: a new run writes its recipe, data digest and folds;
    a resumed one (or a fold job of lnzoo sweep) reads them and refuses data that changed."""
    import torch

    from lnzoo.checkpoint import environment
    from lnzoo.data.run_data import plan_folds, recipe_tasks
    from lnzoo.train.schedule import set_deterministic

    if not resume:
        rd.write_recipe(recipe.to_toml())
        rd.update_run(recipe_source=str(recipe.source) if recipe.source else None, quick=recipe.quick,
                      overrides=recipe.overrides)
    for line in host.overrides:  # a replaced built-in changes what the recipe means: say so in every run's log
        emit(events.Note(f"plugin override: {line}", "warning"))
    cfg = recipe.config
    from lnzoo.inference import cpu_threads
    threads, why = cpu_threads(cfg.train.threads)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    emit(events.Note(f"torch CPU threads: {threads} ({why})"))
    set_deterministic()
    tasks = recipe_tasks(recipe, host)
    data, cache = _load_data(recipe, tasks, emit, host)
    digest = data_digest(data)
    resume = resume and rd.read_json(rd.RUN).get("data_sha256") is not None  # stopped before its folds: anew
    if resume:  # the same data, split the same way, or the finished folds would not belong to this run
        if rd.read_json(rd.RUN).get("data_sha256") != digest:
            raise UsageError(f"--resume {rd}: the data differ from those the run started on (rows, images or "
                             "labels changed); start a new run instead")
        assignment = rd.read_folds()
    else:
        assignment = plan_folds(data.pool, recipe, tasks)
        rd.write_folds(assignment)
        from lnzoo.inputs import feature_effects
        effects = feature_effects(data.inputs, data.pool, tasks[cfg.tasks.main])
        if effects:
            rd.write_json(rd.INPUTS, effects)
        rd.update_run(data_sha256=digest)
    folds = list(range(cfg.cv.folds)) if cfg.cv.run_folds == "all" else list(cfg.cv.run_folds)
    others = {part: samples for part, samples in (("test", data.test), ("external", data.external)) if samples}
    return _Prepared(recipe, host, tasks, {n: t.as_dict() for n, t in tasks.items()}, data, cache, assignment, folds,
                     environment(host), others, emit)


def _fit_folds(recipe, host, rd: RunDir, emit: Callable[[Any], None], resume: bool) -> dict[str, Any]:
    from lnzoo.evaluation.evaluate import run_metrics
    from lnzoo.rundir import prediction_header, prediction_row

    t_start = time.perf_counter()
    prep = _prepare(recipe, host, rd, emit, resume)
    cfg, tasks, folds, others = recipe.config, prep.tasks, prep.folds, prep.others
    views = list(cfg.data.views)
    pred_rows: list[dict[str, str]] = []
    fold_info = []
    other_proba: dict[str, list[dict[str, np.ndarray]]] = {part: [] for part in others}
    other_cal: dict[str, list[dict[str, np.ndarray]]] = {part: [] for part in others}
    for k in folds:
        done = rd.read_fold_result(k) if resume else None
        if done is not None:
            emit(events.Note(f"fold {k}: already fitted (fold{k}/result.json), kept as it was"))
            rows, info = _with_calibration(rd, k, done["rows"], done["info"], tasks)
            proba = {p: {t: np.asarray(v) for t, v in d.items()} for p, d in done["proba"].items()}
        else:
            rows, info, proba = prep.fit_fold(k, rd, emit)
        pred_rows += rows
        fold_info.append(info)
        for part, p in proba.items():
            other_proba[part].append(p)
            other_cal[part].append(calibrated_proba(p, info.get("temperature") or {}))
    for part, samples in others.items():  # test and external sets: the mean probability of the fold models,
        # raw and as served (each fold model's calibrated probabilities averaged, as lnzoo predict does)
        ens = {t: np.mean([p[t] for p in other_proba[part]], axis=0) for t in tasks}
        cal = {t: np.mean([p[t] for p in other_cal[part]], axis=0) for t in tasks}
        pred_rows += [prediction_row(part, None, s, {t: ens[t][i] for t in tasks}, tasks, views,
                                     {t: cal[t][i] for t in tasks}) for i, s in enumerate(samples)]
    rd.write_predictions(prediction_header(tasks, views), pred_rows)
    figures = run_metrics(pred_rows, prep.tasks_meta)
    cv = figures.pop("cross_validation")
    rd.write_json(rd.METRICS, {
        "recipe": recipe.name, "main_task": cfg.tasks.main, "data": prep.data.description, "folds_run": folds,
        "cross_validation": {"pooled": cv["pooled"], "mean_sd": cv["mean_sd"], "folds": fold_info}, **figures,
        **{f"{part}_note": f"mean probability of the {len(folds)} fold model(s)" for part in others}})
    trained = "trainer" in prep.__dict__  # a fold was fitted in this process (not a sweep's gathering)
    w = prep.trainer.world if trained else None
    if w is not None and w.active:
        rd.update_run(distributed={"processes": w.size, "backend": "nccl" if prep.trainer.device.type == "cuda"
                                   else "gloo", "per_process_batch": cfg.data.batch_size // w.size,
                                   "sync_bn": cfg.train.sync_bn})
    if trained:
        rd.update_run(device=str(prep.trainer.device))
    rd.update_run(wall_seconds=round(time.perf_counter() - t_start, 1),
                  ran=what_ran(recipe, folds, {f["fold"]: f["epochs_run"] for f in fold_info}),
                  plugin_overrides=host.overrides, **prep.env)
    return rd.metrics()


# -- a run's folds as separate jobs (lnzoo sweep) ------------------------------------------------------------------
def prepare_run(recipe, host, out_dir: Path, emit: Callable[[Any], None] | None = None, sweep: str = "") -> list[int]:
    """Make a new run directory ready for its folds to be fitted as separate jobs (:func:`fit_fold_job`): the
    recipe, the data digest and the fold assignment, status "sweeping"; returns the folds to fit. The run is
    finished by :func:`run` with ``resume=True`` once every fold has its result."""
    emit = emit or (lambda event: None)
    with RunDir(out_dir, writer=True).writing(done="sweeping") as rd:
        folds = _prepare(recipe, host, rd, emit, resume=False).folds
        rd.update_run(sweep=sweep)
    return folds


class FoldBusy(UsageError):
    """Another job holds this fold's lock: a duplicate submission, not a failure of the fold."""


def fit_fold_job(out_dir: Path, k: int, host=None, emit: Callable[[Any], None] | None = None) -> bool:
    """Fit fold ``k`` of a run directory :func:`prepare_run` made (one job of lnzoo sweep): its checkpoints,
    curves and ``fold{k}/result.json``, nothing else of the run, so the folds of one run can fit at the same
    time in separate processes or on separate machines. A fold that already has its result is left as it is
    (False); an interrupted one continues after its last saved epoch."""
    from filelock import FileLock, Timeout

    if host is None:
        from lnzoo.plugins import get_host
        host = get_host()
    emit = emit or (lambda event: None)
    rd = RunDir(out_dir, writer=True)
    if rd.status() != "sweeping":
        raise UsageError(f"{rd}: not a run prepared for lnzoo sweep (its status is {rd.status()!r})")
    if rd.read_fold_result(k) is not None:
        return False
    rd.fold_dir(k).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(rd.fold_dir(k) / ".lock"), is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FoldBusy(f"{rd}: fold {k} is being fitted by another job") from None
    try:
        if rd.read_fold_result(k) is not None:  # finished by the job that held the lock a moment ago
            return False
        recipe = resumed_recipe(rd, host)
        prep = _prepare(recipe, host, rd, emit, resume=True)
        if k not in prep.folds:
            raise UsageError(f"{rd}: fold {k} is not one of the run's folds {prep.folds}")
        prep.fit_fold(k, rd, emit)
    finally:
        lock.release()
        with contextlib.suppress(OSError):  # the fold then holds what lnzoo run writes there, nothing more
            (rd.fold_dir(k) / ".lock").unlink()
    return True


def _load_data(recipe, tasks, emit, host=None):
    """The recipe's checked samples, and the image cache that decodes them once."""
    from lnzoo.data.dataset import ImageCache
    from lnzoo.data.images import Preprocessing
    from lnzoo.data.run_data import load_run_data
    from lnzoo.files import cache_root

    d = recipe.config.data
    data = load_run_data(recipe, tasks, on_phantom=lambda done, total: emit(events.Progress("phantom", done, total)),
                         host=host)
    if data.skipped:
        emit(events.Note(f"skipped {len(data.skipped)} bad row(s)/image(s) (data.skip_bad_rows); "
                         f"first: {data.skipped[0]}", "warning"))
    cache = ImageCache(Preprocessing(d.image_size, d.resize, d.normalize, d.roi_margin),
                       disk_dir=cache_root("images") if d.cache == "disk" else None, keep=d.cache != "none")
    if d.cache != "none":
        cache.preload([*data.pool, *data.test, *data.external],
                      progress=lambda done, total: emit(events.Progress("decode", done, total)))
    return data, cache


def _fit_fold(k, n_folds, recipe, tasks, tasks_meta, pool, assignment, trainer, rd: RunDir, others, env, emit):
    """Fit fold k, save its checkpoints and curves; return its prediction rows, its metrics.json entry and
    its probabilities on the test and external sets."""
    from lnzoo.data.splits import check_leakage, inner_validation
    from lnzoo.evaluation.evaluate import run_metrics
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
    cal = calibrated_proba(pred.proba, temperatures)
    rows = [prediction_row("cv", k, s, {t: pred.proba[t][i] for t in tasks}, tasks, list(cfg.data.views),
                           {t: cal[t][i] for t in tasks}) for i, s in enumerate(held)]
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
