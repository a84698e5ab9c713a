"""De-identification by construction: what ``lnzoo ingest`` writes is built from an allow-list, never by deleting
what looks identifying.

- **Header facts**: only the fields of :data:`ALLOWED` reach the manifest, each cleaned to a short plain value
  (:func:`clean`); every other header field is dropped, names, ids, dates and institutions among them.
- **Identifiers become pseudonyms**: patient, study, series, exam (accession number) and loop (the SOP instance) are
  replaced by a keyed hash, HMAC-SHA256 under a secret key (:class:`Pseudonyms`), so the same patient gets the
  same pseudonym in every ingest with the same key, and nobody without the key can recompute it from a
  hospital id. The key is the user's (``--key-file`` or ``$LNZOO_INGEST_KEY``), or one ingest creates beside the
  output folder, readable by its owner only and listed in that folder's ``.gitignore``; it never goes inside
  the dataset, so sharing the dataset does not share the key.
- **Dates** never leave ingest.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Any

from lnzoo.errors import UsageError

KEY_ENV = "LNZOO_INGEST_KEY"

# manifest column -> the header keyword it is taken from; nothing else of the header is written anywhere
ALLOWED = {
    "modality": "Modality",
    "manufacturer": "Manufacturer",
    "model": "ManufacturerModelName",
    "transducer": "TransducerData",
    "frame_time_ms": "FrameTime",
}
_PLAIN = re.compile(r"[^A-Za-z0-9 ._+\-/]")

# label-file columns that identify a person or an examination: never copied into the manifest
IDENTIFYING = {"patient", "patient_id", "patientid", "patient_name", "patientname", "name", "mrn", "birth_date",
               "birthdate", "dob", "date_of_birth", "accession", "accession_number", "accessionnumber", "study_date",
               "studydate", "address", "phone"}


def clean(value: Any, limit: int = 48) -> str:
    """An allow-listed header value as a short plain string: letters, digits, spaces and ``._+-/``."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else ""
    if isinstance(value, float):
        return f"{value:g}"
    return _PLAIN.sub("", str(value)).strip()[:limit]


def facts(ds: Any) -> dict[str, str]:
    """The allow-listed facts of a header, by manifest column."""
    return {column: clean(ds.get(keyword)) for column, keyword in ALLOWED.items()}


class Pseudonyms:
    """Keyed pseudonyms: ``pseudonyms("patient", "12345")`` is ``P-`` and 16 hex digits of HMAC-SHA256 under the key,
    the same for the same key and id."""

    PREFIX = {"patient": "P", "study": "S", "series": "R", "exam": "E", "loop": "L"}

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise UsageError("the ingest key is shorter than 16 bytes: too easy to guess")
        self._key = key

    def __call__(self, kind: str, value: Any) -> str:
        text = str(value or "").strip()
        if not text:
            return ""
        digest = hmac.new(self._key, f"{kind}:{text}".encode(), hashlib.sha256).hexdigest()
        return f"{self.PREFIX[kind]}-{digest[:16]}"


def key_path_for(out: Path) -> Path:
    """Where ingest keeps the key it creates for the dataset ``out``: beside it, never inside."""
    out = Path(out).resolve()
    return out.parent / f"{out.name}.ingest-key"


def load_key(out: Path, key_file: Path | None = None) -> tuple[bytes, str]:
    """The pseudonym key and where it came from: ``$LNZOO_INGEST_KEY``, ``key_file``, or the key file beside
    ``out`` (created on the first ingest, owner-only, added to the folder's ``.gitignore``)."""
    secret = os.environ.get(KEY_ENV)
    if secret and key_file is None:
        return secret.encode("utf-8"), f"${KEY_ENV}"
    path = Path(key_file) if key_file is not None else key_path_for(out)
    if path.is_file():
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise UsageError(f"{path}: the ingest key file is empty")
        return text.encode("utf-8"), str(path)
    if key_file is not None:
        raise UsageError(f"--key-file {path}: no such file (leave --key-file out and ingest creates a key)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    ignore = path.parent / ".gitignore"
    text = ignore.read_text(encoding="utf-8") if ignore.is_file() else ""
    if path.name not in text.splitlines():
        with ignore.open("a", encoding="utf-8") as fh:
            fh.write(("\n" if text and not text.endswith("\n") else "") + path.name + "\n")
    return path.read_text(encoding="utf-8").strip().encode("utf-8"), f"{path} (new)"
