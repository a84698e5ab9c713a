"""What the kit checks: a registered component (its kind, name, factory arguments, sizes, plugin host and, for an
input kind, rows), described with :func:`backbone`, :func:`head`, :func:`fusion`, :func:`input_kind`, :func:`task`,
:func:`pretrainer` or :func:`tracker`."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnzoo import contracts
from lnzoo.errors import did_you_mean
from lnzoo.plugins import PluginHost, get_host

KINDS = ("backbone", "head", "fusion", "input", "task", "pretrainer", "tracker")
# the sizes the kit builds components at, unless a component asks for others
SIZES: dict[str, dict[str, int]] = {"backbone": {"image_size": 64}, "head": {"in_features": 32, "num_classes": 3},
                                    "fusion": {"num_views": 2, "in_features": 16}, "input": {"out_features": 16},
                                    "task": {}, "pretrainer": {"image_size": 32}, "tracker": {}}
# the backbone a pretrainer wraps unless it names another: timm's tiny test model
TEST_BACKBONE: dict[str, Any] = {"name": "timm", "model_name": "test_resnet"}


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
    wraps: Mapping[str, Any] | None = None  # the backbone table a pretrainer wraps (TEST_BACKBONE when None)

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
        if self.kind == "pretrainer":
            return self.build_pretrainer()[1]
        if self.kind == "tracker":
            raise TypeError("a tracker is built for a run: factory(run_dir, recipe); its checks build it so")
        return self.entry().build(**self.factory_options())

    def build_pretrainer(self) -> tuple[Any, Any]:
        """(the backbone, the pretrainer wrapping it), built as ``pretrain.method`` builds them; the backbone from
        the component's host, or lnzoo's own when that host does not register it (a host of one plugin)."""
        table = dict(self.wraps or TEST_BACKBONE)
        name = table.pop("name")
        host = self.resolved_host()
        if name not in host.registry("backbone").names():
            host = get_host()
        wrapped = host.get("backbone", name).build(**table)
        return wrapped, self.entry().build(wrapped, **self.factory_options())

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


def pretrainer(name: str, *, host: Any = None, image_size: int = 32, wraps: Mapping[str, Any] | None = None,
               **options: Any) -> Component:
    """A self-supervised pretraining method (``pretrain.method``), built as ``factory(backbone, **options)`` around
    the backbone table ``wraps`` (default timm's tiny ``test_resnet``), checked on two views of (4, 3,
    image_size, image_size) images."""
    return Component("pretrainer", name, options, {"image_size": image_size}, host, wraps=wraps)


def tracker(name: str, *, host: Any = None, **options: Any) -> Component:
    """An experiment tracker (``train.track``), built as ``factory(run_dir, recipe, **options)`` for a run directory
    the kit claims in a temporary folder, and run for real through a small run's events."""
    return Component("tracker", name, options, host=host)


# the describers by kind, for check_component(kind, name, ...)
DESCRIBE: dict[str, Callable[..., Component]] = {"backbone": backbone, "head": head, "fusion": fusion, "task": task,
                                                 "input": input_kind, "pretrainer": pretrainer,
                                                 "tracker": tracker}


def as_component(c: Any) -> Component:
    """A :class:`Component`, from itself, a ``"kind:name"`` string or a ``lnzoo.tasks.Task``."""
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
