"""The model record: a checkpoint's definition read, typed and verified in one place."""
from __future__ import annotations

import json

import pytest
import torch

from lnzoo.checkpoint import save_checkpoint
from lnzoo.errors import UsageError
from lnzoo.record import ModelRecord

META = {"recipe": {"name": "r", "tasks": {"main": "m"}, "data": {"bbox_column": "box", "crop_suffix": "-c"},
                   "train": {"tta": "hflip"}},
        "tasks": {"m": {"name": "m", "classes": ["a", "b"], "positive": "b"}}, "views": ["full", "roi"],
        "preprocessing": {"image_size": 32, "resize": "letterbox"}, "temperature": {"m": 1.5}, "fold": 2,
        "best_epoch": 3, "monitor": {"auc": 0.8}, "versions": {"lnzoo": "0.1.0"}}


def _saved(tmp_path, **changes):
    return save_checkpoint({"w": torch.zeros(2)}, tmp_path / "best", {**META, **changes})


def test_a_record_reads_the_sidecar_into_typed_fields(tmp_path):
    record = ModelRecord.read(_saved(tmp_path))
    assert record.main == "m" and list(record.tasks["m"].classes) == ["a", "b"]
    assert record.tasks["m"].positive == "b" and record.views == ("full", "roi")
    assert record.preprocessing.image_size == 32 and record.preprocessing.resize == "letterbox"
    assert record.preprocessing.normalize == "imagenet"  # an older sidecar's missing field takes its default
    assert (record.temperature, record.fold, record.best_epoch, record.tta) == ({"m": 1.5}, 2, 3, "hflip")
    signature = record.signature
    assert signature.views == ("full", "roi") and signature.roi_source["bbox_column"] == "box"
    assert signature.roi_source["crop_suffix"] == "-c" and signature.inputs == ()


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("tasks"), "not an lnzoo checkpoint sidecar"),         # a part missing
    (lambda m: m["recipe"]["tasks"].update(main="x"), "differs from the definition"),
])
def test_an_edited_sidecar_is_refused_naming_it(tmp_path, edit, message):
    weights = _saved(tmp_path)
    meta = json.loads(weights.with_suffix(".json").read_text())
    edit(meta)
    weights.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(UsageError, match=message):
        ModelRecord.read(weights)


def test_a_sidecar_that_is_not_lnzoos_is_named(tmp_path):
    weights = _saved(tmp_path)
    weights.with_suffix(".json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(UsageError, match=r"best\.json: not an lnzoo checkpoint sidecar"):
        ModelRecord.read(weights)


def test_a_main_task_that_is_not_a_task_is_refused(tmp_path):
    weights = _saved(tmp_path, recipe={**META["recipe"], "tasks": {"main": "zz"}})
    with pytest.raises(UsageError, match="main task 'zz' is not one of its tasks"):
        ModelRecord.read(weights)


def test_a_checkpoint_joining_covariates_after_the_fusion_cannot_be_rebuilt(tmp_path):
    old = ModelRecord.read(_saved(tmp_path, covariates={"columns": ["age"]}, versions={"lnzoo": "0.1.0"}))
    with pytest.raises(UsageError, match="joined clinical covariates after the fusion.*Retrain"):
        old.require_buildable()
    ModelRecord.read(_saved(tmp_path / "new")).require_buildable()  # no covariates: nothing to refuse


def test_a_fold_finished_before_calibrated_columns_is_resumed_with_them(tmp_path):
    """--resume keeps finished folds as stored: one stored before lnzoo wrote cal_ columns and temperatures gets
    both from its model's record, so the run's predictions.csv is whole and every reader agrees."""
    import numpy as np

    from lnzoo.decision import calibrate
    from lnzoo.pipeline import _with_calibration
    from lnzoo.rundir import RunDir
    from lnzoo.tasks import Task

    (tmp_path / "fold1").mkdir()
    save_checkpoint({"w": torch.zeros(2)}, tmp_path / "fold1" / "best", META)
    rows = [{"part": "cv", "fold": "1", "m_true": "b", "p_m_a": "0.300000", "p_m_b": "0.700000"}]
    tasks = {"m": Task.from_dict(META["tasks"]["m"])}
    got_rows, info = _with_calibration(RunDir(tmp_path), 1, [dict(r) for r in rows], {"fold": 1}, tasks)
    expected = calibrate(np.array([[0.3, 0.7]]), 1.5)[0]
    assert info["temperature"] == {"m": 1.5}
    assert [float(got_rows[0]["cal_m_a"]), float(got_rows[0]["cal_m_b"])] == pytest.approx(expected, abs=1e-6)
    # a fold stored with them is kept as it is
    again, same = _with_calibration(RunDir(tmp_path), 1, got_rows, info, tasks)
    assert again is got_rows and same is info
