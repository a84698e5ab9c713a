"""The evidence a paper needs from a run: decision curves (net benefit against treat-all and treat-none) and
performance in subgroups (declared columns and numeric bands), in evaluation.json, the report and the model card."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lnzoo.evaluation.cases import Cases
from lnzoo.evaluation.subgroups import (
    MIN_PER_CLASS,
    band_of,
    band_problems,
    calibration_slope,
    group_values,
    subgroup_analysis,
)
from lnzoo.evaluation.utility import THRESHOLDS, decision_curve, net_benefit, treat_all
from tests.conftest import invoke_cli


def _by_hand(y, p, t):
    """Net benefit counted case by case, the way Vickers & Elkin define it."""
    n = len(y)
    tp = sum(1 for yi, pi in zip(y, p) if pi >= t and yi)
    fp = sum(1 for yi, pi in zip(y, p) if pi >= t and not yi)
    return tp / n - fp / n * (t / (1 - t))


@pytest.mark.parametrize("seed", range(6))
def test_net_benefit_is_true_minus_weighted_false_positives_at_every_threshold(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    p = np.round(np.clip(0.5 * y + rng.normal(0.25, 0.25, n), 0, 1), 2)  # rounded: ties with the thresholds
    got = net_benefit(y, p)
    want = [_by_hand(y.tolist(), p.tolist(), t) for t in THRESHOLDS]
    assert np.allclose(got, want, atol=1e-12)
    assert np.allclose(treat_all(y.mean()), [_by_hand(y.tolist(), [1.0] * n, t) for t in THRESHOLDS])


def test_the_strategies_meet_where_decision_theory_says_they_do():
    y = np.array([1] * 30 + [0] * 70, bool)
    assert abs(treat_all(0.3, [0.3])[0]) < 1e-12  # treat-all is worth nothing at t = prevalence
    perfect = net_benefit(y, y.astype(float))
    assert np.allclose(perfect, 0.3)  # a perfect model: the prevalence at every threshold
    coin = net_benefit(y, np.full(100, 0.5))
    assert np.allclose(coin[THRESHOLDS <= 0.5], treat_all(0.3, THRESHOLDS[THRESHOLDS <= 0.5]))
    assert np.allclose(coin[THRESHOLDS > 0.5], 0.0)  # calls nobody: treat none
    dc = decision_curve(y, y.astype(float), operating_threshold=0.4)
    assert dc["useful_range"] == [0.01, 0.99] and dc["at_operating_point"]["model"] == pytest.approx(0.3)
    assert decision_curve(y, np.full(100, 0.5))["useful_range"] is None  # never better than both defaults


@pytest.mark.parametrize("text,band", [("39.9", "< 40"), ("40", "40 to < 60"), ("59", "40 to < 60"),
                                       ("60", ">= 60"), ("87", ">= 60"), ("", "missing"), ("n/a", "missing"),
                                       ("nan", "missing"), (None, "missing"), (" 41 ", "40 to < 60")])
def test_a_numeric_column_falls_into_its_declared_band(text, band):
    assert band_of(text, [40, 60]) == band


@pytest.mark.parametrize("bands,fragment", [
    ({"age_band": {"column": "age"}}, "needs column"),
    ({"age_band": {"column": "age", "cuts": [60, 40]}}, "must increase"),
    ({"age_band": {"column": "age", "cuts": ["forty"]}}, "a list of numbers"),
    ({"age_band": {"column": "age", "cuts": [40], "width": 5}}, "unknown key"),
    ({"other": {"column": "age", "cuts": [40]}}, "add 'other' to data.subgroups"),
    ("age", "a table of"),
])
def test_a_wrong_band_declaration_is_named(bands, fragment):
    problems = band_problems(["age_band"], bands)
    assert any(fragment in p for p in problems), problems
    assert band_problems(["age_band"], {"age_band": {"column": "age", "cuts": [40, 60]}}) == []


def test_a_sample_gives_its_band_its_centre_and_its_cells():
    from lnzoo.testing import make_row

    sample = make_row({"path": "a.png", "patient": "P1", "age": "52", "sex": "F", "center": "Leeds"})
    got = group_values(sample, ["age_band", "sex", "scanner", "center"],
                       {"age_band": {"column": "age", "cuts": [40, 60]}})
    assert got == {"age_band": "40 to < 60", "sex": "F", "scanner": "missing", "center": "Leeds"}


def _cases(y, p, groups, patient=None):
    p = np.asarray(p, float)
    proba = np.stack([1 - p, p], 1)
    n = len(y)
    return Cases(np.asarray(y, int), proba, np.asarray(patient or [f"p{i}" for i in range(n)], object),
                 np.array(["cv"] * n, object), np.zeros(n, int), None, proba, "calibrated",
                 {k: np.asarray(v, object) for k, v in groups.items()})


def test_subgroups_give_each_value_its_figures_say_when_too_few_and_name_the_largest_gap():
    rng = np.random.default_rng(0)
    n = 400
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    y = rng.random(n) < 0.4
    noise = np.where(sex == "F", 0.15, 0.45)  # the model is far better for F
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, noise), 0.001, 0.999)
    site = np.where(np.arange(n) < 6, "tiny", "big")  # 6 images: too few of some class
    out = subgroup_analysis(_cases(y, p, {"sex": sex, "site": site}), 1, 0.5, n_boot=50, seed=0)
    f, m = out["sex"]["groups"]["F"], out["sex"]["groups"]["M"]
    assert f["n"] + m["n"] == n and f["auc"]["auc"] > m["auc"]["auc"] + 0.1
    assert f["auc"]["lo"] <= f["auc"]["auc"] <= f["auc"]["hi"]
    assert out["sex"]["largest_gap"]["between"] == ["F", "M"]
    assert out["sex"]["largest_gap"]["gap"] == pytest.approx(f["auc"]["auc"] - m["auc"]["auc"])
    mask = sex == "F"
    assert f["sensitivity"] == pytest.approx(np.mean(p[mask & y] >= 0.5))
    assert f["specificity"] == pytest.approx(np.mean(p[mask & ~y] < 0.5))
    tiny = out["site"]["groups"]["tiny"]
    assert tiny["auc"] is None and tiny["sensitivity"] is None and f"fewer than {MIN_PER_CLASS}" in tiny["too_few"]
    assert out["site"]["largest_gap"] is None  # one subgroup with figures: no gap to name


def test_calibration_slope_is_one_for_calibrated_probabilities_and_below_one_for_overconfident_ones():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, 20000)
    true = 1 / (1 + np.exp(-z))
    y = rng.random(z.size) < true
    assert calibration_slope(y, true) == pytest.approx(1.0, abs=0.06)
    overconfident = 1 / (1 + np.exp(-2 * z))
    assert calibration_slope(y, overconfident) == pytest.approx(0.5, abs=0.05)
    assert np.isnan(calibration_slope(np.ones(5, bool), np.linspace(0.1, 0.9, 5)))


def test_evaluation_carries_the_decision_curve_and_the_subgroups_of_the_rows_group_columns():
    from lnzoo.evaluation.evaluate import evaluate_predictions

    rng = np.random.default_rng(2)
    rows = []
    for i in range(120):
        y = int(rng.random() < 0.5)
        p = float(np.clip(0.5 + (0.3 if y else -0.3) + rng.normal(0, 0.2), 0.01, 0.99))
        rows.append({"part": "cv", "fold": str(i % 3), "patient": f"P{i // 2}", "center": "",
                     "group_sex": "F" if i % 4 < 2 else "M", "malignancy_true": ["benign", "malignant"][y],
                     "p_malignancy_benign": f"{1 - p:.6f}", "p_malignancy_malignant": f"{p:.6f}"})
    meta = {"malignancy": {"classes": ["benign", "malignant"], "positive": "malignant"}}
    level = evaluate_predictions(rows, meta, n_boot=30)["tasks"]["malignancy"]["levels"]["image"]
    dc = level["decision_curve"]["cv"]
    youden = level["operating_points"]["rules"]["youden"]["threshold"]
    assert dc["at_operating_point"]["threshold"] == youden and dc["n"] == 120
    assert set(level["subgroups"]["cv"]["sex"]["groups"]) == {"F", "M"}
    for row in rows:
        del row["group_sex"]
    assert "subgroups" not in evaluate_predictions(rows, meta, n_boot=10)["tasks"]["malignancy"]["levels"]["image"]


@pytest.mark.slow
def test_a_run_with_subgroups_shows_them_and_its_decision_curve_in_the_report_and_the_card(tmp_path):
    from tests.conftest import REPO, TINY

    sets = [*TINY, "cv.run_folds=[0]", "data.phantom.source='manifest'", "data.subgroups=['sex', 'age_band']",
            "data.subgroup_bands={age_band={column='age', cuts=[50]}}"]
    done = invoke_cli("run", REPO / "recipes" / "stage1_aux.toml", "--quick", *[x for s in sets for x in ("--set", s)],
                      "--n-boot", "20", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    header = (tmp_path / "run" / "predictions.csv").read_text().splitlines()[0].split(",")
    assert "group_sex" in header and "group_age_band" in header
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    level = evaluation["tasks"]["malignancy"]["levels"]["image"]
    assert set(level["subgroups"]["cv"]["age_band"]["groups"]) <= {"< 50", ">= 50", "missing"}
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "id='decision-curve'" in html and "id='subgroups'" in html and "id='tripod'" in html
    tripod = (tmp_path / "run" / "tripod_ai.md").read_text(encoding="utf-8")
    assert "TRIPOD+AI" in tripod and "| 23a |" in tripod.replace("|23a|", "| 23a |")
    exported = invoke_cli("export", tmp_path / "run", "--out", tmp_path / "bundle")
    assert exported.returncode == 0, exported.stderr
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Clinical utility (decision curve)" in card and "## Subgroups" in card and "| sex |" in card
    typo = invoke_cli("validate", REPO / "recipes" / "stage1_aux.toml", "--quick", "--set",
                      "data.phantom.source='manifest'", "--set", "data.subgroups=['gender']")
    assert typo.returncode == 2 and "data.subgroups: 'gender': no row has a column 'gender'" in " ".join(typo.stderr.split())
