"""Strict recipes: every problem at once with its dotted path, --set, extends, --quick, plugin args."""
from __future__ import annotations

import json

from pathlib import Path

import pytest

from lnzoo.errors import RecipeError, UsageError
from lnzoo.recipe import load_recipe, parse_value
from tests.conftest import REPO, invoke_cli

STAGE1 = REPO / "recipes" / "stage1_aux.toml"


def _write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'extends = "{STAGE1.as_posix()}"\n' + text, encoding="utf-8")
    return path


def test_stage1_recipe_is_faithful_to_the_seed():
    r = load_recipe(STAGE1)
    assert r.data["tasks"]["task_weights"] == {"malignancy": 1.0, "enlargement": 0.5}
    assert r.data["tasks"]["main"] == "malignancy"
    assert r["model.backbone"]["name"] == "tv_resnet50"
    assert r["train.optimizer"] == "sgd" and r["train.scheduler"] == "cosine" and r["train.warmup_epochs"] > 0
    assert r["train.min_lr"] <= r["train.lr"]
    aug = r["data.augment"]
    assert aug["rotation"] > 0 and aug["hflip"] > 0 and aug["color_jitter"] > 0 and aug["blur"] > 0
    assert r["data.sampling"] == "class_weights" and r["cv.folds"] == 5


def test_all_problems_reported_at_once_with_paths_and_suggestions(tmp_path):
    bad = _write(tmp_path, '[train]\nepohcs = 3\nlr = "fast"\n[model]\nhead = { name = "mpl" }\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(bad)
    text = str(info.value)
    assert "train.epohcs: unknown key; did you mean 'epochs'" in text
    assert "train.lr: expected integer or number, got str 'fast'" in text
    assert "model.head.name: unknown head 'mpl'; did you mean 'mlp'" in text
    assert len(info.value.problems) == 3


def test_validate_cli_exits_2_and_names_all_three(tmp_path):
    bad = _write(tmp_path, '[train]\nepohcs = 3\nlr = "fast"\n[model]\nhead = { name = "mpl" }\n')
    out = invoke_cli("validate", str(bad))
    assert out.returncode == 2
    for needle in ("train.epohcs", "train.lr", "'mpl'"):
        assert needle in out.stderr


def test_plugin_arguments_checked_against_the_factory_signature(tmp_path):
    bad = _write(tmp_path, '[model]\nhead = { name = "mlp", hiden = 64, dropout = "x" }\n'
                           'backbone = { name = "timm" }\nfusion = { name = "concat", num_views = 2 }\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(bad)
    text = str(info.value)
    assert "model.head.hiden: head 'mlp' takes no argument 'hiden'; did you mean 'hidden'" in text
    assert "model.head.dropout: expected number, got str 'x'" in text
    assert "model.fusion.num_views: set by lnzoo" in text


def test_set_overrides_parse_toml_and_refuse_unknown_keys():
    r = load_recipe(STAGE1, sets=["train.epochs=3", "model.backbone={name='timm', model_name='resnet18'}",
                                  "data.views=['full', 'crop']", "model.fusion.name=concat"])
    assert r["train.epochs"] == 3 and r["model.backbone"] == {"name": "timm", "model_name": "resnet18"}
    assert r["data.views"] == ["full", "crop"] and r["model.fusion"]["name"] == "concat"
    with pytest.raises(RecipeError, match=r"--set train.epoch: no such recipe key; did you mean 'train.epochs'"):
        load_recipe(STAGE1, sets=["train.epoch=3"])
    with pytest.raises(RecipeError, match="takes no argument|no such recipe key"):
        load_recipe(STAGE1, sets=["model.backbone.depth=3"])
    assert parse_value("0.5") == 0.5 and parse_value("true") is True and parse_value("resnet18") == "resnet18"


def test_extends_merges_and_a_cycle_is_an_error(tmp_path):
    child = _write(tmp_path, '[train]\nepochs = 7\n')
    r = load_recipe(child)
    assert r["train.epochs"] == 7 and r["train.optimizer"] == "sgd"  # inherited
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('extends = "b.toml"\n')
    b.write_text('extends = "a.toml"\n')
    with pytest.raises(UsageError, match="extends itself"):
        load_recipe(a)


def test_quick_profile_is_small_and_one_fold():
    r = load_recipe(STAGE1, quick=True)
    assert r["cv.run_folds"] == [0] and r["train.epochs"] <= 15 and r["data.image_size"] <= 128
    assert r["model.backbone"]["name"] == "timm"
    assert r.data["tasks"]["task_weights"] == {"malignancy": 1.0, "enlargement": 0.5}  # the science is kept


def test_semantic_errors(tmp_path):
    bad = _write(tmp_path, '[tasks]\nmain = "origin"\n[train]\nmin_lr = 1.0\n[data]\nviews = ["full", "crop"]\n'
                           '[model]\nfusion = "single"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(bad)
    text = str(info.value)
    assert "tasks.main: 'origin' is not in tasks.task_weights" in text
    assert "train.min_lr (1.0) is above train.lr" in text
    assert "'single' takes one input but data.views has 2" in text


def test_resolved_recipe_round_trips_through_toml(tmp_path):
    import tomllib

    from lnzoo.recipe import resolve
    r = load_recipe(STAGE1, quick=True)
    again = resolve(tomllib.loads(r.to_toml()))
    assert again.data == r.data


def test_a_child_recipe_replaces_the_task_set_instead_of_adding_to_it(tmp_path):
    child = _write(tmp_path, '[tasks]\ntask_weights = { malignancy = 1.0 }\n')
    assert load_recipe(child).tasks == ["malignancy"]


def test_error_messages_keep_their_brackets(capsys):
    import typer

    from lnzoo.cli import guarded
    from lnzoo.errors import UsageError

    @guarded
    def fail():
        raise UsageError("data.views: [full, crop] and [roi] are not [bold]")

    with pytest.raises(typer.Exit) as exc:
        fail()
    assert exc.value.exit_code == 2
    assert "data.views: [full, crop] and [roi] are not [bold]" in capsys.readouterr().err


def test_the_run_configuration_is_the_resolved_recipe_read_only_by_attribute():
    import copy

    from lnzoo.config import component_options, plain
    from lnzoo.plugins import load_plugins
    from lnzoo.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "stage1_aux.toml", host=load_plugins(), quick=True,
                         sets=["train.lr=0.003"])
    cfg = recipe.config
    assert cfg.train.lr == 0.003 and cfg.tasks.task_weights.enlargement == 0.5 and cfg.data.views == ["full"]
    assert cfg.model.backbone.name == recipe.data["model"]["backbone"]["name"]
    assert component_options(cfg.model.backbone) == {k: v for k, v in recipe.data["model"]["backbone"].items()
                                                     if k != "name"}
    with pytest.raises(AttributeError, match=r"no train\.lrr; did you mean 'lr'"):
        cfg.train.lrr
    with pytest.raises(AttributeError, match="read-only"):
        cfg.train.lr = 1.0
    for change in (lambda: cfg.train.update(lr=1.0), lambda: cfg.data.views.append("evil"),
                   lambda: cfg.data.__setitem__("views", []), lambda: cfg.tasks.task_weights.pop("enlargement")):
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert cfg.data.views == ["full"] and cfg.tasks.task_weights == {"malignancy": 1.0, "enlargement": 0.5}
    # a section named like a dict method is still the recipe's: tasks.options holds the per-task overrides
    assert cfg.tasks.options == recipe.data["tasks"]["options"]
    assert json.loads(json.dumps(cfg)) == json.loads(json.dumps(recipe.data)) and isinstance(cfg.model, dict)
    assert plain(cfg) == recipe.data and copy.deepcopy(cfg) is cfg
    recipe.set("train.lr", 0.5)  # a change goes through the recipe, and the configuration follows it
    assert recipe.config.train.lr == 0.5 and cfg.train.lr == 0.003


def test_per_task_options_reach_the_tasks_the_run_trains():
    from lnzoo.data.run_data import recipe_tasks
    from lnzoo.plugins import load_plugins
    from lnzoo.recipe import load_recipe

    host = load_plugins()
    recipe = load_recipe(REPO / "recipes" / "stage1_aux.toml", host=host,
                         sets=["tasks.options.malignancy={label_smoothing=0.1, class_weighting='none'}"])
    tasks = recipe_tasks(recipe, host)
    assert tasks["malignancy"].label_smoothing == 0.1 and tasks["malignancy"].class_weighting == "none"
    assert tasks["enlargement"].label_smoothing == host.registry("task").get("enlargement").build().label_smoothing
