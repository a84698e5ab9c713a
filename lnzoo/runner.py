"""``lnzoo run``: recipe -> data -> patient-level folds -> fit -> evaluate -> run directory.

A run directory holds: ``recipe.toml`` (fully resolved), ``folds.csv`` (fold of every patient),
``fold{k}/best.safetensors`` + ``best.json`` and ``last.*`` (checkpoints with sidecars),
``fold{k}/history.csv``, ``predictions.csv`` (one row per image and part), ``metrics.json``.
"""
from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnzoo.data.samples import MISSING, Sample, load_source
from lnzoo.errors import DataError, UsageError
from lnzoo.tasks import Task

PHANTOM_PATIENT_REGEX = r"^(P\d+)_"


@dataclass
class RunData:
    """The samples of a run: the cross-validation pool, the separate test sets, what was skipped."""

    pool: list[Sample]
    test: list[Sample]
    external: list[Sample]
    description: str
    skipped: list[str] = field(default_factory=list)


def recipe_tasks(recipe, host) -> dict[str, Task]:
    tasks = {}
    from lnzoo.tasks import Task

    defined = recipe.data["tasks"]["define"]
    for name in recipe.tasks:
        task = Task.from_dict({"name": name, **defined[name]}) if name in defined else host.get("task", name).build()
        options = {k: v for k, v in recipe.data["tasks"]["options"].get(name, {}).items() if v is not None}
        tasks[name] = task.with_options(**options) if options else task
    return tasks


def _phantom_sources(recipe, tasks, on_phantom) -> tuple[Any, str | None, str]:
    from lnzoo.data.phantom import ensure_phantom

    ph = recipe.data["data"]["phantom"]
    manifest = ensure_phantom(patients=ph["patients"], seed=ph["seed"], difficulty=ph["difficulty"], progress=on_phantom)
    description = f"synthetic phantom ({ph['patients']} patients, seed {ph['seed']}; not clinical data)"
    if ph["source"] != "stage1_lists":
        return str(manifest), None, description
    lists = manifest.parent / "lists"
    train = [{"path": str(lists / "stage1_main.txt"), "task": "malignancy"},
             {"path": str(lists / "stage1_aux.txt"), "task": "enlargement"}]
    train = [t for t in train if t["task"] in tasks]
    if not train:
        raise UsageError("data.phantom.source = \"stage1_lists\" labels malignancy and enlargement; "
                         f"this recipe's tasks are {list(tasks)}: use source = \"manifest\"")
    return train, PHANTOM_PATIENT_REGEX, description


def load_run_data(recipe, tasks: Mapping[str, Task], on_phantom: Callable[[int, int], None] | None = None,
                  check_files_too: bool = True) -> RunData:
    """Read and check the recipe's data (or the built-in phantom when it names none).

    Every problem is collected: bad rows, missing/empty/corrupt images, duplicate rows, identical
    image content under two patients. With ``data.skip_bad_rows`` bad rows and images are left
    out and listed in ``RunData.skipped``; leakage is never skipped.
    """
    from lnzoo.data.checks import check_files, identical_content_across_patients

    data_cfg = {**recipe.data["data"], "main_task": recipe.data["tasks"]["main"]}
    train, regex, description = data_cfg["train"], None, "your data"
    if not train:
        train, regex, description = _phantom_sources(recipe, tasks, on_phantom)
        if data_cfg["phantom"]["external"] and not data_cfg["external"]:
            from lnzoo.data.phantom import ensure_phantom
            ph = data_cfg["phantom"]
            data_cfg["external"] = str(ensure_phantom(patients=max(8, ph["patients"] // 2), seed=ph["seed"] + 7919,
                                                      difficulty=ph["difficulty"]))
            description += "; external set: a second phantom (seed + 7919), like another centre"
    problems: list[str] = []
    parts = {"cross-validation": load_source(train, tasks, data_cfg, regex, problems)}
    for part in ("test", "external"):
        parts[part] = load_source(data_cfg[part], tasks, data_cfg, None, problems) if data_cfg[part] else []
    digests: dict[str, str] = {}
    if check_files_too:
        for part, samples in parts.items():
            bad = check_files(samples, problems, digests)
            parts[part] = [s for i, s in enumerate(samples) if i not in bad]
    grouped: list[str] = []
    if data_cfg["identical_images"] == "group":
        from lnzoo.data.checks import group_identical_patients
        grouped = group_identical_patients(parts["cross-validation"], digests)
    leaks = identical_content_across_patients(parts, digests)
    if problems and not data_cfg["skip_bad_rows"]:
        raise DataError(problems + leaks, "problem(s) in the data (data.skip_bad_rows = true leaves bad rows out)")
    if leaks:
        raise DataError(leaks, "leak(s): the same image under different patients or parts")
    if data_cfg["phantom"]["external"] and not recipe.data["data"]["external"]:
        for smp in parts["external"]:  # the second phantom's patients are other people than the first's
            smp.patient = f"centre2-{smp.patient}"
            smp.center = "phantom-centre-2"
    for part, samples in parts.items():  # rows that label none of this recipe's tasks teach nothing
        parts[part] = [s for s in samples if any(v != MISSING for v in s.labels.values())]
    main = recipe.data["tasks"]["main"]
    if not any(s.labels.get(main, MISSING) != MISSING for s in parts["cross-validation"]):
        raise DataError([f"no training row has a label for the main task {main!r}"])
    if grouped:
        description += f"; {len(grouped)} group(s) of patients with identical images kept together"
    policy = data_cfg["empty_roi"]
    if policy != "error" and "roi" in data_cfg["views"]:
        every = [s for part in parts.values() for s in part]
        n = sum(1 for s in every if "roi" in s.views and (s.views["roi"] is None if policy == "missing"
                                                          else "roi" not in s.rois))
        if n:
            description += (f"; {n} image(s) with an empty mask: their 'roi' view "
                            f"{'is the whole image' if policy == 'whole_image' else 'is missing'} (data.empty_roi)")
    return RunData(parts["cross-validation"], parts["test"], parts["external"], description, problems)


def image_cache_dir() -> Path:
    import os
    return Path(os.environ.get("LNZOO_CACHE") or Path.home() / ".cache" / "lnzoo") / "images"


def fit_temperatures(val_pred, tasks: Mapping[str, Task]) -> dict[str, float | None]:
    """Temperature scaling per task, fitted on the validation part (log-probabilities as logits)."""
    from lnzoo.metrics import fit_temperature

    out: dict[str, float | None] = {}
    for name in tasks:
        y = val_pred.labels(name)
        keep = y != MISSING
        if keep.sum() < 2 or len(np.unique(y[keep])) < 2:
            out[name] = None  # too little validation data to fit
            continue
        out[name] = round(fit_temperature(np.log(np.clip(val_pred.proba[name][keep], 1e-12, 1.0)), y[keep]), 6)
    return out


def add_calibration(metrics: dict, samples: Sequence[Sample], proba: Mapping[str, np.ndarray],
                    temperatures: Mapping[str, float | None]) -> None:
    """Held-out ECE and Brier after the validation-fitted temperature, beside the raw ones."""
    from lnzoo.metrics import apply_temperature, classification_metrics

    for name, m in metrics.items():
        T = temperatures.get(name)
        if T is None:
            continue
        y = np.array([s.labels.get(name, MISSING) for s in samples])
        keep = y != MISSING
        scaled = apply_temperature(np.log(np.clip(proba[name][keep], 1e-12, 1.0)), T)
        cm = classification_metrics(y[keep], scaled, [str(i) for i in range(scaled.shape[1])])
        m["temperature"] = T
        m["ece_temperature_scaled"] = cm["ece"]
        m["brier_temperature_scaled"] = cm["brier"]


def plan_folds(pool: Sequence[Sample], recipe, tasks: Mapping[str, Task]) -> dict[str, int]:
    """Patient -> fold, refusing folds that miss a class of the main task."""
    from lnzoo.data.checks import fold_class_coverage
    from lnzoo.data.splits import patient_folds

    main = recipe.data["tasks"]["main"]
    if recipe.data["cv"]["folds_file"]:
        assignment = read_folds_file(Path(recipe.data["cv"]["folds_file"]), pool, recipe.data["cv"]["folds"], main)
    else:
        assignment = patient_folds(pool, recipe.data["cv"]["folds"], main, recipe.data["seed"])
    problems = fold_class_coverage(pool, assignment, main, tasks[main].classes)
    if problems:
        raise DataError(problems, "problem(s) with the folds")
    return assignment


def read_folds_file(path: Path, pool: Sequence[Sample], folds: int, main: str) -> dict[str, int]:
    """Patient -> fold from a CSV with columns patient,fold (a previous run's folds.csv, a published split).

    Patients merged into one split group (``data.identical_images = "group"``, named "a+b") take
    their members' fold, which must agree. A patient without a main-task label that the file does
    not list is training-only (in the training part of every fold); a labelled one is an error.
    """
    if not path.is_file():
        raise UsageError(f"cv.folds_file: {path} not found")
    given: dict[str, int] = {}
    problems: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"patient", "fold"} <= set(reader.fieldnames):
            raise DataError([f"{path}:1: needs the columns 'patient' and 'fold', found {reader.fieldnames}"])
        for line, row in enumerate(reader, start=2):
            p, f = (row["patient"] or "").strip(), (row["fold"] or "").strip()
            try:
                k = int(f)
            except ValueError:
                problems.append(f"{path}:{line}: fold {f!r} is not an integer")
                continue
            if not 0 <= k < folds:
                problems.append(f"{path}:{line}: fold {k} is outside 0..{folds - 1} (cv.folds = {folds})")
            elif p in given and given[p] != k:
                problems.append(f"{path}:{line}: patient {p!r} is listed in folds {given[p]} and {k}")
            given[p] = k
    assignment: dict[str, int] = {}
    labelled = {s.patient for s in pool if s.labels.get(main, MISSING) != MISSING}
    for patient in sorted({s.patient for s in pool}):
        members = [patient] if patient in given else [m for m in patient.split("+") if m in given]
        ks = {given[m] for m in members}
        if len(ks) > 1:
            problems.append(f"{path}: patients {', '.join(members)} share identical images (one split group) "
                            f"but are listed in folds {sorted(ks)}")
        elif ks:
            assignment[patient] = ks.pop()
        elif patient in labelled:
            problems.append(f"{path}: patient {patient!r} has {main!r} labels but no fold in the file")
        else:
            assignment[patient] = -1  # unlabelled for the main task: training-only, never held out
    if problems:
        raise DataError(problems, "problem(s) with cv.folds_file")
    return assignment


def _class_names(task: Task, idx: int) -> str:
    return "" if idx == MISSING else task.classes[idx]


def task_metrics(samples: Sequence[Sample], proba: Mapping[str, np.ndarray], tasks: Mapping[str, Task]) -> dict[str, dict]:
    """Metrics per task over the samples that carry that task's label."""
    from lnzoo.metrics import classification_metrics

    out = {}
    for name, task in tasks.items():
        y = np.array([s.labels.get(name, MISSING) for s in samples])
        keep = y != MISSING
        if keep.sum() == 0:
            continue
        out[name] = classification_metrics(y[keep], proba[name][keep], list(task.classes), task.positive_index)
    return out


def summarise_folds(per_fold: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and sd over folds of every scalar metric."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for task in per_fold[0] if per_fold else {}:
        keys = [k for k, v in per_fold[0][task].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        summary[task] = {}
        for k in keys:
            vals = np.array([f[task].get(k, np.nan) for f in per_fold if task in f], dtype=float)
            summary[task][k] = {"mean": float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan"),
                                "sd": float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else 0.0}
    return summary


def write_predictions(path: Path, rows: list[tuple[str, int | None, Sample, dict[str, np.ndarray]]],
                      tasks: Mapping[str, Task], views: Sequence[str]) -> None:
    """One row per image and part: where it came from, its true labels, every class probability."""
    header = ["part", "fold", *[f"path_{v}" if v != "full" else "path" for v in views], "views_used", "patient",
              "center", "source"]
    for name, task in tasks.items():
        header.append(f"{name}_true")
        header += [f"p_{name}_{c}" for c in task.classes]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for part, fold, s, proba in rows:
            row: list[Any] = [part, "" if fold is None else fold,
                              *[str(s.views.get(v) or "") for v in views],
                              "+".join(v for v in views if s.views.get(v) is not None), s.patient, s.center or "",
                              s.origin]
            for name, task in tasks.items():
                row.append(_class_names(task, s.labels.get(name, MISSING)))
                row += [f"{p:.6f}" for p in proba[name]]
            w.writerow(row)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else round(float(obj), 6)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def run_recipe(recipe, host, out_dir: Path, console=None) -> dict[str, Any]:
    """Train and evaluate every fold the recipe asks for; write the run directory; return metrics."""
    import torch

    from lnzoo.checkpoint import environment, save_checkpoint
    from lnzoo.data.dataset import ImageCache
    from lnzoo.data.images import Preprocessing
    from lnzoo.data.splits import check_leakage, inner_validation
    from lnzoo.train import Trainer
    from lnzoo.ui import RunProgress

    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.glob("fold*/best.safetensors")):
        raise UsageError(f"{out_dir} already holds a run; pick another --out or remove it")
    (out_dir / "recipe.toml").write_text(recipe.to_toml(), encoding="utf-8")
    cfg = recipe.data
    if cfg["train"]["threads"]:
        torch.set_num_threads(cfg["train"]["threads"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    tasks = recipe_tasks(recipe, host)
    main = cfg["tasks"]["main"]
    ui = RunProgress(console)
    with ui:
        data = load_run_data(recipe, tasks, on_phantom=ui.phantom)
        if data.skipped:
            ui.console.print(f"[yellow]skipped {len(data.skipped)} bad row(s)/image(s)[/] (data.skip_bad_rows); "
                             f"first: {data.skipped[0]}")
        check_leakage({"cross-validation": data.pool, "test": data.test, "external": data.external})
        pre = Preprocessing(cfg["data"]["image_size"], cfg["data"]["resize"], cfg["data"]["normalize"],
                            cfg["data"]["roi_margin"])
        cache = ImageCache(pre, disk_dir=image_cache_dir() if cfg["data"]["cache"] == "disk" else None,
                           keep=cfg["data"]["cache"] != "none")
        if cfg["data"]["cache"] != "none":
            cache.preload([*data.pool, *data.test, *data.external], progress=ui.decode)
        assignment = plan_folds(data.pool, recipe, tasks)
        with (out_dir / "folds.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["patient", "fold"])
            for p, k in sorted(assignment.items()):
                w.writerow([p, k])
        folds = list(range(cfg["cv"]["folds"])) if cfg["cv"]["run_folds"] == "all" else list(cfg["cv"]["run_folds"])
        trainer = Trainer(recipe, host, tasks, cache, progress=ui.train)
        env = environment(host)
        pred_rows: list[tuple[str, int | None, Sample, dict[str, np.ndarray]]] = []
        per_fold, fold_info, oof_samples, oof_proba = [], [], [], {t: [] for t in tasks}
        test_proba = {part: {t: [] for t in tasks} for part in ("test", "external")}
        for k in folds:
            held = [s for s in data.pool if assignment[s.patient] == k]
            rest = [s for s in data.pool if assignment[s.patient] != k]
            tr_idx, va_idx = inner_validation(rest, cfg["train"]["val_fraction"], main, cfg["seed"] + k)
            train_s, val_s = [rest[i] for i in tr_idx], [rest[i] for i in va_idx]
            check_leakage({"train": train_s, "validation": val_s, "held-out fold": held})
            ui.start_fold(k, len(folds), len(train_s), len(val_s), len(held), cfg["train"]["keep"])
            result = trainer.fit(train_s, val_s, seed=cfg["seed"] + k, fold=k)
            model = result.model
            temperatures = fit_temperatures(trainer.predict(model, val_s), tasks)
            meta = {"recipe": cfg, "recipe_source": str(recipe.source) if recipe.source else None,
                    "tasks": {n: t.as_dict() for n, t in tasks.items()},
                    "class_maps": {n: {str(i): c for i, c in enumerate(t.classes)} for n, t in tasks.items()},
                    "preprocessing": pre.as_dict(), "views": cfg["data"]["views"], "seed": cfg["seed"] + k,
                    "fold": k, "best_epoch": result.best_epoch,
                    # the metric that picked the epoch, on the inner-validation part (NaN: undefined there,
                    # e.g. one class only, and the loss picked instead); lnzoo select chooses on it
                    "monitor": {cfg["train"]["monitor"]: result.best_value},
                    "monitor_val_loss": next((h.get("val_loss") for h in result.history
                                              if h.get("epoch") == result.best_epoch), None),
                    "temperature": temperatures, "init_from": trainer.init_report,
                    "covariates": trainer.covariates.as_dict() if trainer.covariates else None, **env}
            fold_dir = out_dir / f"fold{k}"
            save_checkpoint(model, fold_dir / "best", meta)
            save_checkpoint(trainer.last_state, fold_dir / "last", {**meta, "epoch": len(result.history), "kind": "last"})
            _write_history(fold_dir / "history.csv", result.history)
            pred = trainer.predict(model, held)
            metrics = task_metrics(held, pred.proba, tasks)
            add_calibration(metrics, held, pred.proba, temperatures)
            per_fold.append(metrics)
            fold_info.append({"fold": k, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                              "n_train": len(train_s), "n_validation": len(val_s), "n_held_out": len(held),
                              "metrics": metrics})
            oof_samples += held
            for t in tasks:
                oof_proba[t].append(pred.proba[t])
            for i, s in enumerate(held):
                pred_rows.append(("cv", k, s, {t: pred.proba[t][i] for t in tasks}))
            for part, samples in (("test", data.test), ("external", data.external)):
                if samples:
                    p = trainer.predict(model, samples)
                    for t in tasks:
                        test_proba[part][t].append(p.proba[t])
            ui.end_fold(k, metrics.get(main, {}))
        pooled = {t: np.concatenate(v) for t, v in oof_proba.items()}
        metrics_out: dict[str, Any] = {
            "recipe": recipe.name, "main_task": main, "data": data.description,
            "folds_run": folds,
            "cross_validation": {"pooled": task_metrics(oof_samples, pooled, tasks),
                                 "mean_sd": summarise_folds(per_fold), "folds": fold_info},
        }
        for part, samples in (("test", data.test), ("external", data.external)):
            if samples:
                ens = {t: np.mean(np.stack(v), axis=0) for t, v in test_proba[part].items()}
                metrics_out[part] = task_metrics(samples, ens, tasks)
                metrics_out[f"{part}_note"] = f"mean probability of the {len(folds)} fold model(s)"
                for i, s in enumerate(samples):
                    pred_rows.append((part, None, s, {t: ens[t][i] for t in tasks}))
        write_predictions(out_dir / "predictions.csv", pred_rows, tasks, cfg["data"]["views"])
        metrics_out = _jsonable(metrics_out)
        (out_dir / "metrics.json").write_text(json.dumps(metrics_out, indent=2, ensure_ascii=False), encoding="utf-8")
        (out_dir / "run.json").write_text(json.dumps({
            "wall_seconds": round(time.perf_counter() - t_start, 1), "device": str(trainer.device),
            "quick": recipe.quick, "overrides": recipe.overrides, **env}, indent=2), encoding="utf-8")
    return metrics_out


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    if not history:
        return
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(history[0]))
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
