"""What a backbone, fusion, head, input kind and tracker must provide (torch-free); where a head's optional methods resolve.

Components are ``torch.nn.Module``s built by the factories of :mod:`lnzoo.hookspecs`. Factory attributes:
``max_views`` (a fusion's view limit), ``lnzoo_check_kwargs`` (small arguments for :mod:`lnzoo.testing`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

LAYOUTS = ("nchw", "nhwc", "tokens")


@runtime_checkable
class Backbone(Protocol):
    """Images (B, 3, H, W) -> pooled features (B, num_features)."""

    num_features: int  # width of the pooled features
    cam_layer: str  # dotted name of the submodule whose output Grad-CAM uses
    tokens_layout: str  # that output's layout, one of LAYOUTS
    num_prefix_tokens: int  # class/register tokens ahead of the patches ("tokens" layout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, num_features)."""

    def cam_module(self) -> nn.Module:
        """The submodule named by ``cam_layer``."""


@runtime_checkable
class Fusion(Protocol):
    """Per-view features [(B, F)] * N and a presence mask (B, N) -> (B, out_features); absent views ignored."""

    out_features: int

    def forward(self, feats: list[Tensor], present: Tensor | None = None) -> Tensor:
        """Fuse the views; ``present`` None means every view is present."""


@runtime_checkable
class Head(Protocol):
    """Features (B, in_features) -> outputs (B, K'): class logits (K' = num_classes) unless it says otherwise.

    A head whose outputs are not softmax logits defines ``probabilities(outputs) -> (B, num_classes)``
    and ``task_loss(outputs, target, weight=None, label_smoothing=0.0) -> scalar``; ``target`` holds
    the labelled rows only and ``weight`` (num_classes,) is normalised as ``F.cross_entropy`` does.
    """

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_features) -> (B, K')."""


@runtime_checkable
class InputKind(Protocol):
    """One kind of input besides the image views (report text, morphology, covariates, a feature vector).

    Built once per run from ``data.inputs.NAME = {name = KIND, column = ..., **options}`` by
    ``factory(**options)``. Lifecycle: ``check`` sees every row of the run once (before the folds);
    ``fit`` sees one fold's training part only and returns the fitted state (a vocabulary, a scaler),
    which the checkpoint sidecar stores as JSON; ``encode`` turns one sample into a fixed-shape array
    (None: the input is missing for it, handled like a missing view); ``encoder`` builds the trainable
    module whose output joins the image views' features in the fusion.
    """

    column: str  # the manifest column it reads (a cell's text, or a path relative to the manifest)
    dtype: str  # "float32" or "int64": what ``encode`` returns
    # optional: ``reads = "text"`` when the cell is the input itself (served as a form field); default "file"
    # optional: ``keep_in_memory()``, called when the kind serves uploads: write nothing derived from them to disk

    def check(self, samples: Sequence[Any], problems: list[str]) -> set[int]:
        """Every row of the run: append "file:line: reason" per bad cell; return the indices of the bad rows."""

    def fit(self, samples: Sequence[Any]) -> dict[str, Any]:
        """The state fitted on a fold's training part only; JSON-serialisable."""

    def shape(self, state: Mapping[str, Any]) -> tuple[int, ...]:
        """The shape of one encoded sample."""

    def encode(self, sample: Any, state: Mapping[str, Any]) -> Any:
        """One sample -> numpy array of ``shape(state)`` and ``dtype``, or None when the input is missing."""

    def encoder(self, state: Mapping[str, Any], out_features: int) -> nn.Module:
        """The module mapping a batch (B, *shape) to features (B, out_features)."""


@runtime_checkable
class Tracker(Protocol):
    """A subscriber of one run's :mod:`lnzoo.events` (an experiment tracker), named in ``train.track``.

    Built by ``factory(run_dir, recipe, **kw)`` before training (raise ``lnzoo.track.TrackerUnavailable`` when a
    package it needs is missing). Lifecycle, all in the process that writes the run (rank 0 under torchrun):
    ``start(resume)`` once the run directory is claimed and its recipe written, before the first event;
    ``event(e)`` for every event in order (:class:`lnzoo.events.RunEnded` last, after the report); ``finish(status)``
    once at the end, ``status`` "finished", "failed" or "interrupted". A tracker that raises anywhere is reported
    once (a warning Note) and gets no more events (one that had started is still finished, its errors then
    unreported); the run goes on. ``lnzoo.track`` has the shared helpers: the recipe as flat parameters, the final
    metrics of a run, its report files, state kept in run.json for --resume.
    """

    def start(self, resume: bool) -> None:
        """Open whatever the tracker records into; ``resume``: this tracker followed this run before (``lnzoo run
        --resume``), so reopen it. A run gathered by ``lnzoo sweep`` is new to its trackers (False): its folds, fitted
        by untracked jobs, then arrive as replayed events."""

    def event(self, event: Any) -> None:
        """One event of the run."""

    def finish(self, status: str) -> None:
        """Close; ``status`` is how the run ended."""


@runtime_checkable
class Pretrainer(Protocol):
    """A self-supervised pretraining method, named by ``pretrain.method``: ``factory(backbone, **options)`` wraps
    an lnzoo :class:`Backbone` (kept as ``self.backbone``: what is saved for ``model.init_from``). ``forward(view0,
    view1)`` returns the scalar loss of a batch of two augmented views of the same images; ``after_step(progress)``
    runs after each optimiser step (``progress`` in [0, 1], for momentum schedules). See :mod:`lnzoo.pretrain`."""

    backbone: Any

    def forward(self, view0: Any, view1: Any) -> Any: ...

    def after_step(self, progress: float) -> None: ...


def input_note(kind: Any) -> str | None:
    """An input kind's optional ``data_note()``: one line on what its ``check`` saw (e.g. "3 reports truncated")."""
    note = getattr(kind, "data_note", None)
    return note() if callable(note) else None


def input_feature_names(kind: Any, state: Mapping[str, Any]) -> list[str] | None:
    """The names of an input kind's encoded features (a feature vector's columns), when it has them."""
    names = getattr(kind, "feature_names", None)
    return list(names(state)) if callable(names) else None


def missing_members(obj: Any, proto: type) -> list[str]:
    """The attributes and methods of ``proto`` that ``obj`` lacks (none when ``isinstance(obj, proto)``)."""
    required = {n for n in (*vars(proto), *getattr(proto, "__annotations__", {})) if not n.startswith("_")}
    return sorted(n for n in required if not hasattr(obj, n))


def fusion_max_views(factory: Any) -> int | None:
    """How many views a fusion factory takes at most (None: any number)."""
    return getattr(factory, "max_views", None)


def has_own_probabilities(head: Any) -> bool:
    """Whether the head maps its outputs to probabilities itself (then they are not softmax logits)."""
    return callable(getattr(head, "probabilities", None))


def head_probabilities(head: Any, outputs: Tensor) -> Tensor:
    """Class probabilities (B, num_classes) of a head's outputs: its own ``probabilities``, else softmax."""
    return head.probabilities(outputs) if has_own_probabilities(head) else outputs.float().softmax(1)


def head_loss(head: Any, outputs: Tensor, target: Tensor, weight: Tensor | None = None,
              label_smoothing: float = 0.0) -> Tensor:
    """The loss of a head's outputs on labelled rows: its own ``task_loss``, else (float32) cross-entropy."""
    own = getattr(head, "task_loss", None)
    if callable(own):
        return own(outputs, target, weight=weight, label_smoothing=label_smoothing)
    import torch.nn.functional as F

    return F.cross_entropy(outputs.float(), target, weight=weight, label_smoothing=label_smoothing)
