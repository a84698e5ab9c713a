"""``lnzoo audit``: is the model looking at the node, or at a shortcut? Checks on a finished run's held-out folds.

Each check gives a figure with its 95% CI, a verdict and a sentence; a check that cannot run says why and the others
still run. All AUCs are of the main task's positive class, on the cross-validation held-out images (each image
predicted by the fold model that did not train on it), with DeLong CIs.

- **Marks against labels** (``marks``): burned-in calipers, text and Doppler boxes per image, from the manifest's
  columns when it has them (``marks_caliper``, ``marks_text`` from ``lnzoo ingest``; ``doppler_box`` from the
  phantom's shortcuts), else found by the detector ``lnzoo ingest`` uses (:mod:`lnzoo.ingest.marks`). Reported:
  their rate per class, the AUC of "has marks" as a predictor of the label, and the model's AUC on the images
  without and with marks. Flagged when marks alone predict the label: the CI of their AUC lies wholly above 0.6
  (or below 0.4: marks on the negative class).
- **Metadata alone** (``metadata``): a logistic regression (scikit-learn) on the columns that could carry the label
  without the image (centre, scanner, manufacturer, model, transducer, pixel size, region kind, frame, image width
  and height), fitted on the run's own folds: its pooled held-out AUC. Flagged when its CI lies wholly above 0.6.
- **Outside the lesion** (``outside``): where a row has an ROI (a ``bbox`` column, a ``mask`` column, or the
  recipe's ROI), each fold model predicts its held-out images twice more: with the lesion box (grown by 10% a
  side) replaced by the mirror image of the tissue beside it (the side with the most room, so the speckle and the
  depth's brightness stay), and with everything outside that box filled with the image's mean colour (the lesion
  alone). Flagged when the model still separates the classes without the lesion: the blanked AUC's CI lies wholly
  above 0.6 and it is within 0.1 of the full image's AUC.
- **Attention outside the lesion** (``attention``): per image with an ROI, the share of its true class's
  Grad-CAM mass (on the full-frame view, at the model's input size) that falls inside the lesion's box, beside the
  box's share of the image (what a uniform map would give); the three images with the lowest share are shown as
  overlays. Flagged when the median of share / box area is below 1.5: the evidence is hardly more on the lesion
  than anywhere else.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnzoo.errors import DataError, UsageError

AUDIT_JSON, AUDIT_HTML = "audit.json", "audit.html"
MARK_COLUMNS = ("marks_caliper", "marks_text", "doppler_box")
METADATA_COLUMNS = ("center", "centre", "site", "scanner", "manufacturer", "model", "transducer", "probe",
                    "pixel_mm_x", "pixel_mm_y", "region_kind", "frame", "frames", "frame_time_ms")
FLAG_AUC = 0.6  # a CI wholly beyond 0.6 (or below 0.4) is a flag
CLOSE = 0.1  # "barely drops": the blanked AUC within this of the full image's
ENRICHED = 1.5  # attention: the median share inside the ROI over the ROI's area, below this is a flag
GROW = 0.1  # the lesion box grows by this fraction of its size on each side before blanking


@dataclass
class Held:
    """The held-out images of the run: per image its sample, fold, label (0/1), the model's score."""

    samples: list[Any] = field(default_factory=list)
    folds: list[int] = field(default_factory=list)
    y: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    blanked: list[float] = field(default_factory=list)  # NaN where the row has no ROI
    alone: list[float] = field(default_factory=list)
    pool: list[tuple[Any, int, int]] = field(default_factory=list)  # every labelled image: sample, fold, label
    tasks: dict[str, Any] = field(default_factory=dict)  # the run's tasks, the main one first
    masks_marks: bool = False  # the models fill burned-in marks before they see an image (data.mask_marks)
    attention: list[float] = field(default_factory=list)  # share of Grad-CAM mass inside the ROI (NaN: no ROI)
    roi_area: list[float] = field(default_factory=list)  # the ROI's share of the image: a uniform map's share
    lowest: list[tuple[float, bytes]] = field(default_factory=list)  # overlays of the lowest shares


def auc_ci(y: Sequence[int], score: Sequence[float]) -> dict[str, Any]:
    """AUC with its DeLong 95% CI (None where a class is missing)."""
    from lnzoo.evaluation.stats import delong_ci

    y, score = np.asarray(y, int), np.asarray(score, float)
    if len(set(y.tolist())) < 2:
        return {"auc": None, "ci": None, "n": int(y.size)}
    auc, lo, hi = delong_ci(y, score)
    return {"auc": float(auc), "ci": [float(lo), float(hi)] if np.isfinite([lo, hi]).all() else None,
            "n": int(y.size)}


def _beyond(entry: Mapping[str, Any]) -> bool:
    ci = entry.get("ci")
    return bool(ci) and (ci[0] > FLAG_AUC or ci[1] < 1 - FLAG_AUC)


def audit_run(run_dir: str | Path, host, data: str | Path | None = None,
              say: Callable[[str], None] | None = None,
              more: Sequence[Callable[[Any, "Held"], dict[str, Any]]] = ()) -> dict[str, Any]:
    """Run every check on ``run_dir`` (its recipe's data, or the manifest ``data``); the audit as a dict.

    ``more``: further checks, each called with the run directory and the held-out images once the built-in
    checks ran, e.g. the control model (:func:`lnzoo.audit.control.control_check`)."""
    from lnzoo.rundir import RunDir

    say = say or (lambda text: None)
    rd = RunDir(run_dir)
    rd.check_finished()
    rd.check_files()
    assignment = rd.read_folds()
    held, task = _predict_held(rd, assignment, host, data, say)
    checks = [_marks_check(held, task, say), _metadata_check(held), _outside_check(held), _attention_check(held)]
    checks += [check(rd, held) for check in more]
    return {"run": str(rd.path), "task": task.name, "positive": task.classes[task.positive_index or 1],
            "images": len(held.y), "patients": len({s.patient for s in held.samples}),
            "data": str(data) if data else None, "checks": checks,
            "flagged": [c["name"] for c in checks if c["verdict"] == "flag"]}


def _predict_held(rd, assignment: Mapping[str, int], host, data, say) -> tuple[Held, Any]:
    """Every fold model on its held-out images: as they are, lesion blanked, lesion alone."""
    from lnzoo.data.run_data import load_run_data
    from lnzoo.inference import load
    from lnzoo.recipe import resolve

    held, task = Held(), None
    with tempfile.TemporaryDirectory(prefix="lnzoo-audit-") as tmp:
        for ckpt in rd.checkpoints():
            predictor = load(ckpt, host)
            raw = dict(predictor.recipe)
            if data is not None:
                raw["data"] = {**raw.get("data", {}), "train": str(Path(data).resolve())}
            recipe = resolve(raw, host=host, source=predictor.record.recipe_source)
            task = predictor.tasks[predictor.main]
            held.tasks = {task.name: task, **predictor.tasks}
            held.masks_marks = bool(predictor.preprocessing.mask_marks)
            pos = task.positive_index
            if pos is None:
                raise UsageError(f"the audit compares two groups; the main task {task.name!r} has "
                                 f"{len(task.classes)} classes and no positive class")
            k = predictor.record.fold
            pool = [s for s in load_run_data(recipe, predictor.tasks, host).pool
                    if s.patient in assignment and s.labels.get(task.name, -1) >= 0]
            held.pool = [(s, assignment[s.patient], int(s.labels[task.name] == pos)) for s in pool]
            samples = [s for s in pool if assignment[s.patient] == k]
            if not samples:
                raise UsageError(f"{ckpt}: none of the patients folds.csv puts in fold {k} has a labelled image in "
                                 f"the data ({len(pool)} labelled image(s) of the run's patients read); has the "
                                 "data moved, or was it ingested again under another key?")
            say(f"fold {k}: {len(samples)} held-out image(s)")
            score = predictor.predict(samples).proba[task.name][:, pos]
            variants = [_variants(s, Path(tmp) / f"f{k}-{i}") for i, s in enumerate(samples)]
            with_roi = [i for i, v in enumerate(variants) if v is not None]
            blanked = np.full(len(samples), np.nan)
            alone = np.full(len(samples), np.nan)
            if with_roi:
                blanked[with_roi] = predictor.predict([variants[i][0] for i in with_roi]).proba[task.name][:, pos]
                alone[with_roi] = predictor.predict([variants[i][1] for i in with_roi]).proba[task.name][:, pos]
            shares = _attention(predictor, samples, task, held)
            held.attention += [shares.get(i, (np.nan, np.nan))[0] for i in range(len(samples))]
            held.roi_area += [shares.get(i, (np.nan, np.nan))[1] for i in range(len(samples))]
            held.samples += samples
            held.folds += [k] * len(samples)
            held.y += [int(s.labels[task.name] == pos) for s in samples]
            held.score += score.tolist()
            held.blanked += blanked.tolist()
            held.alone += alone.tolist()
    return held, task


def _attention(predictor, samples: Sequence[Any], task, held: Held) -> dict[int, tuple[float, float]]:
    """Per sample with an ROI (index -> (share, area)): the share of the Grad-CAM mass of the image's true class
    (the evidence the model should find in the node) that falls inside the ROI's box, on the full-frame view, and
    the box's share of the image. The three lowest shares are kept as overlays."""
    from lnzoo.data.images import read_pixels
    from lnzoo.explain import compute_cams, overlay_png

    view = next((v for v in predictor.views if "crop" not in v and v != "roi"), None)
    if view is None or not predictor.model.views:
        return {}
    dataset = predictor.dataset(samples)
    out: dict[int, tuple[float, float]] = {}
    for i, sample in enumerate(samples):
        path = sample.views.get(view)
        if path is None:
            continue
        with read_pixels(path) as img:  # as the model reads it (a DICOM file: its region)
            w, h = img.size
        box = lesion_box(sample, (w, h))
        if box is None:
            continue
        x, present, _, _, inputs = dataset[i]
        true = sample.labels[task.name]
        cams = compute_cams(predictor.model, x[None], present[None], task.name, true, "gradcam",
                            {k: v[None] for k, v in inputs.items()})
        cam = cams[view][0].detach().cpu().numpy().astype(np.float64)
        size = cam.shape[0]
        scale_x, scale_y, off_x, off_y = size / w, size / h, 0.0, 0.0
        if predictor.preprocessing.resize == "letterbox":  # one scale, the image centred
            scale_x = scale_y = size / max(w, h)
            off_x, off_y = (size - w * scale_x) / 2, (size - h * scale_y) / 2
        x0, y0, x1, y1 = box
        c0, r0 = int(np.floor(x0 * scale_x + off_x)), int(np.floor(y0 * scale_y + off_y))
        c1, r1 = int(np.ceil(x1 * scale_x + off_x)), int(np.ceil(y1 * scale_y + off_y))
        total = cam.sum()
        share = float(cam[max(r0, 0):r1, max(c0, 0):c1].sum() / total) if total > 0 else float("nan")
        area = (min(x1, w) - max(x0, 0)) * (min(y1, h) - max(y0, 0)) / (w * h)
        out[i] = (share, float(area))
        if np.isfinite(share) and (len(held.lowest) < 3 or share < max(v for v, _ in held.lowest)):
            pixels = predictor.cache.get(path, sample.origin, None)
            png = overlay_png(pixels, cam, [f"{task.classes[true]}: {100 * share:.0f}% of the Grad-CAM mass inside the "
                                            f"ROI (the ROI is {100 * area:.0f}% of the image)", str(path.name)])
            held.lowest = sorted([*held.lowest, (share, png)], key=lambda t: t[0])[:3]
    return out


# -- the lesion, blanked and alone ----------------------------------------------------------------------------------
def lesion_box(sample, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The lesion's pixel box in the full image of ``size`` (w, h): the recipe's ROI, else the row's ``bbox`` or the
    extent of its ``mask``, read as every ROI is (:func:`lnzoo.data.samples.parse_roi`,
    :func:`lnzoo.data.images.roi_box`); None when the row has none or it marks nothing."""
    from lnzoo.data.images import roi_box
    from lnzoo.data.samples import parse_roi

    roi = next(iter(sample.rois.values()), None)
    if roi is None:
        roi = parse_roi(sample.cells, sample.base or Path("."), {}, sample.origin, [])
    if roi is None:
        return None
    try:
        return roi_box(roi, size, 0.0, sample.origin)
    except DataError:  # an empty mask, a box outside the image: no lesion to blank
        return None


def blank_lesion(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The image with ``box`` replaced by the mirror image of the tissue beside it, on the side with most room."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = _grown(box, w, h)
    bw, bh = x1 - x0, y1 - y0
    out = rgb.copy()
    room = {"left": x0, "right": w - x1, "top": y0, "bottom": h - y1}
    side = max(room, key=lambda k: room[k] / (bw if k in ("left", "right") else bh))
    if room[side] == 0:
        out[y0:y1, x0:x1] = rgb.reshape(-1, rgb.shape[-1]).mean(0).astype(rgb.dtype)
        return out
    if side == "left":
        strip = rgb[y0:y1, max(0, x0 - bw):x0][:, ::-1]
    elif side == "right":
        strip = rgb[y0:y1, x1:x1 + bw][:, ::-1]
    elif side == "top":
        strip = rgb[max(0, y0 - bh):y0, x0:x1][::-1]
    else:
        strip = rgb[y1:y1 + bh, x0:x1][::-1]
    pad = [(0, bh - strip.shape[0]), (0, bw - strip.shape[1])] + [(0, 0)] * (rgb.ndim - 2)
    out[y0:y1, x0:x1] = np.pad(strip, pad, mode="symmetric")  # a strip narrower than the box: mirrored again
    return out


def lesion_alone(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The image with everything outside ``box`` (grown) filled with the mean colour of what was there."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = _grown(box, w, h)
    inside = np.zeros((h, w), bool)
    inside[y0:y1, x0:x1] = True
    out = rgb.copy()
    out[~inside] = rgb[~inside].mean(0).astype(rgb.dtype) if (~inside).any() else 0
    return out


def _grown(box, w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    gx, gy = GROW * (x1 - x0), GROW * (y1 - y0)
    return (max(0, int(x0 - gx)), max(0, int(y0 - gy)), min(w, int(np.ceil(x1 + gx))), min(h, int(np.ceil(y1 + gy))))


def _variants(sample, folder: Path, kinds: Sequence[str] = ("blanked", "alone")):
    """Copies of ``sample`` for each of ``kinds`` ("blanked": the lesion blanked, "alone": the lesion alone): every
    full-frame view changed, a crop or ROI view (the lesion itself) left as it is; None without an ROI."""
    import dataclasses

    from PIL import Image

    from lnzoo.data.images import read_pixels, to_rgb

    full = next((p for v, p in sample.views.items() if p is not None and "crop" not in v and v != "roi"), None)
    if full is None:
        return None
    with read_pixels(full) as img:
        box = lesion_box(sample, img.size)
    if box is None:
        return None
    folder.mkdir(parents=True)
    out = []
    changes = {"blanked": blank_lesion, "alone": lesion_alone}
    for kind in kinds:
        change = changes[kind]
        views = {}
        for view, path in sample.views.items():
            if path is None or "crop" in view or view == "roi":
                views[view] = path
                continue
            with read_pixels(path) as img:
                rgb = np.asarray(to_rgb(img))
            views[view] = folder / f"{kind}-{view}.png"
            Image.fromarray(change(rgb, box)).save(views[view])
        out.append(dataclasses.replace(sample, views=views, rois={}))
    return tuple(out)


# -- the checks -----------------------------------------------------------------------------------------------------
def _check(name: str, title: str, verdict: str, sentence: str, **figures: Any) -> dict[str, Any]:
    return {"name": name, "title": title, "verdict": verdict, "sentence": sentence, **figures}


def _marks_of(held: Held, say) -> tuple[np.ndarray, str]:
    columns = [c for c in MARK_COLUMNS if any(c in s.cells for s in held.samples)]
    if columns:
        has = [any(str(s.cells.get(c, "") or "").strip() in ("1", "1.0", "true", "yes") for c in columns)
               for s in held.samples]
        return np.asarray(has, bool), f"the manifest's columns {', '.join(columns)}"
    from lnzoo.data.images import read_pixels, to_rgb
    from lnzoo.ingest.marks import find_marks

    say(f"looking for burned-in marks in {len(held.samples)} image(s)")
    has = []
    for s in held.samples:
        path = s.views.get("full") or next(p for p in s.views.values() if p is not None)
        with read_pixels(path) as img:
            found = find_marks(np.asarray(to_rgb(img)))
        has.append(found.has_caliper or found.has_text)
    return np.asarray(has, bool), "lnzoo's mark detector (lnzoo.ingest.marks) on each image"


def _marks_check(held: Held, task, say) -> dict[str, Any]:
    has, source = _marks_of(held, say)
    y, score = np.asarray(held.y), np.asarray(held.score)
    rate = {cls: float(has[y == v].mean()) if (y == v).any() else None
            for v, cls in ((1, "positive"), (0, "negative"))}
    if not has.any():
        return _check("marks", "Marks against labels", "ok", f"No image has burned-in marks ({source}).",
                      source=source, rate=rate, marks_auc=None)
    marks_auc = auc_ci(y, has.astype(float))
    without, with_ = auc_ci(y[~has], score[~has]), auc_ci(y[has], score[has])
    flag = _beyond(marks_auc)
    pct = {k: "n/a" if v is None else f"{100 * v:.0f}%" for k, v in rate.items()}
    sentence = (f"Marks are on {pct['positive']} of {task.classes[task.positive_index]} and {pct['negative']} of "
                f"the other images; marks alone predict the label with AUC {_fmt(marks_auc)}. The model's AUC is "
                f"{_fmt(with_)} on images with marks and {_fmt(without)} without.")
    if flag and held.masks_marks:
        sentence += (" The marks carry the label in the data; this model masks them before it sees an image "
                     "(data.mask_marks): compare the other checks with those of a run without it.")
    elif flag:
        sentence += " The marks carry the label: the model may be reading them, not the node."
    return _check("marks", "Marks against labels", "flag" if flag else "ok", sentence, source=source, rate=rate,
                  marks_auc=marks_auc, model_auc_with_marks=with_, model_auc_without_marks=without,
                  images_with_marks=int(has.sum()))


def _metadata_check(held: Held) -> dict[str, Any]:
    """A logistic regression on the metadata columns, cross-validated on the run's folds over every labelled
    image (not only the folds that ran: the regression needs no image model)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    samples = [s for s, _, _ in held.pool]
    table = _metadata_table(samples)
    used = [c for c, values in table.items() if len(set(values)) > 1]
    if not used:
        return _check("metadata", "Metadata alone", "not run",
                      "Not run: no column that could carry the label without the image varies in this data "
                      f"(looked for {', '.join(METADATA_COLUMNS)}, image width and height).", columns=[])
    numeric = [c for c in used if all(_number(v) is not None for v in table[c] if v != "")]
    categorical = [c for c in used if c not in numeric]
    X = np.empty((len(samples), len(used)), dtype=object)
    for j, c in enumerate(used):
        X[:, j] = [(_number(v) if v != "" else np.nan) if c in numeric else (v or "missing") for v in table[c]]
    steps = []
    if numeric:
        steps.append(("num", make_pipeline(SimpleImputer(), StandardScaler()), [used.index(c) for c in numeric]))
    if categorical:
        steps.append(("cat", OneHotEncoder(handle_unknown="ignore"), [used.index(c) for c in categorical]))
    y, folds = np.asarray([v for _, _, v in held.pool]), np.asarray([k for _, k, _ in held.pool])
    out = np.full(len(y), np.nan)
    for k in sorted(set(folds.tolist())):
        train, test = folds != k, folds == k
        if len(set(y[train].tolist())) < 2:
            continue
        model = make_pipeline(ColumnTransformer(steps), LogisticRegression(max_iter=1000))
        model.fit(X[train], y[train])
        out[test] = model.predict_proba(X[test])[:, 1]
    ok = np.isfinite(out)
    auc = auc_ci(y[ok], out[ok])
    flag = _beyond(auc)
    sentence = (f"From {', '.join(used)} alone, a logistic regression on the run's folds predicts the label with AUC "
                f"{_fmt(auc)}.")
    sentence += (" The label is predictable without the image: these columns may be confounders."
                 if flag else " The label is not predictable from them.")
    return _check("metadata", "Metadata alone", "flag" if flag else "ok", sentence, columns=used, auc=auc)


def _metadata_table(samples: Sequence[Any]) -> dict[str, list[str]]:
    from PIL import Image

    table = {c: [str(s.cells.get(c, "") or "").strip() for s in samples]
             for c in METADATA_COLUMNS if any(c in s.cells for s in samples)}
    sizes = []
    for s in samples:
        path = s.views.get("full") or next((p for p in s.views.values() if p is not None), None)
        try:
            with Image.open(path) as img:
                sizes.append(img.size)
        except (OSError, ValueError, TypeError):
            sizes.append(("", ""))
    table["image_width"] = [str(w) for w, _ in sizes]
    table["image_height"] = [str(h) for _, h in sizes]
    return table


def _outside_check(held: Held) -> dict[str, Any]:
    y, score = np.asarray(held.y), np.asarray(held.score)
    blanked, alone = np.asarray(held.blanked), np.asarray(held.alone)
    ok = np.isfinite(blanked)
    if not ok.any():
        return _check("outside", "Outside the lesion", "not run", "Not run: no row has an ROI (a bbox or mask "
                      "column, or the recipe's ROI), so the lesion cannot be blanked.")
    full, without, only = auc_ci(y[ok], score[ok]), auc_ci(y[ok], blanked[ok]), auc_ci(y[ok], alone[ok])
    flag = _beyond(without) and without["auc"] is not None and full["auc"] is not None and \
        without["auc"] >= full["auc"] - CLOSE
    sentence = (f"On {int(ok.sum())} image(s) with an ROI: AUC {_fmt(full)} on the full image, {_fmt(without)} "
                f"with the lesion blanked, {_fmt(only)} on the lesion alone.")
    sentence += (" Without the lesion the model still separates the classes: it may be using what surrounds the "
                 "node (marks, the Doppler box, the scanner)." if flag else "")
    return _check("outside", "Outside the lesion", "flag" if flag else "ok", sentence, full_auc=full,
                  blanked_auc=without, lesion_alone_auc=only, images=int(ok.sum()))


def _attention_check(held: Held) -> dict[str, Any]:
    share, area, y = np.asarray(held.attention), np.asarray(held.roi_area), np.asarray(held.y)
    ok = np.isfinite(share)
    if not ok.any():
        return _check("attention", "Attention outside the lesion", "not run", "Not run: no row has an ROI (or the "
                      "model has no full-frame image view), so there is no lesion to compare the Grad-CAM with.")
    per_class = {name: float(np.median(share[ok & (y == v)])) if (ok & (y == v)).any() else None
                 for v, name in ((1, "positive"), (0, "negative"))}
    median, median_area = float(np.median(share[ok])), float(np.median(area[ok]))
    enrichment = float(np.median(share[ok] / np.maximum(area[ok], 1e-9)))  # 1: no more than a uniform map
    empty = int((np.isfinite(area) & ~ok).sum())  # an all-zero map: no positive evidence at the CAM layer
    flag = enrichment < ENRICHED
    sentence = (f"On {int(ok.sum())} image(s) with an ROI" + (f" and a non-empty map ({empty} had none)" if empty
                                                                 else "") + f", a median {100 * median:.0f}% of the Grad-CAM mass of "
                f"each image's true class lies inside the lesion's box (positive images {_pct(per_class['positive'])}, "
                f"negative {_pct(per_class['negative'])}); the box covers a median {100 * median_area:.0f}% of "
                f"the image: {enrichment:.1f}x what a uniform map would put there.")
    if flag:
        sentence += " The model's evidence is hardly more on the lesion than anywhere else."
    import base64

    overlays = [base64.b64encode(png).decode("ascii") for _, png in held.lowest]
    return _check("attention", "Attention outside the lesion", "flag" if flag else "ok", sentence,
                  median_share=median, median_roi_area=median_area, median_enrichment=enrichment, share_by_class=per_class, images=int(ok.sum()),
                  empty_maps=empty,
                  overlays_png_base64=overlays)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _fmt(entry: Mapping[str, Any]) -> str:
    if entry.get("auc") is None:
        return "n/a"
    ci = entry.get("ci")
    return f"{entry['auc']:.3f}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


from lnzoo.audit.write import audit_section, write_audit  # noqa: E402,F401 - the audit's files and its section
