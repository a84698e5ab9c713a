"""Who the phantom's patients are: subgroup prototypes and the per-patient clinical draw.

Part of :mod:`lnzoo.data.phantom` (synthetic data, NOT clinical data); how a node looks in the
image is :mod:`lnzoo.data.phantom_render`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_SHORT_MM, MAX_LONG_MM = 19.0, 24.0  # nodes are kept small enough to fit the field
ORIGINS = ("lung", "breast", "esophagus", "nasopharyngeal", "abdominal", "other")
FLOW_PATTERNS = ("none", "hilar", "peripheral", "mixed")

# ----------------------------------------------------------------------------------------
# Subgroup prototypes. Every node belongs to one subgroup (benign, one metastatic origin or
# one lymphoma subtype). `difficulty` shrinks each continuous/probability parameter toward
# the prevalence-weighted pooled value.
#   p        prevalence            short    median short axis (mm)   ratio   long/short
#   echo     cortex level (dB)     het      heterogeneity (dB)       calc    microcalc rate
#   necr     P(cystic necrosis)    irreg    margin irregularity      ret     reticulation
#   ret_sc   reticulation scale    cap      capsule brightness       alpha   attenuation
#   hilum    P(echogenic hilum)    female   P(female)                age     mean age (sd)
# ----------------------------------------------------------------------------------------
_P_PATHOLOGY = {"benign": 0.45, "metastatic": 0.35, "lymphoma": 0.20}
_P_ORIGIN = {"lung": 0.25, "breast": 0.15, "esophagus": 0.15, "nasopharyngeal": 0.20,
             "abdominal": 0.10, "other": 0.15}
_P_SUBTYPE = {"DLBCL": 0.6, "other": 0.4}

_MET_COMMON = dict(ret=0.08, ret_sc=1.0, cap=0.25, alpha=0.85, hilum=0.03, age_sd=10.0)
_GROUPS: dict[str, dict[str, float]] = {
    "benign": dict(short=6.3, ratio=2.05, echo=-13.5, het=2.0, calc=0.03, necr=0.02,
                   irreg=0.025, ret=0.05, ret_sc=1.0, cap=0.8, alpha=1.0, hilum=0.97,
                   female=0.55, age=38.0, age_sd=13.0),
    "met:lung": dict(short=11.0, ratio=1.20, echo=-15.5, het=6.5, calc=2.0, necr=0.30,
                     irreg=0.15, female=0.35, age=62.0, **_MET_COMMON),
    "met:breast": dict(short=8.5, ratio=1.60, echo=-20.0, het=2.5, calc=0.1, necr=0.10,
                       irreg=0.04, female=0.98, age=52.0, **_MET_COMMON),
    "met:esophagus": dict(short=10.5, ratio=1.25, echo=-15.0, het=8.5, calc=0.5, necr=0.80,
                          irreg=0.10, female=0.20, age=63.0, **_MET_COMMON),
    "met:nasopharyngeal": dict(short=15.0, ratio=1.10, echo=-20.0, het=3.0, calc=0.1,
                               necr=0.30, irreg=0.05, female=0.30, age=47.0,
                               **{**_MET_COMMON, "ret": 0.35}),
    "met:abdominal": dict(short=8.0, ratio=1.35, echo=-9.5, het=5.0, calc=0.5, necr=0.15,
                          irreg=0.08, female=0.45, age=60.0, **_MET_COMMON),
    "met:other": dict(short=9.5, ratio=1.35, echo=-13.0, het=6.0, calc=7.0, necr=0.50,
                      irreg=0.07, female=0.60, age=50.0, **_MET_COMMON),
    "lym:DLBCL": dict(short=15.0, ratio=1.28, echo=-27.0, het=4.5, calc=0.0, necr=0.10,
                      irreg=0.06, ret=1.0, ret_sc=1.4, cap=0.45, alpha=0.45, hilum=0.06,
                      female=0.45, age=58.0, age_sd=14.0),
    "lym:other": dict(short=11.0, ratio=1.35, echo=-24.0, het=2.5, calc=0.0, necr=0.03,
                      irreg=0.04, ret=0.85, ret_sc=1.0, cap=0.5, alpha=0.55, hilum=0.10,
                      female=0.50, age=45.0, age_sd=15.0),
}
_CATEGORICAL = {  # per pathology: P(elasto score 1..4), P(flow none/hilar/peripheral/mixed)
    "benign": ((0.50, 0.42, 0.07, 0.01), (0.30, 0.60, 0.03, 0.07)),
    "metastatic": ((0.01, 0.09, 0.45, 0.45), (0.15, 0.10, 0.45, 0.30)),
    "lymphoma": ((0.08, 0.45, 0.40, 0.07), (0.05, 0.45, 0.10, 0.40)),
}
_FLOW_RICHNESS = {"benign": 1.0, "metastatic": 1.2, "lymphoma": 1.8}


def _group_weights() -> dict[str, float]:
    w = {"benign": _P_PATHOLOGY["benign"]}
    for o, p in _P_ORIGIN.items():
        w[f"met:{o}"] = _P_PATHOLOGY["metastatic"] * p
    for s, p in _P_SUBTYPE.items():
        w[f"lym:{s}"] = _P_PATHOLOGY["lymphoma"] * p
    return w


_LOG_PARAMS = ("short", "calc")  # shrunk on a log scale


def _fwd(key: str, x: float) -> float:
    return math.log(x + 0.05) if key in _LOG_PARAMS else x


def _inv(key: str, x: float) -> float:
    return math.exp(x) - 0.05 if key in _LOG_PARAMS else x


def _pooled() -> tuple[dict, dict]:
    """(global pooled value per key, {pathology: pooled value per key}) in the shrink domain."""
    w = _group_weights()
    prefix = {"benign": "benign", "metastatic": "met:", "lymphoma": "lym:"}
    glob = {key: sum(wi * _fwd(key, _GROUPS[g][key]) for g, wi in w.items())
            for key in _GROUPS["benign"]}
    by_class = {}
    for c, pre in prefix.items():
        ws = {g: wi for g, wi in w.items() if g.startswith(pre)}
        tot = sum(ws.values())
        by_class[c] = {key: sum(wi * _fwd(key, _GROUPS[g][key]) for g, wi in ws.items()) / tot
                       for key in _GROUPS["benign"]}
    glob["_cat"] = tuple(
        tuple(sum(_P_PATHOLOGY[c] * _CATEGORICAL[c][i][k] for c in _P_PATHOLOGY) for k in range(4))
        for i in range(2))
    return glob, by_class


_POOLED, _CLASS_POOLED = _pooled()


# ----------------------------------------------------------------------------------------
# Per-patient clinical draw
# ----------------------------------------------------------------------------------------
@dataclass
class _Node:
    pathology: str
    origin: str
    subtype: str
    age: int
    sex: str
    long_mm: float
    short_mm: float
    elasto: int
    flow: str
    hilum: int
    echo: float
    het: float
    ncalc: int
    necrosis: bool
    irreg: float
    ret: float
    ret_sc: float
    cap: float
    alpha: float
    richness: float


def _choice(rng: np.random.Generator, names, probs) -> str:
    p = np.asarray(probs, dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _draw_node(rng: np.random.Generator, difficulty: float) -> _Node:
    sep = 1.0 - 0.65 * difficulty     # 1 = full prototype separation, 0.35 at difficulty 1
    sep_sub = 1.0 - 0.5 * difficulty  # the same for origin / subtype within a class
    spread = 0.7 + 0.5 * difficulty   # multiplier on per-node spread
    pathology = _choice(rng, list(_P_PATHOLOGY), list(_P_PATHOLOGY.values()))
    origin = subtype = ""
    if pathology == "benign":
        group = "benign"
    elif pathology == "metastatic":
        origin = _choice(rng, ORIGINS, [_P_ORIGIN[o] for o in ORIGINS])
        group = f"met:{origin}"
    else:
        subtype = _choice(rng, ("DLBCL", "other"), (_P_SUBTYPE["DLBCL"], _P_SUBTYPE["other"]))
        group = f"lym:{subtype}"
    g = _GROUPS[group]

    def shrink(key: str) -> float:
        # global mean + shrunk class offset + (less) shrunk subgroup offset within the class
        glob, cls = _POOLED[key], _CLASS_POOLED[pathology][key]
        return _inv(key, glob + sep * (cls - glob) + sep_sub * (_fwd(key, g[key]) - cls))

    def bern(key: str) -> bool:
        return bool(rng.random() < shrink(key))

    short = float(np.clip(shrink("short") * math.exp(rng.normal(0, 0.28 * spread)), 3.0, MAX_SHORT_MM))
    ratio = float(np.clip(shrink("ratio") + rng.normal(0, 0.22 * spread), 1.02, 3.4))
    long_ = min(short * ratio, MAX_LONG_MM)
    short, long_ = round(short, 1), round(long_, 1)
    if long_ < short:
        long_ = short
    age = int(np.clip(round(shrink("age") + rng.normal(0, g["age_sd"])), 16, 90))
    sex = "F" if bern("female") else "M"
    el_p, fl_p = (tuple(_POOLED["_cat"][i][k] + sep * (_CATEGORICAL[pathology][i][k] - _POOLED["_cat"][i][k])
                        for k in range(4)) for i in range(2))
    elasto = 1 + int(rng.choice(4, p=np.array(el_p) / sum(el_p)))
    flow = _choice(rng, FLOW_PATTERNS, fl_p)
    hilum = int(bern("hilum"))
    return _Node(
        pathology=pathology, origin=origin, subtype=subtype, age=age, sex=sex,
        long_mm=long_, short_mm=short, elasto=elasto, flow=flow, hilum=hilum,
        echo=shrink("echo") + rng.normal(0, 2.5 * spread),
        het=max(0.5, shrink("het") + rng.normal(0, 1.2 * spread)),
        ncalc=int(rng.poisson(max(shrink("calc"), 0.0))),
        necrosis=bern("necr"),
        irreg=max(0.01, shrink("irreg") + rng.normal(0, 0.02 * spread)),
        ret=float(np.clip(shrink("ret") + rng.normal(0, 0.12 * spread), 0.0, 1.3)),
        ret_sc=shrink("ret_sc"),
        cap=float(np.clip(shrink("cap") + rng.normal(0, 0.1), 0.0, 1.0)),
        alpha=float(np.clip(shrink("alpha") + rng.normal(0, 0.08), 0.2, 1.2)),
        richness=_FLOW_RICHNESS[pathology] * float(np.exp(rng.normal(0, 0.2))),
    )
