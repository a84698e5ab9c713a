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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lnzoo.data.encode import encode_batch
from lnzoo.data.images import Preprocessing, load_image
from lnzoo.data.samples import Sample
from lnzoo.errors import LnzooError, UsageError
from lnzoo.record import ModelRecord
from lnzoo.tasks import Task

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


def onnx_interface(weights: Path, host) -> dict[str, Any]:
    """The graph's inputs and outputs as a program without lnzoo needs them (names, shapes, dtypes, value ranges,
    how an image becomes its input and how the probabilities are calibrated), from the checkpoint's record."""
    from lnzoo.inputs import Inputs

    record = ModelRecord.read(weights)
    pre = record.preprocessing
    mean, std = (list(v) for v in pre.mean_std)
    extra = list(Inputs.from_meta(list(record.inputs) or None, host, source=str(weights)) or [])
    members = [*record.views, *(item.name for item in extra)]
    size = pre.image_size
    inputs: list[dict[str, Any]] = [
        {"name": v, "dtype": "float32", "shape": ["batch", 3, size, size],
         "what": f"view {v!r}: the image as RGB, resized to {size}x{size} ({pre.resize}: "
                 + ("stretched" if pre.resize == "squash" else "aspect kept, centred, padded with black")
                 + ", bilinear, as PIL resizes), as uint8 pixels divided by 255, then (x - mean) / std per channel; "
                 "all zeros when the view is absent",
         "resize": pre.resize, "resample": "bilinear",
         "mean": mean, "std": std, **({"roi_margin": pre.roi_margin} if v == "roi" else {})}
        for v in record.views]
    inputs.append({"name": "present", "dtype": "bool", "shape": ["batch", len(members)], "members": members,
                   "what": "True where the member (a view, then each other input, in this order) is given"})
    inputs += [{"name": item.name, "dtype": str(item.kind.dtype), "shape": ["batch", *item.shape],
                "kind": item.table.get("name"),
                "what": f"the {item.table.get('name')!r} input encoded with the fitted state stored in "
                        f"{Path(weights).with_suffix('.json').name} (inputs); zeros when absent"} for item in extra]
    outputs = [{"name": name, "dtype": "float32", "shape": ["batch", task.num_classes], "classes": list(task.classes),
                "range": [0.0, 1.0],
                "what": "class probabilities before calibration (each row sums to 1); calibrated as lnzoo serves "
                        "them: softmax(log(p) / T) with T this model's temperature "
                        f"({record.temperature.get(name)})"} for name, task in record.tasks.items()]
    return {"inputs": inputs, "outputs": outputs, "opset_note": "dynamic batch dimension 'batch' (1 to 4096)"}


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
class OnnxPredictions:
    proba: dict[str, np.ndarray]


@dataclass
class OnnxPredictor:
    """A checkpoint's .onnx beside its sidecar, run with ONNX Runtime; its definition is the checkpoint's
    :class:`~lnzoo.record.ModelRecord`, as the torch engine's is."""

    source: Path
    record: ModelRecord
    session: Any = None
    host: Any = None  # the plugin host the record's inputs are rebuilt with

    @classmethod
    def load(cls, weights: Path, host) -> "OnnxPredictor":
        from lnzoo.bundle import checked_onnx

        record = ModelRecord.read(weights)  # the same checks as the torch engine: an edited sidecar is refused
        record.require_buildable()
        record.require_components(host, kinds=("input",))  # the rest is inside the graph
        onnx_file, blob = checked_onnx(Path(weights))
        return cls(onnx_file, record, _session(blob), host)

    @property
    def tasks(self) -> dict[str, Task]:
        return dict(self.record.tasks)

    @property
    def recipe(self) -> Mapping[str, Any]:
        return self.record.recipe

    @property
    def views(self) -> list[str]:
        return list(self.record.views)

    @property
    def main(self) -> str:
        return self.record.main

    @property
    def temperature(self) -> dict[str, float | None]:
        return dict(self.record.temperature)

    @functools.cached_property
    def inputs(self):
        """The fitted inputs besides the views (covariates, text...), rebuilt from the record."""
        from lnzoo.inputs import Inputs
        return Inputs.from_meta(list(self.record.inputs) or None, self.host, source=str(self.source))

    @property
    def preprocessing(self) -> Preprocessing:
        return self.record.preprocessing

    def feeds(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        """The graph's inputs for ``samples`` (:func:`lnzoo.data.encode.encode_batch`, as the torch engine's dataset
        encodes them): normalised float32 NCHW per view, the present mask of every member, each other input."""
        pre = self.preprocessing
        x, present, inputs = encode_batch(samples, self.views, pre,
                                          lambda path, origin, roi: load_image(path, pre, origin, roi, pre.roi_margin),
                                          self.inputs)
        return {**{v: x[:, j] for j, v in enumerate(self.views)}, **inputs, "present": present}

    def predict(self, samples: Sequence[Sample], batch_size: int = 32) -> OnnxPredictions:
        out: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        for start in range(0, len(samples), batch_size):
            got = self.session.run(list(self.tasks), self.feeds(samples[start:start + batch_size]))
            for t, p in zip(self.tasks, got):
                p = p.astype(np.float64)
                out[t].append(p / p.sum(1, keepdims=True))
        return OnnxPredictions({t: np.concatenate(v) if v else np.zeros((0, len(self.tasks[t].classes)))
                                for t, v in out.items()})

