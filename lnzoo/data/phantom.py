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
from dataclasses import dataclass

import numpy as np

from lnzoo.data.phantom_render import (  # noqa: F401 - FIELD_DEPTH_MM and CROP_MARGIN are part of this API
    CROP_MARGIN,
    FIELD_DEPTH_MM,
    _crop_box,
    _make_template,
    _PngWriter,
    _render,
)

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
