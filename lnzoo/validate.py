"""``lnzoo validate``: check a recipe's data and model as ``lnzoo run`` would, without training.

The recipe itself is checked when it is loaded (:func:`lnzoo.recipe.load_recipe`); this goes on with what a
run does next: read and check every data row, plan the folds, build the model once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


def validate(recipe, host) -> Validation:
    """Check a loaded recipe's data and model; every data problem is raised at once (a DataError, exit 2)."""
    from lnzoo.data.run_data import load_run_data, plan_folds, recipe_tasks

    tasks = recipe_tasks(recipe, host)
    data = load_run_data(recipe, tasks, host=host)
    plan_folds(data.pool, recipe, tasks)
    model = check_model(recipe, host, tasks, data)
    bb = recipe.config.model.backbone
    return Validation(n_images=len(data.pool), n_patients=len({s.patient for s in data.pool}),
                      n_test=len(data.test), n_external=len(data.external), description=data.description,
                      backbone=str(bb.get("model_name") or bb["name"]) if model.views else None,
                      members=list(model.members), skipped=list(data.skipped))


def check_model(recipe, host, tasks, data) -> Any:
    """Build the recipe's model once, without downloading weights: an unknown timm name, a bad plugin
    argument or views a fusion cannot take fail here as they would at the first fold."""
    import copy

    from lnzoo.inputs import fit_inputs
    from lnzoo.model import build_model, require_trainable

    probe = copy.deepcopy(recipe)
    probe.set("model.backbone", {**probe.data["model"]["backbone"], "pretrained": False})
    model = build_model(probe, host, tasks, fit_inputs(data.inputs, data.pool) if data.inputs else None)
    if recipe.config.train.method != "linear_probe":
        require_trainable(model)
    return model
