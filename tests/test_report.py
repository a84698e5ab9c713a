"""Evaluation report: numbers equal the metric functions, CV-chosen thresholds, self-contained HTML."""
from __future__ import annotations

import base64
import html
import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from lnzoo.errors import UsageError
from lnzoo.evaluation.metrics import aggregate_by_group, classification_metrics, threshold_for_sensitivity, youden_threshold
from lnzoo.evaluation.evaluate import choose_threshold, evaluate_predictions
from lnzoo.report import write_report
from lnzoo.report.html import gradcam_section
from lnzoo.evaluation.stats import bootstrap_ci
from tests.conftest import REPO

N_BOOT = 100
MAL = {"classes": ["benign", "malignant"], "positive": "malignant"}
ORIGIN = {"classes": ["lung", "breast", "esophagus", "nasopharyngeal"], "positive": None}
HEADINGS = ("Run summary", "Metrics (95% CI)", "ROC curves", "Operating points", "Confusion matrices", "Calibration",
            "Per-fold results", "Training curves")


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """Written as lnzoo writes a run's files (bound to its integrity.json), not by hand."""
    import io

    from lnzoo.files import write_atomic

    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return write_atomic(path, buf.getvalue())


def make_run(out: Path, folds: int = 3, seed: int = 0, external_one_class: bool = True) -> Path:
    """A run directory written by hand: binary + 4-class task, 3 folds, test, a one-class external set, centers."""
    from lnzoo.files import write_atomic
    from lnzoo.integrity import start

    rng = np.random.default_rng(seed)
    header = ["part", "fold", "path", "patient", "source", "center", "malignancy_true", "p_malignancy_benign",
              "p_malignancy_malignant", "origin_true", *[f"p_origin_{c}" for c in ORIGIN["classes"]]]
    rows, assignment = [], {}

    def patient(part, fold, pid, center, benign_only=False):
        ym = 0 if benign_only else int(rng.random() < 0.45)
        yo = int(rng.integers(0, 4))
        for i in range(int(rng.integers(1, 4))):
            pm = 1 / (1 + math.exp(-(1.5 * (2 * ym - 1) + rng.normal(0, 1.3))))
            logits = rng.normal(0, 1, 4)
            logits[yo] += 1.5
            po = np.exp(logits) / np.exp(logits).sum()
            rows.append([part, "" if fold is None else fold, f"img/{pid}_{i}.png", pid, "synthetic", center,
                         MAL["classes"][ym], f"{1 - pm:.6f}", f"{pm:.6f}",
                         ORIGIN["classes"][yo] if ym else "", *[f"{v:.6f}" for v in po]])

    for j in range(15 * folds):
        pid = f"P{j:03d}"
        assignment[pid] = j % folds
        patient("cv", j % folds, pid, "AB"[j % 2])
    for j in range(20):
        patient("test", None, f"T{j:03d}", "A")
    for j in range(5):
        patient("external", None, f"E{j:03d}", "C", benign_only=external_one_class)
    out.mkdir(parents=True, exist_ok=True)
    start(out)  # a run directory: every file below is bound to its manifest as lnzoo binds them
    _write_csv(out / "predictions.csv", header, rows)
    _write_csv(out / "folds.csv", ["patient", "fold"], sorted(assignment.items()))
    for k in range(folds):
        (out / f"fold{k}").mkdir(exist_ok=True)
        write_atomic(out / f"fold{k}" / "best.json", json.dumps(
            {"tasks": {"malignancy": MAL, "origin": ORIGIN}, "fold": k, "best_epoch": 2}))
        _write_csv(out / f"fold{k}" / "history.csv", ["epoch", "train_loss", "val_loss", "val_auc", "lr"],
                   [[e, 1 / e, 1.1 / e, 0.6 + 0.05 * e, 0.01] for e in (1, 2, 3)])
    write_atomic(out / "metrics.json", json.dumps({"recipe": "handmade", "main_task": "malignancy",
                                                   "data": "hand-written rows", "folds_run": list(range(folds))}))
    write_atomic(out / "run.json", json.dumps({"wall_seconds": 3.5, "device": "cpu", "quick": True, "overrides": []}))
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _task_arrays(rows, task, meta, part=None, fold=None, prefix="p"):
    keep = [r for r in rows if r[f"{task}_true"] and (part is None or r["part"] == part)
            and (fold is None or r["fold"] == str(fold))]
    y = np.array([meta["classes"].index(r[f"{task}_true"]) for r in keep])
    p = np.array([[float(r[f"{prefix}_{task}_{c}"]) for c in meta["classes"]] for r in keep])
    return y, p, [r["patient"] for r in keep]


def _same(a, b):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(b, float) and math.isnan(b):
        assert a is None or (isinstance(a, float) and math.isnan(a))
    else:  # evaluation.json keeps 6 significant digits
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("handmade") / "run")


def test_report_of_a_tiny_run_is_self_contained_and_matches_the_metrics(tiny_run):
    html_path = write_report(tiny_run, n_boot=N_BOOT)
    assert html_path == tiny_run / "report.html"
    page = html_path.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<script|<link|@import|url\(", page, re.I)
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    # per task: ROC, confusion, reliability, folds; plus the training curves
    assert page.count('<img src="data:image/png;base64,') >= 9
    for b64 in srcs:
        assert base64.b64decode(b64.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for heading in HEADINGS:
        assert f">{heading}<" in page, heading
    assert "Task: malignancy" in page and "Task: enlargement" in page
    # what a methods section needs, and the command that trains the run again (its stored, resolved recipe)
    assert re.search(r"Training settings</td><td>adamw lr [\d.e-]+ .*cosine schedule.*loss weights malignancy 1\.0, "
                     r"enlargement 0\.5.*48 px", page)
    assert html.escape(f"lnzoo run {tiny_run / 'recipe.toml'} --out NEW_RUN_DIR") in page
    assert "lnzoo run " + html.escape(str(REPO / "recipes" / "stage1_aux.toml")) + " --quick --set" in page

    ev = json.loads((tiny_run / "evaluation.json").read_text(encoding="utf-8"))
    rows = _rows(tiny_run / "predictions.csv")
    sidecar = json.loads((tiny_run / "fold1" / "best.json").read_text())
    for task in ("malignancy", "enlargement"):
        meta = sidecar["tasks"][task]
        y, p, _ = _task_arrays(rows, task, meta, part="cv")
        pos = meta["classes"].index(meta["positive"]) if meta["positive"] else 1
        got = dict(ev["tasks"][task]["levels"]["image"]["parts"]["cv"]["metrics"])
        # beside the raw figures, the calibration of the probabilities as served (the cal_ columns)
        served = classification_metrics(y, _task_arrays(rows, task, meta, part="cv", prefix="cal")[1],
                                        meta["classes"], pos)
        assert (got.pop("ece_calibrated"), got.pop("brier_calibrated")) == \
            (pytest.approx(served["ece"], abs=1e-6), pytest.approx(served["brier"], abs=1e-6))
        _same(got, classification_metrics(y, p, meta["classes"], pos))
    assert ev["run"]["recipe"] == "stage1_aux" and ev["run"]["device"]


def test_metrics_json_and_evaluation_json_agree_on_every_shared_figure(tiny_run):
    ev = json.loads((tiny_run / "evaluation.json").read_text(encoding="utf-8"))
    stored = json.loads((tiny_run / "metrics.json").read_text())["cross_validation"]
    compared = 0
    for task in ("malignancy", "enlargement"):
        level = ev["tasks"][task]["levels"]["image"]
        pairs = [(stored["pooled"][task], level["parts"]["cv"]["metrics"])]
        pairs += [(f["metrics"][task], level["folds"][str(f["fold"])]["metrics"]) for f in stored["folds"]]
        for mine, theirs in pairs:
            shared = set(mine) & set(theirs)
            assert len(shared) > 20
            for key in shared:  # the same code and the same rounding: equal, not merely close
                assert mine[key] == theirs[key], (task, key)
                compared += 1
        for key, ms in stored["mean_sd"][task].items():
            assert ms == level["cv_mean_sd"][key], (task, key)
    assert compared > 100
    assert ev["tasks"]["malignancy"]["levels"]["image"]["cv_mean_sd"]["auc"]["n_folds"] == 2


def test_one_fold_has_no_sd(tmp_path):
    from lnzoo.evaluation.evaluate import mean_sd

    assert mean_sd([{"auc": 0.7}])["auc"] == {"mean": 0.7, "sd": pytest.approx(float("nan"), nan_ok=True),
                                              "n_folds": 1}


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")
def test_evaluation_numbers_equal_the_metric_functions(handmade):
    ev = evaluate_predictions(handmade / "predictions.csv", {"malignancy": MAL, "origin": ORIGIN}, n_boot=N_BOOT)
    rows = _rows(handmade / "predictions.csv")
    for task, meta in (("malignancy", MAL), ("origin", ORIGIN)):
        pos = 1 if task == "malignancy" else None
        level = ev["tasks"][task]["levels"]["image"]
        assert list(level["parts"]) == (["cv", "test", "external"] if task == "malignancy" else ["cv", "test"])
        for part in level["parts"]:
            y, p, _ = _task_arrays(rows, task, meta, part=part)
            _same(level["parts"][part]["metrics"], classification_metrics(y, p, meta["classes"], pos))
        aucs = []
        for k in range(3):
            y, p, _ = _task_arrays(rows, task, meta, part="cv", fold=k)
            expected = classification_metrics(y, p, meta["classes"], pos)
            _same(level["folds"][str(k)]["metrics"], expected)
            aucs.append(expected["auc"])
        assert level["cv_mean_sd"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
        assert level["cv_mean_sd"]["auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1))
    # the one-class external set: AUC and sensitivity undefined, no crash
    ext = ev["tasks"]["malignancy"]["levels"]["image"]["parts"]["external"]
    assert math.isnan(ext["metrics"]["auc"]) and math.isnan(ext["ci"]["auc"]["lo"])
    assert set(ev["tasks"]["malignancy"]["levels"]["image"]["centers"]["cv"]) == {"A", "B"}


def test_cis_resample_patients(handmade):
    ev = evaluate_predictions(handmade / "predictions.csv", {"malignancy": MAL}, n_boot=N_BOOT, seed=3)
    rows = _rows(handmade / "predictions.csv")
    y, p, patients = _task_arrays(rows, "malignancy", MAL, part="cv")

    def acc(yy, pp):
        return float(np.mean(pp.argmax(axis=1) == yy))

    ci = ev["tasks"]["malignancy"]["levels"]["image"]["parts"]["cv"]["ci"]["accuracy"]
    clustered = bootstrap_ci(acc, y, p, groups=patients, n_boot=N_BOOT, seed=3)
    assert (ci["lo"], ci["hi"]) == (clustered["lo"], clustered["hi"])
    naive = bootstrap_ci(acc, y, p, n_boot=N_BOOT, seed=3)
    assert (naive["lo"], naive["hi"]) != (clustered["lo"], clustered["hi"])
    delong = ev["tasks"]["malignancy"]["levels"]["image"]["parts"]["cv"]["auc_delong"]
    assert delong["lo"] <= delong["auc"] <= delong["hi"]


def test_patient_level_averages_each_patients_probabilities(handmade):
    ev = evaluate_predictions(handmade / "predictions.csv", {"malignancy": MAL}, aggregate="patient", n_boot=20)
    assert set(ev["tasks"]["malignancy"]["levels"]) == {"image", "patient"}
    y, p, patients = _task_arrays(_rows(handmade / "predictions.csv"), "malignancy", MAL, part="test")
    _, yg, pg = aggregate_by_group(patients, y, p)
    got = ev["tasks"]["malignancy"]["levels"]["patient"]["parts"]["test"]
    assert got["n"] == got["n_patients"] == len(set(patients))
    _same(got["metrics"], classification_metrics(yg, pg, MAL["classes"], 1))


def _threshold_rows():
    """CV where the Youden threshold is 0.8 (not 0.5); a test set whose sensitivity depends on that choice."""
    rows = []
    cv_neg = [0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.75, 0.4]
    cv_pos = [0.8, 0.85, 0.9, 0.95, 0.82, 0.88]
    for i, s in enumerate(cv_neg + cv_pos):
        rows.append({"part": "cv", "fold": str(i % 2), "path": f"c{i}.png", "patient": f"C{i}",
                     "malignancy_true": "benign" if i < len(cv_neg) else "malignant",
                     "p_malignancy_benign": str(1 - s), "p_malignancy_malignant": str(s)})
    test = [(0, 0.3), (0, 0.55), (0, 0.2), (1, 0.6), (1, 0.7), (1, 0.9), (1, 0.85)]
    for i, (y, s) in enumerate(test):
        rows.append({"part": "test", "fold": "", "path": f"t{i}.png", "patient": f"T{i}",
                     "malignancy_true": MAL["classes"][y], "p_malignancy_benign": str(1 - s),
                     "p_malignancy_malignant": str(s)})
    return rows, test


def test_threshold_is_chosen_on_cv_and_applied_to_test():
    rows, test = _threshold_rows()
    ev = evaluate_predictions(rows, {"malignancy": MAL}, n_boot=50)
    ops = ev["tasks"]["malignancy"]["levels"]["image"]["operating_points"]
    cv_y = np.array([r["malignancy_true"] == "malignant" for r in rows if r["part"] == "cv"])
    cv_s = np.array([float(r["p_malignancy_malignant"]) for r in rows if r["part"] == "cv"])
    t = youden_threshold(cv_y, cv_s)
    assert t == pytest.approx(0.8)
    youden = ops["rules"]["youden"]
    assert youden["threshold"] == t and "cross-validation" in youden["chosen_on"]
    y = np.array([a for a, _ in test])
    p = np.array([[1 - s, s] for _, s in test])
    at_cv = classification_metrics(y, p, MAL["classes"], 1, threshold=t)
    at_half = classification_metrics(y, p, MAL["classes"], 1)
    assert at_cv["sensitivity"] != at_half["sensitivity"]  # the choice matters here
    got = youden["parts"]["test"]
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        assert got[key] == at_cv[key]
    assert not got["optimistic"] and youden["parts"]["cv"]["optimistic"]
    sens = ops["rules"]["sensitivity_0.95"]
    assert sens["threshold"] == threshold_for_sensitivity(cv_y, cv_s, 0.95)
    # cross-fitted CV: each fold's threshold comes from the other fold
    fitted = youden["cv_cross_fitted"]["thresholds_per_fold"]
    for k in ("0", "1"):
        other = np.array([r["fold"] != k for r in rows if r["part"] == "cv"])
        assert fitted[k] == youden_threshold(cv_y[other], cv_s[other])


def test_choose_threshold_rules():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    assert choose_threshold(y, s) == youden_threshold(y, s)
    assert choose_threshold(y, s, "sensitivity", 0.9) == threshold_for_sensitivity(y, s, 0.9)
    with pytest.raises(UsageError, match="unknown threshold rule"):
        choose_threshold(y, s, "f1")


def test_report_handles_one_fold_few_rows_and_one_class_parts(tmp_path):
    run = make_run(tmp_path / "run", folds=1)
    rows = _rows(run / "predictions.csv")
    # leave the origin task a single labelled test row
    first = True
    for r in rows:
        if r["part"] == "test" and r["origin_true"]:
            if not first:
                r["origin_true"] = ""
            first = False
    _write_csv(run / "predictions.csv", list(rows[0]), [list(r.values()) for r in rows])
    page = write_report(run, tmp_path / "out" / "r.html", n_boot=20, aggregate="patient").read_text(encoding="utf-8")
    assert (tmp_path / "out" / "evaluation.json").is_file()
    assert "n/a" in page and "Patient level" in page and "1 fold)" in page
    ev = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    test_origin = ev["tasks"]["origin"]["levels"]["image"]["parts"]["test"]
    assert test_origin["n"] == 1 and test_origin["metrics"]["auc"] is None
    assert ev["tasks"]["malignancy"]["levels"]["image"]["cv_mean_sd"]["auc"]["sd"] is None


def test_gradcam_hook_embeds_the_explain_pngs(tmp_path):
    assert gradcam_section(tmp_path / "explain") == ""
    (tmp_path / "explain").mkdir()
    assert gradcam_section(tmp_path / "explain") == ""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(tmp_path / "explain" / "case_P001.png")
    plt.close(fig)
    section = gradcam_section(tmp_path / "explain")
    assert section.count('<img src="data:image/png;base64,') == 1 and "case_P001.png" in section


def test_report_needs_predictions(tmp_path):
    with pytest.raises(UsageError, match="predictions.csv"):
        write_report(tmp_path)


def test_only_the_image_level_operating_point_is_called_the_served_one():
    from lnzoo.report.html import _operating_section

    level = {"parts": {"cv": {}}, "operating_points": {"space": "calibrated", "chosen_on": "cv", "rules": {}}}
    assert "the Youden row is the operating point the model is served at" in _operating_section(level)
    patients = _operating_section(level, served=False)
    assert "served at" not in patients.replace("served at the image level", "")
    assert "the model is served at the image level's Youden point, not these" in patients
