"""Statistical comparisons: DeLong AUC variance/test/CI, patient-level bootstrap, McNemar (no torch)."""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import binom, chi2, norm, rankdata

__all__ = [
    "binary_auc",
    "macro_auc",
    "task_auc",
    "ClusterSampler",
    "delong_roc_variance",
    "delong_ci",
    "auc_difference_test",
    "bootstrap_ci",
    "paired_bootstrap_auc_diff",
    "mcnemar_test",
]

NAN = float("nan")


def _binary_y(y_true) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be binary 0/1 (or bool); 1 is the positive class")
    return y.astype(bool)


def _score_1d(score, n: int) -> np.ndarray:
    s = np.asarray(score, dtype=float)
    if s.ndim == 2 and s.shape[1] == 2:
        s = s[:, 1]  # a binary (n, 2) probability matrix: score the positive class
    if s.shape != (n,):
        raise ValueError(f"score must have shape ({n},) or ({n}, 2), got {s.shape}")
    return s


def binary_auc(y_true, score) -> float:
    """Binary ROC AUC (Mann-Whitney with midranks: ties count 1/2, as sklearn); NaN when one class is absent.

    The one AUC of lnzoo: metrics, bootstrap resamples, ROC plots and comparisons all call it. Cheaper
    than sklearn's ``roc_auc_score`` per call, which is what dominates a bootstrap; ``score`` may be
    (n,) or a binary (n, 2) probability matrix.
    """
    y = y_true if isinstance(y_true, np.ndarray) and y_true.dtype == bool else _binary_y(y_true)
    s = _score_1d(score, y.shape[0])
    m = int(y.sum())
    n = y.shape[0] - m
    if m == 0 or n == 0:
        return NAN
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    edges = np.concatenate(([0], np.flatnonzero(ss[1:] != ss[:-1]) + 1, [ss.size]))
    ranks = np.empty(ss.size)
    ranks[order] = np.repeat((edges[:-1] + edges[1:] + 1) / 2.0, np.diff(edges))
    return float((ranks[y].sum() - m * (m + 1) / 2.0) / (m * n))


def macro_auc(y_true, proba) -> float:
    """Macro one-vs-rest AUC over the classes with at least one positive and one negative case; NaN if none."""
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=float)
    vals = [binary_auc(y == j, p[:, j]) for j in range(p.shape[1])]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else NAN


def task_auc(y_true, proba, pos: int | None) -> float:
    """The headline AUC of a task: the positive class's (binary, ``pos`` given) or the macro one-vs-rest."""
    p = np.asarray(proba, dtype=float)
    return binary_auc(np.asarray(y_true) == pos, p[:, pos]) if pos is not None else macro_auc(y_true, p)


def _delong_components(y: np.ndarray, scores: np.ndarray):
    """AUCs and DeLong placements for k score rows over the same cases (Sun & Xu 2014 midranks).

    ``v10[r, i]`` is the fraction of negatives scored below positive i (ties 1/2) and
    ``v01[r, j]`` the fraction of positives scored above negative j, for score row r.
    """
    m = int(y.sum())
    n = y.shape[0] - m
    if m == 0 or n == 0:
        raise ValueError("DeLong needs at least one positive and one negative case")
    pos, neg = scores[:, y], scores[:, ~y]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    # a positive's rank among all minus its rank among positives = negatives below it (ties 1/2)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return v10.mean(axis=1), v10, v01, m, n  # the mean placement of the positives is the AUC


def delong_roc_variance(y_true, score) -> tuple[float, float]:
    """(AUC, DeLong variance of the AUC) for binary ``y_true`` (1 = positive); NaN variance if m or n < 2."""
    y = _binary_y(y_true)
    auc, v10, v01, m, n = _delong_components(y, _score_1d(score, y.shape[0])[None])
    if m < 2 or n < 2:  # one positive or one negative leaves the variance undefined, not an error
        return float(auc[0]), NAN
    return float(auc[0]), float(np.cov(v10, ddof=1) / m + np.cov(v01, ddof=1) / n)


def _z_test(diff: float, var: float) -> tuple[float, float]:
    """(z, two-sided p) of a difference with a variance; equal values give z = 0, zero variance ±inf,
    a NaN variance (a class with a single case) NaN."""
    if diff == 0.0:
        z = 0.0
    elif var > 0.0:
        z = diff / math.sqrt(var)
    elif var <= 0.0:
        z = math.copysign(math.inf, diff)
    else:
        z = NAN
    return float(z), (float(2.0 * norm.sf(abs(z))) if not math.isnan(z) else NAN)


def auc_difference_test(y_true, proba_a, proba_b, groups: Sequence | None = None) -> dict:
    """Paired test of AUC(a) == AUC(b) on the same cases: binary AUC, or the macro one-vs-rest AUC.

    Built on DeLong's placement values: each case's influence on each one-vs-rest AUC, averaged over
    the classes, gives the variance of the macro difference (with two classes this is exactly the
    paired DeLong test of DeLong, DeLong & Clarke-Pearson 1988). With ``groups`` (patient ids) the
    influences are summed per patient before squaring (Obuchowski's clustered form), so several
    images of one patient, e.g. the frames of one video, do not count as independent evidence.
    Classes absent from ``y_true`` (or present in every case) are left out of the macro average, as
    in the AUC itself.
    """
    y = np.asarray(y_true).astype(int)
    pa, pb = np.asarray(proba_a, dtype=float), np.asarray(proba_b, dtype=float)
    if pa.ndim == 1:
        pa, pb = np.stack([1 - pa, pa], 1), np.stack([1 - pb, pb], 1)
    if pa.shape != pb.shape or pa.shape[0] != y.shape[0]:
        raise ValueError(f"proba_a {pa.shape}, proba_b {pb.shape} and y_true {y.shape} do not line up")
    n_cases, k = pa.shape
    classes = [1] if k == 2 else [c for c in range(k) if 0 < int((y == c).sum()) < n_cases]
    if not classes:
        raise ValueError("the AUC needs cases of at least two classes")
    clustered = groups is not None
    infl = np.zeros((2, n_cases))
    aucs = np.zeros(2)
    for c in classes:
        pos = y == c
        auc, v10, v01, m, n = _delong_components(pos, np.vstack([pa[:, c], pb[:, c]]))
        aucs += auc / len(classes)
        if clustered:  # raw influence of each case on the AUC
            infl[:, pos] += (v10 - auc[:, None]) / m / len(classes)
            infl[:, ~pos] += (v01 - auc[:, None]) / n / len(classes)
        else:  # scaled so that the sum of squares is DeLong's unbiased (ddof=1) variance
            with np.errstate(divide="ignore", invalid="ignore"):
                infl[:, pos] += (v10 - auc[:, None]) / math.sqrt(m * (m - 1)) / len(classes) if m > 1 else NAN
                infl[:, ~pos] += (v01 - auc[:, None]) / math.sqrt(n * (n - 1)) / len(classes) if n > 1 else NAN
    d = infl[0] - infl[1]
    if clustered:
        g = np.asarray(groups)
        if g.shape[0] != n_cases:
            raise ValueError(f"groups has {g.shape[0]} entries for {n_cases} cases")
        _, inv = np.unique(g, return_inverse=True)
        n_groups = int(inv.max()) + 1

        def variance(v: np.ndarray) -> float:  # influences summed per patient, then squared
            if n_groups < 2:
                return NAN
            return float(n_groups / (n_groups - 1) * (np.bincount(inv, weights=v, minlength=n_groups) ** 2).sum())
    else:
        n_groups = n_cases

        def variance(v: np.ndarray) -> float:
            return float((v ** 2).sum())
    var, var_a, var_b = variance(d), variance(infl[0]), variance(infl[1])
    diff = float(aucs[0] - aucs[1])
    z, p = _z_test(diff, var)
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "z": z, "p_value": p,
            "se_a": math.sqrt(var_a) if var_a >= 0 else NAN, "se_b": math.sqrt(var_b) if var_b >= 0 else NAN,
            "classes": len(classes), "clustered": clustered, "n_clusters": n_groups}


def delong_ci(y_true, score, alpha: float = 0.05) -> tuple[float, float, float]:
    """(AUC, lo, hi): plain normal interval AUC ± z(1-alpha/2)·sqrt(DeLong var), clipped to [0, 1] (pROC's default)."""
    auc, var = delong_roc_variance(y_true, score)
    if not var >= 0:  # NaN variance: one case in a class
        return auc, NAN, NAN
    half = float(norm.ppf(1.0 - alpha / 2.0)) * math.sqrt(var)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


class ClusterSampler:
    """Bootstrap resamples of case indices that draw whole groups (patients) with replacement.

    Every case of a drawn group comes along (a group drawn twice brings its cases twice), so the
    images of one patient are never counted as independent evidence. ``groups=None``: every case is
    its own group (the plain bootstrap). Deterministic for a ``seed``.
    """

    def __init__(self, groups: Sequence | None, n: int, seed: int):
        if groups is None:
            codes = np.arange(n)
        else:
            g = list(groups.tolist() if isinstance(groups, np.ndarray) else groups)
            if len(g) != n:
                raise ValueError(f"groups has {len(g)} entries for {n} cases")
            index: dict = {}
            codes = np.fromiter((index.setdefault(x, len(index)) for x in g), dtype=np.intp, count=n)
        self.order = np.argsort(codes, kind="stable")
        self.sizes = np.bincount(codes)
        self.starts = np.cumsum(self.sizes) - self.sizes
        self.singletons = bool((self.sizes == 1).all())
        self.rng = np.random.default_rng(seed)

    def draw(self) -> np.ndarray:
        units = self.sizes.shape[0]
        g = self.rng.integers(0, units, size=units)
        if self.singletons:
            return self.order[g]
        lens = self.sizes[g]
        offsets = np.repeat(self.starts[g] - (np.cumsum(lens) - lens), lens)
        return self.order[offsets + np.arange(lens.sum())]


def _bootstrap_values(metric_fn: Callable, y: np.ndarray, p: np.ndarray, groups, n_boot: int,
                      seed: int) -> np.ndarray:
    """The metric on each resample where it is defined (undefined resamples are left out)."""
    sampler = ClusterSampler(groups, y.shape[0], seed)
    vals = np.array([_metric_or_nan(metric_fn, y[idx], p[idx])
                     for idx in (sampler.draw() for _ in range(n_boot))])
    return vals[np.isfinite(vals)]


def _checked_inputs(y_true, proba):
    y = np.asarray(y_true)
    p = np.asarray(proba)
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} cases but proba has {p.shape[0]}")
    if y.shape[0] == 0:
        raise ValueError("no cases to bootstrap")
    return y, p


def _metric_or_nan(metric_fn, y, p) -> float:
    try:
        v = float(metric_fn(y, p))
    except (ValueError, ZeroDivisionError, FloatingPointError):
        return NAN
    return v if math.isfinite(v) else NAN


def bootstrap_ci(metric_fn: Callable, y_true, proba, groups: Sequence | None = None, n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile bootstrap CI of ``metric_fn(y, p) -> float``: dict(value, lo, hi, n_boot_valid).

    With ``groups`` (patient ids) whole patients are resampled with replacement, each bringing all
    of its cases (cluster bootstrap), so correlated images of one patient are not counted as
    independent evidence. Resamples where the metric is undefined (raises ValueError or returns
    NaN, e.g. AUC with one class) are skipped and counted out of ``n_boot_valid``. Deterministic
    for a ``seed``. The metric call dominates the cost: prefer ``binary_auc`` to sklearn's AUC.
    """
    y, p = _checked_inputs(y_true, proba)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined resamples are expected and counted, not warned
        value = _metric_or_nan(metric_fn, y, p)
        vals = _bootstrap_values(metric_fn, y, p, groups, n_boot, seed)
    if vals.size:
        lo, hi = np.quantile(vals, [alpha / 2.0, 1.0 - alpha / 2.0])
    else:
        lo = hi = NAN
    return {"value": value, "lo": float(lo), "hi": float(hi), "n_boot_valid": int(vals.size)}


def paired_bootstrap_auc_diff(y_true, score_a, score_b, groups: Sequence | None = None, n_boot: int = 1000,
                              seed: int = 0, alpha: float = 0.05) -> dict:
    """Paired (optionally patient-clustered) bootstrap of AUC(a) - AUC(b).

    Returns dict(diff, lo, hi, z, p_value, n_boot_valid): percentile CI of the difference, and
    z = diff / bootstrap SD with a two-sided normal p-value (pROC's bootstrap test).
    """
    y = _binary_y(y_true)
    a = _score_1d(score_a, y.shape[0])
    b = _score_1d(score_b, y.shape[0])
    both = np.column_stack([a, b])

    def diff_fn(yy, ss):
        return binary_auc(yy, ss[:, 0]) - binary_auc(yy, ss[:, 1])

    y, both = _checked_inputs(y, both)
    diff = _metric_or_nan(diff_fn, y, both)
    vals = _bootstrap_values(diff_fn, y, both, groups, n_boot, seed)
    if vals.size > 1:
        lo, hi = np.quantile(vals, [alpha / 2.0, 1.0 - alpha / 2.0])
        sd = float(np.std(vals, ddof=1))
    else:
        lo = hi = sd = NAN
    z = 0.0 if diff == 0.0 else (diff / sd if sd > 0 else NAN)
    p = float(2.0 * norm.sf(abs(z))) if not math.isnan(z) else NAN
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "z": float(z), "p_value": p,
            "n_boot_valid": int(vals.size)}


def mcnemar_test(y_true, pred_a, pred_b) -> dict:
    """McNemar test of paired correctness of two classifiers on the same cases.

    ``b`` = cases A gets right and B wrong, ``c`` = A wrong and B right. When b + c < 25 the
    exact two-sided binomial test (b ~ Bin(b + c, 1/2)) is used and ``statistic`` is min(b, c);
    otherwise the chi-square test with continuity correction, statistic (|b - c| - 1)² / (b + c)
    on 1 degree of freedom. Returns dict(b, c, statistic, p_value, exact).
    """
    y = np.asarray(y_true)
    a = np.asarray(pred_a)
    bb = np.asarray(pred_b)
    if not (y.shape == a.shape == bb.shape) or y.ndim != 1:
        raise ValueError(f"y_true, pred_a, pred_b must be 1-D of equal length, got {y.shape}, {a.shape}, {bb.shape}")
    ok_a = a == y
    ok_b = bb == y
    b = int(np.sum(ok_a & ~ok_b))
    c = int(np.sum(~ok_a & ok_b))
    n = b + c
    if n < 25:
        k = min(b, c)
        p = 1.0 if n == 0 else min(1.0, 2.0 * float(binom.cdf(k, n, 0.5)))
        return {"b": b, "c": c, "statistic": float(k), "p_value": p, "exact": True}
    stat = (abs(b - c) - 1.0) ** 2 / n
    return {"b": b, "c": c, "statistic": float(stat), "p_value": float(chi2.sf(stat, 1)), "exact": False}


def standardized_mean_difference(a, b) -> np.ndarray:
    """Cohen's d per column of ``a`` (n_a, F) against ``b`` (n_b, F): the mean difference over the pooled
    standard deviation (ddof 1); NaN where a group has under 2 rows or the pooled sd is 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two (n, F) arrays with the same F, got {a.shape} and {b.shape}")
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return np.full(a.shape[1], np.nan)
    pooled = np.sqrt(((na - 1) * a.var(0, ddof=1) + (nb - 1) * b.var(0, ddof=1)) / (na + nb - 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pooled > 0, (a.mean(0) - b.mean(0)) / pooled, np.nan)
