"""ONNX: export a checkpoint (one input per view, a ``present`` mask, covariates when the model uses them; one
probability output per task; dynamic batch), checked against torch at export time; and a predictor that
runs the ``.onnx`` file with ONNX Runtime, reading images exactly as training did, without torch.

The graph includes the model's test-time augmentation and each head's own probabilities (an ordinal head's
too), so ONNX Runtime returns what :meth:`lnzoo.inference.Predictor.predict` returns.
"""
from __future__ import annotations

import functools

import contextlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnzoo.data.images import Preprocessing, load_image, normalise, preprocessing_of
from lnzoo.data.samples import Sample
from lnzoo.errors import LnzooError, UsageError

PARITY_TOLERANCE = 1e-4


def export_onnx(weights: Path, out: Path, host=None, batch: int = 3) -> float:
    """Write ``out`` (.onnx) for the checkpoint ``weights``; return the largest absolute difference between ONNX
    Runtime's and torch's probabilities on a random batch (above :data:`PARITY_TOLERANCE` is an error)."""
    import torch

    from lnzoo.inference import load
    from lnzoo.model import predict_probabilities
    from lnzoo.files import write_atomic

    predictor = load(weights, host)
    model, tasks, views = predictor.model.eval(), list(predictor.tasks), predictor.views
    extra = list(predictor.inputs or [])  # the other inputs: one graph input each, named after the input
    members = len(views) + len(extra)
    size = predictor.preprocessing.image_size

    class Exportable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            x = torch.stack(inputs[:len(views)], dim=1) if views else inputs[len(views)].new_zeros(
                inputs[len(views)].shape[0], 0, 3, size, size, dtype=torch.float32)
            given = {item.name: t for item, t in zip(extra, inputs[len(views) + 1:])}
            _, probs = predict_probabilities(self.model, x, inputs[len(views)], given, predictor.tta)
            return tuple(probs[t] for t in tasks)

    gen = torch.Generator().manual_seed(0)
    example = [torch.randn(batch, 3, size, size, generator=gen) for _ in views]
    example.append(torch.ones(batch, members, dtype=torch.bool))
    names = [*views, "present", *(item.name for item in extra)]
    for item in extra:  # int64 inputs (token ids): small ids, 0 being padding
        example.append(torch.randint(0, 2, (batch, *item.shape), generator=gen) if item.kind.dtype == "int64"
                       else torch.randn(batch, *item.shape, generator=gen))
    wrapper = Exportable().eval()
    checks = [example]
    if members > 1:  # and rows with a member missing (zeros, as a missing upload reads): the fusion's masking
        present = torch.ones(batch, members, dtype=torch.bool)
        for row in range(1, batch):
            present[row, (row - 1) % members] = False
        missing = [x * present[:, i, None, None, None] for i, x in enumerate(example[:len(views)])]
        rest = [t * present[:, len(views) + i].view(-1, *([1] * (t.dim() - 1))).to(t.dtype)
                for i, t in enumerate(example[len(views) + 1:])]
        checks.append([*missing, present, *rest])
    with torch.no_grad():
        references = [[p.numpy() for p in wrapper(*c)] for c in checks]
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        batch_dim = torch.export.Dim("batch", min=1, max=4096)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's chatter
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, tuple(example), str(tmp), input_names=names, output_names=tasks,
                              dynamic_shapes={"inputs": tuple({0: batch_dim} for _ in example)}, dynamo=True,
                              external_data=False, verbose=False)
    except Exception as exc:  # noqa: BLE001 - the exporter fails in many ways; name the part that fails
        tmp.unlink(missing_ok=True)
        raise LnzooError(f"{weights}: ONNX export failed: {culprit(model, predictor.recipe, size)} cannot be "
                         f"exported ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]})") from None
    blob = tmp.read_bytes()
    tmp.unlink()
    session = _session(blob)
    diff = 0.0
    for check, reference in zip(checks, references):
        got = session.run(tasks, {n: e.numpy() for n, e in zip(names, check)})
        diff = max(diff, *(float(np.abs(g - r).max()) for g, r in zip(got, reference)))
    if not diff <= PARITY_TOLERANCE:
        raise LnzooError(f"{weights}: the ONNX model's probabilities differ from torch's by {diff:.2e} "
                         f"(> {PARITY_TOLERANCE}); not written")
    write_atomic(out, blob)
    return diff


def culprit(model, recipe: dict[str, Any], size: int) -> str:
    """The first component (backbone, fusion, head) that torch.export cannot trace on its own, named as the
    recipe names it; "one of its components" when each alone traces."""
    import torch

    cfg, views, members = recipe.get("model", {}), len(model.views), len(model.members)
    backbone = cfg.get("backbone", {})
    images = torch.randn(2, 3, size, size)
    present = torch.ones(2, members, dtype=torch.bool)
    feats = torch.randn(2, model.member_features)
    width = model.fusion([feats] * members, present).shape[1]
    parts = [(f"backbone {' '.join(str(backbone[k]) for k in ('name', 'model_name') if backbone.get(k))!r}",
              model.backbones[0], (images,))] if views else []
    parts.append((f"fusion {(cfg.get('fusion') or {}).get('name')!r}", model.fusion, ([feats] * members, present)))
    for task, head in model.heads.items():
        name = (cfg.get("heads", {}).get(task) or cfg.get("head") or {}).get("name")
        parts.append((f"head {name!r} (task {task!r})", HeadProbabilities(head), (torch.randn(2, width),)))
    for label, module, args in parts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.export.export(module.eval(), args)
        except Exception:  # noqa: BLE001 - this is the part that fails
            return label
    return "one of its components"


def _head_probabilities():
    import torch

    from lnzoo.contracts import head_probabilities

    class HeadProbabilities(torch.nn.Module):
        """A head with its own probabilities (what the exported graph computes per task)."""

        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x):
            return head_probabilities(self.head, self.head(x))
    return HeadProbabilities


def HeadProbabilities(head):  # noqa: N802 - builds the torch module lazily (this module stays torch-free)
    return _head_probabilities()(head)


def _session(model: bytes | str):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("ONNX Runtime is not installed: pip install \"lnzoo[serve]\"") from None
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(model, providers=providers)


@dataclass
class OnnxTask:
    """The part of a task definition prediction needs (no torch, no registry)."""

    name: str
    classes: list[str]
    positive: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class OnnxPredictions:
    proba: dict[str, np.ndarray]


@dataclass
class OnnxPredictor:
    """A checkpoint's .onnx beside its sidecar, run with ONNX Runtime; the same interface the ensemble uses."""

    source: Path
    meta: dict[str, Any]
    session: Any = None
    tasks: dict[str, OnnxTask] = field(default_factory=dict)

    @classmethod
    def load(cls, weights: Path) -> "OnnxPredictor":
        from lnzoo.bundle import checked_onnx
        from lnzoo.checkpoint import verify_checkpoint

        from lnzoo.inputs import refuse_covariates_after_fusion

        _, meta, _ = verify_checkpoint(weights)  # the same checks as the torch engine: an edited sidecar is refused
        refuse_covariates_after_fusion(meta, weights)
        onnx_file = checked_onnx(Path(weights))
        tasks = {n: OnnxTask(n, list(d["classes"]), d.get("positive")) for n, d in meta["tasks"].items()}
        return cls(onnx_file, meta, _session(str(onnx_file)), tasks)

    @property
    def recipe(self) -> dict[str, Any]:
        return self.meta["recipe"]

    @property
    def views(self) -> list[str]:
        return list(self.meta["views"])

    @property
    def main(self) -> str:
        return self.recipe["tasks"]["main"]

    @property
    def temperature(self) -> dict[str, float | None]:
        return self.meta.get("temperature") or {}

    @functools.cached_property
    def inputs(self):
        """The fitted inputs besides the views (covariates, text...), rebuilt from the sidecar."""
        from lnzoo.inputs import Inputs
        from lnzoo.plugins import get_host
        return Inputs.from_meta(self.meta.get("inputs"), get_host(), source=str(self.source))

    @property
    def preprocessing(self) -> Preprocessing:
        return preprocessing_of(self.meta)

    def feeds(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        """The graph's inputs for ``samples``: normalised float32 NCHW per view, the present mask of every member,
        each other input encoded as the model's dataset encodes it."""
        pre = self.preprocessing
        size = pre.image_size
        feeds = {v: np.zeros((len(samples), 3, size, size), dtype=np.float32) for v in self.views}
        extra = self.inputs
        present = np.zeros((len(samples), len(self.views) + len(extra)), dtype=bool)
        for i, s in enumerate(samples):
            for j, view in enumerate(self.views):
                path = s.views.get(view)
                if path is None:
                    continue
                arr = load_image(path, pre, s.origin, s.rois.get(view), pre.roi_margin)
                feeds[view][i] = normalise(arr.transpose(2, 0, 1), pre)
                present[i, j] = True
        if extra:
            encoded = [extra.encode(s) for s in samples]
            for item in extra:
                feeds[item.name] = np.stack([arrays[item.name] for arrays, _ in encoded])
            present[:, len(self.views):] = np.array([given for _, given in encoded], dtype=bool).reshape(len(samples), -1)
        feeds["present"] = present
        return feeds

    def predict(self, samples: Sequence[Sample], batch_size: int = 32) -> OnnxPredictions:
        out: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        for start in range(0, len(samples), batch_size):
            got = self.session.run(list(self.tasks), self.feeds(samples[start:start + batch_size]))
            for t, p in zip(self.tasks, got):
                p = p.astype(np.float64)
                out[t].append(p / p.sum(1, keepdims=True))
        return OnnxPredictions({t: np.concatenate(v) if v else np.zeros((0, len(self.tasks[t].classes)))
                                for t, v in out.items()})

