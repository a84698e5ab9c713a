"""Every problem at once, every cause named (issue 26, class 4): ``validate`` collects the problems of every stage
(recipe, data, leakage, folds, model) and reports them together, by stage; a row's every problem is named; a stage
that cannot run on what an earlier one found broken says so; ``lnzoo run`` refuses with the same full list."""
from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

from lnzoo.errors import ValidationError
from lnzoo.plugins import load_plugins
from lnzoo.validate import validate
from tests.conftest import REPO, TINY, invoke_cli, phantom_rows

RECIPE = REPO / "recipes" / "stage1_aux.toml"
HOST = load_plugins()


def _rows() -> list[dict[str, str]]:
    """The phantom's manifest (24 patients) with absolute paths."""
    return phantom_rows(24)


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


# The problems the issue names, and neighbours: each one a (stage, marker) that validate must report, whatever
# else is wrong. Markers are formatted with the training manifest's path (train) and test manifest's (test).
PROBLEMS = {
    "covariate column missing": ("data", "data.covariates: no row of the data has a column 'agee'"),
    "patient leak": ("leakage", "patient 'P0001' is in both 'cross-validation' and 'test'"),
    "unknown timm model": ("model", "model.backbone: unknown timm model 'resnet5O'; did you mean 'resnet50'"),
    "covariate typo": ("data", "{train}:4: covariate 'age': '4O' is not a number"),
    "label typo and missing image in one row": ("data", "{train}:6: column 'malignancy': label 'maligant'"),
    "recipe: train section": ("recipe", "train.epochs: must be >= 1, got 0"),
}
ALSO = {"label typo and missing image in one row": ("data", "{train}:6: {missing}: file not found")}


def _inject(tmp_path: Path, chosen: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    rows = _rows()
    train_rows, test_rows = rows[:-2], rows[-2:]
    missing = str(tmp_path / "gone.png")
    if "covariate typo" in chosen:
        train_rows[2]["age"] = "4O"
    if "label typo and missing image in one row" in chosen:
        train_rows[4].update(malignancy="maligant", path=missing)
    train = _write(tmp_path / "train.csv", train_rows)
    sets = [*TINY, f"data.train='{train.as_posix()}'",
            f"data.covariates={['age', 'sex', 'agee'] if 'covariate column missing' in chosen else ['age', 'sex']}"]
    if "patient leak" in chosen:
        test = _write(tmp_path / "test.csv", [{**r, "patient": train_rows[0]["patient"]} for r in test_rows])
        sets.append(f"data.test='{test.as_posix()}'")
    if "unknown timm model" in chosen:
        sets.append("model.backbone={name='timm', model_name='resnet5O'}")
    if "recipe: train section" in chosen:
        sets.append("train.epochs=0")
    return sets, {"train": str(train), "missing": missing}


SUBSETS = [c for n in range(len(PROBLEMS) + 1) for c in itertools.combinations(PROBLEMS, n)]


@pytest.mark.parametrize("chosen", SUBSETS, ids=["+".join(c) or "none" for c in SUBSETS])
def test_every_problem_of_every_stage_is_reported_together(tmp_path, chosen):
    sets, paths = _inject(tmp_path, chosen)
    if not chosen:
        v = validate(RECIPE, HOST, sets=sets)
        assert v.n_patients == 23 and v.columns == ["age numeric", "sex categorical"]
        return
    with pytest.raises(ValidationError) as exc:
        validate(RECIPE, HOST, sets=sets)
    stages = exc.value.stages
    assert list(stages) == ["recipe", "data", "leakage", "folds", "model"]
    expected = {name: PROBLEMS[name] for name in chosen} | {name: ALSO[name] for name in chosen if name in ALSO}
    for name, (stage, marker) in [*PROBLEMS.items(), *ALSO.items()]:
        text = marker.format(**paths)
        found = [p for p in stages[stage] if p.startswith(text) or text in p] if isinstance(stages[stage], list) \
            else []
        if name in expected:
            assert found, f"{name}: {text!r} not in {stage}: {stages[stage]}"
        else:
            assert not found, f"{name} was not injected, yet {stage} says {found}"
    data_broken = bool(set(chosen) & {"covariate column missing", "covariate typo",
                                      "label typo and missing image in one row"})
    # the folds are planned only on the rows a run would use; the model is built whole once its inputs can be fitted
    assert isinstance(stages["folds"], str) == data_broken
    assert ("only the backbone was checked" in exc.value.notes.get("model", "")) == \
        bool(set(chosen) & {"covariate column missing", "covariate typo"})
    assert len(exc.value.problems) == sum(len(v) for v in stages.values() if isinstance(v, list))


def test_the_issues_four_problems_are_listed_by_one_validate_grouped_by_stage(tmp_path):
    chosen = ("covariate column missing", "patient leak", "unknown timm model", "covariate typo")
    sets, paths = _inject(tmp_path, chosen)
    out = invoke_cli("validate", str(RECIPE), *[a for s in sets for a in ("--set", s)])
    assert out.returncode == 2, out.stdout
    err = out.stderr
    assert "problem(s), by stage:" in err and "recipe: ok" in err
    for name in chosen:
        stage, marker = PROBLEMS[name]
        assert marker.format(**paths) in err, name
        assert err.index(f"\n{stage}: ") < err.index(marker.format(**paths)), name  # under its stage's heading
    assert "folds: not checked: the data has problems" in err


def test_run_refuses_with_the_same_full_list_and_trains_nothing(tmp_path):
    chosen = ("covariate column missing", "patient leak", "unknown timm model", "covariate typo")
    sets, paths = _inject(tmp_path, chosen)
    out = invoke_cli("run", str(RECIPE), "--out", str(tmp_path / "run"), "--n-boot", "0",
                     *[a for s in sets for a in ("--set", s)])
    assert out.returncode == 2, out.stdout + out.stderr
    for name in chosen:
        assert PROBLEMS[name][1].format(**paths) in out.stderr, name
    assert not list((tmp_path / "run").glob("fold*"))


# -- a stage that cannot run says why, and the others still run ----------------------------------------------------
@pytest.mark.parametrize("sets, recipe_says, unchecked, still_found", [
    # a mistake in the model section: the data is checked all the same, the model is not built
    (["model.backbone={name='timm', model_nam='resnet18'}"], "model.backbone.model_nam: backbone 'timm' takes no",
     {"model": "not checked: the recipe's model.backbone has problems"}, {"data": "label 'maligant'"}),
    # a mistake in the data section: the model is built all the same
    (["data.patient_regex='(['", "model.backbone={name='timm', model_name='resnet5O'}"],
     "data.patient_regex: '([' is not a valid regular expression",
     {"data": "not checked: the recipe's data.patient_regex has problems", "leakage": "not checked",
      "folds": "not checked"}, {"model": "unknown timm model 'resnet5O'"}),
    # a key of no known section, or no key at all: nothing can be trusted to run
    (["not-a-key"], "expected key=value",
     {s: "not checked: a recipe problem (above) names no section" for s in ("data", "leakage", "folds", "model")},
     {}),
    (["dataa.train='x.csv'"], "--set dataa.train: no such recipe key",
     {s: "not checked: a recipe problem (above) names no section" for s in ("data", "leakage", "folds", "model")},
     {}),
    # a mistake in the training section touches no check but itself
    (["train.lr=-1"], "train.lr: must be >= 0", {}, {"data": "label 'maligant'"}),
])
def test_a_recipe_problem_leaves_unchecked_only_what_it_touches(tmp_path, sets, recipe_says, unchecked, still_found):
    rows = _rows()
    rows[3]["malignancy"] = "maligant"
    train = _write(tmp_path / "train.csv", rows)
    with pytest.raises(ValidationError) as exc:
        validate(RECIPE, HOST, sets=[*TINY, f"data.train='{train.as_posix()}'", *sets])
    stages = exc.value.stages
    assert any(recipe_says in p for p in stages["recipe"]), stages["recipe"]
    for stage, why in unchecked.items():
        assert isinstance(stages[stage], str) and stages[stage].startswith(why), (stage, stages[stage])
    for stage, marker in still_found.items():
        assert any(marker in p for p in stages[stage]), (stage, stages[stage])


def test_a_recipe_that_cannot_be_read_leaves_every_other_stage_unchecked(tmp_path):
    with pytest.raises(ValidationError) as exc:
        validate(tmp_path / "nope.toml", HOST)
    assert exc.value.stages["recipe"] == [f"recipe not found: {tmp_path / 'nope.toml'}"]
    assert all(exc.value.stages[s] == "not checked: the recipe could not be read"
               for s in ("data", "leakage", "folds", "model"))


# -- a row's every problem ---------------------------------------------------------------------------------------
def test_a_manifest_rows_every_problem_is_named(tmp_path):
    rows = _rows()
    gone = tmp_path / "gone.png"
    rows[4].update(malignancy="maligant", patient="", path=str(gone), long_axis_mm="12 mm")
    train = _write(tmp_path / "train.csv", rows)
    with pytest.raises(ValidationError) as exc:
        validate(RECIPE, HOST, sets=[*TINY, f"data.train='{train.as_posix()}'",
                                     "data.covariates=['age', 'long_axis_mm']"])
    row = [p for p in exc.value.stages["data"] if p.startswith(f"{train}:6:")]
    assert any("label 'maligant'" in p for p in row), row
    assert any("empty patient id" in p for p in row), row
    assert any(f"{gone}: file not found" in p for p in row), row
    assert any("'12 mm' is not a number" in p for p in row), row


def test_a_semicolon_manifest_with_a_missing_column_is_told_its_delimiter(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "patient"} for r in _rows()]
    train = tmp_path / "train.csv"
    with train.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=";")
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ValidationError) as exc:
        validate(RECIPE, HOST, sets=[*TINY, f"data.train='{train.as_posix()}'"])
    (problem,) = [p for p in exc.value.stages["data"] if "no 'patient' column" in p]
    assert problem.startswith(f"{train}:1:") and "read with the delimiter ';' (semicolon)" in problem
