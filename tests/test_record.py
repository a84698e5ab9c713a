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


def test_weights_replaced_after_a_first_read_are_refused_on_the_next(tmp_path):
    """A record verified once is not hashed again while its files are unchanged; a same-size replacement of the
    weights changes them, and the next read (the next load) verifies again and refuses it."""
    from safetensors.torch import save

    weights = _saved(tmp_path)
    first, blob = ModelRecord.read_verified(weights)
    again, blob_again = ModelRecord.read_verified(weights)
    assert again is first and blob_again == blob  # unchanged: the record of the first verification
    weights.write_bytes(save({"w": torch.ones(2)}))  # other weights, as another tool would write them
    with pytest.raises(UsageError, match="sha256 differs"):
        ModelRecord.read_verified(weights)


class _Saved(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.norm = torch.nn.BatchNorm2d(4)


class _NonPersistent(_Saved):
    def __init__(self):
        super().__init__()
        self.register_buffer("positions", torch.arange(5.0), persistent=False)


class _PlainTensor(_Saved):
    def __init__(self):
        super().__init__()
        self.scale = torch.full((2,), 3.0)


@pytest.mark.parametrize("kind", [_Saved, _NonPersistent, _PlainTensor])
def test_a_loaded_model_holds_its_weights_and_whatever_they_do_not_save(kind):
    """A checkpoint's model is built without the random initialisation its weights replace, unless it holds a
    tensor the weights do not set: then it is built as usual, so that tensor is what its module makes."""
    from lnzoo.inference import _built_for

    torch.manual_seed(0)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v + 7 for k, v in kind().state_dict().items()}
    model = _built_for(state, kind, {}, "w.safetensors")
    got = model.state_dict()
    assert set(got) == set(state) and all(torch.equal(got[k], v) for k, v in state.items())
    assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    if kind is _NonPersistent:
        assert torch.equal(model.positions, torch.arange(5.0))
    if kind is _PlainTensor:
        assert torch.equal(model.scale, torch.full((2,), 3.0))
