"""What a backbone, fusion and head must provide (torch-free), and the one place a head's optional methods resolve.

Components are ``torch.nn.Module``s built by the factories of :mod:`lnzoo.hookspecs`. Factory attributes:
``max_views`` (a fusion's view limit), ``lnzoo_check_kwargs`` (small arguments for :mod:`lnzoo.testing`).
"""
from __future__ import annotations

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
