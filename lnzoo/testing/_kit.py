"""Running the checks: a :class:`Check` per (kind, name), one pytest item per (component, check) from
:func:`parametrize_with_checks`, or every check of a component at once from :func:`check_component` and
``check_backbone`` and friends, each failure reported by its check's name."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnzoo.errors import did_you_mean
from lnzoo.plugins import PluginHost
from lnzoo.testing._component import (DESCRIBE, Component, as_component, backbone, fusion, head, input_kind,
                                      pretrainer, task, tracker)
from lnzoo.testing._registry import CHECKS, NotApplicable


class ConformanceError(AssertionError):
    """Every failed check of one or more components, one line each."""


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
    c = as_component(component)
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

    items = [as_component(c) for c in components]
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
        c = DESCRIBE[component](name, host=host, **kwargs)
    else:
        c = as_component(component)
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


def check_pretrainer(name: str, host: PluginHost | None = None, image_size: int = 32, *,
                     wraps: Mapping[str, Any] | None = None, expected_failed: Mapping[str, str] | None = None,
                     on_fail: str | None = "raise", **options: Any) -> list[CheckResult]:
    """Every pretrainer check, the method wrapping the backbone table ``wraps`` (timm's tiny test model by
    default); every failure reported at once."""
    return check_component(pretrainer(name, host=host, image_size=image_size, wraps=wraps, **options),
                           expected_failed=expected_failed, on_fail=on_fail)


def check_tracker(name: str, host: PluginHost | None = None, *, expected_failed: Mapping[str, str] | None = None,
                  on_fail: str | None = "raise", **options: Any) -> list[CheckResult]:
    """Every tracker check, the tracker following a small run in a temporary folder; every failure reported at
    once (a tracker whose package is missing: every check skipped, saying what to install)."""
    return check_component(tracker(name, host=host, **options), expected_failed=expected_failed, on_fail=on_fail)
