"""Checkpoints: weights as .safetensors plus a JSON sidecar (recipe, class maps, preprocessing, versions).

Nothing is pickled: the sidecar says how to rebuild the model from the registries, the
safetensors file holds only tensors (and, in its header, a copy of the definition the sidecar gives).
"""
from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from lnzoo import __version__
from lnzoo.errors import UsageError


def environment(host) -> dict[str, Any]:
    """Versions that produced a checkpoint: lnzoo, torch, timm, and every plugin distribution."""
    versions = {"lnzoo": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "timm"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    plugins = {p.distribution: p.version for p in host.plugins if not p.error}
    return {"versions": versions, "plugins": plugins}


# What a checkpoint's predictions depend on besides its tensors. The weights file carries a copy in its
# safetensors header, so an edited sidecar (say, two class names swapped) is refused, not served.
DEFINITION_KEYS = ("tasks", "class_maps", "views", "recipe", "preprocessing", "covariates", "temperature", "inputs",
                   "components")
_SINCE_0_2 = ("inputs", "components")  # defined only where a sidecar has them, so older checkpoints still verify


def _definition(meta: dict[str, Any]) -> str:
    return json.dumps({k: meta.get(k) for k in DEFINITION_KEYS if k not in _SINCE_0_2 or meta.get(k) is not None},
                      sort_keys=True, ensure_ascii=False)


def save_checkpoint(model_or_state, stem: Path, meta: dict[str, Any]) -> Path:
    """Write ``stem.safetensors`` (a model's or a state dict's tensors) and ``stem.json``, each atomically;
    the sidecar records the sha256 of the weights and of the definition; return the weights path."""
    from safetensors.torch import save

    from lnzoo.files import write_atomic

    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    definition = _definition(meta)
    blob = save(state, metadata={"format": "lnzoo", "lnzoo_version": __version__, "lnzoo_definition": definition})
    digest = hashlib.sha256(blob).hexdigest()
    weights = write_atomic(stem.with_suffix(".safetensors"), blob, digest)
    meta = {**meta, "weights_sha256": digest,
            "definition_sha256": hashlib.sha256(definition.encode("utf-8")).hexdigest()}
    write_atomic(stem.with_suffix(".json"), json.dumps(meta, indent=2, ensure_ascii=False))
    return weights


def read_sidecar(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Given a .safetensors or .json path (or the stem), return (weights path, sidecar dict)."""
    path = Path(path)
    weights = path.with_suffix(".safetensors")
    sidecar = path.with_suffix(".json")
    if not weights.is_file():
        raise UsageError(f"checkpoint weights not found: {weights}")
    if not sidecar.is_file():
        raise UsageError(f"checkpoint sidecar not found: {sidecar} (it holds the recipe and class maps)")
    from lnzoo.integrity import read_text
    try:
        meta = json.loads(read_text(sidecar))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{sidecar}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or not all(k in meta for k in ("recipe", "tasks", "views", "preprocessing")):
        raise UsageError(f"{sidecar}: not an lnzoo checkpoint sidecar (recipe, tasks, views, preprocessing expected)")
    return weights, meta


def read_weights(path: str | Path, what: str = "") -> dict[str, Any]:
    """The tensors of a .safetensors file; a truncated or corrupt file is a named error."""
    from safetensors.torch import load

    path = Path(path)
    try:
        return load(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"{what}{path}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
        raise UsageError(f"{what}{path}: not a readable safetensors file, truncated or corrupt ({exc})") from None


def verify_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any], bytes]:
    """(weights path, sidecar, the weights file's bytes), checked against each other without torch: the weights'
    sha256 and the definition saved in their header must match the sidecar (older checkpoints without them
    are read as they are)."""
    from lnzoo.integrity import allowing_modified, note_modified, read_digest

    weights, meta = read_sidecar(path)
    sidecar = weights.with_suffix(".json")
    blob, digest = read_digest(weights)
    expected = meta.get("weights_sha256")
    if expected and digest != expected:
        raise UsageError(f"{weights}: its sha256 differs from the one {sidecar.name} was written with: the weights "
                         "were replaced, damaged or truncated after saving, or the sidecar belongs to another "
                         "checkpoint")
    saved = _header_metadata(blob).get("lnzoo_definition")
    if saved is not None and saved != _definition(meta):
        raise UsageError(f"{sidecar}: differs from the definition saved with its weights ({_what_differs(saved, meta)}); "
                         "it was edited or copied from another checkpoint. Restore it, or retrain")
    if saved is None or not expected:  # re-saved by another tool (a float16 conversion), or an edited sidecar
        missing = " and ".join(w for w, gone in (("its weights carry no lnzoo definition", saved is None),
                                                ("its sidecar no weights_sha256", not expected)) if gone)
        why = (f"{weights}: {missing}, so nothing binds {sidecar.name} (class order, tasks, preprocessing) to these "
               "weights; they were re-saved by another tool, or written by an lnzoo before 0.2")
        if not allowing_modified():
            raise UsageError(f"{why}. If {sidecar.name} is their definition, pass --allow-modified to take it "
                             "as such (every output then says so)")
        note_modified(weights, why)
    return weights, meta, blob


def tensors_of(blob: bytes, weights: Path) -> dict[str, Any]:
    """The tensors of a safetensors file's bytes; damage is a named error."""
    from safetensors.torch import load

    try:
        return load(blob)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
        raise UsageError(f"{weights}: not a readable safetensors file, truncated or corrupt ({exc})") from None


def _header_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON)."""
    try:
        size = int.from_bytes(blob[:8], "little")
        return json.loads(blob[8:8 + size]).get("__metadata__") or {}
    except (ValueError, AttributeError):
        return {}


def _what_differs(saved: str, meta: dict[str, Any]) -> str:
    old = json.loads(saved)
    diffs = []
    for key in DEFINITION_KEYS:
        a, b = old.get(key), meta.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            inner = [f"{key}.{k}" for k in sorted(set(a) | set(b), key=str) if a.get(k) != b.get(k)]
            diffs += inner[:3]
        else:
            diffs.append(key)
    return "differs in " + ", ".join(diffs) if diffs else "differs"
