"""Multi-reader multi-case (MRMC) ROC analysis: Obuchowski–Rockette (OR) with Hillis's degrees of freedom.

Each reader j rates every case in every modality i; theta[i, j] is that reader's empirical AUC (Mann-Whitney,
ties 1/2). The OR model treats the errors of the theta[i, j] over cases as correlated, with four covariances
estimated from the (t·r)×(t·r) covariance matrix of the reader AUCs over cases, averaged over the pairs:

* Var  — the diagonal;               Cov1 — same reader, different modalities;
* Cov2 — different readers, same modality;  Cov3 — different readers, different modalities.

With MS(T) = r/(t-1)·Σ_i (theta_i. - theta_..)², MS(R) = t/(r-1)·Σ_j (theta_.j - theta_..)² and
MS(T:R) = Σ_ij (theta_ij - theta_i. - theta_.j + theta_..)² / ((t-1)(r-1)), three analyses test equal modality
AUCs (Obuchowski & Rockette 1995; Hillis, Obuchowski, Schartz & Berbaum 2005; Hillis 2007):

* random readers and random cases: F = MS(T) / D with D = MS(T:R) + r·max(Cov2 - Cov3, 0), on t-1 and
  Hillis's df2 = D² / (MS(T:R)² / ((t-1)(r-1))); when Cov2 - Cov3 <= 0, D = MS(T:R) and df2 = (t-1)(r-1).
  The CI of a difference of two modalities is diff ± t(df2)·sqrt(2D/r) (every pair uses the global D, df2);
* fixed readers, random cases: chi² = (t-1)·MS(T) / (Var - Cov1 + (r-1)·max(Cov2 - Cov3, 0)) on t-1 df,
  CI diff ± z·sqrt(2/r·(Var - Cov1 + (r-1)·max(Cov2 - Cov3, 0)));
* random readers, fixed cases: F = MS(T) / MS(T:R) on t-1 and (t-1)(r-1) df, CI diff ± t·sqrt(2·MS(T:R)/r).

A modality's AUC (the mean over readers) has Hillis's single-modality interval, from that modality's data
only: D_i = MS(R)_i + r·max(Cov2_i, 0) with MS(R)_i the variance of its reader AUCs (ddof 1), CI
theta_i. ± t(df_i)·sqrt(D_i/r), df_i = D_i² / (MS(R)_i²/(r-1)); and, for fixed readers, theta_i. ±
z·sqrt((Var_i + (r-1)·Cov2_i)/r). A reader's AUC has the normal interval AUC ± z·sqrt(its variance),
clipped to [0, 1] (with the DeLong covariance and no patient column: stats.delong_ci).

The covariance of the reader AUCs over cases (``cov=``):

* "delong": DeLong's structural components, S10/m + S01/n (covariances of the placement values, ddof 1);
  with a patient column that clusters cases, Obuchowski's (1997) clustered form: each case's influence
  (placement - AUC)/m or /n summed per patient, Cov = G/(G-1)·Σ_g u_g u_gᵀ over the G patients;
* "jackknife": leave one case out (one patient, with a patient column), (c-1)/c·Σ (θ_(k) - θ̄)(θ_(k) - θ̄)ᵀ;
  the leave-out AUCs come exactly from the placement values and the within-patient pair sums;
* "unbiased": the U-statistic estimator (Gallas 2006, one-shot MRMC variance; Gallas et al. 2009). With
  ψ(i,j) the kernel (1, 1/2, 0) of positive i and negative j, the covariance of two AUCs over the same m
  positives and n negatives is [c1 + (n-1)c2 + (m-1)c3 - (m+n-1)c4]/(mn), where c1 = E ψa(i,j)ψb(i,j),
  c2 = E ψa(i,j)ψb(i,j'), c3 = E ψa(i,j)ψb(i',j), c4 = E ψa(i,j)ψb(i',j') = μaμb; each c is estimated
  by its average over all index tuples with distinct i's and j's, which is unbiased. It can be negative
  on small studies and is not defined for clustered cases (refused).

One modality gives the per-reader AUCs and the single-modality analysis; comparing needs two or more modalities
(and every analysis at least two readers). Higher ratings mean more confidence that the case is diseased.
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
from scipy import stats

from lnzoo.errors import UsageError
from lnzoo.evaluation import fmt, fmt_p
from lnzoo.evaluation.evaluate import roc_points
from lnzoo.evaluation.reads import Reads, read_reads
from lnzoo.evaluation.stats import _delong_components

__all__ = ["COV_METHODS", "Reads", "auc_covariance", "format_or", "or_analysis", "read_reads"]

COV_METHODS = ("delong", "jackknife", "unbiased")
NAN = float("nan")


def _psi(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """The Mann-Whitney kernel of every (positive, negative) pair per score row: (k, m', n') of 1, 1/2, 0."""
    return (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])


def _delong_cov(y, scores, codes):
    aucs, v10, v01, m, n = _delong_components(y, scores)
    if codes is None:
        return aucs, np.atleast_2d(np.cov(v10, ddof=1)) / m + np.atleast_2d(np.cov(v01, ddof=1)) / n
    infl = np.empty_like(scores, dtype=float)
    infl[:, y] = (v10 - aucs[:, None]) / m
    infl[:, ~y] = (v01 - aucs[:, None]) / n
    g = int(codes.max()) + 1
    u = np.stack([np.bincount(codes, weights=row, minlength=g) for row in infl])
    return aucs, g / (g - 1) * (u @ u.T)


def _jackknife_cov(y, scores, codes):
    aucs, v10, v01, m, n = _delong_components(y, scores)
    codes = np.arange(y.size) if codes is None else codes
    g = int(codes.max()) + 1
    m_g = np.bincount(codes[y], minlength=g)
    n_g = np.bincount(codes[~y], minlength=g)
    # pairs left out with patient g: its positives' pairs, its negatives' pairs, the pairs within it counted twice
    pairs = np.stack([m * n * a - n * np.bincount(codes[y], weights=p, minlength=g)
                      - m * np.bincount(codes[~y], weights=q, minlength=g) for a, p, q in zip(aucs, v10, v01)])
    members = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes, minlength=g))[:-1])
    for k in np.flatnonzero((m_g > 0) & (n_g > 0)):
        mine = members[k]
        pairs[:, k] += _psi(scores[:, mine[y[mine]]], scores[:, mine[~y[mine]]]).sum(axis=(1, 2))
    loo = pairs / ((m - m_g) * (n - n_g))
    dev = loo - loo.mean(axis=1, keepdims=True)
    return aucs, (g - 1) / g * (dev @ dev.T)


def _unbiased_cov(y, scores, chunk_cells: int = 4_000_000):
    pos, neg = scores[:, y], scores[:, ~y]
    k, m = pos.shape
    n = neg.shape[1]
    same = np.zeros((k, k))
    rows = np.empty((k, m))  # Σ_j ψ(i, j) per positive
    cols = np.zeros((k, n))  # Σ_i ψ(i, j) per negative
    step = max(1, chunk_cells // max(1, k * n))
    for s in range(0, m, step):
        psi = _psi(pos[:, s:s + step], neg)
        flat = psi.reshape(k, -1)
        same += flat @ flat.T
        rows[:, s:s + step] = psi.sum(axis=2)
        cols += psi.sum(axis=1)
    total = rows.sum(axis=1)
    rr, cc = rows @ rows.T, cols @ cols.T
    c1 = same / (m * n)
    c2 = (rr - same) / (m * n * (n - 1))
    c3 = (cc - same) / (m * (m - 1) * n)
    c4 = (np.outer(total, total) - rr - cc + same) / (m * (m - 1) * n * (n - 1))
    return total / (m * n), (c1 + (n - 1) * c2 + (m - 1) * c3 - (m + n - 1) * c4) / (m * n)


def auc_covariance(truth, scores, method: str = "delong", clusters=None) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs (k,), covariance (k, k)) of k score rows (k, c) over the same c cases; ``truth`` (c,) 1 = diseased.

    ``clusters`` (c,) patient ids: the clustered DeLong form or leave-one-patient-out jackknife (see the module
    docstring); clusters of one case each are the unclustered analysis. Needs 2+ cases of each class.
    """
    y = np.asarray(truth).astype(bool)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    if s.ndim != 2 or s.shape[1] != y.size:
        raise ValueError(f"scores must be (k, {y.size}) for {y.size} cases, got {s.shape}")
    if method not in COV_METHODS:
        raise UsageError(f"unknown covariance method {method!r}; choose one of {', '.join(COV_METHODS)}")
    if min(int(y.sum()), int((~y).sum())) < 2:
        raise UsageError("the AUC covariance needs at least 2 diseased and 2 non-diseased cases")
    codes = None
    if clusters is not None:
        _, codes = np.unique(np.asarray(clusters), return_inverse=True)
        codes = codes.ravel()
        if codes.max() + 1 == codes.size:
            codes = None  # a patient per case: nothing is clustered
        elif codes.max() == 0:
            raise UsageError("every case belongs to one patient: the clustered covariance needs 2+ patients")
    if method == "unbiased":
        if codes is not None:
            raise UsageError("the unbiased covariance estimator is not defined for cases clustered by patient; "
                             "use cov='delong' or 'jackknife'")
        return _unbiased_cov(y, s)
    if method == "jackknife" and codes is not None:
        m_g, n_g = np.bincount(codes[y]), np.bincount(codes[~y])
        if m_g.max() == y.sum() or n_g.max() == (~y).sum():
            raise UsageError("leaving one patient out leaves no diseased or no non-diseased case: the "
                             "jackknife needs the cases of each class spread over at least 2 patients")
    return (_delong_cov if method == "delong" else _jackknife_cov)(y, s, codes)


def _f_sf(f: float, df1: float, df2: float) -> float:
    """P(F > f); an infinite df2 is the chi-square limit, an undefined statistic NaN."""
    if math.isnan(f) or math.isnan(df2):
        return NAN
    return float(stats.chi2.sf(f * df1, df1) if math.isinf(df2) else stats.f.sf(f, df1, df2))


def _ratio(a: float, b: float) -> float:
    """a / b for b >= 0: a nonzero a over 0 is ±infinite; 0/0, a negative b and a NaN are undefined."""
    if b > 0:
        return a / b
    return math.copysign(math.inf, a) if b == 0 and a != 0 and not math.isnan(a) else NAN


def _hillis_df(den: float, ms: float, df: int) -> float:
    """Hillis's df: den² / (ms²/df); infinite when ms is 0 and den > 0."""
    return den ** 2 / (ms ** 2 / df) if ms > 0 else (math.inf if den > 0 else NAN)


def _quantile(alpha: float, df: float) -> float:
    """The two-sided 1 - alpha quantile of t on df (the normal one for an infinite df; NaN for NaN)."""
    if math.isnan(df):
        return NAN
    return float(stats.norm.ppf(1 - alpha / 2) if math.isinf(df) else stats.t.ppf(1 - alpha / 2, df))


def _ci(value: float, se: float, quantile: float) -> dict:
    half = quantile * se
    return {"se": se, "lo": value - half, "hi": value + half}


def _components(theta: np.ndarray, cov: np.ndarray) -> dict:
    t, r = theta.shape
    ti, ri = np.divmod(np.arange(t * r), r)
    same_t, same_r = ti[:, None] == ti[None], ri[:, None] == ri[None]

    def mean(mask):
        return float(cov[mask].mean()) if mask.any() else NAN
    grand, by_t, by_r = theta.mean(), theta.mean(axis=1), theta.mean(axis=0)
    resid = theta - by_t[:, None] - by_r[None] + grand
    return {"var": mean(same_t & same_r), "cov1": mean(~same_t & same_r), "cov2": mean(same_t & ~same_r),
            "cov3": mean(~same_t & ~same_r),
            "ms_t": float(r * ((by_t - grand) ** 2).sum() / (t - 1)) if t > 1 else NAN,
            "ms_r": float(t * ((by_r - grand) ** 2).sum() / (r - 1)),
            "ms_tr": float((resid ** 2).sum() / ((t - 1) * (r - 1))) if t > 1 else NAN}


def _differences(names, by_t, se: float, df: float, alpha: float) -> list[dict]:
    """Every pair (a, b) of modalities in input order: a - b with its CI and two-sided p (t on df, or z)."""
    normal, q = math.isinf(df), _quantile(alpha, df)
    out = []
    for a, b in combinations(range(len(names)), 2):
        diff = float(by_t[a] - by_t[b])
        z = _ratio(diff, se) if diff else 0.0
        p = NAN if math.isnan(z) else float(2 * (stats.norm.sf(abs(z)) if normal else stats.t.sf(abs(z), df)))
        out.append({"modality_a": names[a], "modality_b": names[b], "diff": diff, "df": df,
                    **_ci(diff, se, q), "p": p})
    return out


def _tests(names, theta: np.ndarray, c: dict, alpha: float) -> dict:
    t, r = theta.shape
    by_t = theta.mean(axis=1)
    df_tr = (t - 1) * (r - 1)
    spread = c["cov2"] - c["cov3"]
    den = c["ms_tr"] + r * max(spread, 0.0)
    df2 = _hillis_df(den, c["ms_tr"], df_tr)
    f_rrc = _ratio(c["ms_t"], den)
    random = {"f": f_rrc, "df1": t - 1, "df2": df2, "p": _f_sf(f_rrc, t - 1, df2), "denominator": den,
              "cov2_minus_cov3_truncated": bool(spread <= 0),
              "differences": _differences(names, by_t, math.sqrt(2 * den / r), df2, alpha)}
    den_fr = c["var"] - c["cov1"] + (r - 1) * max(spread, 0.0)
    chi = (t - 1) * _ratio(c["ms_t"], den_fr)
    se_fr = math.sqrt(2 * den_fr / r) if den_fr >= 0 else NAN
    fixed_readers = {"chi2": chi, "df": t - 1, "p": NAN if math.isnan(chi) else float(stats.chi2.sf(chi, t - 1)),
                     "denominator": den_fr, "differences": _differences(names, by_t, se_fr, math.inf, alpha)}
    f_fc = _ratio(c["ms_t"], c["ms_tr"])
    fixed_cases = {"f": f_fc, "df1": t - 1, "df2": df_tr, "p": _f_sf(f_fc, t - 1, df_tr),
                   "denominator": c["ms_tr"],
                   "differences": _differences(names, by_t, math.sqrt(2 * c["ms_tr"] / r), df_tr, alpha)}
    return {"random_readers_cases": random, "fixed_readers": fixed_readers, "fixed_cases": fixed_cases}


def _modality(name, aucs: np.ndarray, block: np.ndarray, alpha: float) -> dict:
    """Hillis's single-modality analysis from one modality's reader AUCs and their covariance block."""
    r = aucs.size
    off = ~np.eye(r, dtype=bool)
    var, cov2 = float(np.diag(block).mean()), float(block[off].mean())
    ms_r = float(aucs.var(ddof=1))
    den = ms_r + r * max(cov2, 0.0)
    df = _hillis_df(den, ms_r, r - 1)
    q = _quantile(alpha, df)
    auc = float(aucs.mean())
    fixed = (var + (r - 1) * cov2) / r
    return {"modality": name, "auc": auc, "df": df, **_ci(auc, math.sqrt(den / r), q),
            "fixed_readers": _ci(auc, math.sqrt(fixed) if fixed >= 0 else NAN, float(stats.norm.ppf(1 - alpha / 2))),
            "var": var, "cov2": cov2, "ms_r": ms_r}


def or_analysis(reads: Reads, cov: str = "delong", alpha: float = 0.05) -> dict:
    """Obuchowski–Rockette MRMC analysis of a fully crossed reader study (see the module docstring).

    Returns plain floats, lists and dicts (NaN where undefined; :func:`lnzoo.evaluation.jsonable` makes it
    JSON). With one modality, ``random_readers_cases``, ``fixed_readers`` and ``fixed_cases`` are None.
    """
    if not 0 < alpha < 1:
        raise UsageError(f"alpha must be between 0 and 1, got {alpha}")
    t, r, c = reads.ratings.shape
    if r < 2:
        raise UsageError(f"{reads.source}: the Obuchowski–Rockette analysis needs at least 2 readers, found "
                         f"{r} ({', '.join(reads.readers)}); for one reader compare the AUCs with DeLong's test")
    y = reads.truth
    try:
        aucs, matrix = auc_covariance(y, reads.ratings.reshape(t * r, c), cov, reads.patients)
    except UsageError as exc:
        raise UsageError(f"{reads.source}: {exc}") from None
    theta = aucs.reshape(t, r)
    comp = _components(theta, matrix)
    z = float(stats.norm.ppf(1 - alpha / 2))
    reader_auc = []
    for k, (i, j) in enumerate((i, j) for i in range(t) for j in range(r)):
        auc, se = float(aucs[k]), math.sqrt(matrix[k, k]) if matrix[k, k] >= 0 else NAN
        lo, hi = (NAN, NAN) if math.isnan(se) else (max(0.0, auc - z * se), min(1.0, auc + z * se))
        reader_auc.append({"modality": reads.modalities[i], "reader": reads.readers[j], "auc": auc, "se": se,
                           "lo": lo, "hi": hi})
    modality_auc = [_modality(name, theta[i], matrix[i * r:(i + 1) * r, i * r:(i + 1) * r], alpha)
                    for i, name in enumerate(reads.modalities)]
    tests = (_tests(reads.modalities, theta, comp, alpha) if t > 1 else
             {"random_readers_cases": None, "fixed_readers": None, "fixed_cases": None})
    roc = []
    for i in range(t):
        for j in range(r):
            fpr, tpr = roc_points(y, reads.ratings[i, j])
            fpr, tpr = fpr.tolist(), tpr.tolist()
            roc.append({"modality": reads.modalities[i], "reader": reads.readers[j], "fpr": fpr, "tpr": tpr})
    return {"source": reads.source, "cov_method": cov, "alpha": alpha, "readers": list(reads.readers),
            "modalities": list(reads.modalities), "n_cases": c, "n_diseased": int(y.sum()),
            "n_nondiseased": int((~y).sum()), "n_patients": len(set(reads.patients)) if reads.patients else None,
            "modality_auc": modality_auc, "reader_auc": reader_auc, "variance_components": comp, **tests,
            "covariance": {"index": [[reads.modalities[i], reads.readers[j]] for i in range(t) for j in range(r)],
                           "matrix": matrix.tolist()},
            "roc": roc}


def _g(x) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.7g}"


def _df(x) -> str:
    return "inf" if x is not None and math.isinf(x) else fmt(x, 2) if isinstance(x, float) else str(x)


def format_or(result: dict) -> str:
    """A plain-text summary of :func:`or_analysis`'s result: AUCs, differences, the three tests, components."""
    pct = f"{100 * (1 - result['alpha']):g}%"
    names, readers = result["modalities"], result["readers"]
    patients = f", {result['n_patients']} patients" if result.get("n_patients") else ""
    out = [f"Obuchowski–Rockette MRMC analysis of {result['source']}",
           (f"{len(readers)} readers × {len(names)} modalities × {result['n_cases']} cases "
            f"({result['n_diseased']} diseased, {result['n_nondiseased']} not{patients}); "
            f"AUC covariance: {result['cov_method']}; {pct} intervals"), "",
           f"Modality AUC (mean over readers), single-modality {pct} CI (Hillis, random readers and cases):",
           f"  {'modality':<16}{'AUC':>8}  {'CI':<17}{'df':>8}"]
    for m in result["modality_auc"]:
        out.append(f"  {m['modality']:<16}{fmt(m['auc']):>8}  {fmt(m['lo']) + '–' + fmt(m['hi']):<17}"
                   f"{_df(m['df']):>8}")
    out += ["", "Reader AUCs:", "  " + f"{'reader':<12}" + "".join(f"{n:>16}" for n in names)]
    by = {(a["modality"], a["reader"]): a["auc"] for a in result["reader_auc"]}
    out += ["  " + f"{rd:<12}" + "".join(f"{fmt(by[n, rd]):>16}" for n in names) for rd in readers]
    if result.get("random_readers_cases") is not None:
        out += ["", f"Modality differences ({pct} CI) and tests of equal AUCs:",
                f"  {'analysis':<26}{'comparison':<22}{'difference (CI)':<26}{'statistic':>16}{'df':>14}{'p':>9}"]
        for key, label in (("random_readers_cases", "random readers & cases"), ("fixed_readers", "fixed readers"),
                           ("fixed_cases", "fixed cases")):
            test = result[key]
            if key == "fixed_readers":
                stat, df = f"chi² = {fmt(test['chi2'])}", _df(test["df"])
            else:
                stat, df = f"F = {fmt(test['f'])}", f"{_df(test['df1'])}, {_df(test['df2'])}"
            if len(names) > 2:
                out.append(f"  {label:<26}{'all equal':<22}{'':<26}{stat:>16}{df:>14}{fmt_p(test['p']):>9}")
            for d in test["differences"]:
                ci = f"{fmt(d['diff'], 4)} ({fmt(d['lo'], 4)}, {fmt(d['hi'], 4)})"
                what = f"{d['modality_a']} − {d['modality_b']}"
                if len(names) > 2:
                    out.append(f"  {'':<26}{what:<22}{ci:<26}{'':>16}{_df(d['df']):>14}{fmt_p(d['p']):>9}")
                else:
                    out.append(f"  {label:<26}{what:<22}{ci:<26}{stat:>16}{df:>14}{fmt_p(test['p']):>9}")
    c = result["variance_components"]
    out += ["", "OR variance components:",
            "  " + "  ".join(f"{k} {_g(c[key])}" for k, key in (("Var", "var"), ("Cov1", "cov1"), ("Cov2", "cov2"),
                                                               ("Cov3", "cov3"))),
            "  " + "  ".join(f"{k} {_g(c[key])}" for k, key in (("MS(T)", "ms_t"), ("MS(R)", "ms_r"),
                                                               ("MS(T:R)", "ms_tr")))]
    rrc = result.get("random_readers_cases")
    if rrc is not None and rrc["cov2_minus_cov3_truncated"]:
        out.append("  Cov2 − Cov3 <= 0: the random-readers denominator is MS(T:R) alone, on (t−1)(r−1) df")
    return "\n".join(out)
