"""Writing files so that a reader, or a crash, sees the old file or the new one whole; CSV text; where lnzoo
caches what it derives (decoded images, the phantom, morphology features)."""
from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lnzoo.errors import LnzooError


class OutputError(LnzooError):
    """The output folder cannot be written (read-only, full, gone): exit 1, the path and the reason."""

    exit_code = 1


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new one, whole; a file
    of a run directory or bundle is bound to its manifest as it is written (:func:`lnzoo.integrity.bind`)."""
    from lnzoo.integrity import bind

    path = Path(path)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    with bind(path, blob):
        return replace_atomic(path, blob)


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


def csv_text(header: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """A CSV document of ``rows`` under ``header`` (missing cells empty)."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(header), restval="")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def cache_root(kind: str = "") -> Path:
    """``$LNZOO_CACHE`` (or ``~/.cache/lnzoo``), or its ``kind`` folder: images, phantom, morphology."""
    root = Path(os.environ.get("LNZOO_CACHE") or Path.home() / ".cache" / "lnzoo")
    return root / kind if kind else root
