"""The model record: a checkpoint's definition, typed, read and verified in one place.

A checkpoint is ``NAME.safetensors`` (tensors only) plus its JSON sidecar. Every reader of a sidecar
(loading a model for torch or ONNX Runtime, a bundle's config, explain, select, the report, a text
input's ``init``) goes through :meth:`ModelRecord.read`, which checks the weights' sha256 and the
definition saved in their header against the sidecar before anything is built from it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnzoo.data.images import Preprocessing
from lnzoo.errors import UsageError
from lnzoo.tasks import Task


@dataclass(frozen=True)
class InputSignature:
    """What a model takes, as a manifest row or a form gives it: its image views (and how a 'roi' view is cut),
    the columns its other inputs read (text cells and files), and whether it needs an image at all."""

    views: tuple[str, ...]
    roi_source: Mapping[str, Any]               # bbox_column, mask_column, empty_roi, roi_margin, crop_suffix
    inputs: tuple[Mapping[str, Any], ...]       # each input: name, kind and options, as the recipe gave them


@dataclass(frozen=True)
class ModelRecord:
    """One checkpoint's definition (its sidecar), verified against its weights."""

    weights: Path
    recipe: Mapping[str, Any]                   # the resolved recipe it was trained with (its stored copy)
    tasks: Mapping[str, Task]                   # in the model's head order
    views: tuple[str, ...]
    preprocessing: Preprocessing
    temperature: Mapping[str, float | None]     # per task, fitted on the fold's inner validation part
    inputs: tuple[Mapping[str, Any], ...]       # the inputs besides the views: table (kind + options), fitted state
    fold: int | None = None
    seed: int | None = None
    best_epoch: int | None = None
    monitor: Mapping[str, Any] = field(default_factory=dict)
    monitor_val_loss: float | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    recipe_source: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the sidecar as stored

    # -- reading ----------------------------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | Path) -> "ModelRecord":
        """The record of a checkpoint (a .safetensors or .json path, or the stem), verified against its weights.
        Verified once per process while neither file changes (same size and modification time)."""
        key = _stamp(path)
        if key is not None and key in _VERIFIED:
            return _VERIFIED[key]
        return cls.read_verified(path)[0]

    @classmethod
    def read_verified(cls, path: str | Path) -> tuple["ModelRecord", bytes]:
        """The record and the weights file's bytes, read once and checked against each other."""
        from lnzoo.checkpoint import verify_checkpoint

        key = _stamp(path)
        weights, meta, blob = verify_checkpoint(path)
        record = cls.from_meta(weights, meta)
        if key is not None and key == _stamp(path):  # unchanged while it was read
            _VERIFIED[key] = record
        return record, blob

    @classmethod
    def from_meta(cls, weights: Path, meta: Mapping[str, Any]) -> "ModelRecord":
        where = f"{Path(weights).with_suffix('.json')}"
        try:
            tasks = {name: Task.from_dict(d, source=f"{where} sidecar") for name, d in meta["tasks"].items()}
            prep = meta["preprocessing"]
            preprocessing = Preprocessing(**{f: prep[f] for f in ("image_size", "resize", "normalize", "roi_margin")
                                             if f in prep})  # older sidecars lack some: their defaults apply
            record = cls(Path(weights), meta["recipe"], tasks, tuple(meta["views"]), preprocessing,
                         dict(meta.get("temperature") or {}), tuple(meta.get("inputs") or ()), meta.get("fold"),
                         meta.get("seed"), meta.get("best_epoch"), dict(meta.get("monitor") or {}),
                         meta.get("monitor_val_loss"), dict(meta.get("versions") or {}), meta.get("recipe_source"),
                         dict(meta))
        except (KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"{where}: not an lnzoo checkpoint sidecar ({type(exc).__name__}: {exc})") from None
        if record.main not in record.tasks:
            raise UsageError(f"{where}: its main task {record.main!r} is not one of its tasks {list(record.tasks)}")
        return record

    # -- what it says ------------------------------------------------------------------------------------------
    @property
    def main(self) -> str:
        return self.recipe["tasks"]["main"]

    @property
    def data(self) -> Mapping[str, Any]:
        """The recipe's data section (ROI columns and policy, crop folder suffix, image size)."""
        return self.recipe["data"]

    @property
    def tta(self) -> str:
        return self.recipe.get("train", {}).get("tta", "none")

    @property
    def name(self) -> str | None:
        return self.recipe.get("name")

    @property
    def description(self) -> str:
        return self.recipe.get("description", "")

    @property
    def signature(self) -> InputSignature:
        d = self.data
        roi = {k: d.get(k) for k in ("bbox_column", "mask_column", "empty_roi", "roi_margin", "crop_suffix")}
        return InputSignature(self.views, roi, tuple({"name": e["name"], "kind": e["table"].get("name"),
                                                      "options": {k: v for k, v in e["table"].items() if k != "name"}}
                                                     for e in self.inputs))

    def require_buildable(self) -> None:
        """Refuse a checkpoint this lnzoo cannot rebuild: one from before input kinds, which joined its clinical
        covariates after the fusion."""
        if self.meta.get("covariates") and not self.inputs:
            raise UsageError(f"{self.weights}: written by lnzoo {self.versions.get('lnzoo', '< 0.2')}, which joined "
                             "clinical covariates after the fusion; this version fuses them as an input like a view. "
                             "Retrain the run (lnzoo run) to use it here")

    def input_entry(self, kind: str) -> Mapping[str, Any] | None:
        """The first of its inputs of ``kind`` (its table and fitted state), or None."""
        return next((e for e in self.inputs if e["table"].get("name") == kind), None)


_VERIFIED: dict[tuple, ModelRecord] = {}


def _stamp(path: str | Path) -> tuple | None:
    """What identifies a checkpoint's two files as they are now (None when one is missing): the weights file's
    identity and times (hashing it is what the cache saves), the sidecar's whole content (it is small)."""
    import hashlib

    stem = Path(path)
    try:
        weights, sidecar = (stem.with_suffix(s).resolve() for s in (".safetensors", ".json"))
        st = weights.stat()
        return (str(weights), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                hashlib.sha256(sidecar.read_bytes()).hexdigest())
    except OSError:
        return None
