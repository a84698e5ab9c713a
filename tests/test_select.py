"""``lnzoo select``: the nested choice between runs uses inner-validation scores only, never the
held-out folds, and writes a run directory the other commands accept."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lnzoo.errors import UsageError
from lnzoo.evaluate import evaluate_run
from lnzoo.plugins import load_plugins
from lnzoo.predict import Ensemble
from lnzoo.select import select_runs
from lnzoo.files import csv_text, write_atomic
from tests.conftest import invoke_cli
from tests.test_run import _run


@pytest.fixture(scope="module")
def base_run(tiny_run) -> Path:
    """The session's shared run: folds 1 and 2 of 3 (copied before any change)."""
    return tiny_run


@pytest.fixture(scope="module")
def other_run(base_run, tmp_path_factory) -> Path:
    """Another setting (a higher learning rate) trained on the base run's folds: other weights."""
    out = tmp_path_factory.mktemp("select") / "b"
    _run(out, sets=["cv.run_folds=[1, 2]", "train.lr=0.05", f"cv.folds_file='{(base_run / 'folds.csv').as_posix()}'"])
    return out


def _rows(run: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (run / "predictions.csv").open(newline="") as fh:
        r = csv.DictReader(fh)
        return list(r.fieldnames), list(r)


def _set_inner(run: Path, fold: int, value: float) -> None:
    f = run / f"fold{fold}" / "best.json"
    meta = json.loads(f.read_text())
    meta["monitor"] = {"auc": value}
    write_atomic(f, json.dumps(meta))  # as lnzoo writes it: bound to the run's integrity.json


def _perfect_on_fold(run: Path, fold: int) -> None:
    """Make the held-out predictions of one fold perfect: a choice that peeked would take them."""
    header, rows = _rows(run)
    for r in rows:
        if r["part"] == "cv" and r["fold"] == str(fold) and r["malignancy_true"]:
            m = r["malignancy_true"] == "malignant"
            r["p_malignancy_malignant"], r["p_malignancy_benign"] = ("0.99", "0.01") if m else ("0.01", "0.99")
    write_atomic(run / "predictions.csv", csv_text(header, rows))


def test_each_fold_goes_to_the_best_inner_score_never_to_the_best_held_out_fold(base_run, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(base_run, b)
    a = tmp_path / "a"
    shutil.copytree(base_run, a)
    _set_inner(a, 1, 0.9)
    _set_inner(b, 1, 0.6)   # fold 1: a wins on the inner score although b is perfect on the held-out fold
    _perfect_on_fold(b, 1)
    _set_inner(a, 2, 0.5)
    _set_inner(b, 2, 0.7)   # fold 2: b wins
    result = select_runs([a, b], tmp_path / "chosen")
    assert [f["chosen"] for f in result["folds"]] == ["a", "b"]
    assert result["chosen_count"] == {"a": 1, "b": 1}
    assert result["folds"][0]["held_out"]["b"]["auc"] == 1.0  # shown, but it did not choose

    _, rows_a = _rows(a)
    _, rows_b = _rows(b)
    _, chosen = _rows(tmp_path / "chosen")
    expect = [r for r in rows_a if r["part"] == "cv" and r["fold"] == "1"] + \
             [r for r in rows_b if r["part"] == "cv" and r["fold"] == "2"]
    assert chosen == expect
    y = np.array([r["malignancy_true"] == "malignant" for r in chosen if r["malignancy_true"]])
    p = np.array([float(r["p_malignancy_malignant"]) for r in chosen if r["malignancy_true"]])
    stored = json.loads((tmp_path / "chosen" / "metrics.json").read_text())
    assert stored["cross_validation"]["pooled"]["malignancy"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert json.loads((tmp_path / "chosen" / "selection.json").read_text())["metric"] == "auc"


def test_the_chosen_folds_are_a_run_that_evaluate_and_predict_accept(base_run, other_run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(base_run, a)
    shutil.copytree(other_run, b)
    _set_inner(a, 1, 0.9)
    _set_inner(b, 1, 0.1)
    _set_inner(a, 2, 0.1)
    _set_inner(b, 2, 0.9)
    out = tmp_path / "chosen"
    result = invoke_cli("select", str(a), str(b), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "chosen" in result.stdout and "inner auc" in result.stdout
    for k, src in ((1, a), (2, b)):  # each fold's weights are its winner's
        assert (out / f"fold{k}" / "best.safetensors").read_bytes() == \
            (src / f"fold{k}" / "best.safetensors").read_bytes()
    assert (a / "fold2" / "best.safetensors").read_bytes() != (b / "fold2" / "best.safetensors").read_bytes()
    stored, fresh = evaluate_run(out, load_plugins())  # the checkpoints reproduce the stored predictions
    assert fresh["cross_validation"]["pooled"]["malignancy"]["auc"] == pytest.approx(
        stored["cross_validation"]["pooled"]["malignancy"]["auc"], abs=1e-4)
    _, rows = _rows(out)
    probs, _ = Ensemble([out], load_plugins()).predict([Path(rows[0]["path"])])
    assert probs["malignancy"].shape == (1, 2)


def test_runs_on_other_folds_or_unfinished_runs_are_refused_with_a_reason(base_run, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(base_run, b)
    with (b / "folds.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["fold"] = str((int(rows[0]["fold"]) + 1) % 3)
    write_atomic(b / "folds.csv", csv_text(["patient", "fold"], rows))
    with pytest.raises(UsageError, match="different folds.*cv.folds_file"):
        select_runs([base_run, b])
    with pytest.raises(UsageError, match="at least two"):
        select_runs([base_run])
    c = tmp_path / "c"
    shutil.copytree(base_run, c)
    (c / "metrics.json").unlink()
    with pytest.raises(UsageError, match="metrics.json is missing"):
        select_runs([base_run, c])
    result = invoke_cli("select", str(base_run), str(c))
    assert result.returncode == 2 and "metrics.json is missing" in result.stderr


def test_equal_scores_go_to_the_lower_inner_loss_and_a_loss_monitor_is_minimised(base_run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(base_run, a)
    shutil.copytree(base_run, b)
    for run, loss in ((a, 0.7), (b, 0.4)):
        for k in (1, 2):
            meta = json.loads((run / f"fold{k}" / "best.json").read_text())
            meta["monitor"], meta["monitor_val_loss"] = {"auc": 1.0}, loss
            write_atomic(run / f"fold{k}" / "best.json", json.dumps(meta))
    result = select_runs([a, b])
    assert [f["chosen"] for f in result["folds"]] == ["b", "b"] and result["folds"][0]["tied"] == ["a", "b"]
    for run, loss in ((a, 0.3), (b, 0.5)):
        for k in (1, 2):
            meta = json.loads((run / f"fold{k}" / "best.json").read_text())
            meta["monitor"] = {"loss": loss}
            write_atomic(run / f"fold{k}" / "best.json", json.dumps(meta))
    assert [f["chosen"] for f in select_runs([a, b])["folds"]] == ["a", "a"]


def test_candidates_whose_inner_parts_or_held_out_images_differ_are_refused(base_run, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(base_run, b)
    from lnzoo.checkpoint import read_weights, save_checkpoint
    for k in (1, 2):  # a run trained with another seed (saved as lnzoo saves it: an edited sidecar is refused)
        meta = json.loads((b / f"fold{k}" / "best.json").read_text())
        meta["recipe"]["seed"] = 7
        save_checkpoint(read_weights(b / f"fold{k}" / "best.safetensors"), b / f"fold{k}" / "best",
                        {m: v for m, v in meta.items() if not m.endswith("_sha256")})
    with pytest.raises(UsageError, match="seed = 7.*other patients"):
        select_runs([base_run, b])
    c = tmp_path / "c"
    shutil.copytree(base_run, c)
    header, rows = _rows(c)
    dropped = next(i for i, r in enumerate(rows) if r["part"] == "cv" and r["fold"] == "1")
    write_atomic(c / "predictions.csv", csv_text(header, rows[:dropped] + rows[dropped + 1:]))
    with pytest.raises(UsageError, match="fold 1: .*other held-out images"):
        select_runs([base_run, c])
