"""``lnzoo ingest``: folders of DICOM ultrasound into a dataset ``lnzoo run`` reads as it is.

Writes into ``out``: ``images/<patient>/<loop>_f<frame>.png`` (each chosen frame cut to its ultrasound region),
``manifest.csv`` (a row per frame: pseudonyms, the allow-listed facts, the region, the pixel size, the marks found,
the labels joined) and ``ingest_log.csv`` (a row per file: ingested, skipped or refused, and why). Both tables are
rewritten whole at the end, and when a signal stops the command, so they always list what is on disk. A second
ingest into the same folder skips the files already there (by their SOP instance, as its pseudonym) and adds the
rest. See :mod:`lnzoo.ingest.dicom` for decoding and the region, :mod:`lnzoo.ingest.deid` for what is written.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnzoo.errors import DataError, UsageError
from lnzoo.files import csv_text, write_atomic
from lnzoo.ingest.deid import IDENTIFYING, Pseudonyms, clean, facts, load_key
from lnzoo.ingest.dicom import ULTRASOUND, frame_indices, open_dicom

MANIFEST, LOG = "manifest.csv", "ingest_log.csv"
COLUMNS = ("path", "patient", "study", "series", "exam", "loop", "frame", "frames", "modality", "manufacturer",
           "model", "transducer", "frame_time_ms", "region_kind", "region_source", "region_x0", "region_y0",
           "region_x1", "region_y1", "width", "height", "pixel_mm_x", "pixel_mm_y", "burned_in", "marks_caliper",
           "marks_text", "marks_masked")
LOG_COLUMNS = ("file", "status", "frames", "reason")
MARKS = ("flag", "mask", "keep")
# a label file's key column -> the pseudonym kind and the header keyword it matches; the first present is used
LABEL_KEYS = {"accession_number": ("exam", "AccessionNumber"), "accession": ("exam", "AccessionNumber"),
              "study": ("study", "StudyInstanceUID"), "study_uid": ("study", "StudyInstanceUID"),
              "series": ("series", "SeriesInstanceUID"), "series_uid": ("series", "SeriesInstanceUID"),
              "file": ("file", "")}
_COMPANIONS = {"labels.csv", "truth.json", "readme.txt", "dicomdir"}  # beside DICOM files, not DICOM themselves


@dataclass
class Ingested:
    """What an ingest did: files by outcome, frames written, where the key came from, the time it took."""

    out: Path
    counts: Counter = field(default_factory=Counter)
    frames: int = 0
    unlabelled: int = 0
    key_source: str = ""
    seconds: float = 0.0
    burned_in: int = 0
    warnings: int = 0

    @property
    def manifest(self) -> Path:
        return self.out / MANIFEST


def ingest(sources: Sequence[str | Path], out: str | Path, labels: str | Path | None = None, frames: str = "all",
           inside_marks: str = "flag", key_file: str | Path | None = None, any_modality: bool = False,
           mapping: str | Path | None = None, study_days: bool = False,
           progress: Callable[[int, int], None] | None = None) -> Ingested:
    """Ingest every DICOM file under ``sources`` into ``out`` (see the module's docstring).

    ``mapping``: a CSV of each patient pseudonym and the PatientID it stands for, written only when asked, and
    never inside ``out``. ``study_days``: a ``study_day`` column, the days since the patient's first study in this
    ingest (the dates themselves never leave it); every study of a patient must then come in one ingest."""
    started = time.perf_counter()
    out = Path(out)
    if mapping is not None and (Path(mapping).resolve() == out.resolve() or out.resolve() in
                                Path(mapping).resolve().parents):
        raise UsageError(f"--mapping {mapping} lies inside the dataset {out}: the mapping re-identifies patients; "
                         "keep it apart from the data you share")
    if inside_marks not in MARKS:
        raise UsageError(f"--inside-marks {inside_marks!r}: give one of {', '.join(MARKS)}")
    frame_indices(2, frames)  # the rule is checked before any file is read
    roots = [Path(s) for s in sources]
    missing = [str(r) for r in roots if not r.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    if any(out.resolve() == r.resolve() or r.resolve() in out.resolve().parents for r in roots if r.is_dir()):
        raise UsageError(f"--out {out} lies inside the DICOM folder it reads; give a folder outside it")
    key, key_source = load_key(out, Path(key_file) if key_file else None)
    names = Pseudonyms(key)
    table = _Labels.read(Path(labels), names) if labels else _Labels.beside(roots, names)
    rows = _read_rows(out / MANIFEST)
    if study_days and rows:
        raise UsageError(f"--study-days counts from each patient's first study, so it needs every study in one "
                         f"ingest; {out} already holds {len(rows)} frame(s): ingest into a new folder")
    kept = [c for c in (rows[0] if rows else {}) if c not in COLUMNS]  # label columns of an earlier ingest
    done = {r["loop"] for r in rows}
    log: list[dict[str, Any]] = []
    result = Ingested(out, key_source=key_source)
    files = list(_files(roots))
    try:
        for i, (root, path) in enumerate(files, start=1):
            name = path.relative_to(root).as_posix() if path != root else path.name
            try:
                entry = _one(path, name, out, names, frames, inside_marks, any_modality, done, table)
            except DataError as exc:
                entry = {"status": "refused", "reason": "; ".join(p.replace(f"{path}: ", "") for p in exc.problems)}
            new = entry.pop("rows", [])
            rows += new
            result.frames += len(new)
            result.unlabelled += sum(1 for r in new if r.get("_unlabelled"))
            result.burned_in += entry.pop("burned_in", 0)
            result.warnings += 1 if entry.get("status") == "ingested" and entry.get("reason") else 0
            result.counts[entry["status"]] += 1
            log.append({"file": name, "frames": len(new) or "", **entry})
            if progress is not None:
                progress(i, len(files))
    finally:  # whole tables, also when a signal stops the loop: they list exactly the frames on disk
        if rows or log:
            out.mkdir(parents=True, exist_ok=True)
            extra = [*(["study_day"] if study_days else []), *table.columns]
            header = list(dict.fromkeys([*COLUMNS, *kept, *[c for c in extra if c not in COLUMNS]]))
            if study_days:
                _study_days(rows)
            if mapping is not None:
                pairs = {(r["patient"], r["_patient_id"]) for r in rows if r.get("_patient_id")}
                pairs |= {(r["patient"], r["patient_id"]) for r in _read_rows(Path(mapping))}  # an earlier ingest's
                write_atomic(Path(mapping), csv_text(("patient", "patient_id"),
                                                     [{"patient": p, "patient_id": i} for p, i in sorted(pairs)]))
            if table.columns:
                for row in rows:
                    table.join(row)
            write_atomic(out / MANIFEST, csv_text(header, [{k: r.get(k, "") for k in header} for r in rows]))
            write_atomic(out / LOG, csv_text(LOG_COLUMNS, [*_read_rows(out / LOG), *log]))
    result.seconds = time.perf_counter() - started
    return result


def _one(path: Path, name: str, out: Path, names: Pseudonyms, frames: str, inside_marks: str, any_modality: bool,
         done: set[str], table: _Labels) -> dict[str, Any]:
    """One file: its rows (one per chosen frame, PNGs written) and its log entry."""
    if path.name.lower() == "dicomdir":
        return {"status": "skipped", "reason": "a DICOMDIR index, not an image"}
    image = open_dicom(path)
    ds = image.ds
    loop = names("loop", ds.get("SOPInstanceUID"))
    if not loop:
        raise DataError([f"{path}: no SOPInstanceUID, so the file cannot be told apart from others"])
    if loop in done:
        return {"status": "skipped", "reason": "already ingested"}
    modality = clean(ds.get("Modality"))
    if modality not in ULTRASOUND and not any_modality:
        raise DataError([f"{path}: modality {modality or 'not given'}, not ultrasound (US); --any-modality takes "
                         "it anyway"])
    patient_id = str(ds.get("PatientID") or ds.get("PatientName") or "").strip()
    patient = names("patient", patient_id)
    if not patient:
        raise DataError([f"{path}: no PatientID or PatientName, so its frames could not be kept together in "
                         "cross-validation"])
    region = image.region()
    x0, y0, x1, y1 = region.box
    chosen = frame_indices(image.n_frames, frames)
    burned = clean(ds.get("BurnedInAnnotation")).upper()
    base = {"patient": patient, "study": names("study", ds.get("StudyInstanceUID")),
            "series": names("series", ds.get("SeriesInstanceUID")), "exam": names("exam", ds.get("AccessionNumber")),
            "loop": loop, "frames": image.n_frames, **facts(ds), "region_kind": region.kind,
            "region_source": region.source, "region_x0": x0, "region_y0": y0, "region_x1": x1, "region_y1": y1,
            "width": x1 - x0, "height": y1 - y0, "burned_in": burned,
            "pixel_mm_x": f"{region.pixel_mm[0]:.6g}" if region.pixel_mm else "",
            "pixel_mm_y": f"{region.pixel_mm[1]:.6g}" if region.pixel_mm else "",
            "_file": name, "_patient_id": patient_id, "_date": str(ds.get("StudyDate") or "").strip()}
    rows = []
    for index in chosen:
        rgb = image.frame(index)[y0:y1, x0:x1]
        marks = {"marks_caliper": "", "marks_text": "", "marks_masked": ""}
        if inside_marks != "keep":
            from lnzoo.ingest.marks import fill, find_marks

            found = find_marks(rgb)
            marks.update({k: str(v) for k, v in found.as_columns().items()})
            if inside_marks == "mask":
                marks["marks_masked"] = "1" if found.mask.any() else "0"
                if found.mask.any():
                    rgb = fill(rgb, found.mask)
        rel = f"images/{patient}/{loop}_f{index:04d}.png"
        write_atomic(out / rel, _png(rgb))
        row = {**base, **marks, "path": rel, "frame": index}
        if table.columns:
            row["_unlabelled"] = not table.join(row, ds)
        rows.append(row)
    done.add(loop)
    overlays = sum(1 for group in range(0x6000, 0x6020, 2) if (group, 0x3000) in ds)
    if overlays:
        image.warnings.append(f"{overlays} overlay plane(s) (graphics stored beside the pixels, possibly text) "
                              "were not drawn into the frames")
    reason = "; ".join(image.warnings)
    return {"status": "ingested", "reason": reason, "rows": rows, "burned_in": int(burned == "YES")}


def _study_days(rows: list[dict[str, Any]]) -> None:
    """``study_day``: days from the patient's first study date to this row's (empty where a date is missing or not
    a date); the dates are read here and written nowhere."""
    import datetime

    def day(text: str) -> datetime.date | None:
        try:
            return datetime.datetime.strptime(text[:8], "%Y%m%d").date()
        except ValueError:
            return None

    first: dict[str, datetime.date] = {}
    for r in rows:
        d = day(r.get("_date", ""))
        if d is not None and (r["patient"] not in first or d < first[r["patient"]]):
            first[r["patient"]] = d
    for r in rows:
        d = day(r.get("_date", ""))
        r["study_day"] = (d - first[r["patient"]]).days if d is not None else ""


def _png(rgb: np.ndarray) -> bytes:
    """A PNG of the pixels and nothing else: no text chunks, no header field."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _files(roots: Sequence[Path]) -> Iterator[tuple[Path, Path]]:
    """Every file under the roots, sorted, as (root, file); hidden files and the known companions left out."""
    for root in roots:
        if root.is_file():
            yield root, root
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root)
            if any(part.startswith(".") for part in rel.parts) or path.name.lower() in _COMPANIONS:
                continue
            if path.suffix.lower() != ".dcm" and not _has_dicom_preamble(path):
                continue  # not DICOM (a note, a picture beside the files): not ours to judge
            yield root, path


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    from lnzoo.data.tables import csv_reader

    reader, _ = csv_reader(path)
    return [dict(r) for r in reader]


class _Labels:
    """A label table joined to the frames by accession number, study, series or file, matched through the
    pseudonyms (so a second ingest re-joins every row without keeping any identifier)."""

    def __init__(self, columns: list[str], kind: str = "", by: dict[str, dict[str, str]] | None = None,
                 source: str = ""):
        self.columns, self.kind, self.by, self.source = columns, kind, by or {}, source

    @classmethod
    def beside(cls, roots: Sequence[Path], names: Pseudonyms) -> _Labels:
        """``labels.csv`` at the top of the (single) DICOM folder, when ``--labels`` is not given."""
        found = [r / "labels.csv" for r in roots if r.is_dir() and (r / "labels.csv").is_file()]
        return cls.read(found[0], names) if len(found) == 1 else cls([])

    @classmethod
    def read(cls, path: Path, names: Pseudonyms) -> _Labels:
        from lnzoo.data.tables import csv_reader

        reader, _ = csv_reader(path)
        header = [h.strip() for h in reader.fieldnames or []]
        key = next((k for k in LABEL_KEYS if k in [h.lower() for h in header]), None)
        if key is None:
            raise DataError([f"{path}: no column to join on; give one of {', '.join(LABEL_KEYS)}"])
        key_col = next(h for h in header if h.lower() == key)
        kind = LABEL_KEYS[key][0]
        columns = [h for h in header  # never a person's identifier, a join key, or a column ingest writes itself
                   if h and h.lower() not in IDENTIFYING and h.lower() not in LABEL_KEYS and h not in COLUMNS]
        by: dict[str, dict[str, str]] = {}
        for line, row in enumerate(reader, start=2):
            value = (row.get(key_col) or "").strip()
            if not value:
                raise DataError([f"{path}:{line}: empty {key_col}"])
            ref = value.replace("\\", "/") if kind == "file" else names(kind, value)
            if ref in by:
                raise DataError([f"{path}:{line}: {key_col} repeats an earlier row's; one row per key"])
            by[ref] = {c: (row.get(c) or "").strip() for c in columns}
        return cls(columns, kind, by, str(path))

    def join(self, row: dict[str, Any], ds: Any = None) -> bool:
        """Copy the labels of ``row``'s key into it; whether the key was in the table."""
        if self.kind == "file":
            file = str(row.get("_file", ""))
            found = self.by.get(file) or self.by.get(Path(file).name)
            if found is None and ds is None:  # a row of an earlier ingest: its file is not kept, its labels are
                return True
        else:
            found = self.by.get(row.get(self.kind, ""))
        for c in self.columns:
            row[c] = (found or {}).get(c, "")
        return found is not None
