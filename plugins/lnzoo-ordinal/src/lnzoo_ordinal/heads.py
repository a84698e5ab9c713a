"""CORAL: rank-consistent ordinal regression (Cao, Mirjalili & Raschka, 2020).

For K ordered classes the head predicts K-1 binary tasks "is y > k?" (k = 0 .. K-2) from ONE
shared score ``g(x) = w . h(x)`` and K-1 biases: ``logit_k = g(x) + b_k``. Because every task
shares the same weights, the cumulative probabilities ``P(y > k) = sigmoid(g + b_k)`` are ordered
exactly as the biases are. The paper shows the optimum of its loss has non-increasing biases; this
head makes that hold at every step by parametrising the biases as a first bias followed by
positive (softplus) decrements, so ``b_0 > b_1 > ... > b_{K-2}`` and therefore
``P(y > 0) >= P(y > 1) >= ... >= P(y > K-2)`` for every input, trained or not.

Outputs are the K-1 cumulative logits, NOT softmax logits, so the head provides the two methods
lnzoo calls in place of softmax / cross-entropy: :meth:`CoralHead.probabilities` and
:meth:`CoralHead.task_loss`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_GAP_INIT = 1.0  # initial spacing of the thresholds, in logit units


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class CoralHead(nn.Module):
    """Features (B, in_features) -> cumulative logits (B, num_classes - 1) for P(y > k).

    ``hidden > 0`` inserts Linear -> ReLU before the shared projection; ``dropout`` acts on the
    input of the shared projection.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"coral needs at least 2 classes, got num_classes={num_classes}")
        if int(in_features) < 1:
            raise ValueError(f"coral needs in_features >= 1, got {in_features}")
        if int(hidden) < 0:
            raise ValueError(f"coral: hidden must be >= 0 (0 = no hidden layer), got {hidden}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"coral: dropout must be in [0, 1), got {dropout}")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.hidden, self.dropout = int(hidden), float(dropout)
        width = self.in_features
        if self.hidden:
            self.body: nn.Module = nn.Sequential(nn.Linear(width, self.hidden), nn.ReLU(inplace=True))
            width = self.hidden
        else:
            self.body = nn.Identity()
        self.drop = nn.Dropout(self.dropout)
        # the one projection all K-1 binary tasks share (no bias: the thresholds are the biases)
        self.score = nn.Linear(width, 1, bias=False)
        # bias_params[0] is the first threshold b_0; bias_params[1:] are pre-softplus decrements.
        # One parameter of K-1 values (never an empty tensor, so K=2 saves fine as safetensors).
        k1 = self.num_classes - 1
        init = torch.full((k1,), _inverse_softplus(_GAP_INIT))
        init[0] = _GAP_INIT * (k1 - 1) / 2.0  # thresholds centred on 0: b_k = (K-2)/2 - k
        self.bias_params = nn.Parameter(init)

    @property
    def biases(self) -> torch.Tensor:
        """The K-1 thresholds b_k, strictly decreasing by construction."""
        first, raw_gaps = self.bias_params[:1], self.bias_params[1:]
        return torch.cat([first, first - torch.cumsum(F.softplus(raw_gaps), dim=0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.score(self.drop(self.body(x)))  # (B, 1)
        return g + self.biases.to(g.dtype)  # (B, K-1): logit of P(y > k)

    # --- what lnzoo calls instead of softmax / cross-entropy -------------------------------------

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Cumulative logits (B, K-1) -> class probabilities (B, K) that sum to 1.

        P(y=0) = 1 - P(y>0); P(y=k) = P(y>k-1) - P(y>k); P(y=K-1) = P(y>K-2). Differences are
        clamped at 0 (they can only go negative for outputs not made by this head's ordered
        biases) and the rows renormalised.
        """
        cum = torch.sigmoid(outputs.float())
        ones = cum.new_ones(cum.shape[0], 1)
        zeros = cum.new_zeros(cum.shape[0], 1)
        probs = (torch.cat([ones, cum], dim=1) - torch.cat([cum, zeros], dim=1)).clamp_min(0.0)
        return probs / probs.sum(dim=1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)

    def task_loss(self, outputs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  label_smoothing: float = 0.0) -> torch.Tensor:
        """CORAL loss: binary cross-entropy on the K-1 targets [y > k], summed over k, averaged over samples.

        ``target`` holds the class indices of the labelled rows of ``outputs`` only. ``weight``
        (K,) weights each sample by its class, normalised as ``F.cross_entropy`` does:
        sum(w_i * l_i) / sum(w_i). ``label_smoothing`` is accepted and ignored: smoothing towards
        a uniform class distribution does not fit cumulative binary targets.
        """
        del label_smoothing  # documented: not applied by this ordinal loss
        if outputs.dim() != 2 or outputs.shape[1] != self.num_classes - 1:
            raise ValueError(f"coral: outputs must be (B, {self.num_classes - 1}), got {tuple(outputs.shape)}")
        target = target.reshape(-1).long()
        if target.shape[0] != outputs.shape[0]:
            raise ValueError(f"coral: {target.shape[0]} targets for {outputs.shape[0]} rows of outputs")
        if target.numel() == 0:  # no labelled sample in this batch: contribute nothing, keep the graph
            return outputs.sum() * 0.0
        if bool(((target < 0) | (target >= self.num_classes)).any()):  # one device sync
            raise ValueError(f"coral: targets must be class indices in [0, {self.num_classes - 1}], got "
                             f"min {int(target.min())}, max {int(target.max())}")
        outputs = outputs.float()
        thresholds = torch.arange(self.num_classes - 1, device=target.device)
        levels = (target.unsqueeze(1) > thresholds.unsqueeze(0)).to(outputs.dtype)  # (B, K-1)
        per_sample = F.binary_cross_entropy_with_logits(outputs, levels, reduction="none").sum(dim=1)
        if weight is None:
            return per_sample.mean()
        w = weight.to(device=outputs.device, dtype=outputs.dtype)[target]
        return (w * per_sample).sum() / w.sum()

    def rank(self, outputs: torch.Tensor) -> torch.Tensor:
        """The paper's prediction: the number of thresholds with P(y > k) > 0.5 (an extra, not used by lnzoo)."""
        return (outputs > 0).sum(dim=1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, hidden={self.hidden}"
