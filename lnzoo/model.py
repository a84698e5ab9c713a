"""Model assembly from the registries: views -> backbone(s) -> fusion -> one head per task."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lnzoo.errors import UsageError


def _kwargs(table: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k != "name"}


class LnzooModel(nn.Module):
    """One backbone pass per view serves every head; heads see the fused features."""

    def __init__(self, backbones: nn.ModuleList, fusion: nn.Module, heads: nn.ModuleDict, views: Sequence[str]):
        super().__init__()
        self.backbones, self.fusion, self.heads = backbones, fusion, heads
        self.views = list(views)

    @property
    def shared_backbone(self) -> bool:
        return len(self.backbones) == 1

    def features(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, V, 3, H, W) -> fused features (B, F)."""
        b, v = x.shape[:2]
        if self.shared_backbone:
            per_view = self.backbones[0](x.flatten(0, 1)).view(b, v, -1).unbind(1)  # one batched pass
        else:
            per_view = tuple(self.backbones[i](x[:, i]) for i in range(v))
        return self.fusion(list(per_view), present)

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        fused = self.features(x, present)
        return {task: head(fused) for task, head in self.heads.items()}

    def probabilities(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Class probabilities per task (a head may define its own, e.g. an ordinal head)."""
        probs = {}
        for task, out in outputs.items():
            head = self.heads[task]
            probs[task] = head.probabilities(out) if hasattr(head, "probabilities") else out.float().softmax(1)
        return probs


def build_model(recipe, host, tasks: Mapping[str, Any]) -> LnzooModel:
    """Build the model a resolved recipe describes (random init unless the backbone loads weights)."""
    model_cfg = recipe.data["model"]
    views = recipe.data["data"]["views"]
    bb_table = model_cfg["backbone"]
    bb_entry = host.get("backbone", bb_table["name"])
    n_backbones = 1 if model_cfg["shared_backbone"] else len(views)
    backbones = nn.ModuleList(bb_entry.build(**_kwargs(bb_table)) for _ in range(n_backbones))
    width = backbones[0].num_features
    fusion_table = model_cfg["fusion"]
    try:
        fusion = host.get("fusion", fusion_table["name"]).build(len(views), width, **_kwargs(fusion_table))
    except ValueError as exc:
        raise UsageError(f"model.fusion: {exc}") from None
    heads = nn.ModuleDict()
    for name, task in tasks.items():
        table = recipe.head_table(name)
        heads[name] = host.get("head", table["name"]).build(fusion.out_features, task.num_classes, **_kwargs(table))
    return LnzooModel(backbones, fusion, heads, views)
