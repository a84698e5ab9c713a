"""The model zoo: an index of published models, pulled into a cache and opened as ``zoo:NAME``.

The index is a folder of metafiles, ``NAME.toml``, one per model (:data:`SCHEMA` lists their keys). It is
``$LNZOO_ZOO`` when set (a lab's own index), else the ``zoo/`` folder shipped with lnzoo (installed as the
package ``lnzoo_zoo``, as ``tasks/`` is installed as ``lnzoo_tasks``; in a source checkout, the repository's
``zoo/``). A metafile's ``bundle.url`` is ``http(s)://``, ``file://`` or a path; a relative path resolves
against the index folder.

:func:`pull` fetches a model's archive (a zip or tar of an ``lnzoo export`` bundle) into
``$LNZOO_CACHE/zoo/NAME-<sha8>/``: the archive is hashed as it arrives and compared with the metafile's sha256
*before* anything is unpacked; its members are unpacked only when none escapes the folder; the bundle is
unpacked aside and renamed into place whole, with a marker file, so a half-done pull never looks like a model.
:func:`resolve_source` turns ``zoo:NAME`` into that folder (pulling it on first use); every other source is
returned as given.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lnzoo.errors import LnzooError, UnknownNameError, UsageError, did_you_mean

ENV = "LNZOO_ZOO"
PREFIX = "zoo:"
MARKER = ".lnzoo-zoo.json"  # written into a pulled bundle last, before it is renamed into place
TIMEOUT_S = 30.0
CHUNK = 1 << 20
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Key:
    """One metafile key: its types, whether it must be given, and what it means (the docs show it)."""

    types: tuple[type, ...]
    required: bool = True
    doc: str = ""


METRICS = ("n", "auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1_macro", "mcc", "ece",
           "brier", "ece_calibrated", "brier_calibrated")
SCHEMA: dict[str, Any] = {
    "name": Key((str,), doc="the model's name: lowercase letters, digits, '.', '_', '-'; the file is NAME.toml"),
    "summary": Key((str,), doc="one line: what the model does"),
    "demo": Key((bool,), False, "true: a demonstration (trained on synthetic data); never for patients"),
    "tasks": Key((list,), doc="the tasks the model predicts, its main task first"),
    "classes": Key((dict,), doc="per task, its classes in index order: {malignancy = [\"benign\", \"malignant\"]}"),
    "backbone": Key((str,), doc="the backbone, e.g. timm:resnet18"),
    "image_size": Key((int,), False, "the image side the model was trained at, in pixels"),
    "licence": Key((str,), doc="the licence of the weights (an SPDX id where there is one)"),
    "lnzoo_version": Key((str,), doc="the lnzoo version that exported the bundle"),
    "citation": Key((str,), False, "how to cite the model (or the paper it comes from)"),
    "recipe": {"path": Key((str,), doc="the recipe it was trained with, relative to the repository"),
               "overrides": Key((list,), False, "the --set overrides of the run, in order"),
               "quick": Key((bool,), False, "true: run with --quick")},
    "data": {"name": Key((str,), doc="the training data in a few words (the table's 'data' column)"),
             "description": Key((str,), doc="the training data: source, centres, years, patients, labels"),
             "licence": Key((str,), doc="the data's licence or terms of use"),
             "patients": Key((int,), False, "patients in the training data")},
    "bundle": {"url": Key((str,), doc="where the archive is: http(s)://, file:// or a path relative to the index"),
               "sha256": Key((str,), doc="the archive's sha256, 64 lowercase hex digits"),
               "size": Key((int,), doc="the archive's size in bytes")},
    "metrics": {"folds": Key((list,), doc="the folds whose held-out predictions the metrics pool"),
                "source": Key((str,), False, "where the figures come from (evaluation.json, metrics.json)"),
                "<task>": {m: Key((int, float), False) for m in METRICS}
                | {"ci95": Key((dict,), False, "{metric = [lo, hi]}: 95% patient-bootstrap CIs")}},
}


def _problems_of(meta: Mapping[str, Any], schema: Mapping[str, Any], where: str, out: list[str]) -> None:
    """Every unknown, missing or mistyped key of ``meta`` against ``schema``, named by its dotted key."""
    known = [k for k in schema if k != "<task>"]
    for key, value in meta.items():
        spec = schema.get(key, schema.get("<task>") if isinstance(value, dict) else None)
        if spec is None:
            out.append(f"{where}{key}: unknown key{did_you_mean(key, known)}")
        elif isinstance(spec, dict):
            if isinstance(value, dict):
                _problems_of(value, spec, f"{where}{key}.", out)
            else:
                out.append(f"{where}{key}: expected a table, got {type(value).__name__}")
        elif isinstance(value, bool) and bool not in spec.types or not isinstance(value, spec.types):
            out.append(f"{where}{key}: expected {' or '.join(t.__name__ for t in spec.types)}, got "
                       f"{type(value).__name__} {value!r}")
    for key, spec in schema.items():
        if key != "<task>" and key not in meta and (isinstance(spec, dict) or spec.required):
            out.append(f"{where}{key}: required{' table' if isinstance(spec, dict) else ''}"
                       + (f" ({spec.doc})" if isinstance(spec, Key) and spec.doc else ""))


def check_metafile(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """(the metafile's table, every problem with it: 'FILE: KEY: what is wrong'); the table is None on problems."""
    path = Path(path)
    try:
        meta = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return None, [f"{path}: not a readable TOML file ({exc})"]
    out: list[str] = []
    _problems_of(meta, SCHEMA, "", out)
    name, tasks, classes = meta.get("name"), meta.get("tasks"), meta.get("classes")
    if isinstance(name, str) and (not NAME_RE.fullmatch(name) or name != path.stem):
        out.append(f"name: {name!r} must be lowercase letters, digits, '.', '_' or '-' and the file's name "
                   f"({path.stem!r})")
    if isinstance(tasks, list) and (not tasks or not all(isinstance(t, str) for t in tasks)):
        out.append("tasks: expected a non-empty list of task names")
    elif isinstance(tasks, list) and isinstance(classes, dict):
        if set(classes) != set(tasks):
            out.append(f"classes: expected one entry per task {tasks}, got {sorted(classes)}")
        out += [f"classes.{t}: expected a list of two or more class names" for t, c in classes.items()
                if not isinstance(c, list) or len(c) < 2 or not all(isinstance(x, str) for x in c)]
    bundle, metrics = meta.get("bundle", {}), meta.get("metrics", {})
    bundle = bundle if isinstance(bundle, dict) else {}
    sha = bundle.get("sha256")
    if isinstance(sha, str) and not SHA256_RE.fullmatch(sha):
        out.append(f"bundle.sha256: {sha!r} is not a sha256 (64 lowercase hex digits; sha256sum FILE prints it)")
    scheme = urllib.parse.urlparse(bundle["url"]).scheme if isinstance(bundle.get("url"), str) else ""
    if len(scheme) > 1 and scheme not in ("http", "https", "file"):
        out.append(f"bundle.url: unsupported scheme {scheme!r}: give http(s)://, file:// or a path")
    if isinstance(bundle.get("size"), int) and bundle["size"] <= 0:
        out.append(f"bundle.size: expected a positive number of bytes, got {bundle['size']}")
    if isinstance(metrics, dict):
        if isinstance(metrics.get("folds"), list) and not all(type(f) is int for f in metrics["folds"]):
            out.append("metrics.folds: expected a list of fold numbers")
        for task, table in metrics.items():
            if isinstance(table, dict) and isinstance(tasks, list) and task not in tasks:
                out.append(f"metrics.{task}: not one of the model's tasks {tasks}")
            cis = table.get("ci95", {}) if isinstance(table, dict) else {}
            for m, ci in (cis.items() if isinstance(cis, dict) else ()):
                if m not in METRICS or not (isinstance(ci, list) and len(ci) == 2 and all(
                        isinstance(x, (int, float)) and not isinstance(x, bool) for x in ci) and ci[0] <= ci[1]):
                    out.append(f"metrics.{task}.ci95.{m}: expected [lo, hi] of a metric ({', '.join(METRICS)})")
    return (None if out else meta), [f"{path}: {p}" for p in out]


@dataclass(frozen=True)
class Entry:
    """One model of the index: its metafile's table and where the file is."""

    meta: dict[str, Any]
    file: Path

    name = property(lambda self: self.meta["name"])
    sha256 = property(lambda self: self.meta["bundle"]["sha256"])
    size = property(lambda self: self.meta["bundle"]["size"])
    tasks = property(lambda self: list(self.meta["tasks"]))

    @property
    def url(self) -> str:
        """The archive's location: a URL as given, or a path made absolute against the index folder."""
        url = self.meta["bundle"]["url"]
        if urllib.parse.urlparse(url).scheme in ("http", "https", "file"):
            return url
        return str((self.file.parent / Path(url).expanduser()).resolve())

    @property
    def cache(self) -> Path:
        from lnzoo.files import cache_root

        return cache_root("zoo") / f"{self.name}-{self.sha256[:8]}"

    def as_dict(self) -> dict[str, Any]:
        pulled = self.cache if is_pulled(self) else None
        return {**self.meta, "metafile": str(self.file), "location": self.url,
                "pulled": str(pulled) if pulled else None}


def index_folder() -> Path:
    """``$LNZOO_ZOO``, else the index shipped with lnzoo (the package ``lnzoo_zoo``, or a checkout's ``zoo/``)."""
    given = os.environ.get(ENV)
    if given:
        folder = Path(given).expanduser()
        if not folder.is_dir():
            raise UsageError(f"{ENV}={given}: not a folder; a zoo index is a folder of NAME.toml metafiles")
        return folder
    try:
        from importlib import resources
        return Path(str(resources.files("lnzoo_zoo")))
    except ModuleNotFoundError:  # a source checkout run without installing the index
        return Path(__file__).resolve().parents[1] / "zoo"


def read_index(folder: Path | None = None) -> tuple[list[Entry], list[str]]:
    """(the valid entries, by name; every problem of the metafiles that are not): a bad metafile never hides
    the good ones, and each of its problems names the file and the key."""
    folder = index_folder() if folder is None else Path(folder)
    entries, problems = [], []
    for file in sorted(folder.glob("*.toml")):
        meta, found = check_metafile(file)
        problems += found
        if meta is not None:
            entries.append(Entry(meta, file))
    return entries, problems


def find(name: str, folder: Path | None = None) -> Entry:
    """The entry called ``name``; an unknown name lists the known ones (did you mean?), a bad metafile its
    problems."""
    entries, problems = read_index(folder)
    for e in entries:
        if e.name == name:
            return e
    own = [p for p in problems if Path(p.split(": ", 1)[0]).stem == name]
    if own:
        raise UsageError(f"zoo model {name!r}: its metafile is not valid:\n" + "\n".join(f"  - {p}" for p in own))
    exc = UnknownNameError("zoo model", name, [e.name for e in entries])
    exc.args = (f"{exc.args[0]} (index: {folder or index_folder()}; lnzoo zoo list shows it)",)
    raise exc


def is_pulled(entry: Entry) -> bool:
    """The entry's bundle is in the cache, whole (its marker names this very archive)."""
    try:
        return json.loads((entry.cache / MARKER).read_text(encoding="utf-8")).get("sha256") == entry.sha256
    except (OSError, ValueError, AttributeError):
        return False


def sha256_file(path: Path) -> str:
    """A file's sha256, read in chunks (what ``sha256sum FILE`` prints)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _open(url: str, expected: int):
    """(a readable stream of the archive, its size if known, whether it comes over the network)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        try:
            response = urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310 - the scheme is checked above
        except urllib.error.HTTPError as exc:
            raise LnzooError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; the index's bundle.url is wrong "
                             "or the archive moved: tell the index's maintainer") from None
        except (OSError, ValueError) as exc:  # URLError, a timeout, a refused connection: all OSErrors
            raise LnzooError(f"cannot download {url}: {getattr(exc, 'reason', None) or exc}. Offline? Fetch the "
                             f"archive elsewhere, check its sha256, and list it in a local index ({ENV}) with a "
                             "file path as its bundle.url") from None
        length = response.headers.get("Content-Length")
        return response, int(length) if length and length.isdigit() else expected, True
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(f"{url}: a file:// URL of another host; mount it and give its local path")
        path = Path(urllib.request.url2pathname(parsed.path))
    else:  # a path (Entry.url made a relative one absolute)
        path = Path(url)
    if not path.is_file():
        raise UsageError(f"{url}: no such archive")
    return path.open("rb"), path.stat().st_size, False


def _fetch(entry: Entry, dest: Path) -> tuple[str, int]:
    """Copy the entry's archive to ``dest`` (a progress bar for a download); return its sha256 and size."""
    source, total, remote = _open(entry.url, entry.size)
    digest, size = hashlib.sha256(), 0
    bar = None
    if remote:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        bar = Progress(TextColumn(f"zoo:{entry.name}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       console=Console(stderr=True), transient=True)
        task = bar.add_task("download", total=total)
        bar.start()
    try:
        with source, dest.open("wb") as out:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
                if bar is not None:
                    bar.update(task, completed=size)
    except OSError as exc:
        if not remote:
            raise
        raise LnzooError(f"download of {entry.url} broke off after {size} bytes ({exc}); run the command again") \
            from None
    finally:
        if bar is not None:
            bar.stop()
    return digest.hexdigest(), size


def _member_problem(name: str) -> str | None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in parts:
        return "a path with '..'"
    return None if parts else "an empty name"


def safe_unpack(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar archive into ``dest``; refused whole (before anything is written) when a member has
    an absolute path or '..', or is a link or device."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            bad = [(i.filename, _member_problem(i.filename) or ("a link" if (i.external_attr >> 16) & 0o170000
                                                                == 0o120000 else None)) for i in infos]
            _refuse(archive, bad)
            _write_members(dest, [(i.filename, i.is_dir(), lambda i=i: zf.open(i)) for i in infos])
        return
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError:
        raise UsageError(f"{archive}: neither a zip nor a tar archive") from None
    with tf:
        members = tf.getmembers()
        _refuse(archive, [(m.name, _member_problem(m.name) or (None if m.isfile() or m.isdir() else
                                                                "a link or device")) for m in members])
        _write_members(dest, [(m.name, m.isdir(), lambda m=m: tf.extractfile(m)) for m in members])


def _write_members(dest: Path, members) -> None:
    """Write checked archive members (name, is a folder, opener of its bytes) under ``dest``."""
    for name, is_dir, opened in members:
        target = dest / name
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with opened() as src, target.open("wb") as out:
            shutil.copyfileobj(src, out, CHUNK)


def _refuse(archive: Path, found: list[tuple[str, str | None]]) -> None:
    bad = [f"{name!r} ({why})" for name, why in found if why]
    if bad:
        raise UsageError(f"{archive}: refused, {len(bad)} member(s) would be written outside the bundle's folder "
                         f"or are not plain files: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")


def _bundle_root(folder: Path) -> Path:
    """The bundle in an unpacked archive: at its top, or in its one top-level folder."""
    from lnzoo.bundle import is_bundle

    if is_bundle(folder):
        return folder
    inner = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(inner) == 1 and is_bundle(inner[0]):
        return inner[0]
    raise UsageError("the archive holds no lnzoo bundle (config.json and models/ at its top or in its one folder)")


def pull(name: str, force: bool = False, say: Callable[[str], None] | None = None) -> Path:
    """The cached bundle of zoo model ``name``, fetched, verified and unpacked first unless it is already there
    (``force``: fetched again). A sha256 or size mismatch is refused (exit 2) with nothing left in the cache."""
    from filelock import FileLock

    from lnzoo.integrity import verify_tree

    say = say or (lambda text: None)
    entry = find(name)
    final = entry.cache
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / ".lock")):  # one pull at a time (folds started in parallel, say)
        if is_pulled(entry) and not force:
            try:
                problems = verify_tree(final)
            except LnzooError as exc:  # its integrity.json unreadable
                problems = [str(exc)]
            if not problems:
                say(f"zoo:{name} is already pulled and verified: {final}")
                return final
            say(f"zoo:{name}: the cached copy was changed ({problems[0]}); pulling it again")
        say(f"pulling zoo:{name} from {entry.url} ({entry.size:,} bytes)")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        try:
            got, size = _fetch(entry, tmp / "archive")
            if got != entry.sha256 or size != entry.size:
                raise UsageError(f"zoo:{name}: the archive from {entry.url} is not the one the index lists "
                                 f"(expected sha256 {entry.sha256}, {entry.size} bytes; got sha256 {got}, {size} "
                                 f"bytes); refused, nothing was unpacked. Metafile: {entry.file}")
            safe_unpack(tmp / "archive", tmp / "unpacked")
            bundle = _bundle_root(tmp / "unpacked")
            problems = verify_tree(bundle)
            if problems:
                raise UsageError(f"zoo:{name}: the bundle in the archive is damaged: {'; '.join(problems[:3])}")
            (bundle / MARKER).write_text(json.dumps({"name": name, "sha256": got, "size": size, "url": entry.url,
                                                     "metafile": str(entry.file)}, indent=2), encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            os.rename(bundle, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"zoo:{name} pulled and verified (sha256 {entry.sha256[:12]}...): {final}")
    return final


def zoo_name(source: str | Path) -> str | None:
    """The NAME of a ``zoo:NAME`` source, else None (also for a recipe's ``init_from = "zoo:NAME"``, which the
    recipe loader made a path under the recipe's folder)."""
    text = str(source)
    if text.startswith(PREFIX):
        return text[len(PREFIX):]
    path = Path(text)
    if path.name.startswith(PREFIX) and not path.exists():
        return path.name[len(PREFIX):]
    return None


def resolve_source(source: str | Path) -> Path:
    """The one place a model source (``--model``, a serve or explain MODEL, ``model.init_from``) is resolved:
    ``zoo:NAME`` is the cached bundle (pulled on first use, saying so on stderr); anything else is its path."""
    name = zoo_name(source)
    if name is None:
        return Path(source)
    entry = find(name)
    if is_pulled(entry):
        return entry.cache
    from lnzoo.ui import wide_console

    err = wide_console(stderr=True)
    return pull(name, say=lambda text: err.print(text, highlight=False, markup=False, soft_wrap=True))


def check_index(folder: Path | None = None) -> list[str]:
    """Every problem of an index: its metafiles' problems, and for each archive on this machine (a path or
    file:// URL) whether its sha256 and size are the metafile's."""
    entries, problems = read_index(folder)
    for e in entries:
        if urllib.parse.urlparse(e.url).scheme in ("http", "https"):
            continue
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(e.url).path)) if e.url.startswith("file:") \
            else Path(e.url)
        if not path.is_file():
            problems.append(f"{e.file}: bundle.url: {path} not found")
        elif path.stat().st_size != e.size or sha256_file(path) != e.sha256:
            problems.append(f"{e.file}: bundle.sha256/size: {path} has sha256 {sha256_file(path)}, "
                            f"{path.stat().st_size} bytes; the metafile says {e.sha256}, {e.size} bytes")
    return problems
