"""Encoders of the non-image inputs: a batch of one input (B, *shape) -> features (B, out_features) for the fusion."""
from __future__ import annotations

import math

import torch
from torch import nn


class FeatureMLP(nn.Module):
    """A feature vector (covariates, morphology, radiomics; standardised upstream) -> (B, out_features)."""

    def __init__(self, width: int, hidden: int, out_features: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, out_features))
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.net[0].weight.dtype))


class TextEncoder(nn.Module):
    """Token ids (B, L), 0 = padding -> (B, out_features).

    ``pooled``: the mean of the token embeddings (a bag of words, fast, order-blind); ``transformer``: a
    small pre-norm transformer encoder over the tokens with learned positions, then the mean over the
    real tokens. Padding never reaches the mean.
    """

    def __init__(self, vocab_size: int, max_length: int, out_features: int, encoder: str = "transformer",
                 dim: int = 128, layers: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if encoder not in ("pooled", "transformer"):
            raise ValueError(f"encoder {encoder!r}: use 'pooled' or 'transformer'")
        self.kind = encoder
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=1 / math.sqrt(dim))
        with torch.no_grad():
            self.embed.weight[0].zero_()
        if encoder == "transformer":
            self.position = nn.Parameter(torch.zeros(1, max_length, dim))
            nn.init.normal_(self.position, std=0.02)
            layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                               batch_first=True, norm_first=True)
            self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_features)
        self.out_features = out_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        real = ids != 0
        h = self.embed(ids)
        if self.kind == "transformer":
            h = h + self.position[:, : ids.shape[1]]
            # an empty row (a missing report) would make every key masked: keep its first slot so attention is
            # defined; the fusion ignores that member anyway
            pad = ~real
            pad[:, 0] = pad[:, 0] & real.any(1)
            h = self.body(h, src_key_padding_mask=pad)
        weights = real.to(h.dtype).unsqueeze(-1)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.proj(self.norm(pooled))
