"""Self-supervised methods, built on lightly's losses and heads (https://github.com/lightly-ai/lightly).

lightly is the library we chose: it is maintained, keeps each method's loss, projection heads and momentum
utilities as small torch modules (no trainer of its own is forced on us), and covers the methods the issue names.
lnzoo adds the ultrasound views, the data, the loop, resuming, DDP and the probe (:mod:`lnzoo.pretrain`).

A pretrainer wraps an lnzoo backbone (``num_features`` wide, ``forward(x) -> (N, num_features)``) and offers
``loss(view0, view1) -> scalar tensor`` and ``after_step(progress)`` (``progress`` in [0, 1]: how far training is,
for momentum schedules). The backbone stays ``self.backbone``: what is saved for ``model.init_from``.

- ``simclr`` (Chen et al. 2020): a projection MLP and the NT-Xent contrastive loss over the batch; options
  ``projection_dim`` (128), ``hidden_dim`` (the backbone width), ``temperature`` (0.2). Under torchrun the
  negatives are gathered from every process.
- ``byol`` (Grill et al. 2020): an online network with a predictor against a momentum (EMA) copy, no negatives;
  options ``projection_dim`` (256), ``hidden_dim`` (1024), ``momentum`` (0.99, rising to 1 by a cosine).
- ``dino`` (Caron et al. 2021), for ViTs and CNNs: a student and an EMA teacher with centred, sharpened outputs,
  on the two views; options ``output_dim`` (2048), ``hidden_dim`` (512), ``bottleneck_dim`` (128),
  ``momentum`` (0.996), ``teacher_temp`` (0.04), ``warmup_teacher_temp_epochs`` (0: none).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _momentum(base: float, progress: float) -> float:
    from lightly.utils.scheduler import cosine_schedule

    return float(cosine_schedule(int(progress * 1000), 1000, base, 1.0))


class _Pretrainer(nn.Module):
    """``forward(view0, view1)`` is the loss (what DistributedDataParallel calls); ``after_step`` does nothing."""

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.loss(x0, x1)

    def after_step(self, progress: float) -> None:
        pass


class SimCLR(_Pretrainer):
    def __init__(self, backbone: nn.Module, projection_dim: int = 128, hidden_dim: int | None = None,
                 temperature: float = 0.2, gather_distributed: bool = False):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        width = backbone.num_features
        self.backbone = backbone
        self.projection = SimCLRProjectionHead(width, hidden_dim or width, projection_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)

    def loss(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.criterion(self.projection(self.backbone(x0)), self.projection(self.backbone(x1)))


class _Teacher(nn.Module):
    """An EMA copy of (backbone, head), never trained by gradients."""

    def __init__(self, backbone: nn.Module, head: nn.Module, head_copy: nn.Module | None = None):
        """``head_copy``: a new head of the same shape, for heads deepcopy cannot copy (weight-normed layers)."""
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        if head_copy is not None:
            head_copy.load_state_dict(head.state_dict())
        self.head = head_copy if head_copy is not None else copy.deepcopy(head)
        deactivate_requires_grad(self.backbone)
        deactivate_requires_grad(self.head)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @torch.no_grad()
    def follow(self, backbone: nn.Module, head: nn.Module, m: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(backbone, self.backbone, m)
        update_momentum(head, self.head, m)


class BYOL(_Pretrainer):
    def __init__(self, backbone: nn.Module, projection_dim: int = 256, hidden_dim: int = 1024,
                 momentum: float = 0.99):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

        super().__init__()
        self.backbone = backbone
        self.projection = BYOLProjectionHead(backbone.num_features, hidden_dim, projection_dim)
        self.prediction = BYOLPredictionHead(projection_dim, hidden_dim, projection_dim)
        self.teacher = _Teacher(backbone, self.projection)
        self.criterion = NegativeCosineSimilarity()
        self.base_momentum = momentum

    def loss(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        p0 = self.prediction(self.projection(self.backbone(x0)))
        p1 = self.prediction(self.projection(self.backbone(x1)))
        z0, z1 = self.teacher(x0), self.teacher(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def after_step(self, progress: float) -> None:
        self.teacher.follow(self.backbone, self.projection, _momentum(self.base_momentum, progress))


class DINO(_Pretrainer):
    def __init__(self, backbone: nn.Module, output_dim: int = 2048, hidden_dim: int = 512, bottleneck_dim: int = 128,
                 momentum: float = 0.996, teacher_temp: float = 0.04, warmup_teacher_temp_epochs: int = 0):
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead

        super().__init__()
        self.backbone = backbone
        dims = (backbone.num_features, hidden_dim, bottleneck_dim, output_dim)
        self.head = DINOProjectionHead(*dims)
        self.teacher = _Teacher(backbone, self.head, DINOProjectionHead(*dims))
        self.criterion = DINOLoss(output_dim=output_dim, teacher_temp=teacher_temp,
                                  warmup_teacher_temp_epochs=warmup_teacher_temp_epochs)
        self.base_momentum = momentum

    def loss(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        teacher = [self.teacher(x0), self.teacher(x1)]
        student = [self.head(self.backbone(x0)), self.head(self.backbone(x1))]
        return self.criterion(teacher, student, epoch=0)

    def after_step(self, progress: float) -> None:
        self.teacher.follow(self.backbone, self.head, _momentum(self.base_momentum, progress))


def simclr(backbone: nn.Module, **options) -> SimCLR:
    return SimCLR(backbone, **options)


def byol(backbone: nn.Module, **options) -> BYOL:
    return BYOL(backbone, **options)


def dino(backbone: nn.Module, **options) -> DINO:
    return DINO(backbone, **options)


dino.lnzoo_check_kwargs = {"output_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}  # small, for the kit
