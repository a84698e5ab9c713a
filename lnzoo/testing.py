"""Conformance kit: lnzoo's contracts as named checks that plugin authors run on their own components.

Each kind of component (backbone, head, fusion, input kind, task) has a list of named checks
(:func:`check_names`). Describe what to check with :func:`backbone`, :func:`head`, :func:`fusion`,
:func:`input_kind` or :func:`task` (or a ``"kind:name"`` string), then either let pytest run one item
per (component, check)::

    import lnzoo.testing as kit

    @kit.parametrize_with_checks([kit.head("coral"), kit.head("coral", hidden=16), kit.task("elastography_score")],
                                 expected_failed={"head:coral(hidden=16)": {"safetensors_round_trip": "issue 12"}})
    def test_conforms(component, check):
        check(component)

(items such as ``test_conforms[head:coral-forward_shape]``), or run every check at once and get every
failure in one report: ``kit.check_head("coral")``, ``kit.check_component(kit.head("coral"))``.

Rows for an input kind come from :func:`make_rows` (no lnzoo internals needed). A plugin's tests
get a host with the plugin loaded from its source folder, installed or not, from :func:`plugin_host`.
"""
from __future__ import annotations

import importlib
import json
import sys
import tempfile
import tomllib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnzoo import contracts
from lnzoo.errors import did_you_mean
from lnzoo.plugins import PluginHost, get_host

__all__ = ["Component", "Check", "CheckResult", "ConformanceError", "NotApplicable", "backbone", "head", "fusion",
           "input_kind", "task", "check_names", "yield_checks", "parametrize_with_checks", "check_component",
           "check_backbone", "check_head", "check_fusion", "check_input", "check_task", "make_row", "make_rows",
           "plugin_host", "registered_names"]

KINDS = ("backbone", "head", "fusion", "input", "task")
# the sizes the kit builds components at, unless a component asks for others
SIZES: dict[str, dict[str, int]] = {"backbone": {"image_size": 64}, "head": {"in_features": 32, "num_classes": 3},
                                    "fusion": {"num_views": 2, "in_features": 16}, "input": {"out_features": 16},
                                    "task": {}}


class NotApplicable(Exception):
    """Raised by a check that does not apply to a component (a one-view fusion has no view to mask)."""


class ConformanceError(AssertionError):
    """Every failed check of one or more components, one line each."""


# --- what to check --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Component:
    """A registered component to check: its kind and name, the factory arguments (``options``), the sizes
    the kit builds it at, the plugin host (None: lnzoo's process-wide one; or a zero-argument callable), and
    for an input kind its ``rows`` (a list, or a callable given a fresh temporary folder to write files in)."""

    kind: str
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    sizes: Mapping[str, int] = field(default_factory=dict)
    host: PluginHost | Callable[[], PluginHost] | None = None
    rows: Sequence[Any] | Callable[[Path], Sequence[Any]] | None = None
    obj: Any = None  # a task given as an object rather than by its registered name

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown component kind {self.kind!r}{did_you_mean(self.kind, KINDS)}")
        object.__setattr__(self, "sizes", {**SIZES[self.kind], **self.sizes})

    @property
    def label(self) -> str:
        """``kind:name``, plus the options and sizes that differ from the kit's: a pytest id, a report's line."""
        given = {**self.options, **{k: v for k, v in self.sizes.items() if SIZES[self.kind].get(k) != v}}
        shown = ",".join(f"{k}={_short(v)}" for k, v in given.items())
        return f"{self.kind}:{self.name}" + (f"({shown})" if shown else "")

    def __str__(self) -> str:
        return self.label

    def __repr__(self) -> str:  # not the host's registries: pytest shows this beside a failure
        return f"Component({self.label!r})"

    def resolved_host(self) -> PluginHost:
        if self.host is None:
            return get_host()
        if isinstance(self.host, PluginHost):
            return self.host
        if "_loaded" not in self.__dict__:  # a callable host is loaded once, when a check first needs it
            object.__setattr__(self, "_loaded", self.host())
        return self.__dict__["_loaded"]

    def entry(self):
        return self.resolved_host().get(self.kind, self.name)

    def factory_options(self) -> dict[str, Any]:
        """The factory's arguments: its ``lnzoo_check_kwargs`` (small defaults for the kit), then ``options``."""
        return {**getattr(self.entry().factory, "lnzoo_check_kwargs", {}), **self.options}

    @property
    def num_views(self) -> int:
        """A fusion's view count: the kit's, capped by the factory's ``max_views``."""
        limit = contracts.fusion_max_views(self.entry().factory)
        return min(self.sizes["num_views"], limit or self.sizes["num_views"])

    def build(self) -> Any:
        """The component, built through the plugin host as lnzoo builds it (an input kind: as ``data.inputs``)."""
        s = self.sizes
        if self.kind == "task":
            return self.obj if self.obj is not None else self.entry().build()
        if self.kind == "input":
            from lnzoo.inputs import build_kind

            return build_kind(self.name, {"name": self.name, **self.factory_options()}, self.resolved_host())
        if self.kind == "head":
            return self.entry().build(s["in_features"], s["num_classes"], **self.factory_options())
        if self.kind == "fusion":
            return self.entry().build(self.num_views, s["in_features"], **self.factory_options())
        return self.entry().build(**self.factory_options())

    def rows_in(self, folder: Path) -> list[Any]:
        """An input kind's rows (a callable gets ``folder``, a fresh temporary folder, to write its files in)."""
        if self.rows is None:
            raise ValueError(f"{self.label}: an input kind needs rows: lnzoo.testing.input_kind(name, rows)")
        return list(self.rows(folder) if callable(self.rows) else self.rows)


def _short(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_short(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{_short(x)}" for k, x in v.items()) + "}"
    return str(v)


def backbone(name: str, *, host: Any = None, image_size: int = 64, **options: Any) -> Component:
    """A backbone, checked on (2, 3, image_size, image_size) images; ``options`` go to its factory."""
    return Component("backbone", name, options, {"image_size": image_size}, host)


def head(name: str, *, host: Any = None, in_features: int = 32, num_classes: int = 3, **options: Any) -> Component:
    """A head, built as ``factory(in_features, num_classes, **options)``."""
    return Component("head", name, options, {"in_features": in_features, "num_classes": num_classes}, host)


def fusion(name: str, *, host: Any = None, num_views: int = 2, in_features: int = 16, **options: Any) -> Component:
    """A fusion, built as ``factory(num_views, in_features, **options)`` (num_views capped by ``max_views``)."""
    return Component("fusion", name, options, {"num_views": num_views, "in_features": in_features}, host)


def input_kind(name: str, rows: Sequence[Any] | Callable[[Path], Sequence[Any]] | None = None, *, host: Any = None,
               out_features: int = 16, **options: Any) -> Component:
    """An input kind, built as ``data.inputs.NAME = {name = NAME, **options}`` builds it, checked on ``rows``
    (:func:`make_rows`; or a callable that writes the rows' files into the folder it is given and returns them).
    Give it rows that have the input, some without it, and a bad row if the kind can have one. Without rows it
    can still ``build()`` the kind, as a recipe's ``data.inputs`` table would."""
    return Component("input", name, options, {"out_features": out_features}, host, rows)


def task(name_or_task: Any, *, host: Any = None) -> Component:
    """A task by its registered name, or a ``lnzoo.tasks.Task`` object."""
    if isinstance(name_or_task, str):
        return Component("task", name_or_task, host=host)
    return Component("task", str(getattr(name_or_task, "name", "?")), host=host, obj=name_or_task)


def _as_component(c: Any) -> Component:
    if isinstance(c, Component):
        return c
    if isinstance(c, str) and ":" in c:
        kind, _, name = c.partition(":")
        if kind == "input":
            raise ValueError(f"{c!r}: an input kind needs rows: use lnzoo.testing.input_kind(name, rows)")
        return Component(kind, name)
    from lnzoo.tasks import Task

    if isinstance(c, Task):
        return task(c)
    raise TypeError(f"not a component to check: {c!r} (use lnzoo.testing.head(name), ..., or 'kind:name')")


# --- rows for input kinds, and a plugin loaded from its source folder --------------------------------

def make_row(cells: Mapping[str, Any], *, line: int = 2, manifest: str = "m.csv", base: str | Path | None = None,
             patient: str | None = None) -> Any:
    """One manifest row as lnzoo hands it to an input kind: ``cells`` (column -> text; None is an empty cell),
    ``origin`` ``"manifest:line"`` (what a problem names), ``base`` the folder relative paths resolve against
    (``row.cell_path(column)``), ``patient``."""
    from lnzoo.data.samples import Sample

    text = {str(k): "" if v is None else str(v) for k, v in cells.items()}
    return Sample({}, patient or f"P{line}", {}, f"{manifest}:{line}", cells=text,
                  base=None if base is None else Path(base))


def make_rows(cells: Iterable[Mapping[str, Any]], *, manifest: str = "m.csv", base: str | Path | None = None) -> list:
    """Rows of a manifest with a header line: the first on line 2."""
    return [make_row(c, line=i + 2, manifest=manifest, base=base) for i, c in enumerate(cells)]


def plugin_host(project: str | Path, *, builtins: bool = True) -> PluginHost:
    """A plugin host with the plugin whose project folder (``pyproject.toml``, sources under ``src/``) is
    ``project``, whether it is pip-installed or not: its sources go on ``sys.path`` and each module of its
    ``lnzoo`` entry points is loaded as the entry point would load it. ``builtins``: also every other installed
    plugin, lnzoo's built-ins included (its own entry points, if installed too, are left out); else only it."""
    from lnzoo.errors import PluginError
    from lnzoo.plugins import GROUP, _entry_points, load_plugins

    project = Path(project).resolve()
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    dist = meta["project"]["name"]
    modules = list(meta["project"].get("entry-points", {}).get(GROUP, {}).values())
    if not modules:
        raise PluginError(f"{project / 'pyproject.toml'}: no [project.entry-points.{GROUP}] table")
    where = meta.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {}).get("where")
    for folder in reversed([project / w for w in where] if where else
                           [project / "src" if (project / "src").is_dir() else project]):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    extra = [(dist, importlib.import_module(m.partition(":")[0])) for m in modules]

    def norm(name: str) -> str:
        return name.lower().replace("_", "-")
    others = [ep for ep in _entry_points() if not (ep.dist and norm(ep.dist.name) == norm(dist))] if builtins else []
    host = load_plugins(extra=extra, entry_points=others, strict=False)
    for info in host.plugins:
        if info.distribution == dist and info.error:
            raise PluginError(f"plugin {dist} ({info.value}): {info.error}")
    return host


def registered_names(kind: str, host: PluginHost | None = None) -> list[str]:
    """Names registered for ``kind`` ("backbone", "head", "fusion", "input", "task"), for pytest parametrisation."""
    return (host or get_host()).registry(kind).names()


# --- the checks -----------------------------------------------------------------------------------

CHECKS: dict[str, dict[str, Callable[[Component], None]]] = {kind: {} for kind in KINDS}


def _check(kind: str, name: str):
    def register(fn: Callable[[Component], None]) -> Callable[[Component], None]:
        CHECKS[kind][name] = fn
        return fn
    return register


def check_names(kind: str) -> list[str]:
    """The names of the checks for one kind of component, in the order they run."""
    return list(CHECKS[kind])


def _module(obj: Any, c: Component) -> None:
    import torch

    assert isinstance(obj, torch.nn.Module), f"{c.kind} {c.name!r} must be a torch.nn.Module, got {type(obj).__name__}"


def _conforms(obj: Any, proto: type, c: Component) -> None:
    assert isinstance(obj, proto), (f"{c.kind} {c.name!r} ({type(obj).__name__}) does not satisfy lnzoo.contracts."
                                    f"{proto.__name__}: missing {contracts.missing_members(obj, proto)}")


def _finite(out: Any, what: str = "forward") -> None:
    import torch

    assert torch.isfinite(out).all(), f"{what} produced non-finite values"


def _reaches_parameters(module: Any, loss: Any, need_parameters: bool = True) -> None:
    loss.backward()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert trainable or not need_parameters, "component has no trainable parameters"
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"parameters received no gradient: {no_grad[:5]}"


def _same_after_safetensors(build: Callable[[], Any], forward: Callable[[Any], Any]) -> None:
    import torch
    from safetensors.torch import load, save

    torch.manual_seed(0)
    a = build()
    torch.manual_seed(1)
    b = build()
    state = {k: v.detach().contiguous() for k, v in a.state_dict().items()}
    b.load_state_dict(load(save(state)), strict=True)
    a.eval(), b.eval()
    with torch.no_grad():
        out_a, out_b = forward(a), forward(b)
    assert torch.allclose(out_a, out_b, atol=1e-5), "outputs differ after a safetensors state-dict round trip"


# backbone: (B, 3, H, W) -> (B, num_features), with the layer Grad-CAM uses

def _images(c: Component):
    import torch

    return torch.randn(2, 3, c.sizes["image_size"], c.sizes["image_size"], generator=torch.Generator().manual_seed(0))


@_check("backbone", "builds_module")
def _backbone_module(c: Component) -> None:
    _module(c.build(), c)


@_check("backbone", "satisfies_protocol")
def _backbone_protocol(c: Component) -> None:
    _conforms(c.build(), contracts.Backbone, c)


@_check("backbone", "feature_attributes")
def _backbone_attributes(c: Component) -> None:
    model, problems = c.build(), []
    if not (isinstance(getattr(model, "num_features", None), int) and model.num_features > 0):
        problems.append("num_features must be an int > 0")
    if getattr(model, "tokens_layout", None) not in contracts.LAYOUTS:
        problems.append(f"tokens_layout must be one of {contracts.LAYOUTS}")
    prefix = getattr(model, "num_prefix_tokens", None)
    if not (isinstance(prefix, int) and prefix >= 0):
        problems.append("num_prefix_tokens must be an int >= 0")
    assert not problems, "; ".join(problems)


@_check("backbone", "cam_module_is_cam_layer")
def _backbone_cam(c: Component) -> None:
    model = c.build()
    assert isinstance(model.cam_layer, str), "cam_layer must be the dotted name of the Grad-CAM layer"
    assert model.cam_module() is model.get_submodule(model.cam_layer), "cam_module() must return cam_layer's module"


@_check("backbone", "forward_shape")
def _backbone_shape(c: Component) -> None:
    model = c.build().train()
    out = model(_images(c))
    assert tuple(out.shape) == (2, model.num_features), f"expected (2, {model.num_features}), got {tuple(out.shape)}"


@_check("backbone", "forward_is_finite")
def _backbone_finite(c: Component) -> None:
    _finite(c.build().train()(_images(c)))


@_check("backbone", "backward_reaches_parameters")
def _backbone_backward(c: Component) -> None:
    model = c.build().train()
    _reaches_parameters(model, model(_images(c)).float().pow(2).mean())


@_check("backbone", "safetensors_round_trip")
def _backbone_round_trip(c: Component) -> None:
    x = _images(c)
    _same_after_safetensors(c.build, lambda m: m(x))


# head: (B, in_features) -> outputs; probabilities and a loss, its own or softmax and cross-entropy

def _features(c: Component, rows: int = 6):
    import torch

    return torch.randn(rows, c.sizes["in_features"], generator=torch.Generator().manual_seed(0))


def _targets(c: Component, rows: int = 6):
    import torch

    return torch.arange(rows) % c.sizes["num_classes"]


@_check("head", "builds_module")
def _head_module(c: Component) -> None:
    _module(c.build(), c)


@_check("head", "satisfies_protocol")
def _head_protocol(c: Component) -> None:
    _conforms(c.build(), contracts.Head, c)


@_check("head", "forward_shape")
def _head_shape(c: Component) -> None:
    h = c.build()
    out = h(_features(c))
    assert out.ndim == 2 and out.shape[0] == 6, f"head output must be (B, K'), got {tuple(out.shape)}"
    k = c.sizes["num_classes"]
    assert out.shape[1] == k or contracts.has_own_probabilities(h), \
        (f"head output is (B, {out.shape[1]}) for {k} classes: outputs that are not one logit per class need the "
         "head's own probabilities() and task_loss()")


@_check("head", "forward_is_finite")
def _head_finite(c: Component) -> None:
    _finite(c.build()(_features(c)))


@_check("head", "probabilities_sum_to_one")
def _head_probabilities(c: Component) -> None:
    import torch

    h, k = c.build(), c.sizes["num_classes"]
    probs = contracts.head_probabilities(h, h(_features(c)))
    assert tuple(probs.shape) == (6, k), f"probabilities must be (6, {k}), got {tuple(probs.shape)}"
    sums_to_one = torch.allclose(probs.sum(1), torch.ones(6), atol=1e-4)
    assert torch.isfinite(probs).all() and (probs >= 0).all() and sums_to_one, \
        "probabilities must be non-negative and sum to 1"


@_check("head", "own_probabilities_with_own_loss")
def _head_own_methods(c: Component) -> None:
    h = c.build()
    own_probs, own_loss = contracts.has_own_probabilities(h), callable(getattr(h, "task_loss", None))
    assert own_probs == own_loss, (
        "the head defines probabilities() but no task_loss(): lnzoo would train its outputs with cross-entropy as "
        "if they were logits" if own_probs else
        "the head defines task_loss() but no probabilities(): lnzoo would read its outputs through softmax as if "
        "they were logits")


@_check("head", "loss_is_finite_scalar")
def _head_loss(c: Component) -> None:
    import torch

    h = c.build()
    loss = contracts.head_loss(h, h(_features(c)), _targets(c), weight=None, label_smoothing=0.1)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and torch.isfinite(loss), \
        f"loss must be a finite scalar tensor, got {loss!r}"
    assert loss.requires_grad, "loss does not depend on the head's outputs"


@_check("head", "loss_weight_normalised")
def _head_weights(c: Component) -> None:
    import torch

    h, k = c.build(), c.sizes["num_classes"]
    out, target = h(_features(c)), _targets(c)
    w = torch.arange(1.0, k + 1)
    plain, ones = (contracts.head_loss(h, out, target, weight=x) for x in (None, torch.ones(k)))
    assert torch.allclose(plain, ones, atol=1e-5), \
        (f"class weights of 1 changed the loss ({float(plain):.6g} -> {float(ones):.6g}): normalise as "
         "F.cross_entropy does")
    scaled, once = contracts.head_loss(h, out, target, weight=5 * w), contracts.head_loss(h, out, target, weight=w)
    assert torch.allclose(scaled, once, atol=1e-5), \
        "scaling every class weight by 5 changed the loss: normalise by the weights' sum, as F.cross_entropy does"


@_check("head", "backward_reaches_parameters")
def _head_backward(c: Component) -> None:
    import torch

    h = c.build().train()
    k = c.sizes["num_classes"]
    _reaches_parameters(h, contracts.head_loss(h, h(_features(c)), _targets(c), weight=torch.ones(k)))


@_check("head", "safetensors_round_trip")
def _head_round_trip(c: Component) -> None:
    x = _features(c)
    _same_after_safetensors(c.build, lambda m: m(x))


# fusion: N x (B, F) + presence mask -> (B, out_features); an absent member never reaches the result

def _views(c: Component, grad: bool = False):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, c.sizes["in_features"], generator=g).requires_grad_(grad) for _ in range(c.num_views)]


def _mixed_presence(n: int):
    """Row 0: every view; row 1: all but the first; row 2: all but the last (one view: always present)."""
    import torch

    mask = torch.ones(3, n, dtype=torch.bool)
    if n > 1:
        mask[1, 0] = mask[2, -1] = False
    return mask


@_check("fusion", "builds_module")
def _fusion_module(c: Component) -> None:
    _module(c.build(), c)


@_check("fusion", "satisfies_protocol")
def _fusion_protocol(c: Component) -> None:
    f = c.build()
    _conforms(f, contracts.Fusion, c)
    assert isinstance(f.out_features, int) and f.out_features > 0, "fusion out_features must be an int > 0"


@_check("fusion", "forward_shape")
def _fusion_shape(c: Component) -> None:
    f = c.build()
    out = f(_views(c), _mixed_presence(c.num_views))
    assert tuple(out.shape) == (3, f.out_features), f"expected (3, {f.out_features}), got {tuple(out.shape)}"


@_check("fusion", "forward_is_finite")
def _fusion_finite(c: Component) -> None:
    _finite(c.build()(_views(c), _mixed_presence(c.num_views)))


@_check("fusion", "present_none_means_all_present")
def _fusion_none(c: Component) -> None:
    import torch

    f, feats = c.build().eval(), _views(c)
    with torch.no_grad():
        a, b = f(feats, None), f(feats, torch.ones(3, c.num_views, dtype=torch.bool))
    assert torch.allclose(a, b, atol=1e-5), "present=None must mean every view is present"


@_check("fusion", "every_view_gets_gradient")
def _fusion_view_grads(c: Component) -> None:
    f, feats = c.build().train(), _views(c, grad=True)
    f(feats, _mixed_presence(c.num_views)).float().pow(2).mean().backward()
    missing = [i for i, x in enumerate(feats) if x.grad is None or not x.grad.abs().sum() > 0]
    assert not missing, f"views {missing} received no gradient from the rows they are present in"


@_check("fusion", "backward_reaches_parameters")
def _fusion_backward(c: Component) -> None:
    f = c.build().train()  # a fusion may have no parameters (concat); the views carry gradients then
    _reaches_parameters(f, f(_views(c, grad=True), _mixed_presence(c.num_views)).float().pow(2).mean(),
                        need_parameters=False)


@_check("fusion", "masked_member_cannot_leak")
def _fusion_leak(c: Component) -> None:
    import torch

    if c.num_views < 2:
        raise NotApplicable(f"{c.num_views} view: there is no member to mask")
    f, feats = c.build().eval(), _views(c)
    garbage = [x.clone() for x in feats]
    garbage[-1] = garbage[-1] * 1e3 + 7.0
    mask = torch.ones(3, c.num_views, dtype=torch.bool)
    mask[:, -1] = False
    with torch.no_grad():
        a, b = f(feats, mask), f(garbage, mask)
    assert torch.allclose(a, b, atol=1e-5), "output depends on a view marked missing"


@_check("fusion", "safetensors_round_trip")
def _fusion_round_trip(c: Component) -> None:
    feats, mask = _views(c), _mixed_presence(c.num_views)
    _same_after_safetensors(c.build, lambda m: m(feats, mask))


# input kind: rows -> check -> fit (JSON state) -> encode -> encoder

@contextmanager
def _input_run(c: Component, fit: bool = True) -> Iterator[dict[str, Any]]:
    """Build the kind, check every row, fit on the good ones: what a run does before its folds."""
    with tempfile.TemporaryDirectory(prefix="lnzoo-kit-") as tmp:
        kind, rows = c.build(), c.rows_in(Path(tmp))
        problems: list[str] = []
        bad = kind.check(rows, problems)
        good = [r for i, r in enumerate(rows) if i not in set(bad or ())]
        run = {"kind": kind, "rows": rows, "problems": problems, "bad": bad, "good": good}
        if fit:
            run["state"] = kind.fit(good)
            run["shape"] = tuple(kind.shape(run["state"]))
            run["encoded"] = [kind.encode(r, run["state"]) for r in good]
        yield run


def _batch(run: dict[str, Any]):
    import numpy as np
    import torch

    given = [np.asarray(e) for e in run["encoded"] if e is not None]
    assert given, f"input {run['kind'].column!r}: no row encoded to an array; check it on rows that have the input"
    return torch.from_numpy(np.stack(given[:4] * (2 if len(given) < 2 else 1)))  # never a batch of one


@_check("input", "builds_input_kind")
def _input_builds(c: Component) -> None:
    kind = c.build()  # lnzoo's build_kind names the Protocol's missing members
    assert kind.dtype in ("float32", "int64"), f"dtype must be 'float32' or 'int64', got {kind.dtype!r}"
    assert isinstance(kind.column, str) and kind.column, "column must be a non-empty string"


@_check("input", "bad_rows_named")
def _input_bad_rows(c: Component) -> None:
    with _input_run(c, fit=False) as run:
        bad, rows, problems = run["bad"], run["rows"], run["problems"]
        assert isinstance(bad, set) and all(isinstance(i, int) and 0 <= i < len(rows) for i in bad), \
            f"check must return a set of row indices, got {bad!r}"
        assert all(isinstance(p, str) for p in problems), "check must append strings to problems"
        unnamed = [rows[i].origin for i in sorted(bad) if not any(rows[i].origin in p for p in problems)]
        assert not unnamed, f"bad rows without a problem naming them (\"file:line: reason\"): {unnamed}"


@_check("input", "fit_state_is_json")
def _input_json(c: Component) -> None:
    with _input_run(c) as run:
        assert isinstance(run["state"], dict), f"fit must return a dict, got {type(run['state']).__name__}"
        try:
            json.dumps(run["state"])
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"the fitted state is not JSON (the checkpoint stores JSON, nothing pickled): {exc}") \
                from None


@_check("input", "encode_shape_and_dtype")
def _input_encode(c: Component) -> None:
    import numpy as np

    with _input_run(c) as run:
        shape, dtype = run["shape"], np.dtype(run["kind"].dtype)
        assert shape and all(isinstance(n, int) and n > 0 for n in shape), f"shape must be positive ints, got {shape}"
        given = [np.asarray(e) for e in run["encoded"] if e is not None]
        assert given, "no row encoded to an array; check it on rows that have the input"
        wrong = {(a.shape, str(a.dtype)) for a in given if a.shape != shape or a.dtype != dtype}
        assert not wrong, f"encode returned {sorted(wrong)}, expected {shape} {dtype}"


@_check("input", "encode_is_finite")
def _input_encode_finite(c: Component) -> None:
    import numpy as np

    with _input_run(c) as run:
        assert all(np.isfinite(np.asarray(e)).all() for e in run["encoded"] if e is not None), \
            "encode returned non-finite values"


@_check("input", "stored_state_encodes_the_same")
def _input_reload(c: Component) -> None:
    import numpy as np

    with _input_run(c) as run:
        again, stored = c.build(), json.loads(json.dumps(run["state"]))  # a checkpoint reload: fresh kind, JSON only
        for row, e in zip(run["good"], run["encoded"]):
            r = again.encode(row, stored)
            assert (r is None) == (e is None) and (e is None or np.array_equal(np.asarray(r), np.asarray(e))), \
                f"{row.origin}: encodes differently from the JSON state a checkpoint stores"


@_check("input", "forward_shape")
def _input_forward(c: Component) -> None:
    with _input_run(c) as run:
        _module(encoder := run["kind"].encoder(run["state"], c.sizes["out_features"]), c)
        batch = _batch(run)
        out = encoder.train()(batch)
        want = (batch.shape[0], c.sizes["out_features"])
        assert tuple(out.shape) == want, f"encoder output {tuple(out.shape)}, expected {want}"


@_check("input", "forward_is_finite")
def _input_finite(c: Component) -> None:
    with _input_run(c) as run:
        _finite(run["kind"].encoder(run["state"], c.sizes["out_features"]).train()(_batch(run)), "the encoder")


@_check("input", "backward_reaches_parameters")
def _input_backward(c: Component) -> None:
    with _input_run(c) as run:
        encoder = run["kind"].encoder(run["state"], c.sizes["out_features"]).train()
        _reaches_parameters(encoder, encoder(_batch(run)).float().pow(2).mean())


@_check("input", "safetensors_round_trip")
def _input_round_trip(c: Component) -> None:
    with _input_run(c) as run:
        batch = _batch(run)
        _same_after_safetensors(lambda: run["kind"].encoder(run["state"], c.sizes["out_features"]), lambda m: m(batch))


@_check("input", "encoder_rebuilds_from_stored_state")
def _input_rebuild(c: Component) -> None:
    import torch
    from safetensors.torch import load, save

    with _input_run(c) as run:
        n, batch = c.sizes["out_features"], _batch(run)
        encoder = run["kind"].encoder(run["state"], n)
        rebuilt = c.build().encoder(json.loads(json.dumps(run["state"])), n)  # a fresh kind and the stored JSON
        weights = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
        own = rebuilt.state_dict()
        assert set(own) == set(weights) and all(own[k].shape == v.shape for k, v in weights.items()), \
            ("the encoder rebuilt from the stored state does not fit the trained one's weights: put everything "
             "encoder() depends on (widths, layers) into the state fit() returns")
        rebuilt.load_state_dict(load(save(weights)))
        encoder.eval(), rebuilt.eval()
        with torch.no_grad():
            assert torch.allclose(encoder(batch), rebuilt(batch), atol=1e-5), \
                "the encoder rebuilt from the stored state gives other features"


@_check("input", "optional_members_valid")
def _input_optional(c: Component) -> None:
    with _input_run(c) as run:
        kind, problems = run["kind"], []
        if getattr(kind, "reads", "file") not in ("file", "text"):
            problems.append(f"reads must be 'file' or 'text', got {kind.reads!r}")
        columns = getattr(kind, "columns", None)
        if columns is not None and not (isinstance(columns, (list, tuple)) and columns and
                                        all(isinstance(x, str) and x for x in columns) and kind.column in columns):
            problems.append(f"columns must list the column names it reads, column among them, got {columns!r}")
        if hasattr(kind, "keep_in_memory") and not callable(kind.keep_in_memory):
            problems.append("keep_in_memory must be a method")
        if hasattr(kind, "data_note"):
            note = contracts.input_note(kind) if callable(kind.data_note) else kind.data_note
            if not (note is None or (isinstance(note, str) and "\n" not in note)):
                problems.append(f"data_note() must return one line or None, got {note!r}")
        if hasattr(kind, "feature_names"):
            names = contracts.input_feature_names(kind, run["state"]) if callable(kind.feature_names) else None
            if not (isinstance(names, list) and all(isinstance(x, str) for x in names) and len(run["shape"]) == 1
                    and len(names) == run["shape"][0]):
                problems.append(f"feature_names(state) must name each of the {run['shape']} encoded features, "
                                f"got {names!r}")
        assert not problems, "; ".join(problems)


# task: classes (the one source of truth for indices), aliases, loss and weighting, dict round trip

@_check("task", "builds_task")
def _task_builds(c: Component) -> None:
    from lnzoo.tasks import Task

    t = c.build()
    assert isinstance(t, Task), f"a task must be a lnzoo.tasks.Task, got {type(t).__name__}"
    assert isinstance(t.name, str) and t.name.strip(), f"task name must be a non-empty string, got {t.name!r}"


@_check("task", "registered_under_its_name")
def _task_name(c: Component) -> None:
    if c.obj is not None:
        raise NotApplicable("a task object, not a registration")
    t = c.build()
    assert t.name == c.name, f"registered as {c.name!r} but its name is {t.name!r}"


@_check("task", "classes_unique")
def _task_classes(c: Component) -> None:
    from lnzoo.tasks import _norm

    classes = list(c.build().classes)
    assert len(classes) >= 2, f"a task needs at least two classes, got {classes}"
    assert all(isinstance(x, str) and x.strip() for x in classes), f"classes must be non-empty strings: {classes}"
    keys = [_norm(x) for x in classes]
    assert len(set(keys)) == len(keys), f"classes repeat (case and width folded): {classes}"


@_check("task", "class_names_find_their_index")
def _task_index(c: Component) -> None:
    t = c.build()
    wrong = [(cls, t.try_index(cls)) for i, cls in enumerate(t.classes) if t.try_index(cls) != i]
    assert not wrong, f"index_of(class) is not the class's position: {wrong}"


@_check("task", "positive_is_a_class")
def _task_positive(c: Component) -> None:
    t = c.build()
    assert t.positive is None or t.positive in t.classes, f"positive {t.positive!r} is not one of {list(t.classes)}"


@_check("task", "passes_on_is_a_class")
def _task_passes_on(c: Component) -> None:
    t = c.build()
    assert t.passes_on is None or t.passes_on in t.classes, f"passes_on {t.passes_on!r} is not one of {list(t.classes)}"


@_check("task", "aliases_map_to_classes")
def _task_aliases(c: Component) -> None:
    t, problems = c.build(), []
    for cls, aliases in dict(t.aliases).items():
        if cls not in t.classes:
            problems.append(f"aliases name unknown class {cls!r}")
            continue
        for alias in aliases:
            if t.try_index(alias) != t.classes.index(cls):
                problems.append(f"alias {alias!r} of {cls!r} finds {t.try_index(alias)!r}")
    assert not problems, "; ".join(problems)


@_check("task", "loss_and_weighting_valid")
def _task_loss(c: Component) -> None:
    from lnzoo.tasks import LOSSES, WEIGHTINGS

    t, problems = c.build(), []
    if t.loss not in LOSSES:
        problems.append(f"loss {t.loss!r} is not one of {LOSSES}")
    if t.class_weighting not in WEIGHTINGS:
        problems.append(f"class_weighting {t.class_weighting!r} is not one of {WEIGHTINGS}")
    if not (isinstance(t.label_smoothing, (int, float)) and 0.0 <= t.label_smoothing < 1.0):
        problems.append(f"label_smoothing must be in [0, 1), got {t.label_smoothing!r}")
    if not isinstance(t.ordinal, bool):
        problems.append(f"ordinal must be true or false, got {t.ordinal!r}")
    assert not problems, "; ".join(problems)


@_check("task", "as_dict_round_trip")
def _task_round_trip(c: Component) -> None:
    from lnzoo.tasks import Task

    t = c.build()
    again = Task.from_dict(json.loads(json.dumps(t.as_dict())), source=f"task {t.name!r} as_dict()")
    assert again == t, f"Task.from_dict(as_dict()) gives another task: {again!r}"


# --- running the checks ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One named check of one kind; ``check(component)`` runs it (in a pytest test: a check that does not
    apply is skipped). Torch's random state is left as it was."""

    kind: str
    name: str
    fn: Callable[[Component], None] = field(repr=False)

    def __repr__(self) -> str:
        return f"Check({self.kind}:{self.name})"

    def run(self, component: Component) -> None:
        if component.kind != self.kind:
            raise ValueError(f"check {self.kind}:{self.name} does not check a {component.kind}")
        import torch

        with torch.random.fork_rng(devices=[]):
            self.fn(component)

    def __call__(self, component: Component) -> None:
        try:
            self.run(component)
        except NotApplicable as exc:
            import pytest

            pytest.skip(f"{component.label} {self.name}: {exc}")


def yield_checks(component: Any) -> Iterator[tuple[str, Check]]:
    """The named checks of a component's kind: ``(name, check)``, in order."""
    c = _as_component(component)
    for name, fn in CHECKS[c.kind].items():
        yield name, Check(c.kind, name, fn)


def _expected_for(c: Component, expected_failed: Any) -> dict[str, str]:
    if expected_failed is None:
        return {}
    if callable(expected_failed):
        return dict(expected_failed(c) or {})
    if all(isinstance(v, Mapping) for v in expected_failed.values()):  # {component label: {check: reason}}
        return dict(expected_failed.get(c.label, expected_failed.get(f"{c.kind}:{c.name}", {})))
    return {k: v for k, v in expected_failed.items() if k in CHECKS[c.kind]}  # {check: reason}: every component


def _validate_expected(components: list[Component], expected_failed: Any) -> None:
    """A misspelt check or component in ``expected_failed`` is an error, not a silent no-op."""
    if expected_failed is None or callable(expected_failed):
        return
    if not isinstance(expected_failed, Mapping):
        raise TypeError("expected_failed must be {check: reason}, {component: {check: reason}} or a callable")
    values = list(expected_failed.values())
    if values and all(isinstance(v, Mapping) for v in values):
        labels = {c.label: c for c in components} | {f"{c.kind}:{c.name}": c for c in components}
        for label, checks in expected_failed.items():
            if label not in labels:
                raise ValueError(f"expected_failed names {label!r}, not one of the components checked"
                                 f"{did_you_mean(label, labels)}")
            known = CHECKS[labels[label].kind]
            for name in checks:
                if name not in known:
                    raise ValueError(f"expected_failed[{label!r}] names {name!r}, not a check of a "
                                     f"{labels[label].kind}{did_you_mean(name, known)}")
        return
    if not all(isinstance(v, str) for v in values):
        raise TypeError("expected_failed must be {check: reason} or {component: {check: reason}}, not a mix")
    known = {n for c in components for n in CHECKS[c.kind]}
    for name in expected_failed:
        if name not in known:
            raise ValueError(f"expected_failed names {name!r}, not a check of the components given"
                             f"{did_you_mean(name, known)}")


def parametrize_with_checks(components: Iterable[Any], expected_failed: Any = None):
    """A pytest decorator: one test item per (component, check), with ids such as ``head:linear-forward_shape``
    (``pytest -k forward_shape`` runs one check everywhere). The test receives ``component`` and ``check``
    and calls ``check(component)``.

    ``expected_failed`` marks known failures as xfail with their reason: ``{check: reason}`` for every
    component that has the check, ``{component label: {check: reason}}`` for one component, or a callable
    ``component -> {check: reason}``. An expected failure that passes fails the test (strict xfail), so the
    list shrinks as things are fixed."""
    import pytest

    items = [_as_component(c) for c in components]
    _validate_expected(items, expected_failed)
    params = []
    for c in items:
        expected = _expected_for(c, expected_failed)
        for name, check in yield_checks(c):
            marks = [pytest.mark.xfail(reason=expected[name], strict=True)] if name in expected else []
            params.append(pytest.param(c, check, id=f"{c.label}-{name}", marks=marks))
    return pytest.mark.parametrize(("component", "check"), params)


@dataclass(frozen=True)
class CheckResult:
    """What one check found: ``status`` is "passed", "failed", "skipped", "xfail" (failed as expected) or
    "xpass" (expected to fail, passed: a failure of the report)."""

    component: str
    check: str
    status: str
    message: str = ""
    reason: str = ""  # why it was expected to fail

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "skipped", "xfail")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {text}"


def check_component(component: Any, name: str | None = None, host: PluginHost | None = None, *,
                    expected_failed: Mapping[str, str] | None = None, checks: Iterable[str] | None = None,
                    on_fail: str | None = "raise", **kwargs: Any) -> list[CheckResult]:
    """Run every check of one component and report every failure at once (not the first only).

    ``component``: a :class:`Component`, ``"kind:name"``, or the kind with ``name`` (then ``host`` and
    ``kwargs`` as :func:`head` and friends take them; an input kind's rows as ``rows=``). ``expected_failed``:
    ``{check: reason}``; ``checks``: run only these. ``on_fail``: "raise" (:class:`ConformanceError`, listing
    each failed check), "warn", or None; the results are returned either way."""
    if name is not None:
        if kwargs.get("rows") is None and "samples" in kwargs:
            kwargs["rows"] = kwargs.pop("samples")
        make = {"backbone": backbone, "head": head, "fusion": fusion, "task": task, "input": input_kind}[component]
        c = make(name, host=host, **kwargs)
    else:
        c = _as_component(component)
        if host is not None or kwargs:
            raise TypeError("host and factory arguments go with a kind and a name, or into the Component")
    wanted = None if checks is None else list(checks)
    for n in [*(wanted or []), *(expected_failed or {})]:
        if n not in CHECKS[c.kind]:
            raise ValueError(f"{n!r} is not a check of a {c.kind}{did_you_mean(n, CHECKS[c.kind])}")
    results = []
    for check_name, check in yield_checks(c):
        if wanted is not None and check_name not in wanted:
            continue
        reason = (expected_failed or {}).get(check_name, "")
        try:
            check.run(c)
        except NotApplicable as exc:
            results.append(CheckResult(c.label, check_name, "skipped", str(exc), reason))
        except Exception as exc:  # a check that raises anything has failed: name it and go on to the next
            results.append(CheckResult(c.label, check_name, "xfail" if reason else "failed", _describe(exc), reason))
        else:
            results.append(CheckResult(c.label, check_name, "xpass" if reason else "passed",
                                       "expected to fail, but passed: take it out of expected_failed" if reason else "",
                                       reason))
    bad = [r for r in results if not r.ok]
    if bad and on_fail is not None:
        lines = [f"{c.label}: {len(bad)} of {len(results)} conformance checks failed:",
                 *(f"  {r.check}: {r.message}" for r in bad)]
        if on_fail == "raise":
            raise ConformanceError("\n".join(lines))
        if on_fail != "warn":
            raise ValueError(f"on_fail must be 'raise', 'warn' or None, got {on_fail!r}")
        warnings.warn("\n".join(lines), stacklevel=2)
    return results


def check_backbone(name: str, host: PluginHost | None = None, image_size: int = 64, *,
                   expected_failed: Mapping[str, str] | None = None, on_fail: str | None = "raise",
                   **kwargs: Any) -> list[CheckResult]:
    """Every backbone check (:func:`check_names` ``("backbone")``); every failure reported at once."""
    return check_component(backbone(name, host=host, image_size=image_size, **kwargs), expected_failed=expected_failed,
                           on_fail=on_fail)


def check_head(name: str, host: PluginHost | None = None, in_features: int = 32, num_classes: int = 3, *,
               expected_failed: Mapping[str, str] | None = None, on_fail: str | None = "raise",
               **kwargs: Any) -> list[CheckResult]:
    """Every head check; every failure reported at once."""
    return check_component(head(name, host=host, in_features=in_features, num_classes=num_classes, **kwargs),
                           expected_failed=expected_failed, on_fail=on_fail)


def check_fusion(name: str, host: PluginHost | None = None, num_views: int = 2, in_features: int = 16, *,
                 expected_failed: Mapping[str, str] | None = None, on_fail: str | None = "raise",
                 **kwargs: Any) -> list[CheckResult]:
    """Every fusion check; every failure reported at once."""
    return check_component(fusion(name, host=host, num_views=num_views, in_features=in_features, **kwargs),
                           expected_failed=expected_failed, on_fail=on_fail)


def check_input(name: str, rows: Sequence[Any] | Callable[[Path], Sequence[Any]], host: PluginHost | None = None,
                out_features: int = 16, *, expected_failed: Mapping[str, str] | None = None,
                on_fail: str | None = "raise", **options: Any) -> list[CheckResult]:
    """Every input-kind check on ``rows`` (:func:`make_rows`, at least one of them with the input given);
    every failure reported at once."""
    return check_component(input_kind(name, rows, host=host, out_features=out_features, **options),
                           expected_failed=expected_failed, on_fail=on_fail)


def check_task(name_or_task: Any, host: PluginHost | None = None, *,
               expected_failed: Mapping[str, str] | None = None, on_fail: str | None = "raise") -> list[CheckResult]:
    """Every task check, on a registered task's name or a ``lnzoo.tasks.Task``; every failure reported at once."""
    return check_component(task(name_or_task, host=host), expected_failed=expected_failed, on_fail=on_fail)
