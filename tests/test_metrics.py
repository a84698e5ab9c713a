"""lnzoo.metrics agrees with scikit-learn, picks sensible thresholds, and calibrates."""
import json
import math

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    log_loss,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)

from lnzoo.evaluation.metrics import (
    aggregate_by_group,
    apply_temperature,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
    threshold_for_sensitivity,
    youden_threshold,
)


def _random_task(rng, n, k, labels=None):
    y = rng.integers(0, k, n) if labels is None else rng.choice(labels, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0  # informative but imperfect, so every metric is non-trivial
    return y, softmax(logits, axis=1)


def test_binary_metrics_equal_sklearn():
    rng = np.random.default_rng(1)
    y, p = _random_task(rng, 300, 2)
    m = classification_metrics(y, p, ["benign", "malignant"])
    pred = p.argmax(1)
    assert m["n"] == 300
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(y, pred), abs=1e-12)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert m["precision"] == pytest.approx(precision_score(y, pred), abs=1e-12)
    assert m["recall"] == pytest.approx(recall_score(y, pred), abs=1e-12)
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred), abs=1e-12)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, pred), abs=1e-12)
    assert m["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p[:, 1]), abs=1e-12)
    cm = confusion_matrix(y, pred)
    assert m["confusion_matrix"] == cm.tolist()
    (tn, fp), (fn, tp) = cm
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-12)
    assert m["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
    assert m["ppv"] == pytest.approx(tp / (tp + fp), abs=1e-12)
    assert m["npv"] == pytest.approx(tn / (tn + fn), abs=1e-12)
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, pos_label=1), abs=1e-12)
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0), abs=1e-12)
    assert m["threshold"] == 0.5
    json.dumps(m)  # flat, JSON-serialisable


def test_binary_threshold_and_positive_index():
    rng = np.random.default_rng(2)
    y, p = _random_task(rng, 200, 2)
    p[0] = [0.3, 0.7]  # exactly at the threshold below: counts as positive
    m = classification_metrics(y, p, ["malignant", "benign"], positive_index=0, threshold=0.3)
    pred = np.where(p[:, 0] >= 0.3, 0, 1)
    assert pred[0] == 0
    assert m["threshold"] == 0.3
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, pos_label=0), abs=1e-12)
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=1), abs=1e-12)
    assert m["ppv"] == pytest.approx(precision_score(y, pred, pos_label=0), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(y, pred, pos_label=0), abs=1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(y == 0, p[:, 0]), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y == 0, p[:, 0]), abs=1e-12)
    # a different threshold really changes the predictions
    m2 = classification_metrics(y, p, ["malignant", "benign"], positive_index=0, threshold=0.9)
    assert m2["sensitivity"] < m["sensitivity"]


def test_threshold_rejected_for_multiclass():
    y, p = _random_task(np.random.default_rng(0), 20, 3)
    with pytest.raises(ValueError):
        classification_metrics(y, p, ["a", "b", "c"], threshold=0.5)


def test_multiclass_metrics_equal_sklearn():
    rng = np.random.default_rng(3)
    y, p = _random_task(rng, 400, 4)
    classes = ["a", "b", "c", "d"]
    m = classification_metrics(y, p, classes)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    for j, c in enumerate(classes):
        assert m["auc_per_class"][c] == pytest.approx(roc_auc_score(y == j, p[:, j]), abs=1e-12)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert m["precision_macro"] == pytest.approx(precision_score(y, pred, average="macro"), abs=1e-12)
    assert m["recall_macro"] == pytest.approx(recall_score(y, pred, average="macro"), abs=1e-12)
    np.testing.assert_allclose([m["f1_per_class"][c] for c in classes], f1_score(y, pred, average=None), atol=1e-12)
    np.testing.assert_allclose([m["precision_per_class"][c] for c in classes],
                               precision_score(y, pred, average=None), atol=1e-12)
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred), abs=1e-12)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, pred), abs=1e-12)
    assert m["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-12)
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    ovr_brier = np.mean([brier_score_loss(y == j, p[:, j]) for j in range(4)])
    assert m["brier"] == pytest.approx(ovr_brier, abs=1e-12)
    assert "sensitivity" not in m
    json.dumps(m)


def test_absent_class_keeps_full_confusion_matrix():
    rng = np.random.default_rng(4)
    y, p3 = _random_task(rng, 150, 3)
    p = np.column_stack([p3, np.zeros(150)])  # class "d" neither occurs nor is predicted
    classes = ["a", "b", "c", "d"]
    m = classification_metrics(y, p, classes)
    pred = p.argmax(1)
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (4, 4)
    assert (cm[3] == 0).all() and (cm[:, 3] == 0).all()
    assert cm.tolist() == confusion_matrix(y, pred, labels=[0, 1, 2, 3]).tolist()
    assert math.isnan(m["auc_per_class"]["d"])
    assert m["auc"] == pytest.approx(np.mean([roc_auc_score(y == j, p[:, j]) for j in range(3)]), abs=1e-12)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert math.isnan(m["f1_per_class"]["d"])
    assert m["log_loss"] == pytest.approx(log_loss(y, p, labels=[0, 1, 2, 3]), abs=1e-12)


def test_single_class_auc_is_nan_not_error():
    p = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    m = classification_metrics(np.array([1, 1, 1]), p, ["neg", "pos"])
    assert math.isnan(m["auc"])
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert math.isnan(m["specificity"])


def test_threshold_for_sensitivity_is_highest_reaching_target():
    rng = np.random.default_rng(5)
    for target in (0.8, 0.9, 0.95, 1.0):
        y = rng.integers(0, 2, 301)
        score = np.round(rng.normal(size=301) + y, 1)  # rounding creates ties
        t = threshold_for_sensitivity(y, score, target)
        assert np.mean(score[y == 1] >= t) >= target
        higher = score[score > t]
        if higher.size:  # the next observed score up no longer reaches the target
            assert np.mean(score[y == 1] >= higher.min()) < target


def test_threshold_for_sensitivity_hand_example():
    y = [0, 1, 1, 0, 1, 1]
    s = [0.1, 0.2, 0.4, 0.5, 0.7, 0.9]
    assert threshold_for_sensitivity(y, s, 0.75) == 0.4  # 3 of 4 positives at >= 0.4
    assert threshold_for_sensitivity(y, s, 0.76) == 0.2
    assert threshold_for_sensitivity(y, s, 0.5) == 0.7


def test_youden_hand_example():
    y = [0, 0, 0, 1, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    # t=0.6: sens 4/5, spec 4/4 -> J=0.8; t=0.4: sens 1, spec 3/4 -> J=0.75
    assert youden_threshold(y, s) == 0.6

    def j(t):
        pred = np.asarray(s) >= t
        yy = np.asarray(y, bool)
        return pred[yy].mean() + (~pred[~yy]).mean() - 1

    assert j(0.6) == pytest.approx(max(j(t) for t in s))
    # equal J at 0.4 and 0.6: the higher threshold is returned
    assert youden_threshold([0, 0, 0, 1, 0, 1, 1, 1], s[:8]) == 0.6


def test_ece_zero_when_calibrated_by_construction():
    # three bins whose accuracy equals their (constant) confidence exactly
    conf = np.r_[np.full(10, 0.6), np.full(10, 0.8), np.full(5, 1.0)]
    correct = np.r_[np.arange(10) < 6, np.arange(10) < 8, np.ones(5, bool)]
    p1 = conf.copy()  # predicted class is always 1 with this confidence
    y = np.where(correct, 1, 0)
    assert expected_calibration_error(y, p1) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(y, np.column_stack([1 - p1, p1]), n_bins=10) == pytest.approx(0.0, abs=1e-12)
    # the same labels with a shifted confidence are miscalibrated by exactly that shift
    shifted = np.r_[np.full(10, 0.7), np.full(10, 0.9), np.full(5, 1.0)]
    assert expected_calibration_error(y, shifted) == pytest.approx(20 * 0.1 / 25, abs=1e-12)


def test_ece_positive_for_overconfident_model():
    rng = np.random.default_rng(6)
    logit = rng.normal(size=20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-logit))).astype(int)
    calibrated = 1 / (1 + np.exp(-logit))
    overconfident = 1 / (1 + np.exp(-3 * logit))
    assert expected_calibration_error(y, calibrated) < 0.02
    assert expected_calibration_error(y, overconfident) > 0.08


def test_reliability_curve_consistent_with_ece():
    rng = np.random.default_rng(7)
    y, p = _random_task(rng, 500, 3)
    rc = reliability_curve(y, p, n_bins=10)
    assert len(rc["bin_edges"]) == 11 and len(rc["count"]) == 10
    assert sum(rc["count"]) == 500
    assert rc["ece"] == pytest.approx(expected_calibration_error(y, p, n_bins=10), abs=1e-12)
    conf, acc, cnt = (np.array(rc[k], float) for k in ("confidence", "accuracy", "count"))
    filled = cnt > 0
    assert np.nansum(cnt[filled] * np.abs(acc[filled] - conf[filled])) / 500 == pytest.approx(rc["ece"], abs=1e-12)
    assert np.isnan(conf[~filled]).all()  # bins below 1/3 confidence cannot be filled with 3 classes
    json.dumps(rc)


def test_temperature_fit_recovers_known_temperature():
    rng = np.random.default_rng(8)
    n, k, true_t = 20000, 4, 2.5
    logits = rng.normal(scale=4.0, size=(n, k))
    p = softmax(logits / true_t, axis=1)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(true_t, rel=0.08)
    cal = apply_temperature(logits, t)
    np.testing.assert_allclose(cal.sum(1), 1.0)
    assert log_loss(y, cal) < log_loss(y, softmax(logits, axis=1))


def test_temperature_binary_single_logit():
    rng = np.random.default_rng(9)
    z = rng.normal(scale=3.0, size=20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-z / 0.5))).astype(int)  # data sharper than the logits: T < 1
    t = fit_temperature(z, y)
    assert t == pytest.approx(0.5, rel=0.08)
    p = apply_temperature(z, 2.0)
    assert p.shape == (20000, 2)
    np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-z / 2.0)))


def test_aggregate_by_group_means_and_order():
    groups = np.array(["p2", "p1", "p2", "p3", "p1"])
    y = np.array([0, 1, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.4, 0.6]])
    ids, yg, pg = aggregate_by_group(groups, y, proba)
    assert ids.tolist() == ["p2", "p1", "p3"]
    assert yg.tolist() == [0, 1, 1]
    np.testing.assert_allclose(pg, [[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    ids, yg, pg = aggregate_by_group([7, 7, 3], [1, 1, 0], [0.2, 0.4, 0.9])
    assert ids.tolist() == [7, 3]
    np.testing.assert_allclose(pg, [0.3, 0.9])


def test_aggregate_by_group_rejects_conflicting_labels():
    with pytest.raises(ValueError, match="patient-17"):
        aggregate_by_group(["patient-3", "patient-17", "patient-17"], [0, 1, 0],
                           np.full((3, 2), 0.5))
