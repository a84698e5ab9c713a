"""Checkpoints: weights as .safetensors plus a JSON sidecar (recipe, class maps, preprocessing, versions).

Nothing is pickled: the sidecar says how to rebuild the model from the registries, the
safetensors file holds only tensors.
"""
from __future__ import annotations

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


def save_checkpoint(model_or_state, stem: Path, meta: dict[str, Any]) -> Path:
    """Write ``stem.safetensors`` (a model's or a state dict's tensors) and ``stem.json``; return the weights path."""
    from safetensors.torch import save_file

    stem.parent.mkdir(parents=True, exist_ok=True)
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    weights = stem.with_suffix(".safetensors")
    save_file(state, str(weights), metadata={"format": "lnzoo", "lnzoo_version": __version__})
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
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
    try:
        return weights, json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{sidecar}: not valid JSON: {exc}") from None
