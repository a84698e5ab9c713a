"""lnzoo.stats: DeLong against a direct O(n^2) computation, patient bootstrap, McNemar."""
import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from sklearn.metrics import accuracy_score, roc_auc_score

from lnzoo.evaluation.stats import (
    auc_difference_test,
    bootstrap_ci,
    delong_ci,
    delong_roc_variance,
    binary_auc,
    mcnemar_test,
    paired_bootstrap_auc_diff,
)


def _naive_delong(y, scores):
    """DeLong 1988 structural components from explicit pairwise comparisons (ties count 1/2)."""
    y = np.asarray(y, bool)
    v10s, v01s, aucs = [], [], []
    for s in scores:
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    m, n = y.sum(), (~y).sum()
    k = len(scores)
    s10 = np.array([[np.sum((v10s[a] - aucs[a]) * (v10s[b] - aucs[b])) / (m - 1) for b in range(k)] for a in range(k)])
    s01 = np.array([[np.sum((v01s[a] - aucs[a]) * (v01s[b] - aucs[b])) / (n - 1) for b in range(k)] for a in range(k)])
    return np.array(aucs), s10 / m + s01 / n


def _tied_data(rng, n=160):
    y = rng.integers(0, 2, n)
    a = np.round(rng.normal(size=n) + 0.8 * y, 1)  # coarse rounding: many ties within and across classes
    b = np.round(0.6 * a + rng.normal(size=n) * 0.8 + 0.2 * y, 1)
    return y, a, b


def test_delong_auc_equals_sklearn():
    rng = np.random.default_rng(0)
    y, a, _ = _tied_data(rng)
    auc, var = delong_roc_variance(y, a)
    assert auc == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert var > 0
    assert binary_auc(y, a) == pytest.approx(roc_auc_score(y, a), abs=1e-12)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_delong_matches_direct_structural_components(seed):
    rng = np.random.default_rng(seed)
    y, a, b = _tied_data(rng, n=120 + 37 * seed)
    aucs, s = _naive_delong(y, [a, b])
    _, var_a = delong_roc_variance(y, a)
    assert var_a == pytest.approx(s[0, 0], abs=1e-10)
    r = auc_difference_test(y, a, b)  # with two classes and no patients: the paired DeLong test
    z = (aucs[0] - aucs[1]) / math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])  # the covariance enters z
    assert r["auc_a"] == pytest.approx(aucs[0], abs=1e-12)
    assert r["auc_b"] == pytest.approx(aucs[1], abs=1e-12)
    assert r["se_a"] ** 2 == pytest.approx(s[0, 0], abs=1e-10)
    assert r["se_b"] ** 2 == pytest.approx(s[1, 1], abs=1e-10)
    assert r["z"] == pytest.approx(z, abs=1e-10)
    assert r["p_value"] == pytest.approx(2 * norm.sf(abs(z)), abs=1e-10)
    assert r["diff"] == pytest.approx(aucs[0] - aucs[1], abs=1e-12)


def test_delong_identical_and_very_different_scores():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 200)
    good = y + rng.normal(scale=0.3, size=200)
    same = auc_difference_test(y, good, good.copy())
    assert same["diff"] == 0.0 and same["z"] == 0.0 and same["p_value"] == 1.0
    noise = rng.normal(size=200)
    diff = auc_difference_test(y, good, noise)
    assert diff["auc_a"] > 0.95 and diff["p_value"] < 1e-8
    # the test is two-sided: swapping the scores flips z, not p
    swapped = auc_difference_test(y, noise, good)
    assert swapped["z"] == pytest.approx(-diff["z"]) and swapped["p_value"] == pytest.approx(diff["p_value"])


def test_delong_ci_is_plain_normal_interval():
    rng = np.random.default_rng(5)
    y, a, _ = _tied_data(rng)
    auc, var = delong_roc_variance(y, a)
    est, lo, hi = delong_ci(y, a)
    assert est == auc
    assert lo == pytest.approx(auc - norm.ppf(0.975) * math.sqrt(var), abs=1e-12)
    assert hi == pytest.approx(auc + norm.ppf(0.975) * math.sqrt(var), abs=1e-12)
    _, lo90, hi90 = delong_ci(y, a, alpha=0.1)
    assert lo < lo90 < auc < hi90 < hi
    # a near-perfect classifier is clipped at 1
    y2 = np.r_[np.zeros(30), np.ones(30)]
    s2 = np.r_[np.linspace(0, 1, 30), np.linspace(0.97, 2, 30)]
    assert delong_ci(y2, s2)[2] == 1.0


def test_fast_auc_undefined_for_one_class():
    assert math.isnan(binary_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert binary_auc([0, 1, 0, 1], np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.5, 0.5]])) == 0.875


def _auc_metric(y, p):
    return binary_auc(y, p)


def test_bootstrap_deterministic_and_contains_estimate():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 300)
    p = 1 / (1 + np.exp(-(y + rng.normal(size=300))))
    r1 = bootstrap_ci(_auc_metric, y, p, n_boot=300, seed=3)
    r2 = bootstrap_ci(_auc_metric, y, p, n_boot=300, seed=3)
    r3 = bootstrap_ci(_auc_metric, y, p, n_boot=300, seed=4)
    assert r1 == r2
    assert r1 != r3
    assert r1["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert r1["lo"] < r1["value"] < r1["hi"]
    assert r1["n_boot_valid"] == 300
    # roughly agrees with the DeLong interval on the same data
    _, dlo, dhi = delong_ci(y, p)
    assert r1["hi"] - r1["lo"] == pytest.approx(dhi - dlo, rel=0.25)


def test_bootstrap_singleton_groups_equal_image_level():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 120)
    p = rng.random(120)
    ids = [f"p{i}" for i in range(120)]
    assert bootstrap_ci(_auc_metric, y, p, groups=ids, n_boot=200) == bootstrap_ci(_auc_metric, y, p, n_boot=200)


def test_bootstrap_duplicated_patient_does_not_shrink_interval():
    rng = np.random.default_rng(8)
    n_pat = 60
    y = rng.integers(0, 2, n_pat)
    pred = np.where(rng.random(n_pat) < 0.75, y, 1 - y)  # a 75%-accurate classifier
    pred[0] = y[0]
    ids = np.arange(n_pat)
    # patient 0 contributes 50 identical images (same label, same prediction)
    y_img = np.r_[np.repeat(y[0], 50), y[1:]]
    p_img = np.r_[np.repeat(pred[0], 50), pred[1:]]
    g_img = np.r_[np.repeat(ids[0], 50), ids[1:]]

    def acc(yy, pp):
        return accuracy_score(yy, pp)

    image_level = bootstrap_ci(acc, y_img, p_img, n_boot=500, seed=0)
    patient_level = bootstrap_ci(acc, y_img, p_img, groups=g_img, n_boot=500, seed=0)
    one_image_each = bootstrap_ci(acc, y, pred, n_boot=500, seed=0)
    w_img = image_level["hi"] - image_level["lo"]
    w_pat = patient_level["hi"] - patient_level["lo"]
    w_ref = one_image_each["hi"] - one_image_each["lo"]
    # treating the 50 copies as independent evidence makes the interval spuriously narrow ...
    assert w_img < 0.8 * w_ref
    # ... resampling patients does not
    assert w_pat > 1.5 * w_img
    assert w_pat >= 0.9 * w_ref


def test_bootstrap_skips_undefined_resamples():
    y = np.r_[np.ones(2, int), np.zeros(18, int)]
    p = np.linspace(0, 1, 20)
    r = bootstrap_ci(_auc_metric, y, p, n_boot=400, seed=1)
    # P(no positive in a resample of 20) = 0.9**20 ~ 12%
    assert 250 < r["n_boot_valid"] < 400
    assert 0.0 <= r["lo"] <= r["hi"] <= 1.0

    def raising(yy, pp):
        if yy.all() or not yy.any():
            raise ValueError("one class")
        return binary_auc(yy, pp)

    assert bootstrap_ci(raising, y, p, n_boot=400, seed=1) == r


def test_paired_bootstrap_auc_diff():
    rng = np.random.default_rng(10)
    y = rng.integers(0, 2, 200)
    good = y + rng.normal(scale=0.5, size=200)
    bad = y + rng.normal(scale=3.0, size=200)
    r = paired_bootstrap_auc_diff(y, good, bad, n_boot=300)
    assert r["diff"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, bad), abs=1e-12)
    assert 0 < r["lo"] < r["diff"] < r["hi"]
    assert r["p_value"] < 0.01
    same = paired_bootstrap_auc_diff(y, good, good, n_boot=50)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0


def _mcnemar_case(b, c, both_right=10, both_wrong=3):
    """Labels and two prediction vectors with exactly b (A right, B wrong) and c (A wrong, B right) discordant cases."""
    y = np.ones(b + c + both_right + both_wrong, int)
    pa = np.r_[np.ones(b), np.zeros(c), np.ones(both_right), np.zeros(both_wrong)].astype(int)
    pb = np.r_[np.zeros(b), np.ones(c), np.ones(both_right), np.zeros(both_wrong)].astype(int)
    return y, pa, pb


def test_mcnemar_exact_hand_example():
    r = mcnemar_test(*_mcnemar_case(1, 6))
    assert (r["b"], r["c"], r["exact"]) == (1, 6, True)
    # P(X <= 1) for X ~ Bin(7, 1/2) is (1 + 7) / 128; two-sided doubles it
    assert r["p_value"] == pytest.approx(16 / 128, abs=1e-12)
    assert r["statistic"] == 1


@pytest.mark.parametrize("b,c", [(0, 0), (0, 5), (3, 3), (2, 9), (12, 4), (11, 13), (0, 24)])
def test_mcnemar_exact_matches_scipy_binomtest(b, c):
    r = mcnemar_test(*_mcnemar_case(b, c))
    assert r["exact"]
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert r["p_value"] == pytest.approx(expected, abs=1e-12)


def test_mcnemar_chi_square_with_continuity_correction():
    r = mcnemar_test(*_mcnemar_case(10, 25))
    assert not r["exact"]
    assert r["statistic"] == pytest.approx((15 - 1) ** 2 / 35, abs=1e-12)  # = 5.6
    # chi-square with 1 dof is a squared standard normal
    assert r["p_value"] == pytest.approx(2 * norm.sf(math.sqrt(5.6)), abs=1e-12)
    # symmetric in which model is called A
    assert mcnemar_test(*_mcnemar_case(25, 10))["p_value"] == pytest.approx(r["p_value"])


def test_auc_difference_test_is_delong_for_two_classes_and_macro_for_more():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 150)
    a, b = y + rng.normal(0, 1, 150), y + rng.normal(0, 1.4, 150)
    ours, (aucs, s) = auc_difference_test(y, a, b), _naive_delong(y, [a, b])
    z = (aucs[0] - aucs[1]) / math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    assert ours["p_value"] == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)
    assert ours["auc_a"] == pytest.approx(aucs[0])
    y4 = rng.integers(0, 4, 200)
    pa = rng.dirichlet(np.ones(4), 200)
    pa[np.arange(200), y4] += 0.4
    pa /= pa.sum(1, keepdims=True)
    pb = rng.dirichlet(np.ones(4), 200)
    res = auc_difference_test(y4, pa, pb)
    assert res["auc_a"] == pytest.approx(roc_auc_score(y4, pa, multi_class="ovr", average="macro"))
    assert res["classes"] == 4 and res["p_value"] < 1e-6


def test_clustered_auc_test_does_not_count_copies_of_a_patient_as_new_evidence():
    from lnzoo.evaluation.stats import auc_difference_test

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 120)
    a, b = y + rng.normal(0, 1, 120), y + rng.normal(0, 1.3, 120)
    once = auc_difference_test(y, a, b, groups=np.arange(120))
    thrice = [np.repeat(v, 3) for v in (y, a, b)]
    plain3 = auc_difference_test(*thrice)
    clustered3 = auc_difference_test(*thrice, groups=np.repeat(np.arange(120), 3))
    assert clustered3["p_value"] == pytest.approx(once["p_value"], rel=1e-6)
    assert plain3["p_value"] < once["p_value"]  # the unclustered test is fooled by the copies
