"""Fusions (``lnzoo.contracts.Fusion``): per-view features [(B, F)] * N + a presence mask (B, N) -> (B, out).

A view missing for a sample (a modality not acquired) has ``present == False``; fusions ignore
it instead of treating zeros as an image.
"""
from __future__ import annotations

import torch
from torch import nn


def _present(feats: list[torch.Tensor], present: torch.Tensor | None) -> torch.Tensor:
    if present is None:
        return torch.ones(feats[0].shape[0], len(feats), dtype=torch.bool, device=feats[0].device)
    return present.to(torch.bool)


class SingleView(nn.Module):
    max_views = 1  # read by the recipe check and the conformance kit (lnzoo.contracts.fusion_max_views)

    def __init__(self, num_views: int, in_features: int):
        super().__init__()
        if num_views != 1:
            raise ValueError(f"fusion 'single' takes exactly one view, the recipe gives {num_views}; "
                             f"use 'concat', 'mean' or 'attention'")
        self.out_features = in_features

    def forward(self, feats: list[torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        return feats[0]


class ConcatFusion(nn.Module):
    def __init__(self, num_views: int, in_features: int):
        super().__init__()
        self.num_views, self.out_features = num_views, num_views * in_features

    def forward(self, feats: list[torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        mask = _present(feats, present).to(feats[0].dtype)
        return torch.cat([f * mask[:, i:i + 1] for i, f in enumerate(feats)], dim=1)


class MeanFusion(nn.Module):
    def __init__(self, num_views: int, in_features: int):
        super().__init__()
        self.out_features = in_features

    def forward(self, feats: list[torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        mask = _present(feats, present).to(feats[0].dtype)
        stacked = torch.stack(feats, dim=1)
        return (stacked * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)


class AttentionFusion(nn.Module):
    """Gated attention over views: a learned score per view, softmax over the views present."""

    def __init__(self, num_views: int, in_features: int, hidden: int = 128, view_embedding: bool = True):
        super().__init__()
        self.out_features = in_features
        self.value = nn.Linear(in_features, hidden)
        self.gate = nn.Linear(in_features, hidden)
        self.score = nn.Linear(hidden, 1)
        # lets the attention tell views apart when the branch weights are shared
        self.view_embedding = nn.Parameter(torch.zeros(num_views, in_features)) if view_embedding else None
        self.last_weights: torch.Tensor | None = None

    def forward(self, feats: list[torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        mask = _present(feats, present)
        x = torch.stack(feats, dim=1)
        keyed = x + self.view_embedding if self.view_embedding is not None else x
        scores = self.score(torch.tanh(self.value(keyed)) * torch.sigmoid(self.gate(keyed))).squeeze(-1)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1) * mask.to(scores.dtype)
        weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
        self.last_weights = weights.detach()
        return (weights.unsqueeze(-1) * x).sum(1)


class TransformerFusion(nn.Module):
    """The members as tokens through a small transformer encoder (LLNM-Net's fusion of image, report and
    clinical data); a learned summary token is the output. A missing member is a masked key: no token
    attends to it, so its zeros never reach the output."""

    def __init__(self, num_views: int, in_features: int, dim: int = 128, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion 'transformer': dim ({dim}) must be a multiple of heads ({heads})")
        self.embed = nn.Linear(in_features, dim)
        self.member = nn.Parameter(torch.zeros(num_views, dim))  # which input a token is
        self.summary = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.member, std=0.02)
        nn.init.normal_(self.summary, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out_features = dim

    def forward(self, feats: list[torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        mask = _present(feats, present)
        b = feats[0].shape[0]
        tokens = self.embed(torch.stack(feats, dim=1).to(self.embed.weight.dtype)) + self.member
        x = torch.cat([self.summary.expand(b, -1, -1), tokens], dim=1)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=mask.device), ~mask], dim=1)
        return self.norm(self.body(x, src_key_padding_mask=pad)[:, 0])
