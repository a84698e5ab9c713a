"""The resumable state of a fold being fitted, written at the end of every epoch: ``resume.safetensors``
(every tensor: model, EMA, teacher, best weights, optimizer, RNG states) beside ``resume.json`` (the
rest: epoch, history, scheduler, scaler, numpy and Python RNG states, the tensors file's sha256).

Nothing is pickled. Restoring it and running the remaining epochs gives, on the CPU with
``data.num_workers = 0``, exactly the weights an uninterrupted fit would have reached.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lnzoo.errors import UsageError
from lnzoo.files import write_atomic


def _rng_tensors(generator: torch.Generator) -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state(), "rng.loader": generator.get_state()}
    if torch.cuda.is_available():
        out.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    out["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    return out


def save_state(stem: Path, parts: dict[str, dict[str, torch.Tensor] | None], optimizer: torch.optim.Optimizer,
               generator: torch.Generator, info: dict[str, Any]) -> None:
    """Write the state: ``parts`` are named state dicts (model, ema, teacher, best), ``info`` the JSON rest."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    for name, state in parts.items():
        for key, value in (state or {}).items():
            tensors[f"{name}.{key}"] = value
    optim = optimizer.state_dict()
    optim_rest: dict[str, dict[str, Any]] = {}
    for idx, slots in optim["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                optim_rest.setdefault(str(idx), {})[key] = value
    tensors.update(_rng_tensors(generator))
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    _, _, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    meta = {**info, "parts": sorted(p for p, s in parts.items() if s is not None),
            "optimizer": {"param_groups": optim["param_groups"], "state": optim_rest},
            "rng": {"numpy": [int(pos), int(has_gauss), float(gauss)], "python": [version, list(state), gauss_next]},
            "tensors_sha256": hashlib.sha256(blob).hexdigest()}
    write_atomic(stem.with_suffix(".safetensors"), blob, meta["tensors_sha256"])
    write_atomic(stem.with_suffix(".json"), json.dumps(meta))


def load_state(stem: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """(info, tensors) of a saved state, checked against each other; None when there is none."""
    from safetensors.torch import load

    side, weights = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    if not side.is_file() or not weights.is_file():
        return None
    from lnzoo.integrity import read_digest, read_text
    try:
        meta = json.loads(read_text(side))
        blob, digest = read_digest(weights)
    except ValueError as exc:
        raise UsageError(f"{side}: the resumable state cannot be read ({exc})") from None
    if digest != meta.get("tensors_sha256"):
        raise UsageError(f"{weights}: does not match {side.name} (written by another epoch, or damaged); remove both "
                         "to restart this fold from its first epoch")
    return meta, load(blob)


def part(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    prefix = f"{name}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def restore(meta: dict[str, Any], tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
            generator: torch.Generator) -> None:
    """Put the optimizer and every random number generator back as they were when the state was saved."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, slot = key.split(".", 2)
            state.setdefault(int(idx), {})[slot] = value
    for idx, slots in meta["optimizer"]["state"].items():
        state.setdefault(int(idx), {}).update(slots)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.loader"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    pos, has_gauss, gauss = meta["rng"]["numpy"]
    np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, gauss_next = meta["rng"]["python"]
    random.setstate((version, tuple(py_state), gauss_next))


def save_fit(stem: Path, run) -> None:
    """Write the resumable state of a :class:`lnzoo.train.loop.Fit` after its last finished epoch."""
    result = run.result
    save_state(stem, {"model": run.model.state_dict(), "best": run.best_state,
                      "ema": run.ema.state_dict() if run.ema is not None else None,
                      "teacher": run.teacher.teacher.state_dict() if run.teacher is not None else None},
               run.optimizer, run.loader.generator,
               {"epoch": run.epoch, "history": result.history, "stale": run.stale, "stopped": run.stopped,
                "best": [result.best_epoch, result.best_score, result.best_value], "last": list(run.last_monitor),
                "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
                # the inputs as fitted when the fold started: a refit could number a vocabulary otherwise
                "inputs": run.result.predictor.inputs.as_meta() if run.result.predictor.inputs else None})


def saved_inputs(stem: Path) -> list[dict[str, Any]] | None:
    """The fitted inputs a resumable state was trained with (None: no state, or no inputs)."""
    side = stem.with_suffix(".json")
    if not side.is_file() or not stem.with_suffix(".safetensors").is_file():
        return None
    from lnzoo.integrity import read_text
    try:
        return json.loads(read_text(side)).get("inputs")
    except ValueError as exc:
        raise UsageError(f"{side}: the resumable state cannot be read ({exc})") from None


def load_fit(stem: Path, run) -> bool:
    """Put a saved state back into a freshly built :class:`lnzoo.train.loop.Fit`; False when none is saved."""
    saved = load_state(stem)
    if saved is None:
        return False
    info, tensors = saved
    run.model.load_state_dict(part(tensors, "model"))
    for name, avg in (("ema", run.ema), ("teacher", run.teacher.teacher if run.teacher is not None else None)):
        if avg is not None:
            avg.load_state_dict(part(tensors, name))
    run.best_state = part(tensors, "best")
    run.scheduler.load_state_dict(info["scheduler"])
    run.scaler.load_state_dict(info["scaler"])
    restore(info, tensors, run.optimizer, run.loader.generator)
    run.result.history = info["history"]
    run.result.best_epoch, run.result.best_score, run.result.best_value = info["best"]
    run.epoch, run.stale, run.stopped, run.last_monitor = info["epoch"], info["stale"], info["stopped"], \
        tuple(info["last"])
    return True


def remove_state(stem: Path) -> None:
    for suffix in (".safetensors", ".json"):
        stem.with_suffix(suffix).unlink(missing_ok=True)
