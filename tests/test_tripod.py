"""The TRIPOD+AI checklist a run drafts (lnzoo.report.tripod): every item once and in order, the authors' items left to
them, the run's own figures where lnzoo knows them, decision curves and subgroups when the evaluation has them, and
escaped HTML."""
from __future__ import annotations

import copy
import csv
import re
import shutil

import pytest

from lnzoo.report.tripod import tripod_checklist, tripod_items, tripod_section
from lnzoo.rundir import RunDir

# TRIPOD+AI (Collins et al., BMJ 2024;385:e078378): 27 items, with their sub-items, in the statement's order
TRIPOD_IDS = ["1", "2", "3a", "3b", "3c", "4", "5a", "5b", "6a", "6b", "6c", "7", "8a", "8b", "8c", "9a", "9b", "9c",
              "10", "11", "12a", "12b", "12c", "12d", "12e", "12f", "12g", "13", "14", "15", "16", "17", "18a", "18b",
              "18c", "18d", "18e", "18f", "19", "20a", "20b", "20c", "21", "22", "23a", "23b", "24", "25", "26", "27a",
              "27b", "27c"]
# ethics, funding, conflicts, protocol, registration, patient and public involvement: nothing a run can know
AUTHORS_ONLY = ["17", "18a", "18b", "18c", "18d", "19"]
ADDED_KEYS = ("decision_curve", "subgroups")  # being added to evaluation.json: absent in older runs


@pytest.fixture(scope="module")
def run(tiny_run):
    """The tiny run and its evaluation without the keys that may be absent (as an older evaluation.json has it)."""
    rd = RunDir(tiny_run)
    evaluation = copy.deepcopy(rd.read_json(rd.EVALUATION))
    for entry in evaluation["tasks"].values():
        for key in ADDED_KEYS:
            entry["levels"]["image"].pop(key, None)
    return rd, evaluation


def _table(markdown: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the table under the ``## heading`` of the Markdown, header and rule left out."""
    block = markdown.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            for line in block.splitlines() if line.startswith("| ")]
    return [r for r in rows if r[2] != "Status"]


def _by_item(rd, evaluation) -> dict[str, dict[str, str]]:
    return {i["item"]: i for i in tripod_items(rd, evaluation) if i["guide"] == "TRIPOD+AI"}


def test_every_item_once_in_order_after_the_citations(run):
    md = tripod_checklist(*run)
    head = md.split("## ", 1)[0]
    assert "BMJ 2024;385:e078378" in head and "Radiol Artif Intell 2024;6(4):e240300" in head
    assert "DRAFT filled by software" in head and "authors must check" in head
    rows = _table(md, "TRIPOD+AI (2024)")
    assert [r[0] for r in rows] == TRIPOD_IDS
    assert {r[2] for r in rows} <= {"filled", "partly", "authors"}
    claim = _table(md, "CLAIM (2024) items that overlap")
    topics = " ".join(r[1] for r in claim).lower()
    for topic in ("data sources", "de-identification", "reference standard", "partitions", "metrics",
                  "uncertainty", "failure analysis", "external testing"):
        assert topic in topics
    assert [i["item"] for i in tripod_items(*run) if i["guide"] == "TRIPOD+AI"] == TRIPOD_IDS


def test_what_only_the_authors_know_is_left_to_them(run):
    items = _by_item(*run)
    for item in AUTHORS_ONLY:
        assert items[item]["status"] == "authors", item
    # a filled or partly item names where its figures live; a partly one says what the authors must add
    assert all("Authors:" in i["text"] for i in items.values() if i["status"] == "partly")
    assert "report.html#task-malignancy" in items["23a"]["text"] and "evaluation.json" in items["23a"]["text"]


def test_filled_items_carry_the_runs_own_figures(run, tiny_run):
    rd, evaluation = run
    items = _by_item(rd, evaluation)
    with (tiny_run / "folds.csv").open(newline="") as fh:
        patients = len(list(csv.DictReader(fh)))
    assert f"{patients} patients in the cross-validation pool" in items["10"]["text"]
    assert f"{patients} patients" in items["20a"]["text"]
    main = evaluation["tasks"]["malignancy"]["levels"]["image"]["parts"]["cv"]
    auc = main["auc_delong"]["auc"]
    assert f"malignancy, Pooled CV: AUC {auc:.3f} (95% CI DeLong {main['auc_delong']['lo']:.3f}" in items["23a"]["text"]
    counts = ", ".join(f"{c} {n}" for c, n in main["class_counts"].items())
    assert f"{main['n']} images of {main['n_patients']} patients ({counts})" in items["10"]["text"]
    # the folds this run trained (1 and 2 of 3: no fold 0), its temperatures and the versions it ran with
    assert "3-fold" in items["12a"]["text"] and "folds run: 1, 2" in items["12a"]["text"]
    assert items["12a"]["status"] == "filled"
    temperatures = {k: {t: v for t, v in rd.record(k).temperature.items() if v} for k in rd.folds()}
    for k, fitted in temperatures.items():
        assert all(f"{t} {v:.3f}" in items["12f"]["text"] for t, v in fitted.items())
    assert ("none fitted" in items["12f"]["text"]) == (not any(temperatures.values()))
    assert f"lnzoo {rd.read_json(rd.RUN)['versions']['lnzoo']}" in items["18f"]["text"]
    assert "positive malignant" in items["8a"]["text"]
    assert "synthetic phantom" in items["5a"]["text"]


def test_absent_decision_curve_and_subgroups_say_not_computed(run):
    items = _by_item(*run)
    assert "decision curve not computed" in items["12e"]["text"]
    assert "decision curve not computed" in items["23a"]["text"]
    assert "subgroups not computed" in items["23a"]["text"] and "subgroups not computed" in items["14"]["text"]


SUBGROUP = {"groups": {
    "scanner A": {"n": 20, "n_patients": 9, "prevalence": 0.45, "auc": {"auc": 0.8123, "lo": 0.61, "hi": 0.94},
                  "sensitivity": 0.7, "specificity": 0.8, "calibration_slope": 0.91, "too_few": None},
    "scanner B": {"n": 6, "n_patients": 3, "prevalence": 0.5, "auc": None, "sensitivity": None, "specificity": None,
                  "calibration_slope": None, "too_few": "fewer than 5 images of a class"}},
    "largest_gap": {"metric": "auc", "between": ["scanner A", "scanner C"], "gap": 0.2346}}


@pytest.mark.parametrize("per_part", [False, True], ids=["columns", "parts-then-columns"])
def test_decision_curve_and_subgroups_are_shown_when_present(run, per_part):
    rd, evaluation = run
    evaluation = copy.deepcopy(evaluation)
    level = evaluation["tasks"]["malignancy"]["levels"]["image"]
    level["decision_curve"] = {"cv": {"thresholds": [0.1, 0.2], "model": [0.3, 0.2], "treat_all": [0.25, 0.1],
                                      "prevalence": 0.5714, "n": 14, "space": "calibrated", "useful_range": [0.12, 0.47],
                                      "at_operating_point": {"threshold": 0.4, "model": 0.3217, "treat_all": 0.0476}}}
    level["subgroups"] = {"cv": {"scanner": SUBGROUP}} if per_part else {"scanner": SUBGROUP}
    items = _by_item(rd, evaluation)
    for item in ("12e", "23a"):
        text = items[item]["text"]
        assert "net benefit at the operating threshold 0.400: model 0.322, treat-all 0.048" in text
        assert "thresholds 0.12–0.47" in text and "prevalence 0.571" in text
    text = items["23a"]["text"]
    assert "scanner: scanner A (n 20, 9 patients, prevalence 0.450, AUC 0.812 (0.610–0.940)" in text
    assert "calibration slope 0.91" in text and "fewer than 5 images of a class" in text
    assert "largest AUC gap 0.235 between scanner A and scanner C" in text
    assert "scanner A" in items["14"]["text"]
    # the auxiliary task has neither: it still says so
    assert "enlargement: subgroups not computed" in text and "enlargement: decision curve not computed" in text


def test_html_section_escapes_what_the_run_says(run, tmp_path):
    rd, evaluation = run
    copied = RunDir(shutil.copytree(rd.path, tmp_path / "run"))
    recipe = (copied / copied.RECIPE).read_text(encoding="utf-8")
    description = 'description = "<script>alert(1)</script> | a & b"'
    copied.write_recipe(re.sub(r"^description = .*$", description, recipe, count=1, flags=re.M))
    md = tripod_checklist(copied, evaluation)
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt; \\| a & b" in md
    html = tripod_section(md)
    assert html.startswith("<h2 id='tripod'>") and "Draft filled by software" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; | a &amp; b" in html
    assert html == tripod_section(tripod_items(copied, evaluation))  # from the Markdown or the items: the same
    assert html.count("<tr>") == len(TRIPOD_IDS) + len(_table(md, "CLAIM (2024) items that overlap")) + 2
