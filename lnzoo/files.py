"""Writing files so that a reader, or a crash, sees the old file or the new one whole; CSV text; where lnzoo
caches what it derives (decoded images, the phantom, morphology features)."""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lnzoo.errors import OutputError  # noqa: F401  (re-exported: where lnzoo writes, it is raised)
from lnzoo.integrity import bind, replace_atomic


def write_atomic(path: Path, data: str | bytes, digest: str | None = None) -> Path:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new one, whole; a file
    of a run directory or bundle is bound to its manifest as it is written (:func:`lnzoo.integrity.bind`).
    ``digest``: the data's sha256 when the caller has it already (a checkpoint's), so it is not hashed twice."""
    path = Path(path)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    with bind(path, blob, digest):
        return replace_atomic(path, blob)


def csv_text(header: Sequence[str], rows: Sequence[Mapping[str, Any]], line_end: str = "\r\n") -> str:
    """A CSV document of ``rows`` under ``header`` (missing cells empty)."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(header), restval="", lineterminator=line_end)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def cache_root(kind: str = "") -> Path:
    """``$LNZOO_CACHE`` (or ``~/.cache/lnzoo``), or its ``kind`` folder: images, phantom, morphology."""
    root = Path(os.environ.get("LNZOO_CACHE") or Path.home() / ".cache" / "lnzoo")
    return root / kind if kind else root
