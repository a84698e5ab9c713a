"""Task definitions: classes (the one source of truth for indices), aliases, loss, weighting.

Torch-free; the loss that combines tasks lives in :mod:`lnzoo.loss`.
"""
from __future__ import annotations

import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnzoo.errors import UsageError, did_you_mean

MISSING = -1  # the label index of a sample that has no label for a task: no loss, never a class

LOSSES = ("cross_entropy",)
WEIGHTINGS = ("balanced", "none")
_KEYS = {"name", "description", "classes", "aliases", "positive", "loss", "class_weighting",
         "label_smoothing", "ordinal", "passes_on"}


def _norm(label: str) -> str:
    return unicodedata.normalize("NFKC", label).strip().casefold()


@dataclass(frozen=True)
class Task:
    """One classification task. ``classes[i]`` is the name of index ``i`` everywhere in lnzoo."""

    name: str
    classes: tuple[str, ...]
    description: str = ""
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    positive: str | None = None
    loss: str = "cross_entropy"
    class_weighting: str = "balanced"
    label_smoothing: float = 0.0
    ordinal: bool = False
    passes_on: str | None = None  # the class whose cases go on to the next stage of a cascade

    def __post_init__(self) -> None:
        problems = []
        if len(self.classes) < 2:
            problems.append("needs at least two classes")
        if len(set(self.classes)) != len(self.classes):
            problems.append(f"classes repeat: {list(self.classes)}")
        if self.loss not in LOSSES:
            problems.append(f"loss {self.loss!r} is not one of {LOSSES}")
        if self.class_weighting not in WEIGHTINGS:
            problems.append(f"class_weighting {self.class_weighting!r} is not one of {WEIGHTINGS}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for key in ("positive", "passes_on"):
            if getattr(self, key) is not None and getattr(self, key) not in self.classes:
                problems.append(f"{key} class {getattr(self, key)!r} is not one of {list(self.classes)}")
        for cls in self.aliases:
            if cls not in self.classes:
                problems.append(f"aliases name unknown class {cls!r}")
        lookup: dict[str, int] = {}
        for i, cls in enumerate(self.classes):
            for label in (cls, *self.aliases.get(cls, ())):
                key = _norm(label)
                if key in lookup and lookup[key] != i:
                    problems.append(f"label {label!r} maps to both {self.classes[lookup[key]]!r} and {cls!r}")
                lookup[key] = i
        if problems:
            raise UsageError(f"task {self.name!r}: " + "; ".join(problems))
        object.__setattr__(self, "_lookup", lookup)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def positive_index(self) -> int | None:
        """Index of the positive class for binary tasks (default: the second class)."""
        if self.num_classes != 2:
            return None
        return self.classes.index(self.positive) if self.positive else 1

    def index_of(self, label: str) -> int:
        """Map a class name or alias (any case, NFKC-normalised) to its index; error teaches the spelling."""
        idx = self._lookup.get(_norm(str(label)))  # type: ignore[attr-defined]
        if idx is None:
            known = [*self.classes, *(a for al in self.aliases.values() for a in al)]
            raise UsageError(f"label {label!r} is not a class of task {self.name!r}{did_you_mean(str(label), known)}")
        return idx

    def try_index(self, label: str) -> int | None:
        return self._lookup.get(_norm(str(label)))  # type: ignore[attr-defined]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "classes": list(self.classes),
                "aliases": {k: list(v) for k, v in self.aliases.items()}, "positive": self.positive,
                "loss": self.loss, "class_weighting": self.class_weighting,
                "label_smoothing": self.label_smoothing, "ordinal": self.ordinal, "passes_on": self.passes_on}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "Task":
        unknown = set(data) - _KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise UsageError(f"{source}: unknown key {key!r} in task definition{did_you_mean(key, _KEYS)}")
        for req in ("name", "classes"):
            if req not in data:
                raise UsageError(f"{source}: task definition needs {req!r}")
        aliases = {str(k): tuple(str(a) for a in (v if isinstance(v, list) else [v]))
                   for k, v in dict(data.get("aliases", {})).items()}
        try:
            return cls(name=str(data["name"]), classes=tuple(str(c) for c in data["classes"]),
                       description=str(data.get("description", "")), aliases=aliases,
                       positive=data.get("positive"), loss=str(data.get("loss", "cross_entropy")),
                       class_weighting=str(data.get("class_weighting", "balanced")),
                       label_smoothing=float(data.get("label_smoothing", 0.0)),
                       ordinal=bool(data.get("ordinal", False)), passes_on=data.get("passes_on"))
        except UsageError as exc:
            raise UsageError(f"{source}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> "Task":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    def with_options(self, **options: Any) -> "Task":
        """A copy with recipe-level overrides (label_smoothing, class_weighting)."""
        data = self.as_dict()
        data.update(options)
        return Task.from_dict(data, source=f"task {self.name!r} options")
