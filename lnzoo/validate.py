"""``lnzoo validate``: check a recipe, its data and its model as ``lnzoo run`` would, without training.

The checks run in stages, and every problem of every stage is reported at once (:class:`ValidationError`,
exit 2), grouped by stage, each naming its file and line or its recipe key:

- **recipe**: the schema (types, allowed values), unknown keys, unknown plugin names, plugin arguments;
- **data**: every source and every row (each row's every problem), every image decoded, every input's cells
  (a covariate's type by :func:`lnzoo.data.covariates.column_type`);
- **leakage**: a patient in two parts (the training data and a test set), identical image bytes under two
  patients;
- **folds**: the patient folds (a main-task class missing from a fold, a ``cv.folds_file`` that does not fit);
- **model**: the model built once without downloading weights (an unknown timm model, a backbone that cannot
  be built, views a fusion cannot take).

A stage never runs on what an earlier one found broken when that would give a traceback or nonsense; it says
so instead ("model: not checked: the recipe's model.backbone has problems").
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnzoo.errors import LnzooError, UsageError, ValidationError

STAGES = ("recipe", "data", "leakage", "folds", "model")

# the recipe keys each later stage reads: a recipe problem under one of them leaves that stage unchecked
# (a problem naming no key of the schema's sections leaves every later stage unchecked)
READS = {
    "data": ("data", "tasks"),
    "leakage": ("data", "tasks"),
    "folds": ("data", "tasks", "cv", "seed"),
    "model": ("model", "tasks", "train.method", "data.views", "data.covariates", "data.covariate_types",
              "data.missing_covariates", "data.inputs"),
}
_KEY = re.compile(r"(?:--set )?([A-Za-z_]\w*(?:\.[\w-]+)*)(?=[:\s]|$)")


@dataclass(frozen=True)
class Validation:
    """What a valid recipe will run on: its data, and the model it builds."""

    n_images: int          # in the cross-validation pool
    n_patients: int        # in the cross-validation pool
    n_test: int
    n_external: int
    description: str       # where the data comes from (files, or the built-in phantom)
    backbone: str | None   # the backbone's name (a timm model's own name); None: the model has no image view
    members: list[str]     # the fusion's members: the image views, then the other inputs
    skipped: list[str] = field(default_factory=list)  # bad rows/images left out (data.skip_bad_rows)
    name: str = ""         # the recipe's name
    tasks: list[str] = field(default_factory=list)
    delimiters: dict[str, str] = field(default_factory=dict)  # each CSV file read -> its detected delimiter
    columns: list[str] = field(default_factory=list)  # each covariate's type ("age numeric (decimal comma)")


def validate(recipe, host=None, *, sets: list[str] | None = None, quick: bool = False) -> Validation:
    """Check a recipe (a loaded :class:`lnzoo.recipe.Recipe`, or a recipe file with its ``--set`` overrides and
    ``--quick``), its data and its model; every problem of every stage is raised at once, grouped by stage (a
    :class:`ValidationError`, exit 2). A stage that could not run says why in its place."""
    from lnzoo.recipe import Recipe

    if host is None:
        from lnzoo.plugins import get_host
        host = get_host()
    stages: dict[str, list[str] | str] = {}
    notes: dict[str, str] = {}
    if isinstance(recipe, Recipe):
        if sets or quick:
            raise UsageError("validate: --set and --quick apply to a recipe file; this recipe is already loaded")
        resolved, problems, whole, source = recipe, [], True, str(recipe.source or "")
    else:
        resolved, problems, whole, source = _recipe_stage(Path(recipe), host, sets, quick)
    stages["recipe"] = problems

    def unchecked(stage: str) -> str | None:
        return _blocked(stage, resolved, problems, whole)

    tasks = None
    if unchecked("data") is None or unchecked("model") is None:  # both read the tasks: built once, named once
        try:
            from lnzoo.data.run_data import recipe_tasks
            tasks = recipe_tasks(resolved, host)
        except LnzooError as exc:
            stages["data" if unchecked("data") is None else "model"] = [f"tasks: {m}" for m in _messages(exc)]
    check = _data_stage(resolved, tasks, host, stages, notes, unchecked)
    _folds_stage(resolved, tasks, check, stages, unchecked)
    model = _model_stage(resolved, host, tasks, check, stages, notes, unchecked)
    stages = {stage: stages[stage] for stage in STAGES if stage in stages}
    if any(isinstance(v, list) and v for v in stages.values()):
        raise ValidationError(stages, notes, source or None)
    data = check.data
    bb = resolved.config.model.backbone
    types = data.inputs.get("covariates", (None, None))[0]
    return Validation(n_images=len(data.pool), n_patients=len({s.patient for s in data.pool}),
                      n_test=len(data.test), n_external=len(data.external), description=data.description,
                      backbone=str(bb.get("model_name") or bb["name"]) if model.views else None,
                      members=list(model.members), skipped=list(data.skipped), name=resolved.name,
                      tasks=list(resolved.tasks), delimiters=dict(data.delimiters),
                      columns=list(getattr(types, "described", None) or []))


def _recipe_stage(path: Path, host, sets, quick):
    """(the recipe as filled, its problems, whether its checks ran whole, its source) for a recipe file."""
    from lnzoo.errors import RecipeError
    from lnzoo.recipe import load_raw, resolve_all

    try:
        raw = load_raw(path)
    except RecipeError as exc:
        return None, list(exc.problems), False, str(path)
    except UsageError as exc:  # not found, not TOML, extends itself
        return None, [str(exc)], False, str(path)
    recipe, problems, whole = resolve_all(raw, host=host, source=path, sets=sets, quick=quick)
    return recipe, problems, whole, str(path)


def _problem_key(problem: str) -> str | None:
    m = _KEY.match(problem)
    return m[1] if m else None


def _blocked(stage: str, recipe, problems: list[str], whole: bool) -> str | None:
    """Why ``stage`` cannot run on this recipe (None: it can): the recipe was not read, or a problem touches
    a key the stage reads (one that names no section of the schema touches every stage)."""
    from lnzoo.recipe_schema import SCHEMA

    if recipe is None:
        return "not checked: the recipe could not be read"
    if problems and not whole:
        return "not checked: the recipe's problems stopped its own checks midway"
    keys = []
    for p in problems:
        key = _problem_key(p)
        if key is None or key.split(".")[0] not in SCHEMA:
            return "not checked: a recipe problem (above) names no section the check could do without"
        if any(key == r or key.startswith(r + ".") for r in READS[stage]):
            keys.append(".".join(key.split(".")[:2]))
    if keys:
        shown = ", ".join(dict.fromkeys(keys))
        return f"not checked: the recipe's {shown} {'has' if len(set(keys)) == 1 else 'have'} problems (above)"
    return None


def _messages(exc: LnzooError) -> list[str]:
    return list(getattr(exc, "problems", None) or [str(exc)])


def _data_stage(recipe, tasks, host, stages, notes, unchecked):
    """Read and check every row and image (``data``) and what crosses a boundary (``leakage``); the check, or
    None when no data could be read."""
    from lnzoo.data.run_data import check_run_data

    why = unchecked("data")
    if why is not None or tasks is None:
        stages.setdefault("data", why or "not checked")
        stages["leakage"] = unchecked("leakage") or "not checked: the data was not read"
        return None
    try:
        check = check_run_data(recipe, tasks, host)
    except LnzooError as exc:  # nothing to check: the phantom cannot be made, an input kind cannot be built
        stages["data"] = _messages(exc)
        stages["leakage"] = "not checked: no data was read"
        return None
    stages.update(check.stages)
    notes.update(check.notes)
    if recipe.config.pretrain.method and recipe.config.pretrain.data:  # the unlabelled images of a pretraining
        from lnzoo.pretrain.images import source_images
        try:
            n = len(source_images(recipe.config.pretrain.data))
            notes["data"] = "; ".join(filter(None, [notes.get("data"), f"{n} pretraining image(s) (pretrain.data)"]))
        except LnzooError as exc:
            stages["data"] = [*stages.get("data", []), *_messages(exc)]
    return check


def _folds_stage(recipe, tasks, check, stages, unchecked) -> None:
    """Plan the patient folds, on the rows a run would use: only when those are known."""
    from lnzoo.data.run_data import plan_folds

    why = unchecked("folds")
    if why is not None:
        stages["folds"] = why
    elif check is None:
        stages["folds"] = "not checked: the data was not read"
    elif check.fatal or (check.rows and not check.skip):
        stages["folds"] = ("not checked: the data has problems (above), and the folds depend on which rows "
                           "are kept")
    else:
        try:
            plan_folds(check.data.pool, recipe, tasks)
            stages["folds"] = []
        except LnzooError as exc:
            stages["folds"] = _messages(exc)


def _model_stage(recipe, host, tasks, check, stages, notes, unchecked) -> Any:
    """Build the model once: with its inputs fitted on the good rows when the recipe has inputs besides the
    views, else as it is; when the inputs cannot be fitted, the backbone alone (and the note says so)."""
    from lnzoo.inputs import fit_inputs, input_tables

    why = unchecked("model")
    if why is not None:
        stages["model"] = why
        return None
    if tasks is None:
        stages.setdefault("model", "not checked: the recipe's tasks could not be built (above)")
        return None
    has_inputs = bool(input_tables(recipe.config.data, recipe.config.model))
    if not has_inputs:
        inputs = None
    elif check is not None and check.inputs_checked and check.data.pool:
        inputs = fit_inputs(check.data.inputs, check.data.pool)
    else:
        stages["model"] = _backbone_problems(recipe, host)
        notes["model"] = ("only the backbone was checked: the fusion, heads and input encoders need the inputs "
                          "fitted on good rows, and the data has problems (above)")
        return None
    try:
        model = check_model(recipe, host, tasks, inputs)
    except Exception as exc:  # noqa: BLE001 - a plugin's factory may fail in any way; it is the model's problem
        stages["model"] = _backbone_problems(recipe, host) or [_model_message("model", exc)]
        return None
    stages["model"] = []
    return model


def _model_message(where: str, exc: Exception) -> str:
    if isinstance(exc, LnzooError):
        return f"{where}: {exc}"
    return f"{where}: building it failed ({type(exc).__name__}: {exc})"


def _backbone_problems(recipe, host) -> list[str]:
    """The backbone built alone (no weights downloaded; a pretrained_file is loaded), as the model would build
    it: its problem, or []."""
    from lnzoo.model import build_backbone

    if not recipe.config.data.views:
        return []
    backbone = recipe.config.model.backbone
    try:
        build_backbone(host, {**backbone, "pretrained": False})
    except Exception as exc:  # noqa: BLE001 - a plugin's factory may fail in any way
        return [_model_message("model.backbone", exc)]
    return []


def check_model(recipe, host, tasks, inputs) -> Any:
    """Build the recipe's model once, without downloading weights: an unknown timm name, a bad plugin
    argument or views a fusion cannot take fail here as they would at the first fold. ``inputs`` are the
    fitted inputs besides the views (None when the recipe has none)."""
    import copy

    from lnzoo.model import build_model, require_trainable

    probe = copy.deepcopy(recipe)
    probe.set("model.backbone", {**probe.data["model"]["backbone"], "pretrained": False})
    model = build_model(probe, host, tasks, inputs)
    if recipe.config.train.method != "linear_probe":
        require_trainable(model)
    return model
