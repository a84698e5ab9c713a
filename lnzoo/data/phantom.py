"""Synthetic cervical lymph node ultrasound phantom -- for development and demos only.

THIS IS NOT CLINICAL DATA. Every image, label and covariate written by this module is
generated from a random number generator and a crude physical model. It exists so that
recipes, tests and demos have a dataset with the same *shape* as the real one (three
modalities, ROI crops, masks, Chinese-labelled list files, a manifest), with labels that
are learnable but not trivial. Nothing learned from it says anything about real patients.

What it models (deliberately simple):

* One node per patient, 1-3 images ("acquisitions") per patient: the same node seen with
  jittered position, angle, scale, gain, TGC and fresh speckle.
* Pathology: benign / metastatic / lymphoma (about 45 / 35 / 20 %). Metastatic nodes carry a
  primary ``origin`` (lung, breast, esophagus, nasopharyngeal, abdominal, other), lymphomas a
  ``lymphoma_subtype`` (DLBCL / other, about 60 / 40).
* Class-dependent appearance: benign = oval (long/short ~2), echogenic fatty hilum, smooth
  margin, hilar flow, soft; metastatic = round, no hilum, heterogeneous, sometimes
  microcalcifications (bright dots) and cystic necrosis (anechoic patch), peripheral/mixed
  flow, stiff; lymphoma = round, markedly hypoechoic, reticulated, posterior acoustic
  enhancement, rich hilar/mixed flow, intermediate stiffness. Origins and subtypes differ
  subtly (size, echo level, heterogeneity, calcification and necrosis rates, margin).
  ``difficulty`` (0..1) shrinks every subgroup's prototype toward the pooled mean and widens
  the per-node spread, so 0 = clearly separable and 1 = heavily overlapping.
* Image physics: a linear-probe B-mode frame covering ``FIELD_DEPTH_MM`` (32 mm) of depth,
  layered tissue (skin, subcutaneous fat with septa, striated muscle, deep fibro-fatty
  tissue), sometimes a vessel, depth attenuation integrated along each beam (so fluid and
  hypoechoic nodes give posterior enhancement), a TGC curve, correlated Rayleigh speckle,
  log compression and gain. Field edges, depth ticks and a focus marker are drawn in the
  black side margins.
* Modalities: ``2d`` (8-bit grey), ``cdfi`` (RGB: a colour box with red = towards the probe,
  blue = away; vessels follow the flow pattern: hilar = central branching vessels,
  peripheral = rim arcs, mixed = both, none = nothing but the odd flash artefact) and
  ``elasto`` (RGB: a semi-transparent stiffness map inside a box). The elastography colormap
  is fixed: **red = softest, green = intermediate (normal tissue), blue = stiffest**
  (``_STIFF_COLORS``); a colour bar (top soft/red, bottom hard/blue) sits in the left margin.
  Elasto score 1 = node mostly green/red, 2 = some blue, 3 = mostly blue, 4 = all blue.

Layout written by :func:`generate_phantom` (paths in CSV/list files are relative to the
file's own folder, with forward slashes)::

    README.txt  manifest.csv
    images/{2d,cdfi,elasto}/P0001_1.png      full frames
    images/{2d,cdfi,elasto}-crop/P0001_1.png  ROI crops (bbox + 10 % margin per side)
    images/mask/P0001_1.png                   node mask, 0/255, full frame
    lists/{stage1_main,stage1_aux,stage2_metastasis,stage3_origin,
           lymphoma_subtype,pathology3}.txt   "../images/2d/P0001_1.png,<Chinese label>"

``bbox`` in the manifest is ``x0 y0 x1 y1`` in full-frame pixels with x1/y1 *exclusive*
(PIL's crop-box convention: the node occupies ``mask[y0:y1, x0:x1]``). The frame is square
and spans ``FIELD_DEPTH_MM`` both ways, so px per mm = ``frame_size / FIELD_DEPTH_MM``.

List files, like the seed system's: ``stage1_main`` covers a per-patient random ~80 % of
patients and ``stage1_aux`` an independently drawn ~60 %, so an image may carry both Stage I
labels, one, or none; the other lists hold every image their task applies to
(``stage2_metastasis``: malignant, ``stage3_origin``: metastatic, ``lymphoma_subtype``:
lymphoma, ``pathology3``: all).

Output is byte-identical for identical arguments (same numpy/pillow/zlib), and patient
``i`` depends only on ``(seed, i, difficulty, frame_size)``, not on how many patients are
generated.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import pathlib
import shutil
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "PHANTOM_VERSION",
    "FIELD_DEPTH_MM",
    "MANIFEST_COLUMNS",
    "ORIGINS",
    "LIST_FILES",
    "generate_phantom",
    "ensure_phantom",
]

PHANTOM_VERSION = 2  # bump when output changes; part of cache keys (v1: an unreleased draft)

FIELD_DEPTH_MM = 32.0  # the frame's height (and width) in mm; px per mm = frame_size / FIELD_DEPTH_MM
PROBE_WIDTH_MM = 28.0  # lateral extent of the (linear-probe) image field, centred
MAX_SHORT_MM, MAX_LONG_MM = 19.0, 24.0  # nodes are kept small enough to fit the field

MANIFEST_COLUMNS = (
    "path", "crop", "cdfi", "cdfi_crop", "elasto", "elasto_crop", "mask", "bbox", "patient",
    "malignancy", "enlargement", "metastasis", "origin", "lymphoma_subtype", "pathology3",
    "age", "sex", "long_axis_mm", "short_axis_mm", "axis_ratio", "elasto_score",
    "flow_pattern", "hilum",
)
ORIGINS = ("lung", "breast", "esophagus", "nasopharyngeal", "abdominal", "other")
FLOW_PATTERNS = ("none", "hilar", "peripheral", "mixed")
MODALITIES = ("2d", "cdfi", "elasto")
CROP_MARGIN = 0.10  # crop = bbox enlarged by 10 % of its size on each side, clipped

# list file -> (manifest column, {English label: Chinese label}); rows only where labelled
LIST_FILES = {
    "stage1_main": ("malignancy", {"benign": "良性", "malignant": "恶性"}),
    "stage1_aux": ("enlargement", {"not_enlarged": "非肿大", "enlarged": "肿大"}),
    "stage2_metastasis": ("metastasis", {"metastatic": "转移淋巴瘤", "lymphoma": "非转移淋巴瘤"}),
    "stage3_origin": ("origin", {"lung": "肺癌", "breast": "乳腺癌", "esophagus": "食管癌",
                                 "nasopharyngeal": "鼻咽癌", "abdominal": "腹腔肿瘤",
                                 "other": "其他"}),
    "lymphoma_subtype": ("lymphoma_subtype", {"DLBCL": "弥漫大B", "other": "其他"}),
    "pathology3": ("pathology3", {"benign": "良性", "lymphoma": "淋巴瘤", "metastatic": "转移"}),
}
STAGE1_MAIN_FRACTION = 0.8  # share of patients in stage1_main.txt (independent draw)
STAGE1_AUX_FRACTION = 0.6   # share of patients in stage1_aux.txt (independent draw)

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

# Elastography colormap anchors: stiffness 0 (soft) .. 1 (stiff).
_STIFF_COLORS = np.array([
    (0.00, 205, 30, 30),    # red: softest
    (0.25, 225, 200, 40),   # yellow
    (0.45, 50, 190, 70),    # green: intermediate / normal tissue
    (0.70, 30, 150, 215),   # cyan-blue
    (1.00, 25, 40, 200),    # blue: stiffest
], dtype=np.float32)


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


# ----------------------------------------------------------------------------------------
# Image helpers
# ----------------------------------------------------------------------------------------
def _noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Smooth gaussian noise with unit standard deviation (float32).

    Wide kernels are applied on a coarser grid and upsampled bilinearly (much faster, and
    indistinguishable once smoothed).
    """
    sig = np.broadcast_to(np.asarray(sigma, dtype=float), (2,))
    f = int(min(sig) // 2.5)
    if f >= 2:
        small = (shape[0] // f + 3, shape[1] // f + 3)
        n = rng.standard_normal(small, dtype=np.float32)
        n = ndimage.gaussian_filter(n, tuple(sig / f), mode="wrap", truncate=3.0)
        n = _upsample(_upsample(n, shape[0], f, 0), shape[1], f, 1)
    else:
        n = rng.standard_normal(shape, dtype=np.float32)
        n = ndimage.gaussian_filter(n, tuple(sig), mode="wrap", truncate=3.0)
    s = float(n.std())
    return n / s if s > 0 else n


def _upsample(arr: np.ndarray, n_out: int, f: int, axis: int) -> np.ndarray:
    """Linear interpolation along `axis`: output sample i sits at input coordinate i/f + 1."""
    pos = np.arange(n_out, dtype=np.float32) / f + 1.0
    i0 = pos.astype(np.int64)
    w = pos - i0.astype(np.float32)
    if axis == 0:
        return arr[i0] * (1 - w)[:, None] + arr[i0 + 1] * w[:, None]
    return arr[:, i0] * (1 - w)[None, :] + arr[:, i0 + 1] * w[None, :]


def _stamp_path(canvas: np.ndarray, pts: np.ndarray, value: float) -> None:
    """Mark the pixels along a polyline (points sampled densely) with `value` (max)."""
    h, w = canvas.shape
    if len(pts) < 2:
        return
    seg = np.diff(pts, axis=0)
    n = np.maximum(1, np.ceil(np.hypot(seg[:, 0], seg[:, 1]) * 2).astype(int))
    xs, ys = [], []
    for (x0, y0), (dx, dy), k in zip(pts[:-1], seg, n):
        t = np.arange(k) / k
        xs.append(x0 + dx * t)
        ys.append(y0 + dy * t)
    x = np.rint(np.concatenate(xs)).astype(int)
    y = np.rint(np.concatenate(ys)).astype(int)
    ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    canvas[y[ok], x[ok]] = np.maximum(canvas[y[ok], x[ok]], value)


def _colormap(stiff: np.ndarray) -> np.ndarray:
    s = np.clip(stiff, 0.0, 1.0)
    out = np.empty(s.shape + (3,), np.float32)
    for c in range(3):
        out[..., c] = np.interp(s, _STIFF_COLORS[:, 0], _STIFF_COLORS[:, c + 1])
    return out


@dataclass
class _Template:
    half: int          # template is (2*half+1)^2, node centre at (half, half), long axis along x
    echo: np.ndarray   # linear echogenicity
    spec: np.ndarray   # specular (non-speckled) reflectors: microcalcifications
    mask: np.ndarray   # soft mask 0..1
    alpha: np.ndarray  # attenuation coefficient relative to tissue
    stiff: np.ndarray  # stiffness 0..1
    vel: np.ndarray    # signed flow: >0 towards the probe (red), <0 away (blue)
    outline: np.ndarray  # (2, n) template (u, v) offsets of the mask's pixels, for placement


def _make_template(rng: np.random.Generator, node: _Node, ppm: float) -> _Template:
    a = node.long_mm / 2 * ppm
    b = node.short_mm / 2 * ppm
    half = int(math.ceil(a * 1.3)) + 4
    size = 2 * half + 1
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    u, v = xx, yy
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    phi = np.arctan2(v / b, u / a)
    hilum_sign = 1.0 if rng.random() < 0.5 else -1.0
    # margin: low-order harmonics (lobulation), a hilar notch for nodes with a hilum
    radius = np.ones_like(rho)
    for k in range(2, 10):
        amp = 0.8 * node.irreg * rng.normal() / k ** 0.6
        radius += amp * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    if node.hilum:
        radius -= 0.10 * np.exp(-((phi - hilum_sign * np.pi / 2) / 0.35) ** 2)
    radius = np.clip(radius, 0.75, 1.2)  # the node stays within 1.2x its nominal ellipse
    local = (a * b) / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    sdist = (radius - rho) * local  # ~ signed distance to the margin in px (inside > 0)
    mask = np.clip(0.5 + sdist, 0.0, 1.0)

    mm = ppm  # px per mm, for mm-scaled textures
    n_low = _noise(rng, (size, size), max(1.0, 0.35 * b))
    n_mid = _noise(rng, (size, size), max(0.7, 0.45 * mm))
    db = node.echo + node.het * (0.8 * n_low + 0.6 * n_mid)
    # reticulation: thin bright strands along the zero crossings of band-passed noise, in a
    # darker background
    if node.ret > 0.02:
        w = rng.standard_normal((size, size), dtype=np.float32)
        s1 = max(0.6, 0.4 * mm * node.ret_sc)
        bp = ndimage.gaussian_filter(w, s1) - ndimage.gaussian_filter(w, 2.2 * s1)
        lines = np.exp(-(bp / (0.28 * float(bp.std()) + 1e-6)) ** 2)
        db += node.ret * (14.0 * lines - 5.0)
    # capsule: a thin echogenic rim just inside the margin
    rim = np.exp(-((sdist - 1.2) / (0.12 * mm + 0.6)) ** 2)
    db += node.cap * 9.0 * rim
    alpha = np.full((size, size), node.alpha, np.float32)
    # echogenic fatty hilum: a central band toward the hilar side plus its channel to the notch
    if node.hilum:
        strength = 1.0 if node.pathology == "benign" else 0.7
        ha, hb = a * rng.uniform(0.5, 0.8), b * rng.uniform(0.28, 0.42) * strength
        vo = hilum_sign * b * rng.uniform(0.1, 0.3)
        body = np.exp(-(((u / ha) ** 2 + ((v - vo) / hb) ** 2) ** 1.5))
        sv = (v * hilum_sign > 0) & (v * hilum_sign < b * 1.2)
        chan = np.exp(-(u / (0.35 * hb + 1.0)) ** 2) * sv
        h = np.clip(np.maximum(body, chan) * (1 + 0.15 * n_mid), 0, 1)
        hdb = rng.uniform(3.0, 7.0) * strength - 3.0 * (1 - strength) + 3.0 * n_mid
        db = db * (1 - h) + hdb * h
    echo = np.power(10.0, db / 20.0).astype(np.float32)
    # cystic necrosis: an irregular anechoic patch, low attenuation (enhancement below)
    if node.necrosis:
        r = b * rng.uniform(0.25, 0.55)
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.45)
        cu, cv = a * rad * np.cos(ang), b * rad * np.sin(ang)
        d = np.sqrt((u - cu) ** 2 + (v - cv) ** 2) / r + 0.25 * n_mid
        nm = np.clip((1.0 - d) * 4.0, 0, 1) * mask
        echo = echo * (1 - nm) + 0.015 * nm
        alpha = alpha * (1 - nm) + 0.1 * nm
    # microcalcifications: tiny specular dots
    spec = np.zeros((size, size), np.float32)
    for _ in range(node.ncalc):
        rad, ang = math.sqrt(rng.uniform(0, 0.75 ** 2)), rng.uniform(0, 2 * np.pi)
        x = int(round(half + a * rad * math.cos(ang)))
        y = int(round(half + b * rad * math.sin(ang)))
        spec[y, x] += rng.uniform(2.5, 5.0)
    if node.ncalc:
        spec = ndimage.gaussian_filter(spec, 0.6) * (2 * np.pi * 0.36)
    # stiffness: blue (stiff) share grows with the elasto score
    blue_share = {1: 0.0, 2: 0.25, 3: 0.6, 4: 0.93}[node.elasto]
    sn = _noise(rng, (size, size), max(1.0, 0.3 * b))
    inside = mask > 0.5
    thr = float(np.quantile(sn[inside], 1 - blue_share)) if inside.any() and blue_share else np.inf
    soft = 0.34 + 0.08 * n_mid
    hard = 0.9 + 0.05 * n_mid
    t = np.clip((sn - thr) * 3.0 + 0.5, 0, 1)
    stiff = soft * (1 - t) + hard * t
    vel = _make_vessels(rng, node, a, b, half, hilum_sign, ppm)
    f32 = np.float32
    return _Template(half, echo.astype(f32), spec.astype(f32), mask.astype(f32),
                     alpha.astype(f32), stiff.astype(f32), vel.astype(f32),
                     np.stack([xx[mask > 0], yy[mask > 0]]).astype(f32))


def _make_vessels(rng, node: _Node, a, b, half, hilum_sign, ppm) -> np.ndarray:
    size = 2 * half + 1
    red = np.zeros((size, size), np.float32)
    blue = np.zeros((size, size), np.float32)
    rich = node.richness
    hilar = node.flow in ("hilar", "mixed")
    peripheral = node.flow in ("peripheral", "mixed")
    if hilar:
        # trunk enters at the hilar side and branches along the long axis, artery+vein pairs
        entry = np.array([half + rng.normal(0, 0.1 * a), half + hilum_sign * b * 1.05])
        hub = np.array([half + rng.normal(0, 0.1 * a), half + hilum_sign * b * rng.uniform(0.0, 0.25)])
        nbr = max(1, int(round(rng.uniform(1.5, 3.5) * rich)))
        for i in range(nbr):
            side = 1 if i % 2 == 0 else -1
            reach = a * rng.uniform(0.35, 0.8)
            bend = b * rng.uniform(-0.35, 0.35)
            t = np.linspace(0, 1, 12)
            xs = hub[0] + side * reach * t
            ys = hub[1] + bend * np.sin(np.pi * t * 0.8) + rng.normal(0, 0.03 * b, t.size).cumsum()
            pts = np.stack([xs, ys], 1)
            off = np.array([0.0, 1.6])
            col_r, col_b = (red, blue) if rng.random() < 0.5 else (blue, red)
            _stamp_path(col_r, np.vstack([entry, pts]), rng.uniform(0.6, 1.0))
            _stamp_path(col_b, np.vstack([entry, pts]) + off, rng.uniform(0.5, 0.9))
    if peripheral:
        narc = max(1, int(round(rng.uniform(2, 4.5) * rich)))
        for _ in range(narc):
            t0 = rng.uniform(0, 2 * np.pi)
            span = rng.uniform(0.4, 1.1)
            t = np.linspace(t0, t0 + span, 14)
            rr = rng.uniform(0.82, 1.0) + rng.normal(0, 0.02, t.size)
            pts = np.stack([half + a * rr * np.cos(t), half + b * rr * np.sin(t)], 1)
            _stamp_path(red if rng.random() < 0.55 else blue, pts, rng.uniform(0.55, 1.0))
            if rng.random() < 0.6:  # a short penetrating branch toward the centre
                tm = t0 + span * rng.uniform(0.2, 0.8)
                r1, r2 = rng.uniform(0.85, 0.95), rng.uniform(0.4, 0.65)
                pts = np.array([[half + a * r * np.cos(tm), half + b * r * np.sin(tm)]
                                for r in np.linspace(r1, r2, 6)])
                _stamp_path(red if rng.random() < 0.5 else blue, pts, rng.uniform(0.5, 0.9))
    width = max(0.6, 0.12 * ppm * (1.0 + 0.3 * (rich - 1)))
    red = ndimage.gaussian_filter(red, width) * 3.0
    blue = ndimage.gaussian_filter(blue, width) * 3.0
    return np.clip(red, 0, 1) - np.clip(blue, 0, 1)


def _background(rng: np.random.Generator, S: int, ppm: float, x_mm: np.ndarray):
    """Layered soft tissue: (dB echo map, attenuation map, stiffness map)."""
    depth = (np.arange(S, dtype=np.float32) + 0.5)[:, None] / ppm
    xw = x_mm[None, :]

    def wavy(base, amp):
        lam = rng.uniform(18, 60)
        return base + amp * np.sin(2 * np.pi * xw / lam + rng.uniform(0, 2 * np.pi))

    skin = wavy(rng.uniform(1.2, 2.0), 0.15)
    fat = wavy(skin + rng.uniform(2.5, 5.0), rng.uniform(0.3, 1.2))
    muscle = wavy(fat + rng.uniform(4.0, 9.0), rng.uniform(0.4, 1.5))
    shape = (S, S)
    n_fine = _noise(rng, shape, (max(0.5, 0.3 * ppm), max(0.8, 0.9 * ppm)))
    n_blot = _noise(rng, shape, max(1.0, 3.0 * ppm))
    db = np.full(shape, -5.0, np.float32) + 2.5 * n_blot + 1.5 * n_fine  # deep fibro-fatty
    in_skin = depth < skin
    in_fat = (~in_skin) & (depth < fat)
    in_musc = (depth >= fat) & (depth < muscle)
    # fat: hypoechoic with thin bright septa
    tilt = rng.uniform(-0.08, 0.08)
    sept = np.sin(2 * np.pi * (depth + tilt * xw) / rng.uniform(0.9, 1.6) + 1.5 * n_blot)
    fat_db = -12.0 + 9.0 * np.clip(sept - 0.6, 0, None) / 0.4 * (n_fine > 0) + 1.5 * n_fine
    # muscle: medium-low echo with oblique fibrillar striations
    beta = rng.uniform(-0.25, 0.25)
    stri = np.sin(2 * np.pi * (depth * math.cos(beta) + xw * math.sin(beta)) / rng.uniform(0.6, 1.0)
                  + 0.8 * n_fine)
    musc_db = -11.0 + 6.0 * np.clip(stri, 0, None) + 1.0 * n_blot
    db = np.where(in_fat, fat_db, db)
    db = np.where(in_musc, musc_db, db)
    db = np.where(in_skin, -1.0 + 1.5 * n_fine, db)
    for bound in (fat, muscle):  # bright fascia lines
        db += 12.0 * np.exp(-((depth - bound) / 0.25) ** 2)
    alpha = np.where(in_fat, 0.9, np.where(in_musc, 1.1, 1.0)).astype(np.float32)
    stiff = 0.42 + 0.1 * _noise(rng, shape, max(1.0, 2.0 * ppm))
    stiff = np.where(in_fat, stiff - 0.1, np.where(in_musc, stiff + 0.06, stiff))
    return db.astype(np.float32), np.broadcast_to(alpha, shape).copy(), stiff.astype(np.float32)


def _render(rng: np.random.Generator, tpl: _Template, node: _Node, S: int, base_angle: float):
    """One acquisition: (grey HxW, cdfi HxWx3, elasto HxWx3 as uint8; mask bool HxW; bbox)."""
    ppm = S / FIELD_DEPTH_MM
    field_half = PROBE_WIDTH_MM / 2 * ppm
    fx0, fx1 = int(round(S / 2 - field_half)), int(round(S / 2 + field_half))
    x_mm = (np.arange(S, dtype=np.float32) + 0.5 - S / 2) / ppm

    # -- placement --------------------------------------------------------------------
    theta = base_angle + rng.normal(0, math.radians(6))
    scale = 1.0 + rng.normal(0, 0.04)
    c, s = math.cos(theta), math.sin(theta)
    ou, ov = tpl.outline  # frame offset of template point (u, v): (c u - s v, s u + c v) * scale
    hx = float(np.abs(c * ou - s * ov).max()) * scale + 1.0
    hy = float(np.abs(s * ou + c * ov).max()) * scale + 1.0
    top = 6.0 * ppm + hy
    lo_x, hi_x = fx0 + hx + 1, fx1 - hx - 1
    lo_y, hi_y = top, S - hy - 2
    cx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else (fx0 + fx1) / 2
    cy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else (lo_y + hi_y) / 2

    db, alpha, stiff = _background(rng, S, ppm, x_mm)
    # occasional vessel (jugular/carotid-like), kept away from the node
    vessel = None
    if rng.random() < 0.25:
        vr = rng.uniform(2.0, 3.5) * ppm
        vx = rng.uniform(fx0 + vr, fx1 - vr)
        vy = rng.uniform(10 * ppm + vr, S - vr - 2)
        flat = rng.uniform(1.1, 1.6)  # veins are compressed by the probe
        if math.hypot(vx - cx, vy - cy) > max(hx, hy) + vr + 2 * ppm:
            vessel = (vx, vy, vr, flat)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    echo = np.power(10.0, db / 20.0)
    if vessel is not None:
        vx, vy, vr, flat = vessel
        dv = np.sqrt((xx - vx) ** 2 + ((yy - vy) * flat) ** 2) - vr
        wall = np.exp(-(dv / (0.25 * ppm + 0.5)) ** 2)
        lumen = np.clip(0.5 - dv, 0, 1)
        echo = echo * (1 - lumen) + 0.012 * lumen + 2.0 * wall * (1 - lumen)
        alpha = alpha * (1 - lumen) + 0.15 * lumen
        stiff = stiff * (1 - lumen) + 0.3 * lumen

    # -- node: inverse-map frame pixels into the template -----------------------------
    rx, ry = int(math.ceil(hx)) + 3, int(math.ceil(hy)) + 3
    y0, y1 = max(0, int(cy) - ry), min(S, int(cy) + ry + 1)
    x0, x1 = max(0, int(cx) - rx), min(S, int(cx) + rx + 1)
    dx = xx[y0:y1, x0:x1] - cx
    dy = yy[y0:y1, x0:x1] - cy
    uu = (c * dx + s * dy) / scale + tpl.half
    vv = (-s * dx + c * dy) / scale + tpl.half
    coords = np.stack([vv, uu])

    def sample(arr):
        return ndimage.map_coordinates(arr, coords, order=1, mode="constant", cval=0.0)

    m = np.zeros((S, S), np.float32)
    m[y0:y1, x0:x1] = sample(tpl.mask)
    sl = (slice(y0, y1), slice(x0, x1))
    mm_ = m[sl]
    echo[sl] = echo[sl] * (1 - mm_) + sample(tpl.echo) * mm_
    alpha[sl] = alpha[sl] * (1 - mm_) + sample(tpl.alpha) * mm_
    stiff[sl] = stiff[sl] * (1 - mm_) + sample(tpl.stiff) * mm_
    spec = np.zeros((S, S), np.float32)
    vel = np.zeros((S, S), np.float32)
    spec[sl] = sample(tpl.spec)
    vel[sl] = sample(tpl.vel) * np.clip(mm_ * 1.5, 0, 1)
    mask = m > 0.5
    mask[:, :fx0] = False  # outside the imaged field (only when a huge node cannot fit)
    mask[:, fx1:] = False
    if not mask.any():  # a node smaller than a pixel: keep at least its centre pixel
        mask[int(np.clip(cy, 0, S - 1)), int(np.clip(cx, 0, S - 1))] = True

    # -- B-mode physics ---------------------------------------------------------------
    echo = ndimage.gaussian_filter(echo, max(0.4, 0.1 * ppm))
    mu = 0.055  # attenuation per mm for alpha = 1 (round trip, after the probe's own TGC)
    path = np.cumsum(alpha, axis=0) / ppm
    depth = (np.arange(S, dtype=np.float32) + 0.5) / ppm
    knots = np.linspace(0, FIELD_DEPTH_MM, 8)
    tgc_db = rng.normal(0, 1.2, knots.size)
    comp = mu * rng.uniform(0.6, 0.85)  # TGC under-compensates: darker with depth
    tgc = np.exp(comp * depth) * np.power(10.0, np.interp(depth, knots, tgc_db) / 20.0)
    gain = 10 ** (rng.normal(0, 2.0) / 20.0)
    lat, ax = max(0.5, 0.3 * ppm), max(0.4, 0.12 * ppm)
    re = ndimage.gaussian_filter(rng.standard_normal((S, S), dtype=np.float32), (ax, lat))
    im = ndimage.gaussian_filter(rng.standard_normal((S, S), dtype=np.float32), (ax, lat))
    # lightly smoothed intensity (compounding-like), so nulls are less pitted than pure Rayleigh
    speck = ndimage.gaussian_filter(re * re + im * im, (0.8 * ax, 0.8 * lat), truncate=3.0)
    speck = np.sqrt(speck / float(speck.mean()))
    sys_gain = (np.exp(-mu * path) * tgc[:, None] * gain).astype(np.float32)
    inten = (echo * speck + spec) * sys_gain
    inten += 0.004 * np.abs(rng.standard_normal((S, S), dtype=np.float32))  # noise floor
    dyn = rng.uniform(44.0, 52.0)
    grey = (20.0 * np.log10(inten + 1e-6) + 0.66 * dyn) / dyn
    grey = np.clip(ndimage.gaussian_filter(grey, max(0.3, 0.07 * ppm), truncate=3.0), 0.0, 1.0)
    grey[:, :fx0] = 0.0
    grey[:, fx1:] = 0.0
    g8 = np.rint(grey * 255).astype(np.uint8)
    # annotations in the right margin: depth ticks every 5 mm, focus marker
    tx = min(S - 2, fx1 + max(2, S // 85))
    for k, dmm in enumerate(np.arange(5.0, FIELD_DEPTH_MM, 5.0)):
        ty = int(round(dmm * ppm))
        ln = 3 if k % 2 == 1 else 1
        g8[ty:ty + 1, tx:min(S, tx + ln)] = 200
    fy = int(round(cy))
    fw = max(2, S // 128)
    for i in range(fw):
        g8[max(0, fy - fw + i + 1):fy + fw - i, min(S - 1, tx + 4 + i)] = 220

    # -- bounding box of the node -----------------------------------------------------
    ys, xs = np.nonzero(mask)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)

    # -- CDFI -------------------------------------------------------------------------
    rgb = np.repeat(g8[:, :, None], 3, axis=2)
    cd = rgb.copy()
    bw, bh = bbox[2] - bbox[0], bbox[3] - bbox[1]
    mx, my = bw * rng.uniform(0.25, 0.45), bh * rng.uniform(0.25, 0.45)
    ox, oy = rng.normal(0, 0.05 * bw), rng.normal(0, 0.05 * bh)
    bx0 = int(np.clip(bbox[0] - mx + ox, fx0, fx1 - 2))
    bx1 = int(np.clip(bbox[2] + mx + ox, bx0 + 2, fx1 - 1))
    by0 = int(np.clip(bbox[1] - my + oy, 1, S - 3))
    by1 = int(np.clip(bbox[3] + my + oy, by0 + 2, S - 1))
    pulse = rng.uniform(0.75, 1.15)
    v = vel * pulse
    if vessel is not None:
        vx, vy, vr, flat = vessel
        lumen = np.clip(0.5 - (np.sqrt((xx - vx) ** 2 + ((yy - vy) * flat) ** 2) - vr + 0.8), 0, 1)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        v = np.where(lumen > 0.5, sign * (0.6 + 0.3 * np.clip(1 - (np.hypot(xx - vx, yy - vy) / vr), 0, 1)), v)
    # flash artefacts: a few small blobs anywhere in the box
    nflash = int(rng.poisson(0.8))
    if nflash:
        fl = np.zeros((S, S), np.float32)
        for _ in range(nflash):
            fxp, fyp = int(rng.integers(bx0, bx1)), int(rng.integers(by0, by1))
            fl[fyp, fxp] = rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 4.0)
        fl = ndimage.gaussian_filter(fl, max(0.6, 0.12 * ppm)) * 6.0
        v = v + np.clip(fl, -0.8, 0.8)
    box = np.zeros((S, S), bool)
    box[by0:by1, bx0:bx1] = True
    thr = 0.22
    redm = box & (v > thr)
    bluem = box & (v < -thr)
    va = np.clip(np.abs(v), 0, 1.2)
    cd[redm, 0] = np.clip(130 + 125 * va[redm], 0, 255).astype(np.uint8)
    cd[redm, 1] = np.where(va[redm] > 0.95, 190, 25 + 30 * va[redm]).astype(np.uint8)
    cd[redm, 2] = 15
    cd[bluem, 0] = 15
    cd[bluem, 1] = np.where(va[bluem] > 0.95, 200, 50 + 70 * va[bluem]).astype(np.uint8)
    cd[bluem, 2] = np.clip(150 + 105 * va[bluem], 0, 255).astype(np.uint8)
    _draw_box(cd, bx0, by0, bx1, by1, (190, 190, 190))
    # colour velocity scale bar in the left margin: red on top, blue below
    _vbar(cd, S, fx0, ((230, 60, 20), (30, 60, 230)))

    # -- elastography -----------------------------------------------------------------
    el = rgb.copy()
    mx, my = bw * rng.uniform(0.4, 0.6), bh * rng.uniform(0.4, 0.6)
    ex0 = int(np.clip(bbox[0] - mx, fx0, fx1 - 2))
    ex1 = int(np.clip(bbox[2] + mx, ex0 + 2, fx1 - 1))
    ey0 = int(np.clip(bbox[1] - my, 1, S - 3))
    ey1 = int(np.clip(bbox[3] + my, ey0 + 2, S - 1))
    st = ndimage.gaussian_filter(stiff[ey0:ey1, ex0:ex1], max(0.8, 0.35 * ppm))
    st = st + 0.04 * rng.standard_normal(st.shape, dtype=np.float32)
    col = _colormap(st)
    a_el = 0.55
    patch = el[ey0:ey1, ex0:ex1].astype(np.float32)
    el[ey0:ey1, ex0:ex1] = np.rint(patch * (1 - a_el) + col * a_el).astype(np.uint8)
    _draw_box(el, ex0, ey0, ex1, ey1, (235, 235, 235))
    bar = _colormap(np.linspace(0.0, 1.0, 16))
    _vbar(el, S, fx0, [tuple(int(x) for x in cc) for cc in bar])
    return g8, cd, el, mask, bbox


def _draw_box(img: np.ndarray, x0, y0, x1, y1, color) -> None:
    col = np.array(color, np.uint8)
    img[y0, x0:x1] = col
    img[y1 - 1, x0:x1] = col
    img[y0:y1, x0] = col
    img[y0:y1, x1 - 1] = col


def _vbar(img: np.ndarray, S: int, fx0: int, colors) -> None:
    """A small vertical colour bar in the left margin (top colour first)."""
    w = max(2, fx0 // 4)
    x0 = max(0, fx0 // 2 - w // 2)
    ya, yb = int(S * 0.12), int(S * 0.45)
    n = len(colors)
    for i, cc in enumerate(colors):
        s0 = ya + (yb - ya) * i // n
        s1 = ya + (yb - ya) * (i + 1) // n
        img[s0:s1, x0:x0 + w] = np.array(cc, np.uint8)


def _crop_box(bbox, S: int) -> tuple[int, int, int, int]:
    """bbox enlarged by CROP_MARGIN of its width/height on each side, clipped to the frame."""
    x0, y0, x1, y1 = bbox
    mx = int(round(CROP_MARGIN * (x1 - x0)))
    my = int(round(CROP_MARGIN * (y1 - y0)))
    return max(0, x0 - mx), max(0, y0 - my), min(S, x1 + mx), min(S, y1 + my)


def _save(arr: np.ndarray, path: pathlib.Path) -> None:
    mode = "L" if arr.ndim == 2 else "RGB"
    Image.fromarray(np.ascontiguousarray(arr), mode=mode).save(path, format="PNG", compress_level=1)


class _PngWriter:
    """Encodes and writes PNGs on worker threads (zlib releases the GIL), so the next image is
    rendered while earlier ones are compressed. File contents do not depend on the timing.
    Leaving the ``with`` block waits for every write (or cancels them after an exception)."""

    def __init__(self, workers: int = 2, max_pending: int = 48):
        self._ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lnzoo-phantom")
        self._pending: deque = deque()
        self._max = max_pending

    def save(self, arr: np.ndarray, path: pathlib.Path) -> None:
        self._pending.append(self._ex.submit(_save, arr, path))
        while len(self._pending) > self._max:
            self._pending.popleft().result()

    def __enter__(self) -> "_PngWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                while self._pending:
                    self._pending.popleft().result()
        finally:
            self._ex.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------
def _validate(patients, seed, difficulty, frame_size) -> None:
    if isinstance(patients, bool) or not isinstance(patients, (int, np.integer)) or patients < 1:
        raise ValueError(f"patients must be an integer >= 1, got {patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        d = float(difficulty)
    except (TypeError, ValueError):
        raise ValueError(f"difficulty must be a number in [0, 1], got {difficulty!r}") from None
    if not (0.0 <= d <= 1.0):
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")
    if isinstance(frame_size, bool) or not isinstance(frame_size, (int, np.integer)) or frame_size < 64:
        raise ValueError(f"frame_size must be an integer >= 64 (pixels), got {frame_size!r}")
    if frame_size > 4096:
        raise ValueError(f"frame_size must be at most 4096 pixels, got {frame_size!r}")


def generate_phantom(out_dir, patients: int = 160, seed: int = 0, difficulty: float = 0.5,
                     frame_size: int = 256, progress=None) -> pathlib.Path:
    """Write the phantom into out_dir; return the path of manifest.csv. `progress` optional callable(done:int, total:int).

    Synthetic data for development and demos, not clinical data. Existing files with the same
    names are overwritten; nothing else in ``out_dir`` is touched.
    """
    _validate(patients, seed, difficulty, frame_size)
    patients, seed, S, difficulty = int(patients), int(seed), int(frame_size), float(difficulty)
    out = pathlib.Path(out_dir)
    img_root = out / "images"
    for mod in MODALITIES:
        (img_root / mod).mkdir(parents=True, exist_ok=True)
        (img_root / f"{mod}-crop").mkdir(parents=True, exist_ok=True)
    (img_root / "mask").mkdir(parents=True, exist_ok=True)
    (out / "lists").mkdir(parents=True, exist_ok=True)
    ppm = S / FIELD_DEPTH_MM

    rows: list[dict[str, str]] = []
    in_main: dict[str, bool] = {}
    in_aux: dict[str, bool] = {}
    with _PngWriter() as writer:
        for idx in range(1, patients + 1):
            pid = f"P{idx:04d}"
            rng_clin = np.random.default_rng([seed, idx, 0])
            rng_node = np.random.default_rng([seed, idx, 1])
            rng_acq = np.random.default_rng([seed, idx, 2])
            rng_list = np.random.default_rng([seed, idx, 3])
            node = _draw_node(rng_clin, difficulty)
            n_img = 1 + int(rng_clin.choice(3, p=[0.3, 0.4, 0.3]))
            in_main[pid] = bool(rng_list.random() < STAGE1_MAIN_FRACTION)
            in_aux[pid] = bool(rng_list.random() < STAGE1_AUX_FRACTION)
            tpl = _make_template(rng_node, node, ppm)
            base_angle = float(np.clip(rng_node.normal(0, math.radians(12)), -math.radians(30), math.radians(30)))
            malignant = node.pathology != "benign"
            labels = {
                "patient": pid,
                "malignancy": "malignant" if malignant else "benign",
                "enlargement": "enlarged" if node.short_mm > 10 else "not_enlarged",
                "metastasis": node.pathology if malignant else "",
                "origin": node.origin,
                "lymphoma_subtype": node.subtype,
                "pathology3": node.pathology,
                "age": str(node.age),
                "sex": node.sex,
                "long_axis_mm": f"{node.long_mm:.1f}",
                "short_axis_mm": f"{node.short_mm:.1f}",
                "axis_ratio": f"{node.long_mm / node.short_mm:.2f}",
                "elasto_score": str(node.elasto),
                "flow_pattern": node.flow,
                "hilum": str(node.hilum),
            }
            for k in range(1, n_img + 1):
                name = f"{pid}_{k}.png"
                grey, cd, el, mask, bbox = _render(rng_acq, tpl, node, S, base_angle)
                cx0, cy0, cx1, cy1 = _crop_box(bbox, S)
                paths = {}
                for mod, arr in zip(MODALITIES, (grey, cd, el)):
                    writer.save(arr, img_root / mod / name)
                    writer.save(arr[cy0:cy1, cx0:cx1], img_root / f"{mod}-crop" / name)
                    paths[mod] = f"images/{mod}/{name}"
                    paths[mod + "-crop"] = f"images/{mod}-crop/{name}"
                writer.save(mask.astype(np.uint8) * 255, img_root / "mask" / name)
                row = {
                    "path": paths["2d"], "crop": paths["2d-crop"],
                    "cdfi": paths["cdfi"], "cdfi_crop": paths["cdfi-crop"],
                    "elasto": paths["elasto"], "elasto_crop": paths["elasto-crop"],
                    "mask": f"images/mask/{name}", "bbox": " ".join(str(v) for v in bbox),
                    **labels,
                }
                rows.append(row)
            if progress is not None:
                progress(idx, patients)

    manifest = out / "manifest.csv"
    with open(manifest, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)

    for list_name, (column, zh) in LIST_FILES.items():
        lines = []
        for row in rows:
            label = row[column]
            if not label:
                continue
            if list_name == "stage1_main" and not in_main[row["patient"]]:
                continue
            if list_name == "stage1_aux" and not in_aux[row["patient"]]:
                continue
            lines.append(f"../{row['path']},{zh[label]}\n")
        (out / "lists" / f"{list_name}.txt").write_text("".join(lines), encoding="utf-8", newline="\n")

    n_img = len(rows)
    readme = (
        "lnzoo synthetic lymph node ultrasound phantom\n"
        "=============================================\n\n"
        "SYNTHETIC PHANTOM FOR DEVELOPMENT AND DEMOS -- NOT CLINICAL DATA.\n"
        "Every image, label and covariate here was generated by lnzoo.data.phantom from a\n"
        "random seed and a crude physical model; none of it comes from a patient.\n\n"
        f"PHANTOM_VERSION = {PHANTOM_VERSION}\n"
        f"seed = {seed}\npatients = {patients}\ndifficulty = {difficulty}\n"
        f"frame_size = {S}\nimages = {n_img}\n"
        f"field depth = {FIELD_DEPTH_MM} mm ({ppm:.3f} px/mm)\n\n"
        "Layout: manifest.csv (one row per image, paths relative to this folder);\n"
        "images/{2d,cdfi,elasto}/ full frames, images/{2d,cdfi,elasto}-crop/ ROI crops\n"
        "(bbox + 10% margin per side), images/mask/ node masks (0/255);\n"
        "lists/*.txt: 'relative/path,<Chinese label>' lines, paths relative to lists/.\n"
        "bbox = 'x0 y0 x1 y1' in full-frame pixels, x1/y1 exclusive.\n"
        "Elastography colormap: red = soft, green = intermediate, blue = stiff.\n"
        "CDFI: red = flow towards the probe, blue = away.\n"
    )
    (out / "README.txt").write_text(readme, encoding="utf-8", newline="\n")
    return manifest


def _default_cache_root() -> pathlib.Path:
    env = os.environ.get("LNZOO_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "lnzoo"


def ensure_phantom(cache_root=None, **kwargs) -> pathlib.Path:
    """Return the manifest path of a cached phantom, generating it once if absent.

    ``kwargs`` are :func:`generate_phantom`'s (``patients``, ``seed``, ``difficulty``,
    ``frame_size``, ``progress``); the cache folder is
    ``<cache_root>/phantom/v{PHANTOM_VERSION}-<hash of the effective arguments>/`` where
    ``cache_root`` defaults to ``$LNZOO_CACHE`` or ``~/.cache/lnzoo``. The phantom is written
    into a temporary sibling folder and renamed into place, so an interrupted run never
    leaves a half-written phantom behind.
    """
    progress = kwargs.pop("progress", None)
    allowed = {"patients": 160, "seed": 0, "difficulty": 0.5, "frame_size": 256}
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"ensure_phantom() got unexpected argument(s): {', '.join(unknown)}; "
                        f"known: {', '.join(allowed)}, progress")
    args = {**allowed, **kwargs}
    _validate(args["patients"], args["seed"], args["difficulty"], args["frame_size"])
    key = {"patients": int(args["patients"]), "seed": int(args["seed"]),
           "difficulty": float(args["difficulty"]), "frame_size": int(args["frame_size"]),
           "version": PHANTOM_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    root = pathlib.Path(cache_root) if cache_root is not None else _default_cache_root()
    parent = root / "phantom"
    final = parent / f"v{PHANTOM_VERSION}-{digest}"
    manifest = final / "manifest.csv"
    if manifest.is_file():
        return manifest
    parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-v{PHANTOM_VERSION}-{digest}-", dir=parent))
    try:
        generate_phantom(tmp, patients=key["patients"], seed=key["seed"],
                         difficulty=key["difficulty"], frame_size=key["frame_size"],
                         progress=progress)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        if final.exists() and not manifest.is_file():
            shutil.rmtree(final)  # a damaged entry (e.g. its manifest deleted by hand)
        try:
            os.rename(tmp, final)
        except OSError:
            if not manifest.is_file():  # not a concurrent winner: a genuine failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest
