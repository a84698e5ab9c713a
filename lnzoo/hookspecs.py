"""The whole plugin contract of lnzoo.

A plugin is a module named by an entry point in the group ``lnzoo``. It implements any of the
hooks below with ``@lnzoo.hookimpl``. Each hook receives a ``register`` callable:

    register(name, factory, description=None, *, override=False, default=False)

``factory`` is a callable or a ``"package.module:attr"`` string imported on first build (keep
torch out of start-up). The host records the name, description, factory and the distribution +
version that registered it. ``default=True``: the entry a recipe that names none of its kind gets
(one per kind; replacing another's needs ``override=True``). What a factory must accept and
return is the Protocols of ``lnzoo.contracts``, checked by ``lnzoo.testing``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from lnzoo.registry import Register

PROJECT = "lnzoo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- model components -----------------------------------------------------------------------

@hookspec
def lnzoo_register_backbones(register: "Register") -> None:
    """Register image backbones: ``factory(pretrained=False, **kw) -> contracts.Backbone``; fires once at start-up."""


@hookspec
def lnzoo_register_heads(register: "Register") -> None:
    """Register task heads: ``factory(in_features, num_classes, **kw) -> contracts.Head``; fires once at start-up."""


@hookspec
def lnzoo_register_fusions(register: "Register") -> None:
    """Register view fusions: ``factory(num_views, in_features, **kw) -> contracts.Fusion``; fires once at start-up."""


# --- tasks ------------------------------------------------------------------------------------

@hookspec
def lnzoo_register_tasks(register: "Register") -> None:
    """Register tasks: ``factory() -> lnzoo.tasks.Task`` (or a Task itself); fires once at start-up."""


# --- inputs -----------------------------------------------------------------------------------

@hookspec
def lnzoo_register_inputs(register: "Register") -> None:
    """Register input kinds: ``factory(column=..., **kw) -> contracts.InputKind``; fires once at start-up."""


# --- runs -------------------------------------------------------------------------------------

@hookspec
def lnzoo_register_trackers(register: "Register") -> None:
    """Register experiment trackers: ``factory(run_dir, recipe, **kw) -> contracts.Tracker``, a subscriber of a
    run's events (:mod:`lnzoo.events`) named in ``train.track``; fires once at start-up."""


@hookspec
def lnzoo_register_pretrainers(register: "Register") -> None:
    """Register self-supervised pretraining methods: ``factory(backbone, **kw) -> contracts.Pretrainer``, named
    by a pretraining recipe's ``pretrain.method``; fires once at start-up."""
