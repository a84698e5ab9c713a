"""Exceptions with the exit codes the CLI maps them to (2: usage/recipe/data, 1: runtime)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence


class LnzooError(Exception):
    """Base of every error lnzoo raises on purpose; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UsageError(LnzooError):
    """The user asked for something that cannot be: bad recipe, unknown name, bad data."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """A name that no registry (or task) knows; the message teaches the right spelling."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}{did_you_mean(name, self.known)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class PluginError(LnzooError):
    """A plugin could not be loaded or registered something invalid."""


class RecipeError(UsageError):
    """One or more problems in a recipe; all of them are listed at once."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems, self.source = problems, source
        head = f"{source}: " if source else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{head}{len(problems)} problem(s) in the recipe:\n{lines}")


class DataError(UsageError):
    """Bad input data: each problem names file, line and reason."""

    def __init__(self, problems: list[str], summary: str = "problem(s) in the data"):
        self.problems = problems
        shown = problems[:50]
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} {summary}:\n" + "\n".join(f"  - {p}" for p in shown) + more)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return a ' (did you mean ...?)' suffix, or the list of known names when nothing is close."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        return f"; did you mean {' or '.join(repr(c) for c in close)}?"
    if not known:
        return "; none are registered"
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    return f"; known: {shown}"


class ValidationError(DataError):
    """Every problem a check found, grouped by stage (recipe, data, leakage, folds, model), all at once.

    ``stages`` maps each stage, in order, to its problems (an empty list: the stage passed) or to a string saying
    why it was not checked (a stage never runs on what an earlier one found broken). ``notes`` adds a remark to
    a stage's heading. ``problems`` is every problem in one list, as a DataError's is.
    """

    def __init__(self, stages: Mapping[str, Sequence[str] | str], notes: Mapping[str, str] | None = None,
                 source: str | None = None):
        self.stages = {k: (v if isinstance(v, str) else list(v)) for k, v in stages.items()}
        self.notes, self.source = dict(notes or {}), source
        self.problems = [p for v in self.stages.values() if not isinstance(v, str) for p in v]
        self.summary = "problem(s)"
        head = f"{source}: " if source else ""
        lines = [f"{head}{len(self.problems)} problem(s), by stage:"]
        for stage, found in self.stages.items():
            note = f" ({self.notes[stage]})" if stage in self.notes else ""
            if isinstance(found, str):
                lines.append(f"{stage}: {found}{note}")
            elif not found:
                lines.append(f"{stage}: ok{note}")
            else:
                lines.append(f"{stage}: {len(found)} problem(s){note}")
                lines += [f"  - {p}" for p in found[:50]]
                lines += [f"  ... and {len(found) - 50} more"] if len(found) > 50 else []
        UsageError.__init__(self, "\n".join(lines))


class OutputError(LnzooError):
    """The output folder cannot be written (read-only, full, gone): exit 1, the path and the reason."""

    exit_code = 1
