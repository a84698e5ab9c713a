"""Conformance kit: lnzoo's contracts as named checks that plugin authors run on their own components.

Each kind of component (backbone, head, fusion, input kind, task, pretrainer, tracker) has a list of named checks
(:func:`check_names`). Describe what to check with :func:`backbone`, :func:`head`, :func:`fusion`,
:func:`input_kind`, :func:`task`, :func:`pretrainer` or :func:`tracker` (or a ``"kind:name"`` string), then either
let pytest
run one item per (component, check)::

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

# the kinds' checks register themselves, in the order they run, when their modules are imported;
# KINDS, SIZES and CHECKS stay importable from here, outside __all__, as they were
from lnzoo.testing import _backbone, _fusion, _head, _inputs, _pretrainer, _task, _tracker  # noqa: F401
from lnzoo.testing._component import (KINDS, SIZES, Component, backbone, fusion, head, input_kind,  # noqa: F401
                                      pretrainer, task, tracker)
from lnzoo.testing._kit import (Check, CheckResult, ConformanceError, check_backbone, check_component, check_fusion,
                                check_head, check_input, check_pretrainer, check_task, check_tracker,
                                parametrize_with_checks, yield_checks)
from lnzoo.testing._registry import CHECKS, NotApplicable, check_names  # noqa: F401
from lnzoo.testing._rows import make_row, make_rows, plugin_host, registered_names

__all__ = ["Component", "Check", "CheckResult", "ConformanceError", "NotApplicable", "backbone", "head", "fusion",
           "input_kind", "task", "pretrainer", "tracker", "check_names", "yield_checks", "parametrize_with_checks",
           "check_component", "check_backbone", "check_head", "check_fusion", "check_input", "check_task",
           "check_pretrainer", "check_tracker", "make_row", "make_rows", "plugin_host", "registered_names"]
