"""Comparing two prediction sets: numbers equal direct calls, case matching, clear errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from scipy.stats import norm

from lnzoo.evaluation.compare import as_json, compare, format_table
from lnzoo.errors import UsageError
from lnzoo.evaluation.metrics import classification_metrics
from lnzoo.evaluation.stats import (
    auc_difference_test,
    delong_ci,
    mcnemar_test,
    paired_bootstrap_auc_diff,
)

N_BOOT = 100
CLASSES = ["benign", "malignant"]


def _delong_p(y, a, b) -> float:
    """Two-sided p of the paired DeLong test from explicit pairwise comparisons (ties: 1/2)."""
    y = np.asarray(y, bool)
    psi = [(s[y][:, None] > s[~y][None]) + 0.5 * (s[y][:, None] == s[~y][None]) for s in (a, b)]
    v10, v01 = np.array([p.mean(1) for p in psi]), np.array([p.mean(0) for p in psi])
    cov = np.cov(v10) / y.sum() + np.cov(v01) / (~y).sum()
    z = (v10[0].mean() - v10[1].mean()) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return float(2 * norm.sf(abs(z)))


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def cases():
    """60 images of 30 patients; two models, B better than A."""
    rng = np.random.default_rng(0)
    patients = np.repeat([f"P{i:02d}" for i in range(30)], 2)
    y = np.repeat(rng.integers(0, 2, 30), 2)
    sa = 1 / (1 + np.exp(-(0.8 * (2 * y - 1) + rng.normal(0, 1.2, y.size))))
    sb = 1 / (1 + np.exp(-(1.6 * (2 * y - 1) + rng.normal(0, 1.0, y.size))))
    ids = [f"img/{p}_{i % 2}.png" for i, p in enumerate(patients)]
    return {"ids": ids, "patients": patients.tolist(), "y": y, "sa": np.round(sa, 6), "sb": np.round(sb, 6)}


def _lnzoo_csv(path, c, score, part="test", order=None):
    header = ["part", "fold", "path", "patient", "source", "malignancy_true", "p_malignancy_benign",
              "p_malignancy_malignant"]
    order = range(len(c["ids"])) if order is None else order
    rows = [[part, "", c["ids"][i], c["patients"][i], "x", CLASSES[c["y"][i]], f"{1 - score[i]:.6f}",
             f"{score[i]:.6f}"] for i in order]
    return _write(path, header, rows)


def _simple_csv(path, c, score, order=None, label=None):
    order = range(len(c["ids"])) if order is None else order
    label = label or (lambda i: CLASSES[c["y"][i]])
    return _write(path, ["id", "label", "p_benign", "p_malignant"],
                  [[c["ids"][i], label(i), f"{1 - score[i]:.6f}", f"{score[i]:.6f}"] for i in order])


def test_binary_result_equals_direct_calls(tmp_path, cases):
    a = _lnzoo_csv(tmp_path / "predictions.csv", cases, cases["sa"])
    b = _simple_csv(tmp_path / "b.csv", cases, cases["sb"])
    r = compare(a, b, n_boot=N_BOOT)
    y = cases["y"]
    sa = np.round(cases["sa"], 6)
    sb = np.round(cases["sb"], 6)
    assert r["task"] == "malignancy" and r["positive"] == "malignant" and r["n"] == 60 and r["n_patients"] == 30
    assert r["a"]["auc"] == pytest.approx(delong_ci(y, sa)[0], abs=1e-12)
    assert r["a"]["auc_ci"] == pytest.approx(list(delong_ci(y, sa)[1:]), abs=1e-12)
    assert r["b"]["auc"] == pytest.approx(delong_ci(y, sb)[0], abs=1e-12)
    d = auc_difference_test(y, sa, sb, groups=cases["patients"])  # both sides know the patients: clustered
    assert r["delong"]["z"] == pytest.approx(d["z"], abs=1e-9)
    assert r["delong"]["p_value"] == pytest.approx(d["p_value"], abs=1e-12)
    assert r["delong"]["clustered"] and "clustered by patient" in r["delong"]["test"]
    assert d["p_value"] != pytest.approx(_delong_p(y, sa, sb))  # the plain test would differ
    boot = paired_bootstrap_auc_diff(y, sa, sb, groups=cases["patients"], n_boot=N_BOOT, seed=0)
    assert r["auc_diff_bootstrap"]["lo"] == boot["lo"] and r["auc_diff_bootstrap"]["hi"] == boot["hi"]
    pa, pb = (sa >= 0.5).astype(int), (sb >= 0.5).astype(int)
    assert r["mcnemar"] == mcnemar_test(y, pa, pb)
    m = classification_metrics(y, np.column_stack([1 - sa, sa]), CLASSES, 1, threshold=0.5)
    for key in ("accuracy", "sensitivity", "specificity"):
        assert r["a"][key]["value"] == pytest.approx(m[key])
    assert r["a"]["threshold"] == 0.5 and not r["a"]["threshold_optimistic"]
    json.loads(as_json(r))
    text = _render(r)
    assert "DeLong" in text and "McNemar" in text


def _render(result) -> str:
    console = Console(width=220, record=True, file=open("/dev/null", "w"))
    console.print(format_table(result))
    return console.export_text()


def test_row_order_does_not_matter(tmp_path, cases):
    a = _lnzoo_csv(tmp_path / "a.csv", cases, cases["sa"])
    b1 = _simple_csv(tmp_path / "b1.csv", cases, cases["sb"])
    shuffled = np.random.default_rng(1).permutation(len(cases["ids"]))
    b2 = _simple_csv(tmp_path / "b2.csv", cases, cases["sb"], order=shuffled)
    r1 = json.loads(as_json(compare(a, b1, n_boot=N_BOOT)))
    r2 = json.loads(as_json(compare(a, b2, n_boot=N_BOOT)))
    for r in (r1, r2):
        r["b"]["source"] = r["b"]["name"] = None
    assert r1 == r2


def test_label_disagreement_names_the_case(tmp_path, cases):
    a = _lnzoo_csv(tmp_path / "a.csv", cases, cases["sa"])
    flipped = cases["ids"][7]
    b = _simple_csv(tmp_path / "b.csv", cases, cases["sb"],
                    label=lambda i: CLASSES[1 - cases["y"][i]] if i == 7 else CLASSES[cases["y"][i]])
    with pytest.raises(UsageError, match="disagree") as exc:
        compare(a, b, n_boot=N_BOOT)
    assert flipped in str(exc.value)


def test_unmatched_cases_raise_unless_intersect(tmp_path, cases):
    a = _lnzoo_csv(tmp_path / "a.csv", cases, cases["sa"])
    b = _simple_csv(tmp_path / "b.csv", cases, cases["sb"], order=range(2, 60))
    with pytest.raises(UsageError, match="do not cover the same cases") as exc:
        compare(a, b, n_boot=N_BOOT)
    assert cases["ids"][0] in str(exc.value) and "intersect" in str(exc.value)
    r = compare(a, b, n_boot=N_BOOT, intersect=True)
    assert r["n"] == 58 and r["matching"]["only_a"] == cases["ids"][:2]
    assert r["a"]["auc"] == pytest.approx(delong_ci(cases["y"][2:], cases["sa"][2:])[0])
    other = _write(tmp_path / "c.csv", ["id", "label", "prob"], [["elsewhere.png", "1", "0.3"]])
    with pytest.raises(UsageError, match="no common cases"):
        compare(a, other, intersect=True)


def test_reader_with_hard_calls(tmp_path, cases):
    """The seed's human-vs-AI case: a reader's 0/1 calls (by file name) against the model."""
    run = tmp_path / "run"
    run.mkdir()
    # the run's file holds CV rows too; the reader read the test set only
    a = _lnzoo_csv(run / "predictions.csv", cases, cases["sa"])
    with a.open("a", newline="") as fh:
        csv.writer(fh).writerow(["cv", "0", "img/other.png", "Q1", "x", "benign", "0.7", "0.3"])
    rng = np.random.default_rng(5)
    calls = np.where(rng.random(60) < 0.8, cases["y"], 1 - cases["y"])
    reader = _write(tmp_path / "reader.csv", ["id", "patient", "label", "score"],
                    [[Path(i).name, p, int(y), int(c)] for i, p, y, c in
                     zip(cases["ids"], cases["patients"], cases["y"], calls)])
    r = compare(run, reader, n_boot=N_BOOT)
    assert r["part"]["a"] == "test" and r["matching"]["key"] == "file name" and r["n"] == 60
    y = cases["y"]
    assert r["b"]["hard_calls"] and r["b"]["threshold"] == 0.5
    sens = np.mean(calls[y == 1] == 1)
    spec = np.mean(calls[y == 0] == 0)
    assert r["b"]["auc"] == pytest.approx((sens + spec) / 2)
    assert r["b"]["sensitivity"]["value"] == pytest.approx(sens)
    assert r["mcnemar"] == mcnemar_test(y, (cases["sa"] >= 0.5).astype(int), calls)
    assert r["delong"]["p_value"] == pytest.approx(
        auc_difference_test(y, cases["sa"], calls, groups=cases["patients"])["p_value"])
    assert any("hard 0/1 calls" in n for n in r["notes"])


def test_explicit_thresholds_and_the_youden_rule(tmp_path, cases):
    a = _lnzoo_csv(tmp_path / "a.csv", cases, cases["sa"])
    b = _simple_csv(tmp_path / "b.csv", cases, cases["sb"])
    r = compare(a, b, n_boot=N_BOOT, threshold_a=0.3, threshold_b=0.7)
    y = cases["y"]
    assert (r["a"]["threshold"], r["b"]["threshold"]) == (0.3, 0.7)
    assert r["mcnemar"] == mcnemar_test(y, (cases["sa"] >= 0.3).astype(int), (cases["sb"] >= 0.7).astype(int))
    r = compare(a, b, n_boot=N_BOOT, threshold_rule="youden")
    assert r["a"]["threshold_optimistic"] and any("optimistic" in n for n in r["notes"])


# a reader's scores that are not probabilities: a BI-RADS-like 2-5 rating, a 0-100 confidence, a logit
READER_SCALES = {
    "birads_2_to_5": lambda z: np.clip(np.round(3.5 + 1.2 * z), 2, 5).astype(int),
    "percent_0_to_100": lambda z: np.round(100 / (1 + np.exp(-2 * z))).astype(int),
    "logit": lambda z: np.round(2 * z, 3),
}


@pytest.mark.parametrize("threshold_b", [None, "middle"], ids=["no threshold", "threshold given"])
@pytest.mark.parametrize("scale", list(READER_SCALES))
def test_a_readers_rating_gets_auc_and_delong_without_a_threshold(tmp_path, cases, scale, threshold_b):
    """AUC and DeLong need no threshold; only the operating-point rows and McNemar do, and they say so."""
    y = cases["y"]
    rng = np.random.default_rng(7)
    rating = READER_SCALES[scale](0.9 * (2 * y - 1) + rng.normal(0, 0.8, y.size))
    assert rating.min() < 0 or rating.max() > 1  # not probabilities: the 0.5 rule cannot apply
    t = None if threshold_b is None else float(np.median(rating))
    a = _lnzoo_csv(tmp_path / "predictions.csv", cases, cases["sa"])
    reader = _write(tmp_path / "reader.csv", ["id", "patient", "label", "score"],
                    [[i, p, CLASSES[c], v] for i, p, c, v in zip(cases["ids"], cases["patients"], y, rating)])
    r = compare(a, reader, n_boot=N_BOOT, threshold_b=t)
    assert r["b"]["auc"] == pytest.approx(delong_ci(y, rating.astype(float))[0], abs=1e-12)
    d = auc_difference_test(y, cases["sa"], rating.astype(float), groups=cases["patients"])
    assert r["delong"]["p_value"] == pytest.approx(d["p_value"], abs=1e-12)
    assert r["a"]["threshold"] == 0.5 and r["a"]["sensitivity"]["value"] is not None  # A keeps its operating point
    text = _render(r)
    assert "AUC (95% DeLong CI)" in text
    if t is None:
        assert r["b"]["threshold"] is None and r["mcnemar"] is None
        assert all(r["b"][k] is None for k in ("accuracy", "sensitivity", "specificity", "ppv", "tp"))
        why = next(n for n in r["notes"] if "0.5 rule does not apply" in n)
        assert f"from {rating.min():g} to {rating.max():g}" in why and "--threshold-b" in why
        assert "none (see below)" in text and "needs both sides' calls" in text
        json.loads(as_json(r))
    else:
        calls = (rating >= t).astype(int)
        assert r["b"]["threshold"] == t and r["b"]["threshold_rule"] == "given"
        assert r["b"]["sensitivity"]["value"] == pytest.approx(np.mean(calls[y == 1] == 1))
        assert r["b"]["specificity"]["value"] == pytest.approx(np.mean(calls[y == 0] == 0))
        assert r["mcnemar"] == mcnemar_test(y, (cases["sa"] >= 0.5).astype(int), calls)
        assert not any("0.5 rule does not apply" in n for n in r["notes"])
    if scale == "birads_2_to_5":
        assert any("4 score levels (2, 3, 4, 5)" in n and "3 operating points" in n for n in r["notes"])


def test_lnzoo_compare_with_a_birads_reader_prints_auc_and_delong(tmp_path, cases):
    from tests.conftest import invoke_cli

    y = cases["y"]
    rating = np.clip(np.round(3.5 + 1.2 * (2 * y - 1) + np.random.default_rng(3).normal(0, 0.9, y.size)), 2, 5)
    a = _lnzoo_csv(tmp_path / "predictions.csv", cases, cases["sa"])
    reader = _write(tmp_path / "reader.csv", ["id", "label", "score"],
                    [[i, CLASSES[c], int(v)] for i, c, v in zip(cases["ids"], y, rating)])
    done = invoke_cli("compare", a, reader, "--n-boot", "50")
    assert done.returncode == 0, done.stderr
    assert "AUC (95% DeLong CI)" in done.stdout and "--threshold-b" in done.stdout.replace("\n", " ")
    done = invoke_cli("compare", a, reader, "--n-boot", "50", "--threshold-b", "4", "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["b"]["threshold"] == 4 and got["mcnemar"] is not None


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")
def test_multiclass_per_class_delong_and_mcnemar_on_argmax(tmp_path):
    rng = np.random.default_rng(2)
    classes = ["lung", "breast", "other"]
    y = rng.integers(0, 3, 45)

    def proba(strength):
        z = rng.normal(0, 1, (45, 3))
        z[np.arange(45), y] += strength
        return np.round(np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), 6)

    pa, pb = proba(1.0), proba(2.0)
    header = ["id", "label", *[f"p_{c}" for c in classes]]
    a = _write(tmp_path / "a.csv", header, [[f"c{i}", classes[y[i]], *pa[i]] for i in range(45)])
    # B lists its class columns in another order: matched by name
    b = _write(tmp_path / "b.csv", ["id", "label", "p_other", "p_lung", "p_breast"],
               [[f"c{i}", classes[y[i]], pb[i, 2], pb[i, 0], pb[i, 1]] for i in range(45)])
    r = compare(a, b, n_boot=N_BOOT)
    assert not r["binary"] and r["classes"] == classes
    assert r["a"]["auc"] == pytest.approx(classification_metrics(y, pa, classes)["auc"])
    assert r["b"]["auc"] == pytest.approx(classification_metrics(y, pb, classes)["auc"])
    for j, c in enumerate(classes):
        assert r["per_class"][c]["p_value"] == pytest.approx(_delong_p(y == j, pa[:, j], pb[:, j]))
    assert r["mcnemar"] == mcnemar_test(y, pa.argmax(1), pb.argmax(1))
    assert "AUC breast" in _render(r)
    with pytest.raises(UsageError, match="binary tasks only"):
        compare(a, b, threshold_a=0.5)


def test_missing_columns_are_named(tmp_path, cases):
    a = _lnzoo_csv(tmp_path / "a.csv", cases, cases["sa"])
    no_prob = _write(tmp_path / "noprob.csv", ["id", "label", "confidence"], [[cases["ids"][0], "benign", "0.2"]])
    with pytest.raises(UsageError, match="noprob.csv: no probability column.*prob"):
        compare(a, no_prob)
    no_label = _write(tmp_path / "nolabel.csv", ["id", "prob"], [[cases["ids"][0], "0.2"]])
    with pytest.raises(UsageError, match="nolabel.csv: no label column"):
        compare(a, no_label)
    no_id = _write(tmp_path / "noid.csv", ["case", "label", "prob"], [["x", "1", "0.2"]])
    with pytest.raises(UsageError, match="noid.csv: no case id column"):
        compare(a, no_id)
    with pytest.raises(UsageError, match="no such run directory"):
        compare(a, tmp_path / "missing.csv")
