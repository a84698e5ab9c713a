"""Recipes: strict TOML schema, ``extends``, ``--set`` overrides, the ``--quick`` profile, resolution.

Every problem is collected and reported at once (unknown keys with their dotted path and a
"did you mean", wrong types, unknown plugin names, plugin arguments that the factory does not
accept). Nothing is built before the whole recipe is valid.
"""
from __future__ import annotations

import copy
import functools
import inspect
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnzoo.config import Config
from lnzoo.errors import RecipeError, UsageError, did_you_mean
from lnzoo.recipe_schema import (LNZOO_OPTIONS, QUICK_DEFAULTS, SCHEMA, SUPPLIED, Field, all_paths, check_annotation,
                                 check_value, is_plugin_marker, schema_at)


@dataclass
class Recipe:
    """A validated, fully resolved recipe."""

    data: dict[str, Any]
    source: Path | None = None
    overrides: list[str] = field(default_factory=list)
    quick: bool = False

    def __getitem__(self, key: str) -> Any:
        return get_path(self.data, key)

    @functools.cached_property
    def config(self) -> Config:
        """The run configuration: the resolved recipe, read-only, by attribute (``recipe.config.train.lr``)."""
        return Config(self.data)

    def set(self, dotted: str, value: Any) -> None:
        """Change one resolved value (a loaded model's backbone is never downloaded again, say); the
        configuration is rebuilt from it on next use."""
        set_path(self.data, dotted, value)
        self.__dict__.pop("config", None)

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def tasks(self) -> list[str]:
        return list(self.data["tasks"]["task_weights"])

    def head_table(self, task: str) -> dict[str, Any]:
        return self.data["model"]["heads"].get(task) or self.data["model"]["head"]

    def to_toml(self) -> str:
        import tomli_w
        return tomli_w.dumps(_drop_none(self.data))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


def get_path(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[parts[-1]] = value


def parse_value(text: str) -> Any:
    """Parse a --set value as TOML; a bare word that is not TOML is taken as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"recipe not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read recipe: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None


# tables a child recipe replaces whole: a stage's task set is its own, never the union with its base's
REPLACED_TABLES = {"tasks.task_weights"}


def merge(base: dict[str, Any], top: Mapping[str, Any], _prefix: str = "") -> dict[str, Any]:
    """Deep-merge ``top`` over ``base``; a plugin table naming another plugin replaces the old one whole."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        old = out.get(key)
        dotted = f"{_prefix}{key}"
        if isinstance(value, dict) and isinstance(old, dict) and dotted not in REPLACED_TABLES:
            if "name" in value and "name" in old and value["name"] != old["name"]:
                out[key] = copy.deepcopy(value)  # other plugin, other arguments
            else:
                out[key] = merge(old, value, dotted + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe and everything it extends, merged (child over parent); paths made absolute."""
    path = Path(path).resolve()
    if path in _chain:
        raise UsageError("recipe extends itself: " + " -> ".join(str(p) for p in (*_chain, path)))
    raw = _read_toml(path)
    _absolutise_data_paths(raw, path.parent)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise RecipeError([f"extends: expected a path string, got {type(parent).__name__}"], str(path))
    base = load_raw((path.parent / parent), (*_chain, path))
    return merge(base, raw)


def _absolutise_data_paths(raw: dict[str, Any], folder: Path) -> None:
    """Data paths in a recipe are relative to the recipe file, whatever the working directory."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("init_from"), str) and not Path(model["init_from"]).is_absolute() \
            and not model["init_from"].startswith("zoo:"):  # a zoo model's name is no path
        model["init_from"] = str((folder / model["init_from"]).resolve())
    cv = raw.get("cv")
    if isinstance(cv, dict) and isinstance(cv.get("folds_file"), str) and not Path(cv["folds_file"]).is_absolute():
        cv["folds_file"] = str((folder / cv["folds_file"]).resolve())
    pretrain = raw.get("pretrain") if isinstance(raw.get("pretrain"), dict) else {}
    sources = [(data, key) for key in ("train", "test", "external")] + [(pretrain, "data")]
    for section, key in sources:
        value = section.get(key)
        if isinstance(value, str) and value:
            section[key] = str((folder / value).resolve()) if not Path(value).is_absolute() else value
        elif isinstance(value, list):
            section[key] = [_absolute(v, folder) for v in value]


def _absolute(item: Any, folder: Path) -> Any:
    """A source path (or the path of a {path, task} table) made absolute against the recipe's folder."""
    if isinstance(item, str) and item and not Path(item).is_absolute():
        return str((folder / item).resolve())
    if isinstance(item, dict) and isinstance(item.get("path"), str):
        return {**item, "path": _absolute(item["path"], folder)}
    return item


def _fill_section(path: str, raw: Any, schema: dict[str, Any], problems: list[str], host) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{path or 'recipe'}: expected a table, got {type(raw).__name__}")
        raw = {}
    out: dict[str, Any] = {}
    for key in raw:
        if key not in schema:
            where = f"{path}.{key}" if path else key
            problems.append(f"{where}: unknown key{did_you_mean(key, schema)}")
    for key, spec in schema.items():
        where = f"{path}.{key}" if path else key
        value = raw.get(key)
        if isinstance(spec, Field):
            out[key] = check_value(where, value, spec, problems) if key in raw else copy.deepcopy(spec.default)
            if key not in raw and spec.required:
                problems.append(f"{where}: required")
        elif isinstance(spec, dict):
            out[key] = _fill_section(where, value, spec, problems, host)
        elif is_plugin_marker(spec):
            out[key] = _check_plugin_table(where, value, spec[1], problems, host)
        else:  # per-task table
            out[key] = _fill_task_table(where, value, spec[1], problems, host)
    return out


def _fill_task_table(path: str, raw: Any, inner: Any, problems: list[str], host) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected a table, got {type(raw).__name__}")
        return {}
    if inner is None:
        return dict(raw)
    out = {}
    for key, value in raw.items():
        where = f"{path}.{key}"
        if isinstance(inner, Field):
            out[key] = check_value(where, value, inner, problems)
        elif isinstance(inner, dict):
            out[key] = _fill_section(where, value, inner, problems, host)
        else:
            out[key] = _check_plugin_table(where, value, inner[1], problems, host)
    return out


def _check_plugin_table(path: str, raw: Any, kind: str, problems: list[str], host) -> dict[str, Any] | None:
    """A {name = ..., **kwargs} table: the name must be registered, kwargs must fit the factory."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected a table with a 'name', got {type(raw).__name__}")
        return None
    name = raw.get("name")
    if not isinstance(name, str):
        problems.append(f"{path}.name: required, the name of a registered {kind}")
        return dict(raw)
    registry = host.registry(kind)
    if name not in registry:
        problems.append(f"{path}.name: unknown {kind} {name!r}{did_you_mean(name, registry.names())}")
        return dict(raw)
    entry = registry.get(name)
    try:
        sig = inspect.signature(entry.factory, eval_str=True)
    except Exception:
        sig = inspect.signature(entry.factory)
    params = {k: p for k, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    kwargs = {k: v for k, v in raw.items() if k != "name"}
    for key, value in kwargs.items():
        if key in LNZOO_OPTIONS.get(kind, {}):  # lnzoo's own option of every component of the kind
            if not isinstance(value, LNZOO_OPTIONS[kind][key]):
                problems.append(f"{path}.{key}: expected a path, got {value!r}")
        elif key in SUPPLIED[kind]:
            problems.append(f"{path}.{key}: set by lnzoo, not by the recipe")
        elif key not in params and not takes_any:
            allowed = [k for k in params if k not in SUPPLIED[kind]] + list(LNZOO_OPTIONS.get(kind, {}))
            problems.append(f"{path}.{key}: {kind} {name!r} takes no argument {key!r}"
                            f"{did_you_mean(key, allowed)}")
        elif key in params:
            check_annotation(f"{path}.{key}", value, params[key].annotation, problems)
    for key, p in params.items():
        if p.default is p.empty and key not in SUPPLIED[kind] and key not in kwargs and \
                not (kind == "input" and key == "column"):  # an input's column defaults to its name
            problems.append(f"{path}.{key}: required by {kind} {name!r}")
    return dict(raw)


def _semantic_checks(out: dict[str, Any], problems: list[str], host) -> None:
    tasks = out["tasks"]
    weights = tasks["task_weights"]
    if not weights:
        problems.append("tasks.task_weights: name at least one task, e.g. {malignancy = 1.0}")
    defined = {}
    for name, table in tasks["define"].items():
        try:
            from lnzoo.tasks import Task
            defined[name] = Task.from_dict({"name": name, **(table if isinstance(table, dict) else {})},
                                           source=f"tasks.define.{name}")
        except UsageError as exc:
            problems.append(str(exc))
    task_names = host.registry("task").names() + list(defined)
    from lnzoo.track import track_problems
    problems += track_problems(out["train"]["track"], host.registry("tracker").names())
    if out["pretrain"]["method"] is not None and out["pretrain"]["method"] not in host.registry("pretrainer"):
        names = host.registry("pretrainer").names()
        problems.append(f"pretrain.method: unknown pretrainer {out['pretrain']['method']!r}"
                        f"{did_you_mean(out['pretrain']['method'], names)}; registered: {', '.join(names)}")
    from lnzoo.evaluation.subgroups import band_problems
    problems += band_problems(out["data"]["subgroups"], out["data"]["subgroup_bands"])
    for name in list(weights) + list(tasks["options"]) + list(out["model"]["heads"]) + list(out["data"]["label_columns"]):
        if name not in task_names:
            problems.append(f"tasks: unknown task {name!r}{did_you_mean(name, task_names)}")
    for name in list(tasks["options"]) + list(out["model"]["heads"]) + list(out["data"]["label_columns"]):
        if name in task_names and name not in weights:
            problems.append(f"task {name!r} is configured but not in tasks.task_weights")
    main = tasks["main"]
    if isinstance(main, str) and weights and main not in weights:
        problems.append(f"tasks.main: {main!r} is not in tasks.task_weights ({', '.join(weights)})")
    model = out["model"]
    if model["backbone"] is None:
        problems.append("model.backbone: required, e.g. {name = \"timm\", model_name = \"resnet50\"}")
    from lnzoo.inputs import check_recipe_inputs, input_tables
    check_recipe_inputs(out, problems, host)
    views = out["data"]["views"]
    members = (len(views) if isinstance(views, list) else 1) + len(input_tables(out["data"]))
    if model["fusion"] is None and members > 1 and "concat" in host.registry("fusion"):
        model["fusion"] = {"name": "concat"}  # several inputs and no fusion named: the one that takes any number
    for kind in ("fusion", "head"):  # a plugin declares the default of its kind (register(..., default=True))
        if model[kind] is None and host.registry(kind).default is None:
            problems.append(f"model.{kind}: required, no {kind} is registered as the default")
        elif model[kind] is None:
            model[kind] = {"name": host.registry(kind).default}
    train = out["train"]
    if train["method"] == "linear_probe":
        for name in weights:
            head = out["model"]["heads"].get(name) or model["head"]
            if isinstance(head, dict) and head.get("name") != host.registry("head").default:
                problems.append(f"train.method = \"linear_probe\" fits a logistic regression, stored as the "
                                f"default head {host.registry('head').default!r}; task {name!r} asks for head "
                                f"{head.get('name')!r}")
    if isinstance(train["min_lr"], (int, float)) and isinstance(train["lr"], (int, float)) and train["min_lr"] > train["lr"]:
        problems.append(f"train.min_lr ({train['min_lr']}) is above train.lr ({train['lr']}): "
                        f"the schedule would rise instead of anneal")
    if train["method"] != "linear_probe" and isinstance(train["lr"], (int, float)) and train["lr"] <= 0:
        problems.append(f"train.lr: {train['lr']} trains nothing (the weights would stay as initialised and the "
                        "run would report an untrained model); give a positive learning rate, e.g. 0.01")
    for key, expected in (("amp", "true, false"), ("channels_last", "true, false"), ("sync_every", "a positive whole number")):
        if isinstance(train[key], str) and train[key] != "auto":  # the schema takes any word: only "auto" is one
            problems.append(f"train.{key}: expected {expected} or \"auto\", got {train[key]!r}")
    regex = out["data"]["patient_regex"]
    if isinstance(regex, str):
        try:
            if re.compile(regex).groups < 1:
                problems.append(f"data.patient_regex: {regex!r} has no group; group 1 is the patient id, e.g. "
                                "'^(P\\d+)_'")
        except re.error as exc:
            problems.append(f"data.patient_regex: {regex!r} is not a valid regular expression ({exc})")
    if isinstance(views, list):
        if not all(isinstance(v, str) for v in views):
            problems.append("data.views: a list of view names")
        elif len(set(views)) != len(views):
            problems.append(f"data.views: repeated view in {views}")
        from lnzoo.contracts import fusion_max_views
        from lnzoo.errors import LnzooError

        def cap(name: str) -> int:  # a fusion's view limit, else len(views); 0: it cannot load
            try:
                return fusion_max_views(host.get("fusion", name).factory) or members
            except LnzooError:
                return 0
        fusion, fusions = model["fusion"], host.registry("fusion")
        n = cap(fusion["name"]) if isinstance(fusion, dict) and fusion.get("name") in fusions else 0
        if 0 < n < members:
            wider = [e.name for e in fusions if cap(e.name) >= members]
            use = " or ".join(filter(None, [", ".join(wider[:-1]), *wider[-1:]]))
            given = f"data.views has {len(views)}" + (f" and {members - len(views)} other input(s)"
                                                      if members > len(views) else "")
            problems.append(f"model.fusion: {fusion['name']!r} takes {'one input' if n == 1 else f'{n} inputs'} but "
                            f"{given}; use {use}")
    scale = out["data"]["augment"]["scale"]
    if isinstance(scale, list) and not (len(scale) == 2 and all(isinstance(s, (int, float)) for s in scale)
                                        and 0 < scale[0] <= scale[1] <= 1):
        problems.append(f"data.augment.scale: expected [min, max] with 0 < min <= max <= 1, got {scale}")
    run_folds = out["cv"]["run_folds"]
    folds = out["cv"]["folds"]
    if isinstance(run_folds, str) and run_folds != "all":
        problems.append(f"cv.run_folds: expected \"all\" or a list of fold indices, got {run_folds!r}")
    elif isinstance(run_folds, list) and isinstance(folds, int):
        bad = [f for f in run_folds if not isinstance(f, int) or not 0 <= f < folds]
        if bad:
            problems.append(f"cv.run_folds: {bad} not in 0..{folds - 1}")


def resolve(raw: Mapping[str, Any], host=None, source: str | Path | None = None,
            sets: list[str] | None = None, quick: bool = False) -> Recipe:
    """Validate ``raw`` (after --quick and --set), fill defaults; raise RecipeError listing every problem."""
    recipe, problems, _ = resolve_all(raw, host, source, sets, quick)
    if problems:
        raise RecipeError(problems, str(source) if source else None)
    return recipe


def resolve_all(raw: Mapping[str, Any], host=None, source: str | Path | None = None,
                sets: list[str] | None = None, quick: bool = False) -> tuple[Recipe, list[str], bool]:
    """:func:`resolve` without raising: the recipe as filled (a wrong value kept as given, a missing one
    defaulted), every problem, and whether the whole-recipe checks ran to their end (they may stop early on a
    recipe that already has problems). ``lnzoo validate`` goes on with the checks whose sections are sound."""
    if host is None:
        from lnzoo.plugins import get_host
        host = get_host()
    raw = copy.deepcopy(dict(raw))
    problems: list[str] = []
    if quick:
        profile = dict(QUICK_DEFAULTS)
        recipe_quick = raw.get("quick") or {}
        if isinstance(recipe_quick, dict):
            profile.update(_flatten_quick(recipe_quick))
        for key, value in profile.items():
            _apply(raw, key, value)
    for item in sets or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
            continue
        why = _unknown_path(key, raw, host)
        if why:
            problems.append(f"--set {key}: {why}")
            continue
        _apply(raw, key, parse_value(text.strip()))
    out = _fill_section("", raw, SCHEMA, problems, host)
    whole = True
    try:
        _semantic_checks(out, problems, host)
    except Exception:  # noqa: BLE001 - earlier type errors can make later checks meaningless
        if not problems:
            raise
        whole = False
    if out.get("name") is None:
        out["name"] = Path(source).stem if source else "recipe"
    return Recipe(out, Path(source) if source else None, list(sets or []), quick), problems, whole


def _flatten_quick(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        plugin_key = dotted in ("model.backbone", "model.fusion", "model.head")
        if isinstance(value, dict) and not plugin_key:
            flat.update(_flatten_quick(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _apply(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key``; a plugin table (one with a name) replaces the old table whole."""
    set_path(raw, key, copy.deepcopy(value) if isinstance(value, dict) and "name" in value else value)


def _unknown_path(key: str, raw: dict[str, Any], host) -> str | None:
    """Why ``--set key`` names no recipe key (None: it names one)."""
    if schema_at(key) is None:
        return f"no such recipe key{did_you_mean(key, all_paths())}"
    parts = key.split(".")
    for i in range(1, len(parts)):  # an argument of a plugin table must be one its factory takes
        parent = schema_at(".".join(parts[:i]))
        if is_plugin_marker(parent):
            table = raw
            for p in parts[:i]:
                table = table.get(p, {}) if isinstance(table, dict) else {}
            name = table.get("name") if isinstance(table, dict) else None
            if parts[i] == "name" or name is None or name not in host.registry(parent[1]):  # checked elsewhere
                return None
            params = host.get(parent[1], name).parameters()
            if parts[i] in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
                return None
            return f"{parent[1]} {name!r} takes no argument {parts[i]!r}{did_you_mean(parts[i], params)}"
    return None


def load_recipe(path: str | Path, sets: list[str] | None = None, quick: bool = False, host=None) -> Recipe:
    """Read, extend, override and validate a recipe file."""
    raw = load_raw(path)
    return resolve(raw, host=host, source=path, sets=sets, quick=quick)
