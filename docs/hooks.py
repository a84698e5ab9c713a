"""MkDocs hooks: the parts of the site that are generated from the code at build time, so they cannot drift.

A page asks for a generated part with an HTML comment on a line of its own:

    <!-- lnzoo:cli -->                 every command of the typer app ``lnzoo.cli.app``, walked as click commands
    <!-- lnzoo:recipe-keys -->         every recipe key of ``lnzoo.recipe_schema.SCHEMA``, and the --quick profile
    <!-- lnzoo:recipes -->             every recipe file under recipes/: description, parent, the keys it sets
    <!-- lnzoo:tasks -->               the shipped task definitions, tasks/*.toml
    <!-- lnzoo:predictions-header -->  the columns of predictions.csv (``lnzoo.rundir.prediction_header``)
    <!-- lnzoo:zoo-models -->          the models of the shipped zoo index, zoo/*.toml (``lnzoo.zoo.read_index``)
    <!-- lnzoo:zoo-keys -->            every key of a zoo metafile (``lnzoo.zoo.SCHEMA``)
    <!-- lnzoo:include PATH -->        a Markdown file of the repository (a plugin's README), headings one level down

An unknown marker, or a generator that fails (the code it reads was renamed, say), stops the build with the
reason, so ``mkdocs build --strict`` in CI catches a reference page that no longer matches the code.
"""
from __future__ import annotations

import html
import json
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"^<!--[ \t]*lnzoo:([a-z-]+)(?:[ \t]+(\S+))?[ \t]*-->[ \t]*$", re.MULTILINE)
ROOT = Path(__file__).resolve().parent.parent  # the repository root (mkdocs.yml's folder)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each marker of a page by what it names."""
    if "lnzoo:" not in markdown:
        return markdown

    def expand(m: re.Match) -> str:
        name, arg = m.group(1), m.group(2)
        make = GENERATORS.get(name)
        if make is None:
            raise PluginError(f"{page.file.src_uri}: unknown marker lnzoo:{name} (known: {', '.join(GENERATORS)})")
        try:
            return make(arg) if arg is not None else make()
        except PluginError:
            raise
        except Exception as exc:  # name the page and the marker, not just a traceback into this file
            raise PluginError(f"{page.file.src_uri}: generating lnzoo:{name} failed: {type(exc).__name__}: {exc}. "
                              f"The generator is in docs/hooks.py; update it to the code it reads.") from exc

    return MARKER.sub(expand, markdown)


# --- text helpers ---------------------------------------------------------------------------------

def text(s: str) -> str:
    """Plain text safe in Markdown prose and table cells: no HTML, no table pipes, no link brackets."""
    s = html.escape(s, quote=False)
    return s.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]").replace("*", "\\*")


def code(s: str) -> str:
    """An inline code span; a backtick in the value gets a longer fence."""
    s = str(s)
    fence = "``" if "`" in s else "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"  # Python-Markdown keeps a pipe inside a code span in its cell


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


def toml_value(v: Any) -> str:
    """A value as TOML writes it inline."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    return str(v)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def example_lines(example: str) -> str:
    """An example's commands, one per line; a wrapped line continues the command above it (shell ``\\``)."""
    lines: list[str] = []
    for line in (x.strip() for x in example.strip().splitlines()):
        if lines and not re.match(r"^(lnzoo|python|torchrun|pip|curl)\b", line):
            lines[-1] += " \\"
            line = "    " + line
        lines.append(line)
    return "\n".join(lines)


def help_markdown(help_text: str) -> str:
    """A command's help: paragraphs as prose, an "Example:" paragraph as a shell block."""
    try:  # the app renders help with rich markup; the page shows the plain text
        from rich.text import Text
        help_text = Text.from_markup(help_text).plain
    except Exception:
        pass
    out = []
    for para in re.split(r"\n\s*\n", help_text.strip()):
        para = para.strip().replace("\b\n", "")
        if para.startswith("Example:"):
            out.append("```bash\n" + example_lines(para[len("Example:"):]) + "\n```")
        elif para:
            out.append(text(" ".join(line.strip() for line in para.splitlines())))
    return "\n\n".join(out)


# --- the command line -----------------------------------------------------------------------------

def cli_reference() -> str:
    """Every command of the app, in the order the app registers them, with its usage, arguments and options."""
    import typer

    from lnzoo.cli import app  # a module or a package: anything that exposes the typer app as ``app``

    root = typer.main.get_command(app)
    out: list[str] = []
    _document(root, root.context_class(root, info_name="lnzoo"), "lnzoo", out)
    return "\n\n".join(out)


def _document(cmd: Any, ctx: Any, path: str, out: list[str]) -> None:
    # duck-typed: typer may bring its own copy of click, so isinstance checks against `click` would miss
    out.append(f"## `{path}`")
    if cmd.help:
        out.append(help_markdown(cmd.help))
    pieces = " ".join(cmd.collect_usage_pieces(ctx))
    out.append(f"```text\n{path} {pieces}\n```")
    params = [p for p in cmd.get_params(ctx) if p.name != "help" and not getattr(p, "hidden", False)]
    args = [p for p in params if p.param_type_name == "argument"]
    opts = [p for p in params if p.param_type_name == "option"]
    if args:
        rows = []
        for p in args:
            meta = p.metavar or p.name.upper()
            many = p.nargs == -1
            need = ("required" if p.required else "optional") + (", one or more" if many and p.required else
                                                                 ", any number" if many else "")
            rows.append([code(meta), need, text(getattr(p, "help", None) or "")])
        out.append(table(["argument", "", "what it is"], rows))
    if opts:
        rows = []
        for p in opts:
            names = ", ".join(code(n) for n in [*p.opts, *p.secondary_opts])
            value = "" if p.is_flag else code(p.metavar or p.type.name.upper())
            default = p.default
            shown = ""
            if not p.is_flag and not p.required and default not in (None, (), []) and not callable(default):
                shown = code(default)
            said = (p.help or "").lower()
            notes = [n for n in ("required" if p.required else "", "repeatable" if p.multiple else "")
                     if n and n not in said]
            about = text(p.help or "") + (f" ({', '.join(notes)})" if notes else "")
            rows.append([names, value, shown, about])
        out.append(table(["option", "value", "default", "what it does"], rows))
    if hasattr(cmd, "list_commands"):  # a group: its commands follow
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or getattr(sub, "hidden", False):
                continue
            _document(sub, sub.context_class(sub, info_name=name, parent=ctx), f"{path} {name}", out)


# --- recipes --------------------------------------------------------------------------------------

# meanings for the few schema fields that carry no doc string of their own
FALLBACK_DOCS = {
    "tasks.task_weights.<task>": "the task's weight w_t in the loss L = Σ w_t · L_t",
    "data.batch_size": "images per optimizer step (under torchrun: the global batch, split over the processes)",
    "train.epochs": "training epochs per fold",
    "train.optimizer": "the optimizer",
    "train.weight_decay": "weight decay",
}

TYPE_NAMES = {int: "integer", float: "float", str: "string", bool: "boolean", list: "array", dict: "table"}


def _schema():
    from lnzoo import recipe_schema
    return recipe_schema


def recipe_keys() -> str:
    """One table per recipe section: key, type, default, allowed values, meaning; then the --quick profile."""
    rs = _schema()
    sections: dict[str, list[list[str]]] = {}

    def field_row(key: str, f: Any) -> list[str]:
        types = [TYPE_NAMES.get(t, t.__name__) for t in f.types if t is not type(None)]
        if set(f.types) >= {int, float}:
            types = ["number"] + [t for t in types if t not in ("integer", "float")]
        allowed = []
        if f.choices:
            allowed.append(", ".join(code(toml_value(c)) for c in f.choices if c is not None))
        if f.min is not None or f.max is not None:
            lo = "" if f.min is None else f"{f.min:g} ≤ "
            hi = "" if f.max is None else f" ≤ {f.max:g}"
            allowed.append(f"{lo}value{hi}")
        default = "required" if f.required else ("" if f.default is None else code(toml_value(f.default)))
        return [code(key), " or ".join(types), default, "; ".join(allowed), text(f.doc or FALLBACK_DOCS.get(key, ""))]

    def walk(node: Any, prefix: str, section: str) -> None:
        for key, spec in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(spec, dict):
                walk(spec, dotted + ".", dotted)
            elif isinstance(spec, rs.Field):
                sections.setdefault(section, []).append(field_row(dotted, spec))
            elif rs.is_plugin_marker(spec):
                sections.setdefault(section, []).append(
                    [code(dotted), "table", "", f"a registered {spec[1]}",
                     text(f"{{name = ..., ...}}: the {spec[1]} by its registered name (lnzoo list-{spec[1]}s); "
                          "its other keys go to the factory, checked against its signature")])
            elif isinstance(spec, tuple) and spec[0] == rs.TASK_TABLE:
                inner = spec[1]
                slot = "<input>" if key == "inputs" else "<task>"
                if isinstance(inner, dict):
                    walk(inner, f"{dotted}.{slot}.", section)
                elif isinstance(inner, rs.Field):
                    sections.setdefault(section, []).append(field_row(f"{dotted}.{slot}", inner))
                elif rs.is_plugin_marker(inner):
                    sections.setdefault(section, []).append(
                        [code(f"{dotted}.{slot}"), "table", "", f"a registered {inner[1]}",
                         text(f"{{name = ..., ...}} per {slot.strip('<>')}: the {inner[1]} by its registered name "
                              f"(lnzoo list-{inner[1]}s); other keys go to it")])
                else:
                    what = {"define": "a task of this recipe only: {classes = [...], positive = ..., aliases = "
                                      "{...}, description = ...}",
                            "quick": "dotted keys this recipe's --quick profile sets, e.g. \"train.epochs\" = 10"}
                    sections.setdefault(section, []).append(
                        [code(dotted if key == "quick" else f"{dotted}.{slot}"), "table", "", "",
                         text(what.get(key, "free-form table"))])

    walk(rs.SCHEMA, "", "top level")
    out = []
    for section, rows in sections.items():
        title = "Top-level keys" if section == "top level" else f"`[{section}]`"
        out.append(f"## {title}\n\n" + table(["key", "type", "default", "allowed", "meaning"], rows))
    quick = [[code(k), code(toml_value(v))] for k, v in rs.QUICK_DEFAULTS.items()]
    out.append("## The `--quick` profile\n\nWhat `--quick` sets before a recipe's own `[quick]` table:\n\n"
               + table(["key", "quick value"], quick))
    supplied = [[code(kind), ", ".join(code(n) for n in sorted(names)) or "none"]
                for kind, names in rs.SUPPLIED.items()]
    out.append("## Factory arguments lnzoo supplies\n\nA recipe may not set these in a component's table: "
               "lnzoo passes them from the model it builds.\n\n" + table(["kind", "arguments"], supplied))
    return "\n\n".join(out)


def _flatten(d: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """(dotted key, value) pairs: top-level tables always opened, deeper tables opened while they hold tables."""
    rows = []
    for k, v in d.items():
        key = f"{prefix}{toml_key(k)}"
        if isinstance(v, dict) and (depth == 0 or any(isinstance(x, dict) for x in v.values())):
            rows += _flatten(v, key + ".", depth + 1)
        else:
            rows.append((key, v))
    return rows


def recipes() -> str:
    """Every recipe file: its description, what it extends, the keys it sets itself, and its full text."""
    out = []
    files = sorted((ROOT / "recipes").glob("*.toml")) + sorted((ROOT / "recipes").glob("*/**/*.toml"))
    if not files:
        raise FileNotFoundError(f"no recipe under {ROOT / 'recipes'}")
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        source = path.read_text(encoding="utf-8")
        data = tomllib.loads(source)
        parts = [f"### `{rel}`"]
        if data.get("description"):
            parts.append(text(data["description"]))
        if data.get("extends"):
            parts.append(f"Extends {code(data['extends'])}; the keys below override it.")
        keys = [(k, v) for k, v in _flatten(data) if k not in ("name", "description", "extends")]
        if keys:
            parts.append(table(["key", "value"], [[code(k), code(toml_value(v))] for k, v in keys]))
        parts.append(f'??? example "{rel}"\n\n' + "\n".join("    " + line if line else ""
                                                         for line in ["```toml", *source.splitlines(), "```"]))
        out.append("\n\n".join(parts))
    return "\n\n".join(out)


def tasks() -> str:
    """The shipped tasks: classes (index order), positive class, aliases, what passes on in a cascade."""
    rows = []
    files = sorted((ROOT / "tasks").glob("*.toml"))
    if not files:
        raise FileNotFoundError(f"no task definition under {ROOT / 'tasks'}")
    for path in files:
        t = tomllib.loads(path.read_text(encoding="utf-8"))
        aliases = "; ".join(f"{code(c)}: " + ", ".join(text(a) for a in names)
                            for c, names in (t.get("aliases") or {}).items())
        positive = code(t["positive"]) if t.get("positive") else ""
        passes_on = code(t["passes_on"]) if t.get("passes_on") else ""
        rows.append([code(t["name"]), ", ".join(code(c) for c in t["classes"]), positive, aliases, passes_on,
                     text(t.get("description", ""))])
    return table(["task", "classes (index order)", "positive", "aliases", "passes on", "description"], rows)


# what each column family of predictions.csv means; a column the code writes that matches none stops the build
PREDICTION_COLUMNS = {
    "part": "`cv` (a held-out fold), `test` (`data.test`) or `external` (`data.external`)",
    "fold": "the fold whose model held the row out; empty for test and external rows, which get the mean "
            "probability of the fold models",
    "path": "the image of the `full` view",
    "path_<view>": "the image of each other view (`path_crop`, `path_roi`, `path_cdfi`, ...)",
    "views_used": "the views the row had, joined by `+` (a missing CDFI image, say, is left out)",
    "patient": "the patient id the folds were drawn by",
    "center": "the manifest's `center`, if any",
    "source": "where the row came from: `file:line` of the list file or manifest",
    "<task>_true": "the true class of each task; empty where the row has no label for it",
    "p_<task>_<class>": "the raw probability of each class, 6 decimals: what `metrics.json` and the report are "
                        "computed from",
    "cal_<task>_<class>": "the calibrated probability of each class (each fold model temperature-scaled), "
                          "6 decimals: what a call at the stored operating threshold is made on",
}


def _column_family(column: str, tasks: dict, views: list[str]) -> str | None:
    if column in PREDICTION_COLUMNS:
        return column
    if column.startswith("path_") and column[5:] in views:
        return "path_<view>"
    for t, task in tasks.items():
        if column == f"{t}_true":
            return "<task>_true"
        for prefix in ("p", "cal"):
            if column in (f"{prefix}_{t}_{c}" for c in task.classes):
                return f"{prefix}_<task>_<class>"
    return None


def predictions_header() -> str:
    """The header lnzoo writes for a stage-I run (two tasks) with a full image and its crop, and what each column
    family means."""
    from lnzoo.rundir import prediction_header

    example = {"malignancy": SimpleNamespace(name="malignancy", classes=("benign", "malignant")),
               "enlargement": SimpleNamespace(name="enlargement", classes=("not_enlarged", "enlarged"))}
    views = ["full", "crop"]
    header = prediction_header(example, views)
    families: list[str] = []
    for column in header:
        family = _column_family(column, example, views)
        if family is None:
            raise PluginError(f"predictions.csv has a column {column!r} that the docs do not explain: add it to "
                              "PREDICTION_COLUMNS in docs/hooks.py")
        if family not in families:
            families.append(family)
    rows = [[code(f), PREDICTION_COLUMNS[f]] for f in families]
    return "```text\n" + ",".join(header) + "\n```\n\n" + table(["column", "meaning"], rows)


# --- the model zoo --------------------------------------------------------------------------------

def zoo_models() -> str:
    """The shipped zoo index: one row per metafile (a metafile with a problem stops the build, naming file and
    key), then each model's metrics with their CIs."""
    from lnzoo.zoo import read_index

    entries, problems = read_index(ROOT / "zoo")
    if problems:
        raise PluginError("the zoo index has problems:\n" + "\n".join(f"  - {p}" for p in problems))
    if not entries:
        raise FileNotFoundError(f"no metafile under {ROOT / 'zoo'}")
    rows, details = [], []
    for e in entries:
        m = e.meta
        main = m["tasks"][0]
        auc = m["metrics"].get(main, {}).get("auc")
        ci = m["metrics"].get(main, {}).get("ci95", {}).get("auc")
        name = code(m["name"]) + (" **(demo)**" if m.get("demo") else "")
        rows.append([name, ", ".join(code(t) for t in m["tasks"]), code(m["backbone"]), text(m["data"]["name"]),
                     f"{main}: {auc:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "") if auc is not None else "",
                     ", ".join(str(f) for f in m["metrics"]["folds"]), f"{m['bundle']['size'] / 1e6:.1f} MB",
                     text(m["licence"])])
        metric_rows = []
        for task in m["tasks"]:
            t = m["metrics"].get(task, {})
            cis = t.get("ci95", {})
            metric_rows += [[code(task), code(k), f"{v:g}", f"{cis[k][0]:g}–{cis[k][1]:g}" if k in cis else ""]
                            for k, v in t.items() if k != "ci95"]
        overrides = " ".join(f"--set {code(o)}" for o in m["recipe"].get("overrides", []))
        details.append("\n\n".join([
            f"### `{m['name']}`", text(m["summary"]),
            f"Recipe {code(m['recipe']['path'])}{' --quick' if m['recipe'].get('quick') else ''} {overrides}; "
            f"data: {text(m['data']['description'])} (licence: {text(m['data']['licence'])}); exported with "
            f"lnzoo {text(m['lnzoo_version'])}; archive sha256 {code(m['bundle']['sha256'])}."
            + (f" Cite: {text(m['citation'])}" if m.get("citation") else ""),
            f"Metrics pooled over the held-out fold(s) {m['metrics']['folds']}"
            + (f" ({text(m['metrics']['source'])})" if m["metrics"].get("source") else "") + ":",
            table(["task", "metric", "value", "95% CI"], metric_rows)]))
    head = table(["name", "task(s)", "backbone", "data", "AUC (95% CI)", "folds", "size", "licence"], rows)
    return head + "\n\n" + "\n\n".join(details)


def zoo_keys() -> str:
    """Every key of a zoo metafile: dotted key, type, required or not, meaning."""
    from lnzoo.zoo import SCHEMA, Key

    rows: list[list[str]] = []

    def walk(node: dict, prefix: str) -> None:
        for key, spec in node.items():
            if isinstance(spec, Key):
                rows.append([code(prefix + key), " or ".join(TYPE_NAMES.get(t, t.__name__) for t in spec.types),
                             "required" if spec.required else "optional", text(spec.doc)])
            elif key == "<task>":
                rows.append([code(prefix + key), "table", "optional", text(
                    f"per task: {', '.join(k for k in spec if k != 'ci95')} (numbers) and ci95 = {{metric = [lo, hi]}}")])
            else:
                walk(spec, f"{prefix}{key}.")
    walk(SCHEMA, "")
    return table(["key", "type", "", "meaning"], rows)


# --- included files -------------------------------------------------------------------------------

def include(rel: str) -> str:
    """A Markdown file of the repository, its headings one level down (the page has its own title)."""
    path = (ROOT / rel).resolve()
    if ROOT not in path.parents or not path.is_file():
        raise FileNotFoundError(f"{rel}: not a file of the repository")
    out, fence = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1).startswith(fence[0]) and len(m.group(1)) >= len(fence):
                fence = None
        elif fence is None and line.startswith("#"):
            line = "#" + line
        elif fence is None and (item := re.match(r"^( +)([-*+]|\d+\.) ", line)) and len(item.group(1)) % 4:
            # GitHub nests a list under two spaces; Python-Markdown needs four
            line = " " * (2 * len(item.group(1))) + line.lstrip(" ")
        out.append(line)
    return "\n".join(out)


GENERATORS = {"cli": cli_reference, "recipe-keys": recipe_keys, "recipes": recipes, "tasks": tasks,
              "predictions-header": predictions_header, "zoo-models": zoo_models, "zoo-keys": zoo_keys,
              "include": include}
