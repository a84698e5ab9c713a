"""A run's folds in one process (or beside torchrun's rank 0): prepare the data and folds, fit each, write the
run's predictions and metrics."""
from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lnzoo import events
from lnzoo.data.samples import Sample
from lnzoo.errors import UsageError
from lnzoo.rundir import RunDir
from lnzoo.data.run_data import data_digest
from lnzoo.decision import calibrate_tasks
from lnzoo.pipeline.fold import _fit_fold, _with_calibration, kept_fold_events
from lnzoo.tasks import Task


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
    from lnzoo.record import component_providers
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
                     {**environment(host), "components": component_providers(recipe, host)}, others, emit)


def _fit_folds(recipe, host, rd: RunDir, emit: Callable[[Any], None], resume: bool) -> dict[str, Any]:
    from lnzoo.evaluation.evaluate import run_metrics
    from lnzoo.evaluation.subgroups import row_groups
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
            emit(events.FoldKept(k, functools.partial(kept_fold_events, rd, k, info, recipe)))
            proba = {p: {t: np.asarray(v) for t, v in d.items()} for p, d in done["proba"].items()}
        else:
            rows, info, proba = prep.fit_fold(k, rd, emit)
        pred_rows += rows
        fold_info.append(info)
        for part, p in proba.items():
            other_proba[part].append(p)
            other_cal[part].append(calibrate_tasks(p, info.get("temperature") or {}))
    for part, samples in others.items():  # test and external sets: the mean probability of the fold models,
        # raw and as served (each fold model's calibrated probabilities averaged, as lnzoo predict does)
        ens = {t: np.mean([p[t] for p in other_proba[part]], axis=0) for t in tasks}
        cal = {t: np.mean([p[t] for p in other_cal[part]], axis=0) for t in tasks}
        pred_rows += [prediction_row(part, None, s, {t: ens[t][i] for t in tasks}, tasks, views,
                                     {t: cal[t][i] for t in tasks}, row_groups(s, cfg.data))
                      for i, s in enumerate(samples)]
    rd.write_predictions(prediction_header(tasks, views, cfg.data.subgroups), pred_rows)
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


def _load_data(recipe, tasks, emit, host):
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
    cache = ImageCache(Preprocessing.of(d),
                       disk_dir=cache_root("images") if d.cache == "disk" else None, keep=d.cache != "none")
    if d.cache != "none":
        cache.preload([*data.pool, *data.test, *data.external],
                      progress=lambda done, total: emit(events.Progress("decode", done, total)))
    return data, cache


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
