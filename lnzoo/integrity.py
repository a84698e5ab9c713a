"""Every artefact lnzoo reads back is bound to what wrote it.

A run directory and a bundle (an *artefact root*) carry ``integrity.json``: the sha256 and size of every file
lnzoo wrote there (checkpoints, sidecars, ``config.json``, ``predictions.csv``, ``metrics.json``, the stored
recipe and folds, the report's evaluation, the explain index). The two gates are here:

- :func:`lnzoo.files.write_atomic` binds every file it writes under a root (:func:`bind`), in two steps that
  keep a crash harmless: the new digest is added to the accepted ones before the file is replaced, and the old
  one dropped after, so a file a crash left old or new still matches;
- :func:`read_bytes` (and :func:`check` for bytes already read) is what every reader of a run or bundle file
  calls: a file that differs from its digest, one the root never listed, or a root without ``integrity.json``
  (written by an lnzoo without manifests, or the manifest deleted) is refused with the file named, unless the user
  passes ``--allow-modified`` (:func:`modified_allowed`); then the file is used, and :func:`modified` lists it
  for every output to say so.

A file outside any root (a checkpoint copied out on its own) is bound by its own sidecar instead
(:func:`lnzoo.checkpoint.verify_checkpoint`).
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lnzoo.errors import OutputError, UsageError

MANIFEST = "integrity.json"
LOCK = ".integrity.lock"
_FORMAT = "lnzoo-integrity"
_UNBOUND = (MANIFEST, LOCK, ".lock")  # the manifest itself, and the locks (not artefacts)

_allow = contextvars.ContextVar("lnzoo_allow_modified", default=False)
_modified: dict[str, str] = {}  # path -> why, for the files used under --allow-modified in this process


class ModifiedError(UsageError):
    """A file of a run or bundle differs from what lnzoo wrote there."""


@contextlib.contextmanager
def modified_allowed(allow: bool = True) -> Iterator[None]:
    """Within this block, a file that differs from its digest is used with a warning (``--allow-modified``)."""
    token = _allow.set(allow)
    if allow:
        _modified.clear()  # what this command uses modified is listed anew
    try:
        yield
    finally:
        _allow.reset(token)


def allowing_modified() -> bool:
    """Whether the user passed ``--allow-modified`` to the command running now."""
    return _allow.get()


def note_modified(path: str | Path, why: str) -> None:
    """Record that ``path`` is used although it is not as lnzoo wrote it (only under ``--allow-modified``)."""
    _modified[str(path)] = why


def modified() -> dict[str, str]:
    """The files used although they differ from what lnzoo wrote (``--allow-modified``), each with why."""
    return dict(_modified)


def modified_note() -> str | None:
    """One sentence for an output's header when it was made from modified files, else None."""
    if not _modified:
        return None
    names = ", ".join(sorted(_modified)[:5]) + (f" and {len(_modified) - 5} more" if len(_modified) > 5 else "")
    return f"MADE FROM MODIFIED FILES (--allow-modified): {names} differ from what lnzoo wrote"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- which folder binds a file ----------------------------------------------------------------------------------
def root_of(path: str | Path) -> Path | None:
    """The artefact root a file belongs to: the nearest of its folder and the folder above that holds
    ``integrity.json`` or is recognisably a run directory (``run.json``) or a bundle (``config.json`` and
    ``models/``). None for a file outside any."""
    here = Path(path).absolute().parent
    for folder in (here, here.parent):
        if (folder / MANIFEST).is_file() or (folder / "run.json").is_file() or (
                (folder / "config.json").is_file() and (folder / "models").is_dir()):
            return folder
    return None


def start(root: str | Path) -> None:
    """Make ``root`` an artefact root (an empty manifest) unless it is one: before a run or bundle's first file."""
    root = Path(root)
    if not (root / MANIFEST).exists():
        _write_manifest(root, {})


def _read_manifest(root: Path) -> dict[str, list[str]] | None:
    """File (relative, '/'-separated) -> accepted sha256s; None when the root has no readable manifest."""
    try:
        doc = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ModifiedError(f"{root / MANIFEST}: not readable ({exc}); it binds the files of {root}, so none of "
                            "them can be checked. Pass --allow-modified to use them as they are") from None
    files = doc.get("files") if isinstance(doc, dict) and doc.get("format") == _FORMAT else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), list)
                                              for v in files.values()):
        raise ModifiedError(f"{root / MANIFEST}: not an lnzoo integrity manifest; the files of {root} cannot be "
                            "checked. Pass --allow-modified to use them as they are")
    return {name: list(entry["sha256"]) for name, entry in files.items()}


def _write_manifest(root: Path, files: dict[str, list[str]]) -> None:
    from lnzoo import __version__

    doc = {"format": _FORMAT, "version": 1, "written_by": f"lnzoo {__version__}",
           "files": {name: {"sha256": digests} for name, digests in sorted(files.items())}}
    replace_atomic(root / MANIFEST, json.dumps(doc, indent=1).encode("utf-8"))


def _rel(root: Path, path: Path) -> str:
    return Path(path).absolute().relative_to(root).as_posix()


# -- writing ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def bind(path: str | Path, data: bytes, digest: str | None = None) -> Iterator[None]:
    """Around the replacement of ``path`` by ``data``: record the new digest under the file's root (if any),
    accepting the old one too until the block ends, so a crash inside it leaves a file that still matches."""
    path = Path(path)
    root = root_of(path)
    if root is None or path.name in _UNBOUND:
        yield
        return
    from filelock import FileLock

    digest, rel = digest or sha256(data), _rel(root, path)
    lock = FileLock(str(root / LOCK), is_singleton=False)
    try:
        lock.acquire()
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        files = _read_manifest_for_write(root)
        accepted = [*(d for d in files.get(rel, []) if d != digest), digest]
        if files.get(rel) != accepted:
            _write_manifest(root, {**files, rel: accepted})
        yield
        files = _read_manifest_for_write(root)
        if files.get(rel) != [digest]:
            _write_manifest(root, {**files, rel: [digest]})
    finally:
        lock.release()


def _read_manifest_for_write(root: Path) -> dict[str, list[str]]:
    try:
        return _read_manifest(root) or {}
    except ModifiedError:  # a damaged manifest is replaced by the writer's record of what it writes now
        return {}


# -- reading ----------------------------------------------------------------------------------------------------
def read_bytes(path: str | Path) -> bytes:
    """The bytes of a file lnzoo wrote, checked against its root's manifest (:func:`check`)."""
    return read_digest(path)[0]


def read_digest(path: str | Path) -> tuple[bytes, str]:
    """:func:`read_bytes` and the bytes' sha256 (computed once, for a caller that checks it too)."""
    path = Path(path)
    for attempt in (0, 1):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        digest = sha256(data)
        try:
            check(path, data, digest)
            return data, digest
        except ModifiedError:
            if attempt:  # once more: a writer may have replaced the file between our two reads
                raise
    raise AssertionError("unreachable")


def read_text(path: str | Path) -> str:
    """:func:`read_bytes` as text (UTF-8, a leading BOM dropped)."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc})") from None


def check(path: str | Path, data: bytes, digest: str | None = None) -> None:
    """Refuse ``data`` (the bytes read from ``path``) unless they are what lnzoo wrote there: a file under an
    artefact root must be listed in its manifest with this digest. Under ``--allow-modified``: recorded, used."""
    path = Path(path)
    root = root_of(path)
    if root is None:
        return
    files = _read_manifest(root) if not _allow.get() else _lenient_manifest(root)
    rel, digest = _rel(root, path), digest or sha256(data)
    if files is None:
        why = (f"{root} holds no {MANIFEST} (written by an lnzoo without integrity manifests, or it was removed), so "
               f"{path} cannot be checked against what lnzoo wrote")
    elif rel not in files:
        why = f"{path} is not among the files lnzoo wrote in {root} ({MANIFEST} does not list it)"
    elif digest not in files[rel]:
        why = (f"{path} differs from the file lnzoo wrote there (sha256 {digest[:12]}…, expected "
               f"{files[rel][-1][:12]}…): it was edited, replaced or damaged after it was written")
    else:
        return
    if not _allow.get():
        raise ModifiedError(f"{why}. Restore it or write it again with lnzoo; pass --allow-modified to use it "
                            "as it is (every output then says so)")
    _modified[str(path)] = why


def _lenient_manifest(root: Path) -> dict[str, list[str]] | None:
    try:
        return _read_manifest(root)
    except ModifiedError:
        return None


def verify_tree(root: str | Path) -> list[str]:
    """Every problem of a root's files at once (for ``lnzoo export`` of what it copied, and tests): a listed file
    missing or different, a manifest missing."""
    root = Path(root)
    files = _read_manifest(root)
    if files is None:
        return [f"{root}: holds no {MANIFEST}"]
    problems = []
    for rel, digests in files.items():
        file = root / rel
        if not file.is_file():
            continue  # removed by lnzoo on purpose (a fold's resume state once the fold finished)
        if sha256(file.read_bytes()) not in digests:
            problems.append(f"{file}: differs from the file lnzoo wrote there")
    return problems


def check_tree(root: str | Path) -> None:
    """Refuse a root any of whose files is not as lnzoo wrote it, naming them all (under ``--allow-modified``: each
    recorded, for the outputs to say so)."""
    root = Path(root)
    try:
        problems = verify_tree(root)
    except ModifiedError as exc:
        problems = [str(exc)]
    if not problems:
        return
    if not _allow.get():
        raise ModifiedError(f"{len(problems)} file(s) of {root} are not as lnzoo wrote them: {'; '.join(problems)}. "
                            "Restore them or write them again with lnzoo; pass --allow-modified to use them as they "
                            "are (every output then says so)")
    for problem in problems:
        path, _, why = problem.partition(": ")
        note_modified(path, why or problem)


def replace_atomic(path: Path, blob: bytes) -> Path:
    """Replace ``path`` by ``blob`` through a synced temporary file and a rename (no manifest binding)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # the rename itself survives a power cut once the folder is synced
            fd = os.open(path.parent, os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:  # Ctrl-C or a signal mid-write: no temporary file left behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def stamp(path: str | Path) -> tuple | None:
    """What identifies a file as it is now, for caches of verified reads (None when it is missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
