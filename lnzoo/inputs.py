"""The inputs of a model besides its image views: built from the recipe, checked, fitted per fold, encoded, stored.

An input kind (``lnzoo.contracts.InputKind``, registered through ``lnzoo_register_inputs``) says how one
kind of input is read, fitted and encoded; this module is the host's side of that contract. The
recipe names inputs in ``data.inputs.NAME = {name = KIND, column = ..., **options}``; ``data.covariates``
is the built-in kind ``covariates`` under the name ``covariates``. A model's fusion members are its image
views (in ``data.views`` order) and then these inputs (covariates first, then ``data.inputs`` in recipe
order); a member missing for a sample has ``present == False``, whatever kind it is.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnzoo.errors import DataError, UsageError

COVARIATES = "covariates"  # the name data.covariates takes as an input
# names an input cannot take: the ONNX graph's mask input, and attributes of the torch module holding the encoders
RESERVED = frozenset({"present", "type", "training", "forward", "train", "eval", "to", "cpu", "cuda", "float",
                      "half", "double", "apply", "parameters", "buffers", "children", "modules", "state_dict"})


def input_tables(data_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The recipe's inputs besides the image views, in member order: {input name: {name = KIND, **options}}, as
    plain JSON-able tables (the checkpoint stores them)."""
    from lnzoo.config import plain

    data_cfg, model_cfg = plain(data_cfg), plain(model_cfg) if model_cfg is not None else None
    tables: dict[str, dict[str, Any]] = {}
    if data_cfg.get("covariates"):
        tables[COVARIATES] = {"name": "covariates", "columns": list(data_cfg["covariates"]),
                              "types": dict(data_cfg.get("covariate_types") or {}),
                              "missing": list(data_cfg.get("missing_covariates") or []),
                              "hidden": int((model_cfg or {}).get("covariate_hidden", 32))}
    for name, table in (data_cfg.get("inputs") or {}).items():
        tables[name] = dict(table) if isinstance(table, dict) else {"name": table}
    return tables


def _with_column(name: str, table: Mapping[str, Any], factory: Any) -> dict[str, Any]:
    """The factory's arguments: the table's options, with ``column`` defaulting to the input's name when the
    kind has no default of its own (``data.inputs.report = "text"`` reads the column ``report``)."""
    kwargs = {k: v for k, v in table.items() if k != "name"}
    if "column" not in kwargs:
        try:
            param = inspect.signature(factory).parameters.get("column")
        except (TypeError, ValueError):
            param = None
        if param is not None and param.default is inspect.Parameter.empty:
            kwargs["column"] = name
    return kwargs


def build_kind(name: str, table: Mapping[str, Any], host, where: str = "") -> Any:
    """The input kind a table names, built by its registered factory."""
    from lnzoo.contracts import InputKind, missing_members
    from lnzoo.errors import LnzooError

    where = where or f"data.inputs.{name}"
    try:
        entry = host.get("input", table["name"])
        kind = entry.build(**_with_column(name, table, entry.factory))
    except (LnzooError, KeyError) as exc:
        raise UsageError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: input kind {table.get('name')!r}: {exc}") from None
    if not isinstance(kind, InputKind):
        raise UsageError(f"{where}: input kind {table['name']!r} ({type(kind).__name__}) does not satisfy "
                         f"lnzoo.contracts.InputKind: missing {missing_members(kind, InputKind)}")
    return kind


def check_recipe_inputs(out: dict[str, Any], problems: list[str], host) -> None:
    """Recipe-level checks of ``data.inputs`` (the tables' names and arguments are checked like plugin tables)."""
    data = out["data"]
    inputs = data.get("inputs") or {}
    if data.get("covariates") and COVARIATES in inputs:
        problems.append(f"data.inputs.{COVARIATES}: the name is taken by data.covariates; name this input otherwise")
    views = data.get("views")
    tasks = set(out["tasks"].get("task_weights") or {})
    for name in inputs:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or name in RESERVED:
            problems.append(f"data.inputs.{name}: an input's name is a word of letters, digits and _ starting with a "
                            f"letter, and not one of {sorted(RESERVED)} (it names a model part and an ONNX input)")
        elif name in tasks:
            problems.append(f"data.inputs.{name}: {name!r} is also a task; inputs and tasks need distinct names")
        if isinstance(views, list) and name in views:
            problems.append(f"data.inputs.{name}: {name!r} is also an image view in data.views; inputs and views "
                            "need distinct names")
    if (data.get("covariates") or inputs) and out["train"]["method"] == "linear_probe":
        problems.append("train.method = \"linear_probe\" fits on the frozen image backbone's features; the inputs "
                        "of data.covariates and data.inputs need an encoder trained with them: use \"finetune\"")
    if isinstance(views, list) and not views and not data.get("covariates") and not inputs:
        problems.append("data.views: empty, and there is no other input (data.covariates, data.inputs): "
                        "the model would see nothing")


@dataclass
class FittedInput:
    """One input of a model: its name, its kind, the recipe table that built it, its state fitted on a training part."""

    name: str
    kind: Any
    table: dict[str, Any]
    state: dict[str, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.kind.shape(self.state))

    def encode(self, sample) -> np.ndarray | None:
        arr = self.kind.encode(sample, self.state)
        if arr is None:
            return None
        arr = np.asarray(arr, dtype=self.kind.dtype)
        if arr.shape != self.shape:
            raise UsageError(f"input {self.name!r} (kind {self.table['name']!r}) encoded {sample.origin} to shape "
                             f"{list(arr.shape)}, but its shape() says {list(self.shape)}: a bug in the input kind")
        return arr


class Inputs:
    """The fitted inputs of one model, in member order (after the image views)."""

    def __init__(self, items: Sequence[FittedInput] = ()):
        self.items = list(items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.items]

    @property
    def columns(self) -> list[str]:
        """Every manifest column the inputs read (a kind reading several, as covariates do, lists ``columns``)."""
        return self._columns(lambda kind: True)

    @property
    def text_columns(self) -> list[str]:
        """The columns whose cell is the input itself (covariates, a report), not a file it names."""
        return self._columns(lambda kind: getattr(kind, "reads", "file") == "text")

    def _columns(self, which) -> list[str]:
        out: list[str] = []
        for item in self.items:
            if which(item.kind):
                out += [c for c in getattr(item.kind, "columns", None) or [item.kind.column] if c not in out]
        return out

    def encode(self, sample) -> tuple[dict[str, np.ndarray], list[bool]]:
        """One sample's encoded inputs (zeros where missing) and whether each is present."""
        arrays, present = {}, []
        for item in self.items:
            arr = item.encode(sample)
            present.append(arr is not None)
            arrays[item.name] = arr if arr is not None else np.zeros(item.shape, dtype=item.kind.dtype)
        return arrays, present

    def given(self, sample) -> list[str]:
        """The names of the inputs a sample gives (the others are missing for it)."""
        return [n for n, ok in zip(self.names, self.encode(sample)[1]) if ok]

    def encoders(self, out_features: int):
        """One trainable encoder per input (a ``torch.nn.ModuleDict``), each giving (B, out_features)."""
        from torch import nn

        return nn.ModuleDict({i.name: i.kind.encoder(i.state, out_features) for i in self.items})

    def as_meta(self) -> list[dict[str, Any]]:
        """What the checkpoint sidecar stores: JSON only (the encoders' weights are in the safetensors file)."""
        return [{"name": i.name, "table": i.table, "state": i.state} for i in self.items]

    @classmethod
    def from_meta(cls, meta: Sequence[Mapping[str, Any]] | None, host, source: str = "checkpoint") -> "Inputs":
        items = []
        for entry in meta or []:
            table = dict(entry["table"])
            kind = build_kind(entry["name"], table, host, where=f"{source}: input {entry['name']!r}")
            items.append(FittedInput(entry["name"], kind, table, dict(entry["state"])))
        return cls(items)



def build_kinds(data_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any] | None, host) -> dict[str, tuple[Any, dict]]:
    """{input name: (kind, table)} for a resolved recipe's inputs, in member order."""
    return {name: (build_kind(name, table, host), table) for name, table in input_tables(data_cfg, model_cfg).items()}


def data_notes(kinds: Mapping[str, tuple[Any, dict]]) -> list[str]:
    """The inputs' remarks on the rows they checked (truncated reports, empty masks), for the run's data line."""
    from lnzoo.contracts import input_note

    return [f"{name}: {n}" for name, (kind, _) in kinds.items() if (n := input_note(kind))]


def check_rows(kinds: Mapping[str, tuple[Any, dict]], samples: Sequence, problems: list[str]) -> set[int]:
    """Every row through every input's check, once per run (before the folds): the indices of the bad rows."""
    bad: set[int] = set()
    for name, (kind, _) in kinds.items():
        try:
            bad |= set(kind.check(samples, problems))
        except DataError as exc:  # a recipe-level mistake (say, a column no row has): never skipped
            if name == COVARIATES:  # its messages name data.covariates already
                raise
            raise DataError([f"data.inputs.{name}: {p}" for p in exc.problems],
                            f"problem(s) with data.inputs.{name}") from None
    return bad


def rows_without_input(kinds: Mapping[str, tuple[Any, dict]], samples: Sequence, bad: set[int],
                       problems: list[str]) -> set[int]:
    """For a model without image views: the rows (not already bad) that give none of its inputs, each a problem;
    trained on, such a row would teach the head's bias, and predicted, it would get one constant answer."""
    good = [i for i in range(len(samples)) if i not in bad]
    if not good:
        return set()
    fitted = fit_inputs(kinds, [samples[i] for i in good])  # only to see which inputs each row gives
    empty = {i for i in good if not any(fitted.encode(samples[i])[1])}
    problems += [f"{samples[i].origin}: none of the inputs {', '.join(kinds)} is given in this row (its cells are empty, "
                 "or its mask marks nothing) and the model has no image view: nothing to learn or predict from"
                 for i in sorted(empty)]
    return empty


def fit_inputs(kinds: Mapping[str, tuple[Any, dict]], train: Sequence) -> Inputs:
    """Each input fitted on the training part only (no leakage into the held-out fold)."""
    return Inputs([FittedInput(name, kind, dict(table), dict(kind.fit(train))) for name, (kind, table) in kinds.items()])


def feature_effects(kinds: Mapping[str, tuple[Any, dict]], pool: Sequence, task) -> dict[str, Any]:
    """What the report shows of the inputs with named features (morphology, covariates, radiomics): each feature's
    standardised mean difference (Cohen's d) between the main task's classes on the cross-validation rows, the
    positive class against the rest for a binary task, each class against the rest otherwise. Descriptive only:
    nothing here reaches a model."""
    from lnzoo.contracts import input_feature_names
    from lnzoo.tasks import MISSING
    from lnzoo.evaluation.stats import standardized_mean_difference

    labelled = [s for s in pool if s.labels.get(task.name, MISSING) != MISSING]
    named = {n: kt for n, kt in kinds.items() if callable(getattr(kt[0], "feature_names", None))}
    if not labelled or not named:
        return {}
    out: dict[str, Any] = {}
    for item in fit_inputs(named, labelled):
        names = input_feature_names(item.kind, item.state) or []
        pairs = [(a, s.labels[task.name]) for s in labelled if (a := item.encode(s)) is not None]
        if not pairs or len(names) != item.shape[0]:
            continue
        X, y = np.stack([a for a, _ in pairs]), np.array([c for _, c in pairs])
        classes = [task.classes[task.positive_index]] if task.num_classes == 2 else list(task.classes)
        out[item.name] = {
            "kind": item.table["name"], "features": names, "n": len(pairs),
            "n_per_class": {c: int((y == task.classes.index(c)).sum()) for c in task.classes},
            "cohens_d": {c: [None if not np.isfinite(d) else round(float(d), 4) for d in
                             standardized_mean_difference(X[y == task.classes.index(c)], X[y != task.classes.index(c)])]
                         for c in classes}}
    return out
