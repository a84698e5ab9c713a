"""The one way to load a checkpoint and predict with it.

:func:`load` turns a ``.safetensors`` checkpoint and its JSON sidecar into a :class:`Predictor`
(model, tasks, preprocessing, views, fitted inputs, calibration); :meth:`Predictor.predict`
is the one inference loop. The fit loop builds a Predictor around the model it is training, so
validation, held-out predictions, ``evaluate``, ``predict``, ``explain``, ``select`` and the cascade
all score images the same way.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lnzoo.data.dataset import ImageCache, NodeDataset
from lnzoo.data.encode import encode_batch
from lnzoo.data.images import Preprocessing
from lnzoo.data.samples import MISSING, Sample
from lnzoo.errors import UsageError
from lnzoo.model import LnzooModel, predict_probabilities
from lnzoo.record import ModelRecord
from lnzoo.tasks import Task


@dataclass
class Predictions:
    """Per-sample class probabilities per task for one set of samples (rows sum to 1 exactly)."""

    samples: list[Sample]
    proba: dict[str, np.ndarray]
    loss: float = float("nan")

    def labels(self, task: str) -> np.ndarray:
        return np.array([s.labels.get(task, MISSING) for s in self.samples], dtype=np.int64)


@dataclass
class Predictor:
    """A model with everything needed to feed it images and read its outputs."""

    model: LnzooModel
    tasks: dict[str, Task]
    preprocessing: Preprocessing
    views: list[str]
    inputs: Any = None                          # the fitted lnzoo.inputs.Inputs (covariates, text...), or None
    tta: str = "none"
    temperature: dict[str, float | None] = field(default_factory=dict)
    record: ModelRecord | None = None           # the checkpoint's definition (None while training)
    source: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None        # the autocast dtype (device_settings decides it); None: float32
    channels_last: bool = False
    cache: ImageCache | None = None

    def __post_init__(self) -> None:
        if self.cache is None:  # decode on demand: a long-lived predictor must not hoard every image it saw
            self.cache = ImageCache(self.preprocessing, keep=False)

    @property
    def recipe(self) -> Mapping[str, Any]:
        """The resolved recipe the checkpoint was trained with (its record's copy; empty while training)."""
        return self.record.recipe if self.record is not None else {}

    @property
    def main(self) -> str:
        return self.record.main if self.record is not None else next(iter(self.tasks))

    def dataset(self, samples: Sequence[Sample], augment=None, view_dropout: float = 0.0) -> NodeDataset:
        return NodeDataset(samples, self.views, list(self.tasks), self.cache, augment, view_dropout=view_dropout,
                           inputs=self.inputs)

    def to_device(self, x: torch.Tensor, *rest: Any) -> tuple[Any, ...]:
        """A batch's tensors (and dicts of tensors: the encoded inputs) on the model's device and layout."""
        nb = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=nb)
        if self.channels_last and x.shape[1]:
            b, v = x.shape[:2]
            x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(b, v, *x.shape[2:])
        return (x, *({k: v.to(self.device, non_blocking=nb) for k, v in t.items()} if isinstance(t, dict)
                     else t.to(self.device, non_blocking=nb) for t in rest))

    @torch.no_grad()
    def predict(self, samples: Sequence[Sample] | NodeDataset, loss_fn=None, batch_size: int = 64) -> Predictions:
        """Class probabilities of every task for ``samples`` (and the mean loss when ``loss_fn`` is given).

        Batches are encoded by the one batch encoder the ONNX engine uses (:func:`lnzoo.data.encode.encode_batch`),
        in this thread and in order: no loader machinery and no per-sample tensors per call."""
        cache = samples.cache if isinstance(samples, NodeDataset) else self.cache  # a training set's own cache
        samples = list(samples.samples if isinstance(samples, NodeDataset) else samples)
        if self.model.training:  # .eval() walks every module: a server predicting one image at a time skips it
            self.model.eval()
        probs: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        total, seen = 0.0, 0
        for start in range(0, len(samples), batch_size):
            part = samples[start:start + batch_size]
            x, present, inputs = encode_batch(part, self.views, cache.pre, cache.get, self.inputs,
                                              channels_last=self.channels_last and self.device.type == "cpu")
            y = torch.tensor([[s.labels.get(t, MISSING) for t in self.tasks] for s in part],
                             dtype=torch.long).reshape(len(part), len(self.tasks))
            x, present, y, inputs = self.to_device(torch.from_numpy(x), torch.from_numpy(present), y,
                                                   {k: torch.from_numpy(v) for k, v in inputs.items()})
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                outputs, batch_probs = predict_probabilities(self.model, x, present, inputs, self.tta)
            if loss_fn is not None:
                loss, _ = loss_fn(outputs, {t: y[:, i] for i, t in enumerate(self.tasks)}, dict(self.model.heads))
                total += float(loss) * len(y)
                seen += len(y)
            for t, p in batch_probs.items():
                p = p.double().cpu().numpy()
                probs[t].append(p / p.sum(1, keepdims=True))  # exact row sums for metric libraries
        return Predictions(samples, {t: np.concatenate(v) if v else np.zeros((0, self.tasks[t].num_classes))
                                     for t, v in probs.items()}, total / seen if seen else float("nan"))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"train.device = {name!r} but CUDA is not available here; use \"auto\" or \"cpu\"")
    return torch.device(name)


PREDICTOR_SETTINGS = ("device", "amp_dtype", "channels_last")  # what inference needs of device_settings


def cpu_threads(requested: int = 0, environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(torch's CPU thread count, why): ``requested`` when given; otherwise the CPUs this process may run on (its
    CPU affinity, and Slurm's SLURM_CPUS_PER_TASK when smaller), shared among the processes torchrun started on
    this machine. Never the machine's core count: beside another busy process, threads beyond the CPUs this
    process gets fight each other (measured here: a 2-thread run beside one busy process ran ~6x slower)."""
    import os

    env = os.environ if environ is None else environ
    if requested:
        return int(requested), "train.threads"
    try:
        cpus = len(os.sched_getaffinity(0))
        why = f"{cpus} CPU(s) in this process's affinity"
    except (AttributeError, OSError):  # no affinity on this platform
        cpus = os.cpu_count() or 1
        why = f"{cpus} CPU(s)"
    slurm = env.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and 0 < int(slurm) < cpus:
        cpus, why = int(slurm), f"SLURM_CPUS_PER_TASK={slurm}"
    local = env.get("LOCAL_WORLD_SIZE", "")
    if local.isdigit() and int(local) > 1:
        cpus, why = max(1, cpus // int(local)), f"{why} shared by {local} local processes"
    return max(1, cpus), why


def device_settings(train_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Device, autocast dtype, memory layout, pinned memory and host-sync interval as a recipe's ``train``
    section asks (training, and evaluate's predictions as trained). Keys older sidecars lack mean "auto"."""
    from lnzoo.config import as_config

    train_cfg = as_config(train_cfg, "train")
    device = pick_device(train_cfg.device)
    cuda = device.type == "cuda"
    # NHWC: oneDNN's CPU convolutions and cuDNN's tensor cores are both faster on it (measured on CPU:
    # ResNet-18 forward+backward at 96 px 5.1 s instead of 6.1 s per POCUS epoch); MPS stays NCHW
    layout = train_cfg.get("channels_last", "auto")
    every = train_cfg.get("sync_every", "auto")  # checked with the recipe (recipe.py)
    pin = train_cfg.get("pin_memory", "auto")
    return {"device": device, "amp_dtype": _amp_dtype(device, train_cfg.get("amp", "auto"),
                                                      train_cfg.get("amp_dtype", "auto")),
            "channels_last": device.type in ("cuda", "cpu") if layout == "auto" else bool(layout),
            "pin_memory": cuda if pin == "auto" else bool(pin),
            # reading a value back drains a GPU's queue of launched kernels; on the CPU it costs nothing
            "sync_every": (1 if device.type == "cpu" else 25) if every == "auto" else every}


def _amp_dtype(device: torch.device, amp: Any, dtype: str) -> torch.dtype | None:
    """The one place the autocast dtype is decided; None: float32."""
    if device.type != "cuda":
        # CPU autocast is worth it only in bfloat16 on CPUs with bf16 units: only when asked for by name, so a
        # GPU recipe's amp = true keeps float32 on a laptop
        return torch.bfloat16 if amp is True and dtype == "bfloat16" else None
    if amp is False:
        return None
    with torch.cuda.device(device):  # the GPU the recipe names, not whichever is current
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if dtype == "bfloat16" and not native_bf16:
        raise UsageError(f"train.amp_dtype = \"bfloat16\" but {torch.cuda.get_device_name(device)} has no native "
                         "bfloat16; use \"auto\" or \"float16\"")
    # bfloat16 has float32's range: no loss scaling, no overflow; float16 needs the GradScaler
    return torch.bfloat16 if dtype == "bfloat16" or (dtype == "auto" and native_bf16) else torch.float16


def load(path: str | Path, host=None, as_trained: bool = False) -> Predictor:
    """Rebuild the model a checkpoint's record describes, load its weights, and return its Predictor.

    On the CPU in float32 (NHWC), unless ``as_trained``: then on the device, precision and layout its recipe
    trained and evaluated with (``lnzoo evaluate`` reproduces a run's predictions that way).
    """
    from lnzoo.checkpoint import tensors_of
    from lnzoo.inputs import Inputs
    from lnzoo.model import build_model
    from lnzoo.recipe import resolve

    if host is None:
        from lnzoo.plugins import get_host
        host = get_host()
    record, blob = ModelRecord.read_verified(path)
    weights = record.weights
    state = tensors_of(blob, weights)
    recipe = resolve(dict(record.recipe), host=host, source=record.recipe_source)
    backbone = recipe.data["model"]["backbone"]  # the weights come from the checkpoint: no hub, no weight file
    recipe.set("model.backbone", {**backbone, "pretrained": False,
                                  **({"pretrained_file": None} if "pretrained_file" in backbone else {})})
    tasks = dict(record.tasks)
    record.require_buildable()
    record.require_components(host)
    inputs = Inputs.from_meta(list(record.inputs) or None, host, source=str(weights))
    model = _built_for(state, lambda: build_model(recipe, host, tasks, inputs), tasks, weights)
    model.eval()
    # on the CPU in NHWC unless as trained: oneDNN's convolutions and pooling are faster on it (measured:
    # ResNet-18 at 224 px, batch 32, 1.05 s instead of 1.43 s), the layout CPU training evaluates in
    settings = {k: v for k, v in device_settings(recipe.config.train).items() if k in PREDICTOR_SETTINGS} \
        if as_trained else {"channels_last": True}
    model = model.to(settings.get("device", "cpu"))
    if settings["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return Predictor(model, tasks, record.preprocessing, list(record.views), inputs, tta=record.tta,
                     temperature=dict(record.temperature), record=record, source=weights, **settings)


def _built_for(state: Mapping[str, torch.Tensor], build, tasks: Mapping[str, Task], weights) -> torch.nn.Module:
    """``build()``'s model holding the checkpoint's ``state``.

    Built on the meta device first, which skips the random initialisation the weights replace (for a ResNet-18
    most of the load). That is only right when ``state`` sets every tensor the model has; a model with anything
    else (a non-persistent buffer, a tensor kept as a plain attribute, a build that fails without real tensors) is
    built again the ordinary way, initialised and then loaded."""
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # noqa: BLE001 - whatever a component does without real tensors: the ordinary build decides
        model = None
    if model is not None and _all_in_state(model):
        _check_fits(model, state, tasks, weights)
        model = model.to_empty(device="cpu")
        model.load_state_dict(state)
        return model
    model = build()
    _check_fits(model, state, tasks, weights)
    model.load_state_dict(state)
    return model


def _all_in_state(model: torch.nn.Module) -> bool:
    """Whether the model's state dict covers every tensor it holds: each parameter and buffer is saved, and no
    module keeps a tensor as a plain attribute."""
    saved = set(model.state_dict())
    held = {n for n, _ in model.named_parameters(remove_duplicate=False)} | \
        {n for n, _ in model.named_buffers(remove_duplicate=False)}
    if not held <= saved:
        return False
    return not any(isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter)
                   for m in model.modules() for v in vars(m).values())


def _check_fits(model: torch.nn.Module, state: Mapping[str, torch.Tensor], tasks: Mapping[str, Task], weights) -> None:
    """Name what does not fit when the weights disagree with the model their sidecar describes."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise UsageError(f"{weights}: does not fit the model its sidecar describes "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, tensor in state.items():
        if tensor.shape != own[key].shape:
            task = next((t for t in tasks if key.startswith(f"heads.{t}.")), None)
            why = (f"; the sidecar gives task {task!r} {tasks[task].num_classes} classes "
                   f"({', '.join(tasks[task].classes)})" if task else "")
            raise UsageError(f"{weights}: {key} has shape {list(tensor.shape)} but the model its sidecar describes "
                             f"needs {list(own[key].shape)}{why}")
