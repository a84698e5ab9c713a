"""The Obuchowski–Rockette MRMC analysis (lnzoo.evaluation.mrmc): the published VanDyke figures, the Hillis
rules, the three covariance estimators, patient clustering and the reader-study file's checks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lnzoo.errors import UsageError
from lnzoo.evaluation import jsonable
from lnzoo.evaluation.mrmc import auc_covariance, format_or, or_analysis, read_reads
from lnzoo.evaluation.stats import binary_auc, delong_ci

VANDYKE = Path(__file__).parent / "data" / "vandyke.csv"


@pytest.fixture(scope="module")
def vandyke():
    return read_reads(VANDYKE)


@pytest.fixture(scope="module")
def delong(vandyke):
    return or_analysis(vandyke, "delong")


def _get(result, path):
    for key in path.split("."):
        result = result[int(key)] if key.isdigit() else result[key]
    return result


# (covariance method, figure, published value, tolerance): R package MRMCaov on VanDyke (treatment 1 - 2)
PUBLISHED = [
    ("delong", "modality_auc.0.auc", 0.8970370, 1e-6),
    ("delong", "modality_auc.1.auc", 0.9408374, 1e-6),
    ("delong", "random_readers_cases.differences.0.diff", -0.04380032, 1e-6),
    ("delong", "variance_components.var", 0.0007921325, 1e-9),
    ("delong", "variance_components.cov1", 0.0003420090, 1e-9),
    ("delong", "variance_components.cov2", 0.0003395265, 1e-9),
    ("delong", "variance_components.cov3", 0.0002358497, 1e-9),
    ("delong", "variance_components.ms_t", 0.004796171, 1e-8),
    ("delong", "variance_components.ms_tr", 0.0005510306, 1e-9),
    ("delong", "random_readers_cases.f", 4.484854, 1e-6),
    ("delong", "random_readers_cases.df1", 1, 0),
    ("delong", "random_readers_cases.df2", 15.06611, 1e-5),
    ("delong", "random_readers_cases.p", 0.05123303, 1e-6),
    ("delong", "random_readers_cases.differences.0.lo", -0.0878672, 1e-6),
    ("delong", "random_readers_cases.differences.0.hi", 0.0002666, 1e-6),
    ("delong", "fixed_readers.chi2", 5.545789, 1e-6),
    ("delong", "fixed_readers.df", 1, 0),
    ("delong", "fixed_readers.p", 0.0185252, 1e-6),
    ("delong", "fixed_cases.f", 8.704, 8.704e-4),  # printed to 4 digits: rel 1e-4
    ("delong", "fixed_cases.df2", 4, 0),
    ("delong", "fixed_cases.p", 0.04195875, 1e-6),
    ("jackknife", "random_readers_cases.f", 4.456319, 1e-6),
    ("jackknife", "random_readers_cases.df2", 15.25967, 1e-5),
    ("jackknife", "random_readers_cases.p", 0.05166569, 1e-6),
]


@pytest.mark.parametrize("method, figure, published, tol", PUBLISHED, ids=[f"{m}-{f}" for m, f, _, _ in PUBLISHED])
def test_vandyke_published_figures(vandyke, delong, method, figure, published, tol):
    result = delong if method == "delong" else or_analysis(vandyke, method)
    assert _get(result, figure) == pytest.approx(published, abs=tol)


def test_vandyke_shape_order_and_text(vandyke, delong):
    assert vandyke.readers == ["1", "2", "3", "4", "5"] and vandyke.modalities == ["1", "2"]
    assert vandyke.shape == (2, 5, 114) and int(vandyke.truth.sum()) == 45
    d = delong["random_readers_cases"]["differences"][0]
    assert (d["modality_a"], d["modality_b"]) == ("1", "2")
    assert d["lo"] < d["diff"] < d["hi"]
    json.dumps(jsonable(delong), allow_nan=False)  # plain JSON once NaN is null
    text = format_or(delong)
    for piece in ("0.897", "0.941", "F = 4.485", "1, 15.07", "chi² = 5.546", "F = 8.704", "1, 4",
                  "Var 0.0007921325", "Cov3 0.0002358497", "MS(T:R) 0.0005510306"):
        assert piece in text, piece


def test_reader_auc_is_the_delong_ci_of_one_reader(vandyke, delong):
    for rec in delong["reader_auc"]:
        i, j = vandyke.modalities.index(rec["modality"]), vandyke.readers.index(rec["reader"])
        auc, lo, hi = delong_ci(vandyke.truth.astype(int), vandyke.ratings[i, j])
        assert (rec["auc"], rec["lo"], rec["hi"]) == pytest.approx((auc, lo, hi), abs=1e-12)


def test_roc_points_trace_the_empirical_curve(vandyke, delong):
    for rec in delong["roc"]:
        fpr, tpr = np.array(rec["fpr"]), np.array(rec["tpr"])
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
        assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
        i, j = vandyke.modalities.index(rec["modality"]), vandyke.readers.index(rec["reader"])
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids = Mann-Whitney, ties 1/2
        assert area == pytest.approx(binary_auc(vandyke.truth, vandyke.ratings[i, j]), abs=1e-12)


def _brute_jackknife(y, scores, groups):
    units = list(dict.fromkeys(groups))
    loo = np.array([[binary_auc(y[groups != g], s[groups != g]) for s in scores] for g in units])
    dev = loo - loo.mean(axis=0)
    return (len(units) - 1) / len(units) * dev.T @ dev


@pytest.mark.parametrize("clustered", [False, True])
def test_jackknife_matches_leaving_each_case_or_patient_out(clustered):
    rng = np.random.default_rng(3)
    c = 40
    y = rng.random(c) < 0.4
    scores = np.round(y + rng.normal(size=(3, c)), 1)  # rounded: ties within and across classes
    groups = rng.integers(0, 15, c) if clustered else np.arange(c)
    _, cov = auc_covariance(y, scores, "jackknife", groups)
    assert cov == pytest.approx(_brute_jackknife(y, scores, groups), abs=1e-14)


def _study(path: Path, ratings: np.ndarray, truth, patients=None) -> Path:
    """Write ratings (t, r, c) as a reader-study CSV (modalities A, B, ..., readers R1, ..., cases c1, ...)."""
    lines = ["reader,modality,case,truth,rating" + (",patient" if patients is not None else "")]
    t, r, c = ratings.shape
    for i in range(t):
        for j in range(r):
            for k in range(c):
                extra = f",{patients[k]}" if patients is not None else ""
                lines.append(f"R{j + 1},{'ABCDEFGH'[i]},c{k + 1},{int(truth[k])},{float(ratings[i, j, k])!r}{extra}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cov2_below_cov3_truncates_the_random_readers_denominator(tmp_path):
    # modality A: reader j follows latent j; modality B: reader j follows latent j+1, so two readers agree
    # more across modalities than within one: Cov2 - Cov3 < 0
    rng = np.random.default_rng(7)
    r, c = 3, 120
    truth = rng.random(c) < 0.5
    latent = truth + rng.normal(size=(r, c))
    ratings = np.stack([latent, np.roll(latent, -1, axis=0)]) + 0.3 * rng.normal(size=(2, r, c))
    res = or_analysis(read_reads(_study(tmp_path / "s.csv", ratings, truth)))
    comp, rrc = res["variance_components"], res["random_readers_cases"]
    assert comp["cov2"] - comp["cov3"] < 0
    assert rrc["cov2_minus_cov3_truncated"] is True
    assert rrc["denominator"] == pytest.approx(comp["ms_tr"], rel=1e-12)
    assert rrc["df2"] == (2 - 1) * (r - 1)
    assert rrc["f"] == pytest.approx(comp["ms_t"] / comp["ms_tr"], rel=1e-12)
    assert rrc["f"] == pytest.approx(res["fixed_cases"]["f"]) and rrc["p"] == pytest.approx(res["fixed_cases"]["p"])
    assert res["fixed_readers"]["denominator"] == pytest.approx(comp["var"] - comp["cov1"], rel=1e-12)
    assert "Cov2 − Cov3 <= 0" in format_or(res)


def test_patient_clustering_counts_two_images_of_a_patient_once(vandyke):
    # every case twice, as two images of one patient with identical ratings
    twice = np.repeat(vandyke.ratings, 2, axis=2).reshape(-1, 2 * len(vandyke.cases))
    y2 = np.repeat(vandyke.truth, 2)
    patients = np.repeat(np.arange(len(vandyke.cases)), 2)
    aucs, original = auc_covariance(vandyke.truth, vandyke.ratings.reshape(10, -1), "delong")
    aucs2, clustered = auc_covariance(y2, twice, "delong", patients)
    _, independent = auc_covariance(y2, twice, "delong")
    assert aucs2 == pytest.approx(aucs, abs=1e-12)
    assert np.diag(clustered) == pytest.approx(np.diag(original), rel=0.03)  # not half
    assert np.diag(independent) / np.diag(original) == pytest.approx(0.5, abs=0.01)
    # leaving a patient out of the doubled study is leaving the case out of the original one: exactly equal
    _, jk = auc_covariance(vandyke.truth, vandyke.ratings.reshape(10, -1), "jackknife")
    _, jk2 = auc_covariance(y2, twice, "jackknife", patients)
    assert jk2 == pytest.approx(jk, rel=1e-10)


def test_patient_column_reaches_the_analysis(tmp_path, vandyke):
    ratings = np.repeat(vandyke.ratings, 2, axis=2)
    truth = np.repeat(vandyke.truth, 2)
    patients = [f"p{k // 2}" for k in range(truth.size)]
    reads = read_reads(_study(tmp_path / "p.csv", ratings, truth, patients))
    res = or_analysis(reads, "jackknife")
    ref = or_analysis(vandyke, "jackknife")["random_readers_cases"]
    assert res["n_patients"] == len(vandyke.cases)
    assert res["random_readers_cases"]["f"] == pytest.approx(ref["f"], rel=1e-9)
    assert res["random_readers_cases"]["df2"] == pytest.approx(ref["df2"], rel=1e-9)
    with pytest.raises(UsageError, match="p.csv.*unbiased.*not defined for cases clustered"):
        or_analysis(reads, "unbiased")


def test_unbiased_estimator_is_unbiased_and_agrees_with_delong_on_a_large_study():
    rng = np.random.default_rng(11)
    m, n, shared = 8, 10, 0.7  # small studies (the bias shows), two readers sharing a case effect

    def draw(studies, rows=2, m=m, n=n):
        pos = rng.normal(1.0, 1.0, (studies, rows, m)) + shared * rng.normal(size=(studies, 1, m))
        neg = rng.normal(0.0, 1.0, (studies, rows, n)) + shared * rng.normal(size=(studies, 1, n))
        return np.round(pos, 1), np.round(neg, 1)  # rounded: ties

    # the true (co)variance of the two AUCs, from 200,000 studies (Mann-Whitney AUC, vectorised)
    truth = []
    for _ in range(4):
        pos, neg = draw(50_000)
        aucs = ((pos[..., :, None] > neg[..., None, :]) + 0.5 * (pos[..., :, None] == neg[..., None, :])).mean((2, 3))
        truth.append(aucs)
    mc = np.cov(np.concatenate(truth).T)
    target = np.array([mc[0, 0], mc[1, 1], mc[0, 1]])
    se_mc = np.sqrt([2 * mc[0, 0] ** 2, 2 * mc[1, 1] ** 2, mc[0, 0] * mc[1, 1] + mc[0, 1] ** 2]) / math.sqrt(200_000)
    # the estimators averaged over 3000 studies
    pos, neg = draw(3000)
    y = np.r_[np.ones(m), np.zeros(n)]
    unbiased, delong = [], []
    for p, q in zip(pos, neg):
        scores = np.concatenate([p, q], axis=1)
        unbiased.append(auc_covariance(y, scores, "unbiased")[1][[0, 1, 0], [0, 1, 1]])
        delong.append(auc_covariance(y, scores, "delong")[1][[0, 1, 0], [0, 1, 1]])
    unbiased, delong = np.array(unbiased), np.array(delong)
    se = np.sqrt(unbiased.var(axis=0, ddof=1) / len(unbiased) + se_mc ** 2)
    assert np.all(np.abs(unbiased.mean(axis=0) - target) < 4 * se), (unbiased.mean(axis=0), target, se)
    # the test can tell: DeLong's variances, on the same studies, are biased upwards beyond that error
    assert np.all(delong.mean(axis=0)[:2] - target[:2] > 4 * se[:2]), (delong.mean(axis=0), target, se)
    a_u = auc_covariance(y, scores, "unbiased")[0]
    assert a_u == pytest.approx([binary_auc(y, s) for s in scores], abs=1e-12)
    # a large study: the two estimators agree
    pos, neg = draw(1, rows=3, m=500, n=600)
    y, scores = np.r_[np.ones(500), np.zeros(600)], np.concatenate([pos[0], neg[0]], axis=1)
    a_u, cov_u = auc_covariance(y, scores, "unbiased")
    a_d, cov_d = auc_covariance(y, scores, "delong")
    assert a_u == pytest.approx(a_d, abs=1e-12)
    assert cov_u == pytest.approx(cov_d, rel=0.01)


def _csv(tmp_path, text: str, name="study.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


HEADER = "reader,modality,case,truth,rating\n"


def _good_rows(readers=("R1", "R2"), modalities=("A", "B"), truth=(0, 1, 0, 1)) -> list[str]:
    return [f"{r},{m},c{k},{y},{(k * 7 + len(r) + ord(m)) % 5 + 1}"
            for m in modalities for r in readers for k, y in enumerate(truth)]


def _with(rows: list[str], line: int, new: str | None) -> str:
    """The file with data row at file line ``line`` (the header is line 1) replaced, or removed for None."""
    rows = list(rows)
    if new is None:
        del rows[line - 2]
    else:
        rows[line - 2] = new
    return HEADER + "\n".join(rows) + "\n"


# (name, file text from the good rows, substrings the message must hold); line 2 is "R1,A,c0,0,..."
BAD = [
    ("missing case", _with(_good_rows(), 12, None),
     ["study.csv", "reader R1 did not read 1 of the 4 cases in modality B", "missing: c2", "split-plot"]),
    ("one class", HEADER + "\n".join(_good_rows(truth=(1, 1, 1))) + "\n",
     ["study.csv", "all 3 cases are diseased"]),
    ("rating not a number", _with(_good_rows(), 5, "R1,A,c3,1,high"),
     ["study.csv:5", "reader R1, modality A, case c3", "'high' is not a (finite) number"]),
    ("duplicated row", _with(_good_rows(), 4, "R1,A,c0,0,2"),
     ["study.csv:4", "reader R1, modality A, case c0 is also at", "study.csv:2", "duplicated"]),
    ("missing columns", "reader,treatment,case,score\nR1,A,c0,1\n",
     ["study.csv", "missing required column(s)", "'truth'", "'rating'", "'reader', 'treatment', 'case', 'score'"]),
    ("inconsistent truth", _with(_good_rows(), 6, "R2,A,c0,1,3"),
     ["study.csv:6", "case c0", "study.csv:2", "inconsistent truth"]),
    ("truth not 0/1", _with(_good_rows(), 3, "R1,A,c1,yes,3"),
     ["study.csv:3", "the truth 'yes' is not 0 or 1", "positive_labels"]),
    ("empty cell", _with(_good_rows(), 3, "R1,A,,1,3"), ["study.csv:3", "empty 'case'"]),
    ("modality and treatment", "reader,modality,treatment,case,truth,rating\n",
     ["study.csv", "'modality' and 'treatment' both name the modality"]),
]


@pytest.mark.parametrize("text, expected", [(t, e) for _, t, e in BAD], ids=[b[0] for b in BAD])
def test_bad_reader_study_files_are_named_usage_errors(tmp_path, text, expected):
    with pytest.raises(UsageError) as info:
        read_reads(_csv(tmp_path, text))
    for piece in expected:
        assert piece in str(info.value), (piece, str(info.value))


def test_one_reader_is_refused_one_modality_gives_reader_aucs_only(tmp_path):
    one_reader = read_reads(_csv(tmp_path, HEADER + "\n".join(_good_rows(readers=("R1",))) + "\n"))
    with pytest.raises(UsageError, match="study.csv: .*at least 2 readers"):
        or_analysis(one_reader)
    rng = np.random.default_rng(5)
    truth = np.arange(30) % 3 == 0
    reads = read_reads(_study(tmp_path / "one.csv", truth + rng.normal(size=(1, 4, 30)), truth))
    res = or_analysis(reads)
    assert res["random_readers_cases"] is None and res["fixed_readers"] is None and res["fixed_cases"] is None
    assert len(res["reader_auc"]) == 4 and len(res["modality_auc"]) == 1
    m = res["modality_auc"][0]
    assert m["lo"] < m["auc"] < m["hi"] and m["df"] > 0
    assert "Modality differences" not in format_or(res)


def test_treatment_alias_and_label_truth(tmp_path):
    plain = read_reads(_csv(tmp_path, HEADER + "\n".join(_good_rows()) + "\n", "a.csv"))
    alias = read_reads(_csv(tmp_path, HEADER.replace("modality", "Treatment")
                            + "\n".join(_good_rows()) + "\n", "b.csv"))
    labels = read_reads(_csv(tmp_path, HEADER + "\n".join(_good_rows()).replace(",0,", ",benign,")
                             .replace(",1,", ",malignant,") + "\n", "c.csv"), positive_labels={"malignant"})
    for other in (alias, labels):
        assert other.modalities == plain.modalities == ["A", "B"] and other.readers == ["R1", "R2"]
        assert np.array_equal(other.truth, plain.truth) and np.array_equal(other.ratings, plain.ratings)
    with pytest.raises(UsageError, match="c.csv:2: .*'benign'"):
        read_reads(tmp_path / "c.csv", positive_labels={"malignant"}, negative_labels={"bengin"})
    rows = [dict(zip(HEADER.strip().split(","), line.split(","))) for line in _good_rows()]
    assert np.array_equal(read_reads(rows).ratings, plain.ratings)


def test_three_modalities_pairwise_and_global(tmp_path):
    rng = np.random.default_rng(2)
    truth = np.arange(60) % 2 == 0
    latent = truth * np.array([1.0, 1.5, 2.0])[:, None, None] + rng.normal(size=(3, 4, 60))
    res = or_analysis(read_reads(_study(tmp_path / "t3.csv", latent, truth)))
    swapped = or_analysis(read_reads(_study(tmp_path / "t3b.csv", latent[[2, 0, 1]], truth)))
    for key in ("random_readers_cases", "fixed_readers", "fixed_cases"):
        pairs = [(d["modality_a"], d["modality_b"]) for d in res[key]["differences"]]
        assert pairs == [("A", "B"), ("A", "C"), ("B", "C")]
        assert res[key]["p"] == pytest.approx(swapped[key]["p"], rel=1e-9)  # the global test ignores the order
    assert res["random_readers_cases"]["df1"] == 2 and res["fixed_cases"]["df2"] == 6
    assert "all equal" in format_or(res)
