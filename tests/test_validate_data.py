"""`lnzoo validate` checks the data: every bad row at once (file:line, reason), exit 2; skipping on request."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, invoke_cli

STAGE1 = REPO / "recipes" / "stage1_aux.toml"


def _dataset(root, n_patients=10):
    rng = np.random.default_rng(0)
    lines = []
    for p in range(n_patients):
        for k in range(2):
            path = root / "img" / f"P{p:02d}_{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(path)
            lines.append(f"img/{path.name},{'良性' if p % 2 else '恶性'}")
    return lines


def _recipe(tmp_path, lines, extra=""):
    (tmp_path / "main.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'extends = "{STAGE1.as_posix()}"\n[tasks]\ntask_weights = {{malignancy = 1.0}}\n'
                      f'[data]\ntrain = "main.txt"\npatient_regex = "^(P\\\\d+)_"\n{extra}\n'
                      f'[cv]\nfolds = 2\n', encoding="utf-8")
    return recipe


def test_every_kind_of_bad_row_is_listed_and_nothing_is_trained(tmp_path):
    lines = _dataset(tmp_path)
    (tmp_path / "img" / "P00_1.png").write_bytes(b"")                        # empty file
    (tmp_path / "img" / "P01_0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt
    shutil.copy(tmp_path / "img" / "P02_0.png", tmp_path / "img" / "P03_1.png")  # same bytes, other patient
    lines += ["img/P99_0.png,良性",            # missing file      (line 21)
              "img/P04_0.png,良性",            # duplicate row     (line 22)
              "img/P05_9.png,maligant"]        # label typo        (line 23)
    out = invoke_cli("validate", str(_recipe(tmp_path, lines)))
    assert out.returncode == 2, out.stdout + out.stderr
    err = out.stderr
    main = tmp_path / "main.txt"
    assert f"{main}:22: duplicate row" in err and "already on line 9" in err
    assert f"{main}:23: label 'maligant'" in err and "did you mean 'malignant'" in err
    assert "P99_0.png: file not found" in err and f"{main}:21" in err
    assert "P00_1.png: empty file" in err and "P01_0.png: unreadable or corrupt image" in err
    assert "identical image content" in err and not (tmp_path / "runs").exists()


def test_identical_image_under_two_patients_is_refused_as_leakage(tmp_path):
    lines = _dataset(tmp_path)
    shutil.copy(tmp_path / "img" / "P02_0.png", tmp_path / "img" / "P03_1.png")
    out = invoke_cli("validate", str(_recipe(tmp_path, lines)))
    assert out.returncode == 2
    assert "identical image content" in out.stderr and "P02" in out.stderr and "P03" in out.stderr


def test_skip_bad_rows_reports_how_many_and_goes_on(tmp_path):
    lines = _dataset(tmp_path)
    (tmp_path / "img" / "P00_1.png").write_bytes(b"")
    lines.append("img/P99_0.png,良性")
    out = invoke_cli("validate", str(_recipe(tmp_path, lines, "skip_bad_rows = true")))
    assert out.returncode == 0, out.stderr
    assert "2 bad row(s)/image(s) will be left out" in out.stderr
    assert "19 images of 10 patients" in out.stdout


def test_a_class_missing_from_a_fold_is_reported(tmp_path):
    lines = _dataset(tmp_path, n_patients=4)
    lines = [ln.replace("恶性", "良性") if ln.startswith(("img/P00", "img/P02")) else ln for ln in lines]
    lines = [ln if not ln.startswith("img/P02") else ln.replace("良性", "恶性") for ln in lines]
    out = invoke_cli("validate", str(_recipe(tmp_path, lines)))
    assert out.returncode == 2 and "has no malignancy label of class(es) ['malignant']" in out.stderr


def test_identical_images_can_be_grouped_into_one_split_group_instead(tmp_path):
    lines = _dataset(tmp_path)
    shutil.copy(tmp_path / "img" / "P02_0.png", tmp_path / "img" / "P03_1.png")
    out = invoke_cli("validate", str(_recipe(tmp_path, lines, 'identical_images = "group"')))
    assert out.returncode == 0, out.stderr
    assert "9 patients" in out.stdout and "identical images kept together" in out.stdout


def test_a_recipe_defines_its_own_task_and_reads_a_manifest_with_other_column_names(tmp_path):
    rng = np.random.default_rng(1)
    rows = ["file,case,grade"]
    for c in range(8):
        for k in range(2):
            name = f"c{c}_{k}.png"
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / name)
            rows.append(f"{name},{c},{'low' if c % 2 else 'high'}" if k == 0 else f"{name},{c},unlabeled")
    (tmp_path / "m.csv").write_text("\n".join(rows).replace("file,", "path,") + "\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'extends = "{STAGE1.as_posix()}"\n[tasks]\nmain = "grade"\ntask_weights = {{grade = 1.0}}\n'
                      'define.grade = { classes = ["low", "high"], positive = "high" }\n'
                      '[data]\ntrain = "m.csv"\npatient_column = "case"\nmissing_labels = ["unlabeled"]\n'
                      '[cv]\nfolds = 2\n')
    out = invoke_cli("validate", str(recipe))
    assert out.returncode == 0, out.stderr
    assert "8 images of 8 patients" in out.stdout  # unlabelled rows teach nothing and are left out


# a list row's every problem is named, never only the first found (issue 26): (extra lines, what each line must say)
ROW_PROBLEMS = [
    (["img/P04_0.png,maligant"], {21: ["duplicate row, 'img/P04_0.png' is already on line 9", "label 'maligant'"]}),
    (["img/P99_0.png,maligant"], {21: ["label 'maligant'", "P99_0.png: file not found"]}),
    (["img/P04_0.png,良性", "img/P04_0.png,maligant"],
     {21: ["duplicate row, 'img/P04_0.png' is already on line 9"],
      22: ["duplicate row, 'img/P04_0.png' is already on line 9", "label 'maligant'"]}),
    (["img/Q04_0.png,maligant"], {21: ["label 'maligant'", "does not match 'Q04_0.png'", "Q04_0.png: file not found"]}),
    (["img/P98_0.png,良性", "img/P98_0.png,maligant"],  # a repeat of a missing image: the image is named once
     {21: ["P98_0.png: file not found"], 22: ["duplicate row", "label 'maligant'"]}),
]


@pytest.mark.parametrize("extra, expected", ROW_PROBLEMS)
def test_a_list_rows_every_problem_is_named(tmp_path, extra, expected):
    lines = _dataset(tmp_path) + extra
    out = invoke_cli("validate", str(_recipe(tmp_path, lines)))
    assert out.returncode == 2, out.stdout
    main = tmp_path / "main.txt"
    said = [ln.strip()[2:] for ln in out.stderr.splitlines() if ln.strip().startswith(f"- {main}:")]
    for line, reasons in expected.items():
        mine = [s for s in said if s.startswith(f"{main}:{line}: ")]
        assert all(any(r in s for s in mine) for r in reasons), (line, mine)
        assert len(mine) == len(reasons), (line, mine)  # each reason once, nothing else
    assert not [s for s in said if int(s[len(str(main)) + 1:].split(":")[0]) not in expected]
