"""A trained model outside its run directory: the portable bundle, and what a model says about itself.

::

    MODEL_DIR/
      config.json                 tasks (classes, aliases, positive class), views, preprocessing, ROI margin and
                                  empty_roi, covariate encoder, TTA, temperatures, operating thresholds,
                                  cross-validated metrics, lnzoo/torch/timm versions, the plugins it needs
      MODEL_CARD.md               intended use, data, metrics with 95% CIs, calibration, limits, licence
      models/fold{k}.safetensors  each fold model's weights ...
      models/fold{k}.json         ... and its sidecar, exactly as the run wrote them (checksums and all)
      models/fold{k}.onnx         with --onnx: the same model for ONNX Runtime

Every command that takes a run directory takes a bundle: :func:`checkpoints_of` finds
its models, and :func:`model_info` reads what a server or a person needs to know about it.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from lnzoo.decision import argmax_point
from lnzoo.errors import UsageError
from lnzoo.rundir import RunDir

CONFIG, CARD, MODELS = "config.json", "MODEL_CARD.md", "models"
BUNDLE_FORMAT = 1


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file() and (Path(path) / MODELS).is_dir()


def bundle_checkpoints(path: str | Path) -> list[Path]:
    """The fold models of a bundle, in fold order; refuses one whose plugins are not installed."""
    config = read_config(path)
    require_plugins(config, Path(path))
    found = [Path(path) / MODELS / m["weights"] for m in config["models"]]
    missing = [str(p) for p in found if not p.is_file()]
    if missing:
        raise UsageError(f"{path}: the bundle lacks {', '.join(missing)} that its config.json lists")
    from lnzoo.record import ModelRecord

    for weights in found:  # config.json's calls and thresholds must describe these very models
        tasks = ModelRecord.read(weights).tasks
        for name, task in config["tasks"].items():
            got = tasks.get(name)
            classes, positive = (list(got.classes), got.positive) if got is not None else (None, None)
            if classes != list(task["classes"]) or positive != task.get("positive"):
                raise UsageError(f"{Path(path) / CONFIG}: task {name!r} ({task['classes']}, positive "
                                 f"{task.get('positive')!r}) differs from {weights.with_suffix('.json')} "
                                 f"({classes}, positive {positive!r}); the config was edited or belongs to another "
                                 "bundle")
    return found


def checked_onnx(weights: Path) -> tuple[Path, bytes]:
    """The .onnx beside a checkpoint and its bytes, checked against the manifest of its bundle or run."""
    from lnzoo.integrity import read_bytes

    onnx_file = weights.with_suffix(".onnx")
    if not onnx_file.is_file():
        raise UsageError(f"{weights}: no {onnx_file.name} beside it; export with lnzoo export RUN --onnx")
    return onnx_file, read_bytes(onnx_file)


def read_config(path: str | Path) -> dict[str, Any]:
    from lnzoo.integrity import read_text

    file = Path(path) / CONFIG
    try:
        config = json.loads(read_text(file))
    except ValueError as exc:
        raise UsageError(f"{file}: not a readable bundle config ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != "lnzoo-bundle" or not config.get("models"):
        raise UsageError(f"{file}: not an lnzoo bundle config (format 'lnzoo-bundle' with a models list expected)")
    problems = _config_problems(config)
    if problems:
        raise UsageError(f"{file}: not the bundle config lnzoo export writes: {'; '.join(problems)}. Export the "
                         "bundle again")
    return config


def _config_problems(config: Mapping[str, Any]) -> list[str]:
    """What in a config.json is not of the shape its readers (predict, serve, explain, the card) take."""
    def strings(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    problems = []
    models, tasks = config.get("models"), config.get("tasks")
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("weights"), str)
                                               and isinstance(m.get("fold"), int) for m in models):
        problems.append("'models' is not a list of {fold, weights, sidecar}")
    if not isinstance(tasks, dict) or not tasks or not all(
            isinstance(t, dict) and strings(t.get("classes")) and len(t["classes"]) >= 2
            and t.get("positive") in (None, *t["classes"]) for t in tasks.values()):
        problems.append("'tasks' is not a table of tasks, each with its classes (and positive class among them)")
    for key, kind in (("thresholds", dict), ("temperatures", dict), ("preprocessing", dict), ("metrics", dict),
                      ("views", list), ("inputs", list)):
        if key in config and not isinstance(config[key], kind):
            problems.append(f"{key!r} is not a {'table' if kind is dict else 'list'}")
    if isinstance(config.get("thresholds"), dict) and not all(isinstance(v, dict)
                                                               for v in config["thresholds"].values()):
        problems.append("'thresholds' is not a table of operating points")
    if isinstance(config.get("views"), list) and not strings(config["views"]):
        problems.append("'views' is not a list of view names")
    return problems


def require_plugins(config: Mapping[str, Any], where: Path) -> None:
    """Every distribution that provides a component of the model must be installed (each model's record is checked
    in full when it is loaded: :meth:`lnzoo.record.ModelRecord.require_components`)."""
    plugins = config.get("plugins", {})
    if not isinstance(plugins, Mapping) or not all(
            isinstance(d, str) and isinstance(i, Mapping) and isinstance(i.get("provides"), list)
            for d, i in plugins.items()):
        raise UsageError(f"{where / CONFIG}: its 'plugins' entry is not the {{distribution: {{version, provides}}}} "
                         "table lnzoo export writes; the config was edited. Export the bundle again")
    missing = []
    for dist, info in plugins.items():
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            missing.append((dist, f"{dist} (it provides {', '.join(map(str, info['provides']))}; exported with "
                                  f"{info.get('version')})"))
    if missing:
        raise UsageError(f"{where}: this model needs the plugin distribution(s) {'; '.join(m for _, m in missing)}. "
                         f"Install them, e.g. pip install {' '.join(d for d, _ in missing)}")


def checkpoints_of(path: str | Path) -> list[Path]:
    """A .safetensors file is itself; a run directory gives every fold's best checkpoint, a bundle its models."""
    path = Path(path)
    if is_bundle(path):
        return bundle_checkpoints(path)
    if path.is_dir():
        return RunDir(path).checkpoints()
    if path.suffix != ".safetensors" or not path.is_file():
        raise UsageError(f"{path}: expected a run directory, a model bundle (lnzoo export) or a .safetensors "
                         "checkpoint")
    return [path]


# -- what a model says about itself -------------------------------------------------------------------------------
def model_info(path: str | Path) -> dict[str, Any]:
    """Tasks, classes, views, calibration, operating thresholds and cross-validated metrics of a run directory,
    a bundle or one checkpoint: what ``lnzoo serve`` shows and a bundle's config.json holds."""
    path = Path(path)
    if is_bundle(path):
        return {k: v for k, v in read_config(path).items() if k not in ("models", "format", "format_version")}
    from lnzoo.record import ModelRecord

    records = [ModelRecord.read(c) for c in checkpoints_of(path)]
    first = records[0]
    signature = first.signature
    info: dict[str, Any] = {
        "name": first.name, "description": first.description, "main_task": first.main,
        "tasks": {n: {"classes": list(t.classes), "positive": t.positive,
                      "aliases": {c: list(a) for c, a in t.aliases.items()}, "passes_on": t.passes_on}
                  for n, t in first.tasks.items()},
        "views": list(signature.views),
        "preprocessing": {**first.preprocessing.as_dict(), **signature.roi_source},
        # the inputs besides the views, as the recipe named them (kind and options); their fitted state is per fold
        "inputs": [dict(i) for i in signature.inputs],
        "tta": first.tta,
        "folds": [r.fold for r in records],
        "temperatures": {str(r.fold): dict(r.temperature) for r in records},
        "versions": dict(first.versions),
    }
    info["thresholds"], info["metrics"] = {}, {}
    if path.is_dir() and not is_bundle(path):
        rd = RunDir(path)
        if (rd / rd.PREDICTIONS).is_file() and (rd / rd.METRICS).is_file():
            info["thresholds"] = operating_thresholds(rd, info["tasks"], info["temperatures"])
            info["metrics"] = cv_metrics(rd)
        else:  # an unfinished run read with --allow-partial: nothing cross-validated to choose a threshold on
            info["thresholds"] = {t: argmax_point(d["classes"], d.get("positive"), "the run has no cross-validation "
                                                  "predictions yet: the call is the most probable class").as_dict()
                                  for t, d in info["tasks"].items()}
    return info


def served_info(sources: Sequence[str | Path]) -> dict[str, Any]:
    """What a model made of one or several sources (their probabilities averaged) says about itself: the
    :func:`model_info` of its first source; with several, the call is the most probable class (a threshold
    chosen on one model's CV predictions does not fit an average) and each keeps its own metrics."""
    infos = [model_info(s) for s in sources]
    info = dict(infos[0])
    if len(infos) > 1:
        info["thresholds"] = {t: argmax_point(d["classes"], d.get("positive"), "several models averaged: each has "
                                              "its own operating threshold, so the call is the most probable class"
                                              ).as_dict() for t, d in info.get("tasks", {}).items()}
        info["metrics"] = {"note": "several models averaged: their cross-validated metrics are each model's own",
                           "per_model": {str(s): i.get("metrics") for s, i in zip(sources, infos)}}
    return info


def operating_thresholds(rd: RunDir, tasks: Mapping[str, Any], temperatures: Mapping[str, Mapping[str, Any]]
                         ) -> dict[str, Any]:
    """Per task, the operating point (:func:`lnzoo.decision.choose_operating_point`, Youden) chosen on the run's
    pooled cross-validation predictions as served (each row calibrated with its own fold model's temperature)."""
    from lnzoo.decision import choose_operating_point
    from lnzoo.evaluation.cases import task_cases

    _, rows = rd.read_predictions()
    out: dict[str, Any] = {}
    for name, task in tasks.items():
        classes = list(task["classes"])
        temps = {k: (v or {}).get(name) for k, v in temperatures.items()}
        # a binary task's positive class is its second unless it names one (lnzoo.tasks.Task.positive_index),
        # as the report's operating points take it
        positive = task.get("positive") or (classes[1] if len(classes) == 2 else None)
        cases = task_cases(rows, name, classes) if positive else None
        out[name] = choose_operating_point(cases, classes, positive, temps).as_dict()
    return out


def cv_metrics(rd: RunDir) -> dict[str, Any]:
    """Pooled cross-validated metrics per task, with the report's 95% patient-bootstrap CIs where it wrote them."""
    metrics = rd.metrics()
    pooled = metrics.get("cross_validation", {}).get("pooled", {})
    evaluation = rd.read_json(rd.EVALUATION)
    keys = ("n", "auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1_macro", "ece", "brier",
            "ece_calibrated", "brier_calibrated")
    out: dict[str, Any] = {}
    for task, m in pooled.items():
        entry = {k: m[k] for k in keys if k in m}
        cis = (evaluation.get("tasks", {}).get(task, {}).get("levels", {}).get("image", {}).get("parts", {})
               .get("cv", {}).get("ci", {}))
        ci = {k: [v.get("lo"), v.get("hi")] for k, v in cis.items() if isinstance(v, dict) and "lo" in v}
        out[task] = {**entry, **({"ci95": ci} if ci else {})}
    return {"cross_validation": out, "folds_run": metrics.get("folds_run"), "data": metrics.get("data")}
