"""Task heads: pooled features (B, in_features) in, class logits (B, num_classes) out (``lnzoo.contracts.Head``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))


class MLPHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CosineHead(nn.Module):
    """Cosine-similarity classifier with a learnable scale: robust to class imbalance in feature norms."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 16.0, learn_scale: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log(), requires_grad=learn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
