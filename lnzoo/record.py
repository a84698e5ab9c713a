"""The model record: a checkpoint's definition, typed, read and verified in one place.

A checkpoint is ``NAME.safetensors`` (tensors only) plus its JSON sidecar. Every reader of a sidecar
(loading a model for torch or ONNX Runtime, a bundle's config, explain, select, the report, a text
input's ``init``) goes through :meth:`ModelRecord.read`, which checks the weights' sha256 and the
definition saved in their header against the sidecar before anything is built from it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
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

        from lnzoo.integrity import allowing_modified

        key = _stamp(path)
        known = _VERIFIED.get(key) if key is not None and not allowing_modified() else None
        if known is not None:  # verified in this process and unchanged: its bytes read, not hashed again
            try:
                blob = known.weights.read_bytes()
            except OSError:
                blob = None
            if blob is not None and _stamp(path) == key:  # and still unchanged once read
                return known, blob
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
            preprocessing = Preprocessing(**{f: prep[f] for f in ("image_size", "resize", "normalize", "roi_margin",
                                                                  "mask_marks")
                                             if f in prep})  # older sidecars lack some: their defaults apply
            record = cls(Path(weights), meta["recipe"], tasks, tuple(meta["views"]), preprocessing,
                         dict(meta.get("temperature") or {}), tuple(meta.get("inputs") or ()), meta.get("fold"),
                         meta.get("seed"), meta.get("best_epoch"), dict(meta.get("monitor") or {}),
                         meta.get("monitor_val_loss"), dict(meta.get("versions") or {}), meta.get("recipe_source"),
                         dict(meta))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise UsageError(f"{where}: not an lnzoo checkpoint sidecar ({type(exc).__name__}: {exc})") from None
        wrong = [name for name, value, kinds in (
            ("recipe", record.recipe, dict), ("recipe_source", record.recipe_source, (str, type(None))),
            ("fold", record.fold, (int, type(None))), ("seed", record.seed, (int, type(None))),
            ("best_epoch", record.best_epoch, (int, type(None)))) if not isinstance(value, kinds) or value is True
            or value is False]
        wrong += ["views"] * (not all(isinstance(v, str) for v in record.views))
        wrong += ["temperature"] * (not all(isinstance(t, (int, float, type(None))) for t in record.temperature.values()))
        wrong += ["inputs"] * (not all(isinstance(e, dict) and isinstance(e.get("table"), dict) for e in record.inputs))
        if wrong or not isinstance(record.recipe.get("tasks"), dict) or not isinstance(record.recipe.get("data"), dict):
            raise UsageError(f"{where}: not an lnzoo checkpoint sidecar (unexpected {', '.join(wrong) or 'recipe'})")
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

    def require_components(self, host, kinds: Sequence[str] = ("backbone", "fusion", "head", "input")) -> None:
        """Refuse to run this model with a component other than the one it was trained with: every component it
        records (``kinds`` of them) must come here from the same distribution, at the same major version, with the
        same factory and the same code; and the model must not come from a newer lnzoo than this one."""
        from lnzoo import __version__
        from lnzoo.errors import LnzooError
        from lnzoo.integrity import allowing_modified, note_modified

        problems, changed = [], []
        written = str(self.versions.get("lnzoo") or "0")
        if _version(written) > _version(__version__) and _compatible(written) != _compatible(__version__):
            problems.append(f"it was written by lnzoo {written}, newer than this lnzoo {__version__}: "
                            f"pip install 'lnzoo>={written}'")
        for c in self.components:
            try:
                kind, name, dist, version = c["kind"], c["name"], c["distribution"], str(c["version"])
            except (KeyError, TypeError):
                problems.append(f"its component record {c!r} is not one lnzoo wrote")
                continue
            if kind not in kinds:  # a task is stored whole in the record: its provider computes nothing here
                continue
            install = f"pip install '{dist}=={version}'" if dist != "lnzoo" else f"pip install 'lnzoo=={version}'"
            try:
                here = host.get(kind, name).identity()
            except LnzooError as exc:
                problems.append(f"{kind} {name!r} came from {dist} {version}, which is not installed here "
                                f"({exc}): {install}")
                continue
            if here["distribution"] != dist or here["factory"] != c.get("factory"):
                problems.append(f"{kind} {name!r} came from {dist} {version} ({c.get('factory')}); here it is "
                                f"{here['factory']} from {here['distribution']} {here['version']}: {install}"
                                + (f", or uninstall {here['distribution']}" if here["distribution"] != "lnzoo"
                                   else ""))
            elif _compatible(here["version"]) != _compatible(version):
                problems.append(f"{kind} {name!r} came from {dist} {version}; here {dist} is {here['version']}, "
                                f"another major version: {install}")
            elif c.get("definition_sha256") and here["definition_sha256"] not in (None, c["definition_sha256"]):
                changed.append(f"{kind} {name!r} ({dist} {version} then, {here['version']} now): its code changed "
                               "since the model was trained")
        where = self.weights
        if problems:
            raise UsageError(f"{where}: this model cannot run here, {'; '.join(problems)}")
        if changed:
            why = "; ".join(changed)
            if not allowing_modified():
                raise UsageError(f"{where}: {why}. It may compute something else than it did in training; install "
                                 "the versions it was trained with, or pass --allow-modified to run it with these "
                                 "(every output then says so)")
            note_modified(where, why)

    @property
    def components(self) -> tuple[Mapping[str, Any], ...]:
        """The provider of each component the model is built from, as recorded at training (none for older
        checkpoints, which recorded only the plugin distributions installed)."""
        found = self.meta.get("components")
        return tuple(found) if isinstance(found, list) else ()

    def input_entry(self, kind: str) -> Mapping[str, Any] | None:
        """The first of its inputs of ``kind`` (its table and fitted state), or None."""
        return next((e for e in self.inputs if e["table"].get("name") == kind), None)


def components_of(recipe: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every registered component a resolved recipe builds its model from: the backbone (when it
    has image views), the fusion, each task's head, each registered task, each input kind."""
    model, data, tasks = recipe["model"], recipe["data"], recipe["tasks"]
    out = [("backbone", model["backbone"]["name"])] if data.get("views") else []
    out.append(("fusion", model["fusion"]["name"]))
    for task in tasks["task_weights"]:
        out.append(("head", ((model.get("heads") or {}).get(task) or model["head"])["name"]))
    out += [("task", t) for t in tasks["task_weights"] if t not in (tasks.get("define") or {})]
    from lnzoo.inputs import input_tables

    out += [("input", table["name"]) for table in input_tables(data, model).values()]
    return list(dict.fromkeys(out))


def component_providers(recipe, host) -> list[dict[str, Any]]:
    """Who provides each component of a resolved recipe's model (:meth:`lnzoo.registry.Entry.identity`), for its
    checkpoints."""
    return [host.get(kind, name).identity() for kind, name in components_of(recipe.data)]


def _version(version: str) -> tuple[int, int, int]:
    import re

    parts = [int(p) for p in re.findall(r"\d+", str(version))[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def _compatible(version: str) -> tuple[int, ...]:
    """What must match for two releases to be compatible: the major version (for 0.x, the minor, as semver has it)."""
    major, minor, _ = _version(version)
    return (0, minor) if major == 0 else (major,)


_VERIFIED: dict[tuple, ModelRecord] = {}


def _stamp(path: str | Path) -> tuple | None:
    """What identifies a checkpoint's two files as they are now (None when one is missing): the weights file's
    identity and times (hashing it is what the cache saves), the sidecar's whole content (it is small)."""
    import hashlib

    from lnzoo.integrity import MANIFEST, allowing_modified, root_of

    stem = Path(path)
    try:
        weights, sidecar = (stem.with_suffix(s).resolve() for s in (".safetensors", ".json"))
        st = weights.stat()
        root = root_of(weights)  # the manifest that binds them, as it is now (an edit of it is seen)
        manifest = (root / MANIFEST).stat() if root is not None and (root / MANIFEST).is_file() else None
        return (str(weights), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                hashlib.sha256(sidecar.read_bytes()).hexdigest(),
                manifest and (manifest.st_ino, manifest.st_size, manifest.st_mtime_ns), allowing_modified())
    except OSError:
        return None
