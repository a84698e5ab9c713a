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
* Reports (:mod:`lnzoo.data.phantom_reports`): one simulated radiologist's free-text report per
  patient, in Chinese and English, drawn from the node's attributes: size (with measurement
  error), shape, margin, hilum, echogenicity, cystic necrosis, microcalcifications, CDFI flow
  and an impression. Noisy on purpose (each with a named probability there): findings left out
  or misread, the impression missing or naming the wrong pathology, some reports empty.

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

Every manifest row carries the labels and covariates of its patient; the last two columns,
``report_zh`` and ``report_en``, hold the patient's report (one line each, the same text on
all of the patient's rows; both empty for a missing report). The reports use their own random
stream, so adding them changed no image and no other column.

List files, like the seed system's: ``stage1_main`` covers a per-patient random ~80 % of
patients and ``stage1_aux`` an independently drawn ~60 %, so an image may carry both Stage I
labels, one, or none; the other lists hold every image their task applies to
(``stage2_metastasis``: malignant, ``stage3_origin``: metastatic, ``lymphoma_subtype``:
lymphoma, ``pathology3``: all).

**Planted shortcuts** (:mod:`lnzoo.data.phantom_shortcuts`, only on request: ``shortcuts=["calipers:0.8"]``,
``lnzoo synth --shortcut``, a recipe's ``data.phantom.shortcut``): burned-in calipers, a Doppler box outline or a
second scanner's look, present more often on malignant images than on benign ones, to test whether a model looks
at the node. Each planted kind appends its column to the manifest (``marks_caliper``, ``doppler_box``,
``scanner``, in that order, after ``report_en``) and a paragraph to README.txt; the shortcuts draw from their own
random streams, so images without a mark are byte-identical to the clean phantom's. Without shortcuts nothing of
this exists: the files, the manifest and the cache folder are the clean phantom's.

Output is byte-identical for identical arguments (same numpy/pillow/zlib), and patient
``i`` depends only on ``(seed, i, difficulty, frame_size)`` (and the shortcuts planted), not on
how many patients are generated.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import shutil
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from lnzoo.data import phantom_reports as _reports
from lnzoo.data import phantom_shortcuts as _shortcuts
from lnzoo.data.phantom_nodes import ORIGINS, _draw_node  # noqa: F401 - ORIGINS is part of this API
from lnzoo.data.phantom_render import (  # noqa: F401 - FIELD_DEPTH_MM and CROP_MARGIN are part of this API
    CROP_MARGIN,
    FIELD_DEPTH_MM,
    _crop_box,
    _make_template,
    _render,
)
from lnzoo.files import csv_text, write_atomic

__all__ = [
    "PHANTOM_VERSION",
    "FIELD_DEPTH_MM",
    "MANIFEST_COLUMNS",
    "ORIGINS",
    "LIST_FILES",
    "generate_phantom",
    "ensure_phantom",
]

PHANTOM_VERSION = 3  # bump when output changes; part of cache keys (v1: an unreleased draft; v3: report columns)


MANIFEST_COLUMNS = (
    "path", "crop", "cdfi", "cdfi_crop", "elasto", "elasto_crop", "mask", "bbox", "patient",
    "malignancy", "enlargement", "metastasis", "origin", "lymphoma_subtype", "pathology3",
    "age", "sex", "long_axis_mm", "short_axis_mm", "axis_ratio", "elasto_score",
    "flow_pattern", "hilum", "report_zh", "report_en",
)
MODALITIES = ("2d", "cdfi", "elasto")
# modality -> its manifest columns (full frame, crop)
_COLUMNS = {"2d": ("path", "crop"), "cdfi": ("cdfi", "cdfi_crop"),
            "elasto": ("elasto", "elasto_crop")}

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


def _check_int(name: str, value, low: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be {what}, got {value!r}")


def _validate(patients, seed, difficulty, frame_size) -> None:
    _check_int("patients", patients, 1, "an integer >= 1")
    _check_int("seed", seed, 0, "a non-negative integer")
    try:
        d = float(difficulty)
    except (TypeError, ValueError):
        raise ValueError(f"difficulty must be a number in [0, 1], got {difficulty!r}") from None
    if not (0.0 <= d <= 1.0):
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")
    _check_int("frame_size", frame_size, 64, "an integer >= 64 (pixels)")
    if frame_size > 4096:
        raise ValueError(f"frame_size must be at most 4096 pixels, got {frame_size!r}")


def generate_phantom(out_dir, patients: int = 160, seed: int = 0, difficulty: float = 0.5,
                     frame_size: int = 256, progress=None, shortcuts=None) -> pathlib.Path:
    """Write the phantom into out_dir; return the path of manifest.csv. `progress` optional callable(done:int, total:int).

    Synthetic data for development and demos, not clinical data. Existing files with the same
    names are overwritten; nothing else in ``out_dir`` is touched. ``shortcuts`` plants spurious
    cues (:mod:`lnzoo.data.phantom_shortcuts`): "KIND:STRENGTH" strings or ``{kind: strength}``;
    None or empty writes the clean phantom. A bad one raises ValueError naming it.
    """
    _validate(patients, seed, difficulty, frame_size)
    planted = _shortcuts.normalize_shortcuts(shortcuts)
    patients, seed, S, difficulty = int(patients), int(seed), int(frame_size), float(difficulty)
    columns = MANIFEST_COLUMNS + _shortcuts.shortcut_columns(planted)
    # kind -> class -> [marked, images], for the README
    counts = {kind: {"malignant": [0, 0], "benign": [0, 0]} for kind in planted}
    out = pathlib.Path(out_dir)
    img_root = out / "images"
    for folder in [*MODALITIES, *(f"{mod}-crop" for mod in MODALITIES), "mask"]:
        (img_root / folder).mkdir(parents=True, exist_ok=True)
    (out / "lists").mkdir(parents=True, exist_ok=True)
    ppm = S / FIELD_DEPTH_MM

    rows: list[dict[str, str]] = []
    # patient -> in that list; the other lists hold every image their task applies to
    in_list: dict[str, dict[str, bool]] = {"stage1_main": {}, "stage1_aux": {}}
    with _PngWriter() as writer:
        for idx in range(1, patients + 1):
            pid = f"P{idx:04d}"
            rng_clin = np.random.default_rng([seed, idx, 0])
            rng_node = np.random.default_rng([seed, idx, 1])
            rng_acq = np.random.default_rng([seed, idx, 2])
            rng_list = np.random.default_rng([seed, idx, 3])
            rng_report = np.random.default_rng([seed, idx, 4])  # its own stream: images and labels don't move
            node = _draw_node(rng_clin, difficulty)
            n_img = 1 + int(rng_clin.choice(3, p=[0.3, 0.4, 0.3]))
            in_list["stage1_main"][pid] = bool(rng_list.random() < STAGE1_MAIN_FRACTION)
            in_list["stage1_aux"][pid] = bool(rng_list.random() < STAGE1_AUX_FRACTION)
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
            # one report per patient (one examination), shared by all of the patient's images
            labels["report_zh"], labels["report_en"] = _reports.write_report(node, rng_report)
            for k in range(1, n_img + 1):
                name = f"{pid}_{k}.png"
                grey, cd, el, mask, bbox = _render(rng_acq, tpl, node, S, base_angle)
                cx0, cy0, cx1, cy1 = _crop_box(bbox, S)
                row = {"mask": f"images/mask/{name}", "bbox": " ".join(map(str, bbox)), **labels}
                if planted:  # drawn into the full frames; the crops below are cut from them
                    marks = _shortcuts.plan_image(planted, seed, idx, k, malignant, mask, bbox)
                    drawn = _shortcuts.apply_planted(marks, dict(zip(MODALITIES, (grey, cd, el))))
                    grey, cd, el = (drawn[mod] for mod in MODALITIES)
                    row.update(marks.cells)
                    for kind in planted:
                        tally = counts[kind][labels["malignancy"]]
                        tally[0] += marks.cells[_shortcuts.COLUMNS[kind]] in ("1", "B")
                        tally[1] += 1
                for mod, arr in zip(MODALITIES, (grey, cd, el)):
                    col, crop_col = _COLUMNS[mod]
                    crop = arr[cy0:cy1, cx0:cx1]
                    if planted and mod == "2d":  # a mark outside the crop leaves it the clean greyscale crop
                        crop = _shortcuts.grey_if_grey(crop)
                    writer.save(arr, img_root / mod / name)
                    writer.save(crop, img_root / f"{mod}-crop" / name)
                    row[col], row[crop_col] = f"images/{mod}/{name}", f"images/{mod}-crop/{name}"
                writer.save(mask.astype(np.uint8) * 255, img_root / "mask" / name)
                rows.append(row)
            if progress is not None:
                progress(idx, patients)

    for list_name, (column, zh) in LIST_FILES.items():
        lines = [f"../{row['path']},{zh[row[column]]}\n" for row in rows
                 if row[column] and in_list.get(list_name, {}).get(row["patient"], True)]
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
        "CDFI: red = flow towards the probe, blue = away.\n\n"
        "report_zh / report_en: one simulated free-text ultrasound report per patient (the same\n"
        "text on each of the patient's rows), in Chinese and in English, describing the same\n"
        "findings (size, shape, margin, hilum, echogenicity, necrosis, calcification, CDFI flow,\n"
        "impression). Synthetic text, not real reports, and noisy on purpose:\n"
        f"  empty (missing) report      {_reports.P_EMPTY:.0%} of patients\n"
        f"  a finding left out          {_reports.P_OMIT:.0%} (each finding)\n"
        f"  a finding misread           {_reports.P_MISREAD:.0%} (each finding)\n"
        f"  size measurement error      sd {_reports.SIZE_SD_MM:g} mm per axis\n"
        f"  no impression line          {_reports.P_NO_IMPRESSION:.0%}\n"
        f"  wrong pathology impression  {_reports.P_WRONG_IMPRESSION:.0%} of the impressions given\n"
    )
    if planted:
        readme += _shortcuts.readme_section(planted, {k: {c: tuple(v) for c, v in by.items()}
                                                      for k, by in counts.items()})
    (out / "README.txt").write_text(readme, encoding="utf-8", newline="\n")
    # written last and whole: a phantom with its manifest is complete (phantom_manifest)
    return write_atomic(out / "manifest.csv", csv_text(columns, rows, line_end="\n"))


def ensure_phantom(cache_root=None, **kwargs) -> pathlib.Path:
    """Return the manifest path of a cached phantom, generating it once if absent.

    ``kwargs`` are :func:`generate_phantom`'s (``patients``, ``seed``, ``difficulty``,
    ``frame_size``, ``progress``, ``shortcuts``); the cache folder is
    ``<cache_root>/phantom/v{PHANTOM_VERSION}-<hash of the effective arguments>/`` (the
    shortcuts are part of the hash only when some are planted: none is the clean phantom's folder) where
    ``cache_root`` defaults to ``$LNZOO_CACHE`` or ``~/.cache/lnzoo``. The phantom is written
    into a temporary sibling folder and renamed into place, so an interrupted run never
    leaves a half-written phantom behind.
    """
    progress = kwargs.pop("progress", None)
    allowed = {"patients": 160, "seed": 0, "difficulty": 0.5, "frame_size": 256, "shortcuts": None}
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"ensure_phantom() got unexpected argument(s): {', '.join(unknown)}; "
                        f"known: {', '.join(allowed)}, progress")
    args = {**allowed, **kwargs}
    _validate(args["patients"], args["seed"], args["difficulty"], args["frame_size"])
    key = {"patients": int(args["patients"]), "seed": int(args["seed"]),
           "difficulty": float(args["difficulty"]), "frame_size": int(args["frame_size"]),
           "version": PHANTOM_VERSION}
    planted = _shortcuts.normalize_shortcuts(args["shortcuts"])
    if planted:
        key["shortcuts"] = planted
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    from lnzoo.files import cache_root as default_root
    root = pathlib.Path(cache_root) if cache_root is not None else default_root()
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
                         progress=progress, shortcuts=planted or None)
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
