"""lnzoo.decision: one rule for every call, one chooser of the operating point, one temperature step."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnzoo.decision import (OperatingPoint, calibrate, call_one, choose_operating_point, choose_threshold,
                            fit_temperature, raw_equivalent)
from lnzoo.evaluation.cases import task_cases
from lnzoo.evaluation.evaluate import evaluate_predictions

CLASSES = ["benign", "malignant"]


@settings(max_examples=200, deadline=None)
@given(p=st.floats(0.001, 0.999), t=st.floats(0.01, 0.99), T=st.floats(0.05, 20.0))
def test_a_threshold_on_calibrated_probability_is_its_raw_equivalent_on_the_raw_one(p, t, T):
    """One binary model: calling at t on its calibrated probability is calling at raw_equivalent(t, T) on the raw."""
    raw = np.array([[1 - p, p]])
    cal = calibrate(raw, T)
    eq = raw_equivalent(t, T)
    if abs(cal[0, 1] - t) > 1e-9 and abs(p - eq) > 1e-9:  # off the boundary itself (floating point)
        assert (cal[0, 1] >= t) == (p >= eq)
    op = OperatingPoint(tuple(CLASSES), "malignant", t, "youden", "calibrated", {"0": eq})
    assert op.calls(raw, cal) == ["malignant" if cal[0, 1] >= t else "benign"]


@pytest.mark.parametrize("space, raw_row, cal_row, expected", [
    ("calibrated", [0.6, 0.4], [0.7, 0.3], "malignant"),   # raw says benign, the calibrated call is malignant
    ("calibrated", [0.3, 0.7], [0.75, 0.25], "benign"),     # raw says malignant, calibrated below threshold
    ("raw", [0.6, 0.4], [0.9, 0.1], "malignant"),           # a run without calibrated columns: the raw space
    ("raw", [0.8, 0.2], [0.1, 0.9], "benign"),
])
def test_the_call_is_made_in_the_operating_points_space(space, raw_row, cal_row, expected):
    op = OperatingPoint(tuple(CLASSES), "malignant", 0.28, "youden", space)
    assert op.calls(np.array([raw_row]), np.array([cal_row])) == [expected]
    call = call_one(op, raw_row, cal_row)
    assert call.cls == expected and call.rule == op.text()
    positive = (cal_row if space == "calibrated" else raw_row)[1]
    assert call.reason.endswith(f"(malignant) = {positive:.3f} {'>=' if expected == 'malignant' else '<'} 0.28 (youden)")
    assert call.caption("malignancy") == [f"malignancy: called {expected}", call.reason]
    assert call.score == (cal_row if space == "calibrated" else raw_row)[CLASSES.index(expected)]


def test_without_a_threshold_the_call_is_the_most_probable_calibrated_class():
    op = OperatingPoint(("a", "b", "c"), None, None)
    assert op.calls(np.array([[0.5, 0.3, 0.2]]), np.array([[0.2, 0.3, 0.5]])) == ["c"]
    assert op.text() == "most probable class"
    assert OperatingPoint.from_dict(CLASSES, "malignant", op.as_dict()).value is None


def test_an_operating_point_survives_its_json_form():
    op = OperatingPoint(tuple(CLASSES), "malignant", 0.2801234567, "youden", "calibrated", {"1": 0.41, "2": 0.39},
                        "44 pooled cross-validation predictions")
    back = OperatingPoint.from_dict(CLASSES, None, op.as_dict())
    assert (back.positive, back.rule, back.space, back.raw) == (op.positive, op.rule, op.space, op.raw)
    assert back.value == pytest.approx(op.value, abs=1e-6)
    # a stored threshold written before spaces existed was applied to calibrated probabilities
    assert OperatingPoint.from_dict(CLASSES, "malignant", {"rule": "youden", "value": 0.3}).space == "calibrated"


def _rows(rng, n=60, temperatures=(0.5, 2.0)):
    rows = []
    for i in range(n):
        fold = i % len(temperatures)
        y = int(rng.random() < 0.4)
        p = float(np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0.01, 0.99))
        raw = np.array([[1 - p, p]])
        cal = calibrate(raw, temperatures[fold])[0]
        rows.append({"part": "cv", "fold": str(fold), "patient": f"P{i}", "malignancy_true": CLASSES[y],
                     "p_malignancy_benign": f"{1 - p:.6f}", "p_malignancy_malignant": f"{p:.6f}",
                     "cal_malignancy_benign": f"{cal[0]:.6f}", "cal_malignancy_malignant": f"{cal[1]:.6f}"})
    return rows


@pytest.mark.parametrize("seed", range(5))
def test_the_served_threshold_is_the_reports_youden_threshold(seed):
    """Chosen once, by one function, on the calibrated CV predictions: the report shows the very point served."""
    rows = _rows(np.random.default_rng(seed))
    cases = task_cases(rows, "malignancy", CLASSES)
    assert cases.space == "calibrated"
    op = choose_operating_point(cases, CLASSES, "malignant", {"0": 0.5, "1": 2.0})
    report = evaluate_predictions(rows, {"malignancy": {"classes": CLASSES, "positive": "malignant"}}, n_boot=20)
    ops = report["tasks"]["malignancy"]["levels"]["image"]["operating_points"]
    assert ops["space"] == "calibrated" and ops["rules"]["youden"]["threshold"] == op.value
    cal = np.array([float(r["cal_malignancy_malignant"]) for r in rows])
    y = np.array([r["malignancy_true"] == "malignant" for r in rows])
    assert op.value == choose_threshold(y, cal)  # on the calibrated, not the raw, probabilities
    assert op.raw == {k: raw_equivalent(op.value, T) for k, T in {"0": 0.5, "1": 2.0}.items()}
    # the report's sensitivity at the point is the fraction of positives the served rule calls positive
    sens = ops["rules"]["youden"]["parts"]["cv"]["sensitivity"]
    calls = op.calls(np.zeros((len(rows), 2)), np.column_stack([1 - cal, cal]))
    assert sens == pytest.approx(np.mean([c == "malignant" for c, t in zip(calls, y) if t]))


def test_a_run_without_calibrated_columns_is_calibrated_from_its_fold_temperatures():
    """A run from before lnzoo stored cal_ columns keeps the call it was served with: its CV rows are calibrated
    with each fold model's temperature, and the threshold lands where the calibrated columns would put it."""
    full = _rows(np.random.default_rng(0))
    rows = [{k: v for k, v in r.items() if not k.startswith("cal_")} for r in full]
    temps = {"0": 0.5, "1": 2.0}
    old = choose_operating_point(task_cases(rows, "malignancy", CLASSES), CLASSES, "malignant", temps)
    new = choose_operating_point(task_cases(full, "malignancy", CLASSES), CLASSES, "malignant", temps)
    assert old.space == "calibrated" and "predates" in old.chosen_on and old.value == pytest.approx(new.value,
                                                                                                     abs=2e-6)
    bare = choose_operating_point(task_cases(rows, "malignancy", CLASSES), CLASSES, "malignant", {"0": None})
    assert bare.space == "raw" and not bare.raw  # no temperature anywhere: raw, and said so


def test_too_few_cases_call_at_one_half_and_say_why():
    rows = _rows(np.random.default_rng(0), n=1)
    op = choose_operating_point(task_cases(rows, "malignancy", CLASSES), CLASSES, "malignant")
    assert op.value == 0.5 and "too few" in op.note


def test_fitting_a_temperature_needs_two_classes():
    assert fit_temperature(np.array([[0.2, 0.8], [0.3, 0.7]]), np.array([1, 1])) is None
    T = fit_temperature(np.array([[0.01, 0.99], [0.99, 0.01], [0.02, 0.98], [0.4, 0.6]]), np.array([1, 0, 1, 0]))
    assert T is not None and T > 1  # over-confident on a wrong case: softened
    assert np.allclose(calibrate(np.array([[0.3, 0.7]]), None), [[0.3, 0.7]])
    assert math.isclose(raw_equivalent(0.5, 3.0), 0.5)


def test_a_model_record_is_verified_again_once_a_file_changes(tmp_path):
    """Reading a checkpoint's record twice hashes its weights once; an edit to either file is seen at once."""
    import json

    import torch

    from lnzoo.checkpoint import save_checkpoint
    from lnzoo.errors import UsageError
    from lnzoo.record import ModelRecord

    meta = {"recipe": {"tasks": {"main": "m"}, "data": {}}, "tasks": {"m": {"name": "m", "classes": ["a", "b"]}},
            "views": ["full"], "preprocessing": {"image_size": 32}}
    weights = save_checkpoint({"w": torch.zeros(3)}, tmp_path / "best", meta)
    first = ModelRecord.read(weights)
    assert ModelRecord.read(weights) is first  # verified once while nothing changes
    edited = json.loads(weights.with_suffix(".json").read_text())
    edited["tasks"]["m"]["classes"] = ["b", "a"]  # the same size: only the content tells
    weights.with_suffix(".json").write_text(json.dumps(edited, indent=2))
    with pytest.raises(UsageError, match="differs from the definition saved with its weights"):
        ModelRecord.read(weights)
