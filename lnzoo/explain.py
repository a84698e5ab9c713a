"""``lnzoo explain``: Grad-CAM and Grad-CAM++ heat maps per view and per task head.

The CAM layer of every view is the backbone's ``cam_module()``; its output is turned into
(B, C, h, w) whatever the backbone's ``tokens_layout``. A shared backbone sees all views in one
batched pass, so its activations are split back per view. Views marked absent get all-zero maps.
"""
from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lnzoo.contracts import has_own_probabilities
from lnzoo.errors import LnzooError, UsageError
from lnzoo.data.samples import views_of_item
from lnzoo.files import csv_text, write_atomic

METHODS = ("gradcam", "gradcam++")
ALPHA = 0.4  # heat-map opacity over the image


def to_nchw(act: torch.Tensor, layout: str, num_prefix_tokens: int = 0) -> torch.Tensor:
    """A CAM-layer output in the backbone's ``tokens_layout`` -> (B, C, h, w)."""
    if layout == "nchw":
        return act
    if layout == "nhwc":
        return act.permute(0, 3, 1, 2)
    if layout == "tokens":
        patches = act[:, num_prefix_tokens:]
        n = patches.shape[1]
        side = math.isqrt(n)
        if side * side != n:
            raise LnzooError(f"cannot lay {n} patch tokens out on a square grid for a CAM "
                             f"(num_prefix_tokens={num_prefix_tokens}); non-square inputs are not supported")
        return patches.transpose(1, 2).reshape(act.shape[0], act.shape[2], side, side)
    raise LnzooError(f"unknown tokens_layout {layout!r}; expected 'nchw', 'nhwc' or 'tokens'")


def _cam_from(acts: torch.Tensor, grads: torch.Tensor, method: str) -> torch.Tensor:
    """(B, C, h, w) activations and gradients of the target score -> (B, h, w) non-negative CAM."""
    if method == "gradcam":
        weights = grads.mean(dim=(2, 3))
    else:
        # Chattopadhay et al. 2018, closed form under Y = exp(S): the exp(S) factor is one positive
        # constant per image, so it cancels in the per-image normalisation and is left out.
        g2, g3 = grads.pow(2), grads.pow(3)
        denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * grads.clamp_min(0)).sum(dim=(2, 3))
    return F.relu((weights[:, :, None, None] * acts).sum(1))


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Per image min-max to [0, 1]; a flat map is all ones if positive (no spatial detail), else all zeros."""
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    span = hi - lo
    stretched = (cam - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, stretched, (hi > 0).to(cam.dtype).expand_as(cam))


def _class_indices(class_index: Any, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    if class_index is None:
        return predicted
    idx = torch.as_tensor(class_index, dtype=torch.long, device=predicted.device).expand_as(predicted).clone()
    if ((idx < 0) | (idx >= num_classes)).any():
        raise UsageError(f"class index {class_index} out of range for a task with {num_classes} classes")
    return idx


def compute_cams(model, x: torch.Tensor, present: torch.Tensor | None, task: str, class_index: Any = None,
                 method: str = "gradcam", inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """CAMs of one task head for every view: {view: (B, H, W) in [0, 1], "proba": (B, K), "class_index": (B,)}.

    The target is the class logit, or the log class probability for heads that define
    ``probabilities`` (their outputs are not softmax logits). ``class_index`` None explains the
    predicted class; an int or a (B,) sequence picks the class. Parameter ``.grad`` is untouched.
    """
    if method not in METHODS:
        raise UsageError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    if task not in model.heads:
        raise UsageError(f"the model has no head {task!r}; its heads are {list(model.heads)}")
    b, v = x.shape[:2]
    if present is None:
        present = torch.ones(b, v, dtype=torch.bool, device=x.device)
    present = present.to(device=x.device, dtype=torch.bool)
    captured: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(model.backbones))}

    def capture(i: int):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise LnzooError(f"CAM layer {type(module).__name__} returns {type(output).__name__}, not a tensor")
            # a leaf cuts the graph at the CAM layer (cheaper, works for frozen backbones); the clone
            # lets later in-place ops run without touching the leaf
            leaf = output.detach().requires_grad_(True)
            captured[i].append(leaf)
            return leaf.clone()
        return hook

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            with ExitStack() as stack:
                for i, backbone in enumerate(model.backbones):
                    stack.callback(backbone.cam_module().register_forward_hook(capture(i)).remove)
                outputs = model(x, present, inputs)
            logits = outputs[task]
            proba = model.probabilities({task: logits})[task]
            idx = _class_indices(class_index, proba.argmax(1), proba.shape[1])
            if has_own_probabilities(model.heads[task]):
                score = proba.gather(1, idx[:, None]).squeeze(1).clamp_min(1e-12).log()
            else:
                score = logits.gather(1, idx[:, None]).squeeze(1)
            for i, acts in captured.items():
                if len(acts) != 1:
                    raise LnzooError(f"the CAM layer of backbone {i} ran {len(acts)} times in one forward pass; "
                                     f"expected once")
            leaves = [captured[i][0] for i in range(len(model.backbones))]
            # samples do not interact in eval mode: one backward of the summed scores gives each its own gradient
            grads = torch.autograd.grad(score.sum(), leaves, allow_unused=True)
    finally:
        model.train(was_training)

    result: dict[str, torch.Tensor] = {}
    for view_i, view in enumerate(model.views):
        bb_i = 0 if model.shared_backbone else view_i
        backbone = model.backbones[bb_i]
        act, grad = leaves[bb_i].detach(), grads[bb_i]
        grad = torch.zeros_like(act) if grad is None else grad
        if model.shared_backbone:
            # the batched pass ran x.flatten(0, 1): row b * V + view_i belongs to this view
            act = act.unflatten(0, (b, v))[:, view_i]
            grad = grad.unflatten(0, (b, v))[:, view_i]
        # contracts.Backbone requires both; plugins written before it may lack them
        layout, prefix = getattr(backbone, "tokens_layout", "nchw"), getattr(backbone, "num_prefix_tokens", 0)
        cam = _cam_from(to_nchw(act, layout, prefix).float(), to_nchw(grad, layout, prefix).float(), method)
        cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        cam = _normalise(cam) * present[:, view_i, None, None]
        result[view] = cam.detach()
    result["proba"] = proba.detach().float()
    result["class_index"] = idx.detach()
    return result


def resolve_checkpoint(checkpoint_or_run: str | Path) -> Path:
    """A checkpoint path as given; for a run directory or a bundle, the model of its lowest-numbered fold."""
    from lnzoo.bundle import checkpoints_of

    return checkpoints_of(checkpoint_or_run)[0]


def _jet(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> (…, 3) uint8 with the blue-cyan-yellow-red look of the classic jet map."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return (rgb * 255).astype(np.uint8)


def _safe(name: str) -> str:
    return re.sub(r'[\\/:*?"<>|\s]+', "_", name).strip("._") or "class"


def _drawable(draw, text: str, font) -> str:
    """The text, or its ASCII form where the font cannot draw it (the fallback font is latin-1)."""
    try:
        draw.textlength(text, font=font)
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text.encode("ascii", "replace").decode()
    return text


def overlay_png(image: np.ndarray, cam: np.ndarray, lines: Sequence[str], min_size: int = 256) -> bytes:
    """Image (H, W, 3) uint8 with the CAM blended on top and a caption strip below, as PNG bytes."""
    from PIL import Image, ImageDraw, ImageFont

    blended = (1 - ALPHA) * image.astype(np.float32) + ALPHA * _jet(cam).astype(np.float32)
    picture = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8), "RGB")
    side = max(min_size, picture.width)
    if picture.width < side:  # tiny model inputs are unreadable at their own size
        picture = picture.resize((side, round(picture.height * side / picture.width)), Image.BILINEAR)
    font = ImageFont.load_default()
    line_h = 14
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [_drawable(probe, line, font) for line in lines]
    text_w = max((int(probe.textlength(line, font=font)) for line in lines), default=0)
    canvas = Image.new("RGB", (max(picture.width, text_w + 8), picture.height + line_h * len(lines) + 6), (0, 0, 0))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((4, picture.height + 3 + k * line_h), line, fill=(255, 255, 255), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _resolve_class(class_index: int | str | None, task: str, classes: Sequence[str]) -> int | None:
    if class_index is None:
        return None
    if isinstance(class_index, str) and not class_index.lstrip("-").isdigit():
        if class_index not in classes:
            raise UsageError(f"class {class_index!r} is not one of task {task!r}'s classes {list(classes)}")
        return list(classes).index(class_index)
    idx = int(class_index)
    if not 0 <= idx < len(classes):
        raise UsageError(f"class index {idx} out of range for task {task!r} with classes {list(classes)}")
    return idx


@dataclass
class Overlay:
    """One Grad-CAM overlay of one sample, task and view, in memory: the PNG and its explain.csv row."""

    sample: int
    task: str
    view: str
    png: bytes
    row: dict[str, Any]


def explaining(source: Any, host=None) -> tuple[Any, Any]:
    """(the ensemble whose call is explained, the torch model whose maps are drawn) of a source: a run directory,
    a bundle or a checkpoint (its calls are lnzoo predict's: every fold model averaged, at the stored operating
    point; the maps are of its first fold model), a loaded Ensemble, or one loaded Predictor."""
    from lnzoo.inference import Predictor
    from lnzoo.predict import Ensemble

    if isinstance(source, Predictor):
        return Ensemble.of([source], [source.source] if source.source else []), source
    ens = source if isinstance(source, Ensemble) else Ensemble([source], host)
    member = ens.members[0]
    if not isinstance(member, Predictor):  # the ONNX engine: Grad-CAM needs the torch model of its first member
        from lnzoo.inference import load
        member = load(Path(member.source).with_suffix(".safetensors"), host)
    return ens, member


def explain_samples(ens: Any, predictor: Any, samples: Sequence[Any], tasks: Sequence[str] | None = None,
                    method: str = "gradcam", class_index: int | str | None = None,
                    calls: Sequence[Mapping[str, Any]] | None = None,
                    truth: Sequence[str | None] | None = None, prefixes: Sequence[str] | None = None
                    ) -> tuple[list[Overlay], list[dict[str, Any]]]:
    """Grad-CAM overlays in memory, and the per-input occlusion rows, of ``samples`` (Sample objects).

    Each task's map is of the class ``ens`` *calls* (:mod:`lnzoo.decision`: the stored operating point on the
    calibrated probabilities, as lnzoo predict and lnzoo serve call it) unless ``class_index`` names one; the
    caption states the call, the rule that made it and the class mapped. ``calls`` (per sample, task -> a
    :class:`lnzoo.decision.Call`) gives calls already made (a run's held-out predictions), skipping ``ens``.
    """
    from lnzoo.decision import call_one

    if method not in METHODS:
        raise UsageError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    model, views = predictor.model, predictor.views
    all_tasks = list(predictor.tasks)
    chosen = list(tasks) if tasks else all_tasks
    unknown = [t for t in chosen if t not in all_tasks]
    if unknown:
        raise UsageError(f"task(s) {unknown} not in this checkpoint; its tasks are {all_tasks}")
    classes = {t: list(predictor.tasks[t].classes) for t in chosen}
    targets = {t: _resolve_class(class_index, t, classes[t]) for t in chosen}
    if calls is None:
        raw, cal, _ = ens.predict_both(list(samples))
        calls = [{t: call_one(ens.operating_point(t), raw[t][n], cal[t][n]) for t in chosen}
                 for n in range(len(samples))]
    several = len(getattr(ens, "members", [])) > 1
    dataset = predictor.dataset(samples)
    overlays: list[Overlay] = []
    occluded: list[dict[str, Any]] = []
    stems: dict[str, int] = {}
    for n, item in enumerate(samples):
        sample = {v: item.views.get(v) for v in views}
        pixels = {view: None if p is None else predictor.cache.get(p, item.origin, item.rois.get(view))
                  for view, p in sample.items()}
        x, present, _, _, inputs = dataset[n]
        x, present, inputs = x[None], present[None], {k: v[None] for k, v in inputs.items()}
        first = next((p for p in sample.values() if p is not None), None)
        base = first.stem if first is not None else _safe(item.origin)
        stem = f"{prefixes[n]}_{base}" if prefixes else base
        changes = member_occlusion(model, x, present, inputs) if len(model.members) > 1 else {}
        stems[stem] = stems.get(stem, 0) + 1
        if stems[stem] > 1:  # two inputs with one file name must not overwrite each other's PNGs
            stem = f"{stem}-{stems[stem]}"
        for task in chosen:
            call = calls[n][task]
            idx = targets[task] if targets[task] is not None else classes[task].index(call.cls)
            cls = classes[task][idx]
            if model.views:
                cams = compute_cams(model, x, present, task, idx, method, inputs)
                p_member = float(cams["proba"][0, idx])
            else:  # no image to map: the probabilities only, for the occlusion of the other inputs
                with torch.no_grad():
                    was = model.training
                    model.eval()
                    p_member = float(model.probabilities({t: o.float() for t, o in model(x, present, inputs).items()}
                                                         )[task][0, idx])
                    model.train(was)
                cams = {}
            without = {m: float(p[task][0, idx]) for m, p in changes.items()}
            for member, p in without.items():
                occluded.append({"sample": str(first or item.origin), "task": task, "class": cls,
                                 "p_all": f"{p_member:.6f}", "removed": member, "p_without": f"{p:.6f}",
                                 "change": f"{p - p_member:+.6f}"})
            for view, arr in pixels.items():
                if arr is None:
                    continue
                mapped = f"{method} of {cls}" + ("" if cls == call.cls else " (not the call)")
                lines = [*call.caption(task), f"{mapped} | {view}" + (f" | model 1 of {len(ens.members)}"
                                                                          if several else "")]
                if without:  # which input mattered: the probability without each one
                    lines.append("without " + ", ".join(f"{m} {p - p_member:+.2f}" for m, p in without.items()))
                # a blank or uniform overlay must not read as a rendering failure
                if not bool(cams[view].any()):
                    lines.append("no positive evidence for this class at the CAM layer")
                elif bool((cams[view] == 1).all()):
                    lines.append("uniform map: CAM layer has no spatial detail")
                name = f"{stem}__{_safe(task)}__{_safe(cls)}__{_safe(view)}.png"
                true = truth[n] if truth and task == chosen[0] else None
                row = {"image": str(sample[view]), "task": task, "view": view, "class": cls,
                       "probability": f"{p_member:.6f}", "predicted": call.cls, "p_predicted": f"{call.score:.6f}",
                       "rule": call.rule, "true": true or "", "method": method, "png": name}
                overlays.append(Overlay(n, task, view, overlay_png(arr, cams[view][0].cpu().numpy(), lines), row))
    return overlays, occluded


EXPLAIN_COLUMNS = ["image", "task", "view", "class", "probability", "predicted", "p_predicted", "rule", "true",
                   "method", "png"]


def explain(checkpoint_or_run: Any, images: Sequence[Any], out_dir: str | Path,
            tasks: Sequence[str] | None = None, method: str = "gradcam", class_index: int | str | None = None,
            host=None, truth: Sequence[str | None] | None = None,
            prefixes: Sequence[str] | None = None, calls: Sequence[Mapping[str, Any]] | None = None) -> list[Path]:
    """Write one CAM overlay PNG per sample x task x view, plus ``explain.csv``; return the PNG paths.

    ``checkpoint_or_run``: a run directory, bundle or checkpoint, or a loaded Ensemble or Predictor
    (:func:`explaining`). ``images``: one path per sample for a single-view model (or a ['full', 'crop'] model,
    whose crop is found in the mirror folder); otherwise one list of paths per sample in the sidecar's view
    order; or :class:`~lnzoo.data.samples.Sample` objects, whose ROI boxes or masks crop a 'roi' view.
    Each map is of the class called (:func:`explain_samples`). PNGs are named
    ``<image stem>__<task>__<class>__<view>.png``, class being the mapped one. ``explain.csv``: per overlay the
    mapped class and its probability under the mapped model, the call (``predicted``), the probability it was
    made on and its rule; ``truth`` (one true label of the first task per sample) and ``prefixes`` (one per
    sample, starting its PNG names) as given.
    """
    from lnzoo.data.samples import Sample

    if method not in METHODS:
        raise UsageError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    ens, predictor = explaining(checkpoint_or_run, host)
    crop_suffix = predictor.recipe.get("data", {}).get("crop_suffix", "-crop")
    samples = [item if isinstance(item, Sample) else
               Sample(views_of_item(item, predictor.views, crop_suffix), "", {}, str(item)) for item in images]
    overlays, occluded = explain_samples(ens, predictor, samples, tasks, method, class_index, calls, truth, prefixes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_atomic(out_dir / o.row["png"], o.png) for o in overlays]
    write_atomic(out_dir / "explain.csv", csv_text(EXPLAIN_COLUMNS, [o.row for o in overlays]))
    if occluded:
        write_atomic(out_dir / "occlusion.csv", csv_text(list(occluded[0]), occluded))
    return written


@torch.no_grad()
def member_occlusion(model, x: torch.Tensor, present: torch.Tensor, inputs: dict[str, torch.Tensor]
                     ) -> dict[str, dict[str, torch.Tensor]]:
    """Per-input occlusion: {member: class probabilities per task with that member removed}, for each view or
    other input present in the (one-sample) batch; removing is what a missing input does (present False)."""
    members = model.members
    full = present.bool()
    if full.shape[1] < len(members):  # the views' mask only: the given inputs are present
        full = torch.cat([full, torch.tensor([[n in inputs for n in members[full.shape[1]:]]])], dim=1)
    drop = [j for j in range(len(members)) if bool(full[0, j])]
    if len(drop) < 2:
        return {}
    masks = full.repeat(len(drop), 1)
    for row, j in enumerate(drop):
        masks[row, j] = False
    k = len(drop)
    xx = x.repeat(k, *([1] * (x.dim() - 1)))
    xx = xx * masks[:, :x.shape[1], None, None, None].to(xx.dtype) if x.shape[1] else xx
    given = {name: t.repeat(k, *([1] * (t.dim() - 1))) for name, t in inputs.items()}
    was = model.training
    model.eval()
    try:
        probs = model.probabilities({t: o.float() for t, o in model(xx, masks, given).items()})
    finally:
        model.train(was)
    return {members[j]: {t: p[row:row + 1] for t, p in probs.items()} for row, j in enumerate(drop)}


def explain_examples(run_dir: str | Path, n_correct: int = 2, n_wrong: int = 2, host=None) -> list[Path]:
    """Grad-CAM of the main task on the most confident correctly and wrongly called held-out cases of the first
    fold run, each called as the served model calls it (the run's operating point on the fold model's calibrated
    probabilities) and mapped with that fold's model.

    Written to ``RUN_DIR/explain`` (file names start with ``correct_`` / ``wrong_``; ``explain.csv``
    gives each case's true label and call), where the report picks them up. Returns the PNG
    paths (none when that fold has no labelled case).
    """
    from lnzoo.bundle import model_info
    from lnzoo.decision import OperatingPoint, call_one
    from lnzoo.inference import load
    from lnzoo.rundir import Columns, RunDir

    rd = RunDir(run_dir)
    k = rd.first_fold()
    ckpt, record = rd.checkpoint(k), rd.record(k)
    main = record.main
    classes = list(record.tasks[main].classes)
    views = list(record.views)
    if not views:  # a model of other inputs only (report, morphology): no image to overlay
        return []
    info = model_info(rd.path)
    op = OperatingPoint.from_dict(classes, info["tasks"][main].get("positive"), info["thresholds"].get(main))
    truth_col = Columns.true(main)
    rows = [r for r in rd.read_predictions()[1] if r["part"] == "cv" and r["fold"] == str(k) and r[truth_col]]
    scored = []
    for r in rows:
        raw = [float(r[Columns.raw(main, c)]) for c in classes]
        cal = [float(r.get(Columns.calibrated(main, c)) or r[Columns.raw(main, c)]) for c in classes]
        call = call_one(op, raw, cal)
        scored.append((r, call, call.cls == r[truth_col]))
    picks = sorted((s for s in scored if s[2]), key=lambda s: -s[1].score)[:n_correct] + \
        sorted((s for s in scored if not s[2]), key=lambda s: -s[1].score)[:n_wrong]
    items, truth, verdicts, calls = [], [], [], []
    cols = [Columns.path(v) for v in views]
    for row, call, correct in picks:
        item = [Path(row[c]) if row.get(c) else None for c in cols]
        items.append(item if len(views) > 1 else item[0])
        truth.append(row[truth_col])
        verdicts.append("correct" if correct else "wrong")
        calls.append({main: call})
    if not items:
        return []
    predictor = load(ckpt, host)
    return explain(predictor, items, rd / rd.EXPLAIN, tasks=[main], host=host, truth=truth,
                   prefixes=verdicts, calls=calls)
