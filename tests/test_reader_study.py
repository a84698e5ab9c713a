"""``lnzoo reader-study``: the command on the published VanDyke study, the readers against a model, the phantom's
simulated readers end to end into a run's report, and bad input named with exit 2."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lnzoo.errors import UsageError
from lnzoo.evaluation.mrmc import or_analysis
from lnzoo.evaluation.reads import read_reads
from tests.conftest import invoke_cli

VANDYKE = Path(__file__).parent / "data" / "vandyke.csv"


def test_the_command_reproduces_vandyke_and_writes_json_and_html(tmp_path):
    done = invoke_cli("reader-study", VANDYKE, "--json", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    test = result["random_readers_cases"]
    assert (test["f"], test["df2"], test["p"]) == pytest.approx((4.484854, 15.06611, 0.05123303), abs=1e-5)
    assert json.loads((tmp_path / "reader_study.json").read_text())["random_readers_cases"]["f"] == \
        pytest.approx(4.484854, abs=1e-5)
    html = (tmp_path / "reader_study.html").read_text(encoding="utf-8")
    assert "id='reader-study'" in html and html.count("data:image/png;base64,") == 2
    jack = invoke_cli("reader-study", VANDYKE, "--json", "--cov", "jackknife", "--out", tmp_path)
    assert json.loads(jack.stdout)["random_readers_cases"]["f"] == pytest.approx(4.456319, abs=1e-5)
    table = invoke_cli("reader-study", VANDYKE, "--out", tmp_path)
    assert "F = 4.485" in table.stdout and "chi² = 5.546" in table.stdout


def _write(path: Path, rows, header=("reader", "modality", "case", "truth", "rating")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_bad_input_exits_2_naming_the_file_and_what_is_wrong(tmp_path):
    rows = [[r, m, c, int(c > 3), (c + r) % 5] for r in (1, 2) for m in ("A", "B") for c in range(8)]
    dup = _write(tmp_path / "dup.csv", [*rows, rows[3]])
    done = invoke_cli("reader-study", dup)
    assert done.returncode == 2 and "dup.csv" in done.stderr and "duplicated row" in done.stderr
    assert "Traceback" not in done.stderr
    short = _write(tmp_path / "short.csv", rows[:-1])
    done = invoke_cli("reader-study", short)
    assert done.returncode == 2 and "reader 2 did not read 1 of the 8 cases in modality B" in done.stderr
    labels = _write(tmp_path / "labels.csv", [[r, m, c, "yes" if c > 3 else "no", 1] for r, m, c, _, _ in rows])
    done = invoke_cli("reader-study", labels, "--task", "malignancy")
    assert done.returncode == 2 and "the truth 'no' is not one of the positive labels" in done.stderr
    wrong = invoke_cli("reader-study", VANDYKE, "--cov", "bootstrap")
    assert wrong.returncode == 2 and "--cov 'bootstrap'" in wrong.stderr


def test_the_truth_may_be_the_tasks_class_names(tmp_path):
    rows = [[r, m, c, "malignant" if c > 3 else "benign", (c * (r + 1)) % 7] for r in (1, 2) for m in ("A", "B")
            for c in range(10)]
    named = _write(tmp_path / "named.csv", rows)
    guess = invoke_cli("reader-study", named)
    assert guess.returncode == 2 and "pass --task TASK" in guess.stderr and "malignancy (diseased: malignant)" in \
        guess.stderr  # never guessed: a generic label could be another task's
    done = invoke_cli("reader-study", named, "--task", "malignancy", "--json", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n_diseased"] == 6  # malignancy: malignant is its positive class


def test_the_readers_against_the_model_is_the_or_analysis_with_the_model_fixed(tmp_path):
    """Each modality against the model: Var(readers' mean − model) = (MS(R) + r·(Cov2 + V_AI − 2·C_AI)) / r, the
    readers random and the model fixed, computed here from the covariance matrix; the readers' own analysis is
    untouched by the model."""
    from lnzoo.reader_study import reader_study

    reads = read_reads(VANDYKE)
    rng = np.random.default_rng(0)
    score = np.where(reads.truth, 1.0, 0.0) + rng.normal(0, 0.6, reads.truth.size)
    preds = tmp_path / "model.csv"
    with open(preds, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "score"])
        w.writerows([[case, int(y), s] for case, y, s in zip(reads.cases, reads.truth, score)])
    result = reader_study(VANDYKE, model=preds)
    plain = or_analysis(reads)
    assert result["random_readers_cases"]["f"] == pytest.approx(plain["random_readers_cases"]["f"])
    from lnzoo.evaluation.mrmc import auc_covariance

    r = len(reads.readers)
    for i, comparison in enumerate(result["ai"]["comparisons"]):
        aucs, cov = auc_covariance(reads.truth, np.vstack([reads.ratings[i], score[None]]))
        human, v_ai = cov[:r, :r], cov[r, r]
        cov2 = (human.sum() - np.trace(human)) / (r * (r - 1))
        c_ai = cov[:r, r].mean()
        ms_r = np.var(aucs[:r], ddof=1)
        var = (ms_r + r * (cov2 + v_ai - 2 * c_ai)) / r
        df = (r * var) ** 2 / (ms_r ** 2 / (r - 1))
        diff = aucs[:r].mean() - aucs[r]
        assert comparison["diff"] == pytest.approx(diff)
        assert comparison["df"] == pytest.approx(df)
        from scipy import stats

        half = stats.t.ppf(0.975, df) * math.sqrt(var)
        assert (comparison["lo"], comparison["hi"]) == pytest.approx((diff - half, diff + half))
    assert result["ai"]["auc"] == pytest.approx(aucs[r])


def test_a_model_without_a_prediction_for_every_case_is_refused_naming_them(tmp_path):
    preds = _write(tmp_path / "p.csv", [[f"{c}", 1, 0.5] for c in range(1, 50)], header=("id", "label", "score"))
    done = invoke_cli("reader-study", VANDYKE, "--model", preds)
    assert done.returncode == 2 and "65 case(s) with no prediction" in done.stderr


@pytest.mark.slow
def test_the_phantoms_simulated_readers_run_end_to_end_into_the_runs_report(tmp_path):
    """lnzoo synth --readers 4 on the phantom a run trained on; the study against the run's held-out predictions
    lands in the run's report."""
    from tests.conftest import REPO, TINY

    synth = invoke_cli("synth", "--out", tmp_path / "ph", "--patients", "24", "--readers", "4")
    assert synth.returncode == 0, synth.stderr
    reads = read_reads(tmp_path / "ph" / "reads.csv", positive_labels={"malignant"}, negative_labels={"benign"})
    assert reads.shape[0] == 2 and reads.shape[1] == 4 and reads.patients is not None
    sets = [*TINY, "cv.run_folds='all'", "data.phantom.source='manifest'"]
    run = invoke_cli("run", REPO / "recipes" / "stage1_aux.toml", "--quick", *[x for s in sets for x in ("--set", s)],
                     "--n-boot", "20", "--out", tmp_path / "run")
    assert run.returncode == 0, run.stderr
    done = invoke_cli("reader-study", tmp_path / "ph" / "reads.csv", "--model", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert "The readers against the model" in done.stdout
    study = json.loads((tmp_path / "run" / "reader_study.json").read_text())
    assert study["task"] == "malignancy" and [c["modality"] for c in study["ai"]["comparisons"]] == \
        ["unaided", "AI-aided"]
    aided, unaided = (next(m["auc"] for m in study["modality_auc"] if m["modality"] == k)
                      for k in ("AI-aided", "unaided"))
    assert aided > unaided  # the simulated AI helps every reader
    assert invoke_cli("report", tmp_path / "run", "--n-boot", "20").returncode == 0
    assert "id='reader-study'" in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    # a bundle predicts the images of the reads' path column (relative to reads.csv's folder)
    assert invoke_cli("export", tmp_path / "run", "--out", tmp_path / "bundle").returncode == 0
    bundled = invoke_cli("reader-study", tmp_path / "ph" / "reads.csv", "--model", tmp_path / "bundle", "--json",
                         "--out", tmp_path / "b")
    assert bundled.returncode == 0, bundled.stderr
    ai = json.loads(bundled.stdout)["ai"]
    assert f"predicting the {reads.shape[2]} image(s)" in ai["from"] and 0 <= ai["auc"] <= 1


def test_too_few_readers_for_a_study():
    from lnzoo.data.phantom_readers import simulate_reads

    with pytest.raises(ValueError, match="at least 2 readers"):
        simulate_reads([{"case": "a", "path": "a", "patient": "p", "malignant": True}], 1, 0)
    with pytest.raises(UsageError):
        or_analysis(read_reads([{"reader": "1", "modality": "A", "case": str(c), "truth": str(c % 2),
                                 "rating": str(c)} for c in range(6)]))
