"""The named checks of each kind, in the order they run: the kinds' modules register them here."""
from __future__ import annotations

from collections.abc import Callable

from lnzoo.testing._component import KINDS, Component

CheckFn = Callable[[Component], None]
CHECKS: dict[str, dict[str, CheckFn]] = {kind: {} for kind in KINDS}


class NotApplicable(Exception):
    """Raised by a check that does not apply to a component (a one-view fusion has no view to mask)."""


def checks_of(kind: str) -> Callable[..., Callable[[CheckFn], CheckFn] | CheckFn]:
    """The registrar of ``kind``'s checks: ``@check(name)`` above a check, or ``check(name, fn)``."""
    def check(name: str, fn: CheckFn | None = None):
        def register(fn: CheckFn) -> CheckFn:
            CHECKS[kind][name] = fn
            return fn
        return register if fn is None else register(fn)
    return check


def check_names(kind: str) -> list[str]:
    """The names of the checks for one kind of component, in the order they run."""
    return list(CHECKS[kind])
