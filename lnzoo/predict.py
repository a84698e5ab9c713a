"""Inference: a checkpoint, a run (its fold models averaged), an ensemble of runs, and the stage cascade.

An ensemble averages class probabilities over its members (CV folds of one run, or several runs
with other backbones); every member reads the images with its own stored preprocessing.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lnzoo.data.samples import Sample, apply_empty_roi
from lnzoo.errors import UsageError


def checkpoints_of(path: str | Path) -> list[Path]:
    """A .safetensors file is itself; a run directory gives every fold's best checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("fold*/best.safetensors"), key=lambda p: int(p.parent.name[4:]))
        if not found:
            raise UsageError(f"{path}: no fold*/best.safetensors inside; is it a run directory?")
        return found
    if path.suffix != ".safetensors" or not path.is_file():
        raise UsageError(f"{path}: expected a run directory or a .safetensors checkpoint")
    return [path]


@dataclass
class Member:
    model: Any
    meta: dict[str, Any]
    source: Path


class Ensemble:
    """Averages the probabilities of several checkpoints per task."""

    def __init__(self, sources: Sequence[str | Path], host=None):
        from lnzoo.checkpoint import load_model

        if host is None:
            from lnzoo.plugins import get_host
            host = get_host()
        self.members = [Member(*load_model(c, host), c) for s in sources for c in checkpoints_of(s)]
        if not self.members:
            raise UsageError("an ensemble needs at least one checkpoint")
        self.tasks: dict[str, list[str]] = {}
        for m in self.members:
            for name, task in m.meta["tasks"].items():
                classes = list(task["classes"])
                if self.tasks.setdefault(name, classes) != classes:
                    raise UsageError(f"{m.source}: task {name!r} has classes {classes}, another member "
                                     f"{self.tasks[name]}; they cannot be averaged")
        self.main = self.members[0].meta["recipe"]["tasks"]["main"]
        self.views = list(self.members[0].meta["views"])

    def predict(self, items: Sequence[Any]) -> tuple[dict[str, np.ndarray], list[dict[str, Path | None]]]:
        """Probabilities per task (members averaged) for each item (a path, or one path per view)."""
        from lnzoo.data.dataset import ImageCache, NodeDataset
        from lnzoo.data.images import Preprocessing
        from lnzoo.explain import _derive_views
        from lnzoo.model import predict_probabilities

        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        resolved: list[dict[str, Path | None]] = []
        for m in self.members:
            views = list(m.meta["views"])
            suffix = m.meta["recipe"]["data"].get("crop_suffix", "-crop")
            if items and isinstance(items[0], Sample):  # manifest rows: views, ROI boxes/masks, covariates
                policy = m.meta["recipe"]["data"].get("empty_roi", "error")
                per_view, samples = [], []
                for item in items:  # each member applies its own data.empty_roi to an empty mask
                    pv, rois = {v: item.views.get(v) for v in views}, {}
                    if "roi" in item.rois and pv.get("roi") is not None:
                        problems: list[str] = []
                        got = apply_empty_roi(pv, item.rois["roi"], policy, item.origin, problems)
                        if got is None:
                            raise UsageError(f"{problems[0]} (data.empty_roi of {m.source})")
                        pv, rois = got
                    per_view.append(pv)
                    samples.append(Sample(dict(pv), item.patient, {}, item.origin,
                                          covariates=dict(item.covariates), rois=rois))
                if any(all(p is None for p in pv.values()) for pv in per_view):
                    bad = next(i.origin for i, pv in zip(items, per_view) if all(p is None for p in pv.values()))
                    raise UsageError(f"{bad}: no image for any of the views {views} of {m.source}")
            else:
                per_view = [_derive_views(item, views, suffix) for item in items]
                samples = [Sample(dict(v), "", {}, str(next(p for p in v.values() if p is not None)))
                           for v in per_view]
            if not resolved:
                resolved = per_view
            prep = m.meta["preprocessing"]
            pre = Preprocessing(prep["image_size"], prep.get("resize", "squash"), prep.get("normalize", "imagenet"),
                                prep.get("roi_margin", 0.1))
            ds = NodeDataset(samples, views, [], ImageCache(pre), covariates=getattr(m.model, "covariate_encoder", None))
            loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=False)
            outs: dict[str, list[np.ndarray]] = {}
            tta = m.meta["recipe"].get("train", {}).get("tta", "none")  # served as it was evaluated
            with torch.no_grad():
                for x, present, _, _, tab in loader:
                    for task, p in predict_probabilities(m.model, x, present, tab, tta)[1].items():
                        outs.setdefault(task, []).append(p.double().numpy())
            for task, chunks in outs.items():
                p = np.concatenate(chunks)
                sums[task] = sums.get(task, 0) + p / p.sum(1, keepdims=True)
                counts[task] = counts.get(task, 0) + 1
        return {t: sums[t] / counts[t] for t in sums}, resolved


def decide(task_classes: Sequence[str], proba: np.ndarray) -> list[str]:
    return [task_classes[i] for i in proba.argmax(1)]


def run_cascade(stages: Sequence[str | Path], images: Sequence[Path], host=None) -> list[dict[str, Any]]:
    """Stage I on every image, stage II on the nodes called malignant, stage III on those called metastatic.

    Returns one row per image: the path taken through the stages and every probability computed.
    """
    if len(stages) != 3:
        raise UsageError("--cascade takes three models: stage I, stage II, stage III")
    ens = [Ensemble([s], host) for s in stages]
    expected = ("malignancy", "metastasis", "origin")
    for e, want, src in zip(ens, expected, stages):
        if e.main != want:
            raise UsageError(f"{src}: its main task is {e.main!r}; the cascade needs {want!r} at this stage")
    rows: list[dict[str, Any]] = [{"image": str(p), "path": ""} for p in images]

    def apply(stage: int, e: Ensemble, idx: list[int]) -> list[str]:
        if not idx:
            return []
        proba, _ = e.predict([images[i] for i in idx])
        classes = e.tasks[e.main]
        calls = decide(classes, proba[e.main])
        for k, i in enumerate(idx):
            for c, v in zip(classes, proba[e.main][k]):
                rows[i][f"p_{e.main}_{c}"] = round(float(v), 6)
            rows[i][f"stage{stage}"] = calls[k]
            rows[i]["path"] = (rows[i]["path"] + " > " if rows[i]["path"] else "") + f"{e.main}:{calls[k]}"
        return calls

    calls1 = apply(1, ens[0], list(range(len(images))))
    malignant = [i for i, c in zip(range(len(images)), calls1) if c == "malignant"]
    calls2 = apply(2, ens[1], malignant)
    metastatic = [i for i, c in zip(malignant, calls2) if c == "metastatic"]
    apply(3, ens[2], metastatic)
    return rows


def write_rows(rows: list[dict[str, Any]], out: Path) -> Path:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})
    return out


def manifest_samples(models: Sequence[str | Path], manifest: Path, host=None) -> list[Any]:
    """Read a CSV of rows to predict on with the views of all the models given and the ROI columns
    of those with a 'roi' view. Empty masks are kept as read: each member applies its own
    ``data.empty_roi`` when it predicts."""
    from lnzoo.data.samples import read_serving_manifest

    ens = Ensemble(models, host)
    views = sorted({v for m in ens.members for v in m.meta["views"]})
    with_roi = [m for m in ens.members if "roi" in m.meta["views"]] or ens.members[:1]
    cfg = dict(with_roi[0].meta["recipe"]["data"])
    for m in with_roi[1:]:
        other = m.meta["recipe"]["data"]
        for key in ("mask_column", "bbox_column"):
            if other.get(key) != cfg.get(key):
                raise UsageError(f"{m.source} reads its ROI from data.{key} = {other.get(key)!r}, "
                                 f"{with_roi[0].source} from {cfg.get(key)!r}; one manifest cannot serve both")
    return read_serving_manifest(manifest, views, {**cfg, "empty_roi": "error"})


def predict_rows(models: Sequence[str | Path], images: Sequence[Any], host=None) -> list[dict[str, Any]]:
    """One row per image (a path, or a manifest row): which views were used and the ensemble's
    probability of every class of every task."""
    ens = Ensemble(models, host)
    proba, resolved = ens.predict(list(images))
    rows = []
    for i, image in enumerate(images):
        if isinstance(image, Sample):
            row0: dict[str, Any] = {"image": str(next(p for p in image.views.values() if p is not None)),
                                    "row": image.origin}
        else:
            row0 = {"image": str(image)}
        row: dict[str, Any] = {**row0,
                               "views_used": "+".join(v for v, p in resolved[i].items() if p is not None),
                               "members": len(ens.members)}
        for task, p in proba.items():
            classes = ens.tasks[task]
            row[f"{task}_pred"] = classes[int(p[i].argmax())]
            for c, v in zip(classes, p[i]):
                row[f"p_{task}_{c}"] = round(float(v), 6)
        rows.append(row)
    return rows
