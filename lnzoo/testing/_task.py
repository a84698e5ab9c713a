"""A task's checks: classes (the one source of truth for indices), aliases, loss and weighting, dict round trip."""
from __future__ import annotations

import json

from lnzoo.testing._component import Component
from lnzoo.testing._registry import NotApplicable, checks_of

check = checks_of("task")


@check("builds_task")
def _builds(c: Component) -> None:
    from lnzoo.tasks import Task

    t = c.build()
    assert isinstance(t, Task), f"a task must be a lnzoo.tasks.Task, got {type(t).__name__}"
    assert isinstance(t.name, str) and t.name.strip(), f"task name must be a non-empty string, got {t.name!r}"


@check("registered_under_its_name")
def _name(c: Component) -> None:
    if c.obj is not None:
        raise NotApplicable("a task object, not a registration")
    t = c.build()
    assert t.name == c.name, f"registered as {c.name!r} but its name is {t.name!r}"


@check("classes_unique")
def _classes(c: Component) -> None:
    from lnzoo.tasks import _norm

    classes = list(c.build().classes)
    assert len(classes) >= 2, f"a task needs at least two classes, got {classes}"
    assert all(isinstance(x, str) and x.strip() for x in classes), f"classes must be non-empty strings: {classes}"
    keys = [_norm(x) for x in classes]
    assert len(set(keys)) == len(keys), f"classes repeat (case and width folded): {classes}"


@check("class_names_find_their_index")
def _index(c: Component) -> None:
    t = c.build()
    wrong = [(cls, t.try_index(cls)) for i, cls in enumerate(t.classes) if t.try_index(cls) != i]
    assert not wrong, f"index_of(class) is not the class's position: {wrong}"


def _is_a_class(attribute: str):
    """The check that the task's ``attribute`` (positive, passes_on) is None or one of its classes."""
    def check_attribute(c: Component) -> None:
        t = c.build()
        value = getattr(t, attribute)
        assert value is None or value in t.classes, f"{attribute} {value!r} is not one of {list(t.classes)}"
    return check_attribute


check("positive_is_a_class", _is_a_class("positive"))
check("passes_on_is_a_class", _is_a_class("passes_on"))


@check("aliases_map_to_classes")
def _aliases(c: Component) -> None:
    t, problems = c.build(), []
    for cls, aliases in dict(t.aliases).items():
        if cls not in t.classes:
            problems.append(f"aliases name unknown class {cls!r}")
            continue
        for alias in aliases:
            if t.try_index(alias) != t.classes.index(cls):
                problems.append(f"alias {alias!r} of {cls!r} finds {t.try_index(alias)!r}")
    assert not problems, "; ".join(problems)


@check("loss_and_weighting_valid")
def _loss(c: Component) -> None:
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


@check("as_dict_round_trip")
def _round_trip(c: Component) -> None:
    from lnzoo.tasks import Task

    t = c.build()
    again = Task.from_dict(json.loads(json.dumps(t.as_dict())), source=f"task {t.name!r} as_dict()")
    assert again == t, f"Task.from_dict(as_dict()) gives another task: {again!r}"
