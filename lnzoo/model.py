"""Model assembly from the registries: views -> backbone(s) -> fusion -> one head per task."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lnzoo.errors import UsageError


def _kwargs(table: Mapping[str, Any]) -> dict[str, Any]:
    """A component table's factory arguments as plain values: a factory may change what it is given."""
    from lnzoo.config import component_options
    return component_options(table)


class LnzooModel(nn.Module):
    """One backbone pass per view serves every head; the fusion fuses the views' features and each other
    input's encoded features (its members); heads see the fused features."""

    def __init__(self, backbones: nn.ModuleList, fusion: nn.Module, heads: nn.ModuleDict, views: Sequence[str],
                 inputs: nn.ModuleDict | None = None, member_features: int = 0):
        super().__init__()
        self.backbones, self.fusion, self.heads = backbones, fusion, heads
        self.views = list(views)
        self.inputs = inputs if inputs is not None else nn.ModuleDict()  # input name -> its encoder
        self.member_features = member_features  # the width of every fusion member

    @property
    def shared_backbone(self) -> bool:
        return len(self.backbones) == 1

    @property
    def members(self) -> list[str]:
        """The fusion's members in order: the image views, then the other inputs."""
        return [*self.views, *self.inputs]

    def features(self, x: torch.Tensor, present: torch.Tensor | None = None,
                 inputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, V, 3, H, W), present (B, V + inputs) (or (B, V): the given inputs count as present), inputs
        {name: (B, ...)} -> fused features (B, F). An input not given is missing for every sample."""
        b, v = x.shape[:2]
        if not v:
            per_view: tuple[torch.Tensor, ...] = ()
        elif self.shared_backbone:
            per_view = self.backbones[0](x.flatten(0, 1)).view(b, v, -1).unbind(1)  # one batched pass
        else:
            per_view = tuple(self.backbones[i](x[:, i]) for i in range(v))
        members = list(per_view)
        if not len(self.inputs):
            return self.fusion(members, present)
        given = inputs or {}
        if present is None:
            present = torch.ones(b, v, dtype=torch.bool, device=x.device)
        if present.shape[1] == v:  # the views' mask only: an input counts as present where it is given
            present = torch.cat([present.bool(), torch.tensor([[n in given for n in self.inputs]], device=x.device)
                                 .expand(b, -1)], dim=1)
        for name, encoder in self.inputs.items():
            if name in given:
                members.append(encoder(given[name]))
            else:
                members.append(torch.zeros(b, self.member_features, device=x.device,
                                           dtype=members[0].dtype if members else torch.float32))
        if members and per_view:  # autocast may leave the encoders' outputs in another dtype than the backbone's
            members = [m.to(per_view[0].dtype) for m in members]
        return self.fusion(members, present)

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None,
                inputs: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        fused = self.features(x, present, inputs)
        return {task: head(fused) for task, head in self.heads.items()}

    def probabilities(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Class probabilities per task (a head may define its own, e.g. an ordinal head)."""
        from lnzoo.contracts import head_probabilities
        return {task: head_probabilities(self.heads[task], out) for task, out in outputs.items()}


def predict_probabilities(model: LnzooModel, x: torch.Tensor, present: torch.Tensor | None = None,
                          inputs: Mapping[str, torch.Tensor] | None = None, tta: str = "none"
                          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(raw outputs, class probabilities) per task; ``tta="hflip"`` averages the probabilities of the
    image and its mirror image (probabilities, not logits, so ordinal heads average correctly)."""
    if tta == "none":
        outputs = {k: v.float() for k, v in model(x, present, inputs).items()}
        return outputs, model.probabilities(outputs)
    if tta != "hflip":
        raise UsageError(f"unknown test-time augmentation {tta!r}; use 'none' or 'hflip'")
    # the image and its mirror in one forward pass (an eval-mode model treats samples independently)
    n = x.shape[0]
    xx = torch.cat([x, x.flip(-1)])
    if x.dim() == 5 and x.shape[1] and x.flatten(0, 1).is_contiguous(memory_format=torch.channels_last):  # NHWC
        xx = xx.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(xx.shape)
    twice = {k: t.repeat(2, *([1] * (t.dim() - 1))) for k, t in (inputs or {}).items()}
    both = {k: v.float() for k, v in model(xx, None if present is None else present.repeat(2, 1), twice).items()}
    outputs = {k: v[:n] for k, v in both.items()}
    probs = model.probabilities(outputs)
    mirrored = model.probabilities({k: v[n:] for k, v in both.items()})
    return outputs, {t: 0.5 * (probs[t] + mirrored[t]) for t in probs}


DEFAULT_MEMBER_FEATURES = 128  # a model without image views encodes its inputs to this width


def build_model(recipe, host, tasks: Mapping[str, Any], inputs=None) -> LnzooModel:
    """Build the model a resolved recipe describes (random init unless the backbone loads weights).

    ``inputs`` are the fitted :class:`lnzoo.inputs.Inputs` (covariates, text, morphology...) when the recipe has any.
    """
    model_cfg = recipe.config.model
    views = recipe.config.data.views
    bb_table = model_cfg.backbone
    n_backbones = 0 if not views else 1 if model_cfg.shared_backbone else len(views)
    if n_backbones:
        backbones = nn.ModuleList(build_backbone(host, bb_table) for _ in range(n_backbones))
        width = backbones[0].num_features
    else:
        backbones, width = nn.ModuleList(), DEFAULT_MEMBER_FEATURES
    width = model_cfg.get("input_features") or width
    encoders = inputs.encoders(width) if inputs else None
    if n_backbones and width != backbones[0].num_features:
        raise UsageError(f"model.input_features = {width}, but the backbone's features are "
                         f"{backbones[0].num_features} wide; every fusion member has the backbone's width "
                         "(leave model.input_features at 0)")
    members = len(views) + (len(encoders) if encoders is not None else 0)
    fusion_table = model_cfg.fusion
    try:
        fusion = host.get("fusion", fusion_table["name"]).build(members, width, **_kwargs(fusion_table))
    except ValueError as exc:
        raise UsageError(f"model.fusion: {exc}") from None
    heads = nn.ModuleDict()
    for name, task in tasks.items():
        table = recipe.head_table(name)
        heads[name] = host.get("head", table["name"]).build(fusion.out_features, task.num_classes, **_kwargs(table))
    return LnzooModel(backbones, fusion, heads, views, encoders, width)


def build_backbone(host, table: Mapping[str, Any]) -> nn.Module:
    """The backbone a recipe's ``model.backbone`` table names. ``pretrained_file`` (any backbone; lnzoo's own
    option, never passed to the factory) loads a weight file of that very architecture downloaded elsewhere, a
    hub's ``model.safetensors`` (:func:`lnzoo.nn.backbones.load_pretrained_file`: strict, named mismatches) into
    the backbone's body, for machines without the hub."""
    from lnzoo.nn.backbones import load_pretrained_file

    options = _kwargs(table)
    weights = options.pop("pretrained_file", None)
    if weights and options.get("pretrained") not in (None, False, ""):
        raise UsageError(f"model.backbone: give pretrained = {options['pretrained']!r} or pretrained_file = "
                         f"{weights!r}, not both")
    backbone = host.get("backbone", table["name"]).build(**options)
    if weights:
        load_pretrained_file(getattr(backbone, "body", backbone), weights, f"backbone {table['name']!r}"
                             + (f" {table['model_name']!r}" if table.get("model_name") else ""))
    return backbone


def require_trainable(model: nn.Module) -> None:
    """A model whose every parameter is frozen would 'train' into the untrained model: refuse it."""
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError("the model has no trainable parameter (its backbone, fusion and heads are all frozen); "
                         "there is nothing to fit. Unfreeze a part, or use train.method = \"linear_probe\"")


def init_from_checkpoint(model: LnzooModel, source: str) -> dict[str, Any]:
    """Start ``model``'s backbones (and fusion, when it fits) from another run's checkpoint; heads stay new.
    ``source``: a checkpoint, a run directory, a bundle, a self-supervised pretraining run (its backbone), or
    ``zoo:NAME`` (a model of the zoo index).

    A shared pretraining backbone fills every branch of a model with separate branches. Returns what
    was loaded and what was not, for the run's log and the checkpoint sidecar.
    """
    from lnzoo.checkpoint import read_weights
    from lnzoo.zoo import resolve_source

    path = resolve_source(source)  # "zoo:NAME": the zoo's bundle, pulled on first use
    from lnzoo.pretrain.images import RESULT, pretraining_of
    if path.is_dir() and pretraining_of(path) is not None:  # a self-supervised pretraining run: its backbone
        path = path / RESULT
    if path.is_dir():  # a run directory (the first fold it ran, whichever cv.run_folds were) or a bundle
        from lnzoo.bundle import checkpoints_of
        try:
            path = checkpoints_of(path)[0]
        except UsageError as exc:
            raise UsageError(f"model.init_from: {exc}") from None
    if not path.is_file():
        raise UsageError(f"model.init_from: {path} not found (give a .safetensors checkpoint, a run directory or a "
                         "bundle)")
    state = read_weights(path, "model.init_from: ")
    own = model.state_dict()
    wanted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(("backbones.", "fusion.")):
            continue  # heads are task-specific: always replaced
        targets = [key]
        if key.startswith("backbones.0.") and len(model.backbones) > 1:
            targets = [f"backbones.{i}.{key[len('backbones.0.'):]}" for i in range(len(model.backbones))]
        for t in targets:
            if t in own and own[t].shape == tensor.shape:
                wanted[t] = tensor
    if not any(k.startswith("backbones.") for k in wanted):
        raise UsageError(f"model.init_from: no backbone tensor of {path} fits this model's backbone; "
                         f"was it trained with another architecture?")
    model.load_state_dict(wanted, strict=False)
    backbone_keys = [k for k in own if k.startswith("backbones.")]
    return {"source": str(path), "loaded": len(wanted),
            "backbone_loaded": sum(k.startswith("backbones.") for k in wanted), "backbone_total": len(backbone_keys),
            "not_loaded": sorted(k for k in own if k not in wanted and not k.startswith("heads."))[:20],
            "heads": "new (replaced)"}
