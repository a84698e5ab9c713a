"""The synthetic phantom as ultrasound DICOM files -- for development, tests and demos only.

SYNTHETIC, NOT CLINICAL DATA. Every name, ID, date and hospital written here is made up, drawn
from small lists of obviously fake values; every image is a frame of :mod:`lnzoo.data.phantom`.

What DICOM ingest has to cope with in real exports, and what this writer therefore puts in:

* **A scanner screen, not a frame.** Each file is a screen capture: a black canvas (a few sizes)
  with the phantom frame, resized by 1, 1.25 or 1.5, pasted at an offset that varies per file.
  That rectangle is the ultrasound region, declared in ``SequenceOfUltrasoundRegions`` with its
  physical pixel size. Burned in around it: the patient's name and ID, the study date, the
  hospital, probe, depth and preset -- the PHI an ingest must never carry into a dataset.
* **Overlays inside the region** on about 40 % of the files: two caliper crosses at the ends of the
  node's long axis with a dotted line between them, and a "D1 12.3 mm" readout in a corner.
* **A spectral Doppler strip** under the image on every 5th file, declared as a second region
  (spatial format 3 = spectral, data type 3 = PW Doppler), so an ingest can show it takes the
  tissue/flow region and never the spectrum.
* **Colour flow** (every 4th file shows the phantom's CDFI frame; region data type 2), **cine
  loops** (every 4th file, 4-6 frames: the image shifted by a pixel or two with fresh noise, the
  text around it static), and the transfer syntaxes and photometric interpretations seen in the
  wild: Explicit VR Little Endian, RLE Lossless, JPEG Baseline (YBR_FULL_422) and JPEG 2000
  Lossless; RGB, every 10th file MONOCHROME2 and every 20th PALETTE COLOR.

Layout written by :func:`generate_dicom_phantom`::

    README.txt            SYNTHETIC, NOT CLINICAL DATA, and what is here
    dicom/<folder>/IM0001.dcm   one folder per patient (a hash, never the name or ID)
    labels.csv            one row per study: accession_number + the phantom's label columns
    truth.json            per file: the phantom patient, the PHI written, the region, every drawn box

Boxes in ``truth.json`` are ``[x0, y0, x1, y1]`` canvas pixels with x1/y1 *exclusive* (the
header's RegionLocationMaxX1/MaxY1 are inclusive, as DICOM defines them). Same arguments, same
bytes: every random choice comes from ``numpy.random.default_rng([seed, patient, stream])`` and
the UIDs are name-based ``2.25.<UUID>`` ones derived from the arguments. Patient ``i``'s files
depend on the arguments and on the patients before it, not on how many come after.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lnzoo.data.phantom import FIELD_DEPTH_MM, PHANTOM_VERSION, ensure_phantom
from lnzoo.data.phantom_identities import fake_identity
from lnzoo.data.phantom_render import spectral_strip
from lnzoo.data.phantom_shortcuts import draw_caliper_plan, plan_calipers
from lnzoo.data.phantom_shortcuts import draw_text as _text, text_size as _text_size
from lnzoo.files import csv_text, write_atomic

__all__ = ["DICOM_PHANTOM_VERSION", "LABEL_COLUMNS", "check_dicom_support", "generate_dicom_phantom"]

DICOM_PHANTOM_VERSION = 1  # bump when the written files change
# labels.csv: accession_number, then these manifest columns, copied as they are
LABEL_COLUMNS = ("malignancy", "enlargement", "metastasis", "origin", "lymphoma_subtype", "pathology3",
                 "age", "sex")

_PROBE = "L12-5"
_CANVAS_W = (640, 656, 672, 704)
_CANVAS_H = (480, 496, 512)
_SCALES = (1.0, 1.25, 1.5)
_SPECTRAL_H, _GAP, _EDGE = 110, 10, 6  # spectral strip height, gap under the image, free canvas edge
_WHITE, _GREY = (255, 255, 255), (200, 200, 200)

# transfer syntax keyword -> how its pixel data is written
_SYNTAXES = ("ExplicitVRLittleEndian", "RLELossless", "JPEGBaseline8Bit", "JPEG2000Lossless")


@dataclass
class _File:
    """Everything decided about one DICOM file before it is drawn."""

    n: int                      # running image number over the whole phantom (0-based)
    row: dict                   # the phantom manifest row it shows
    instance: int               # 1-based within the patient's series
    cdfi: bool
    frames: int
    syntax: str
    photometric: str            # RGB, MONOCHROME2 or PALETTE COLOR before compression
    spectral: bool
    calipers: bool
    scale: float
    canvas: tuple[int, int]
    text_outside: list = field(default_factory=list)
    text_outside_text: list = field(default_factory=list)
    text_inside: list = field(default_factory=list)
    caliper_boxes: list = field(default_factory=list)
    measure_lines: list = field(default_factory=list)


def check_dicom_support():
    """Return pydicom once it and the JPEG 2000 encoder the phantom needs import; else an ImportError that says
    how to get them (the CLI turns it into a usage error before anything is written)."""
    try:
        import pydicom
        from pydicom.pixels import get_encoder
    except ImportError:
        raise ImportError("the DICOM phantom needs pydicom: pip install 'lnzoo[dicom]'") from None
    if not get_encoder(pydicom.uid.JPEG2000Lossless).is_available:
        raise ImportError("the DICOM phantom needs a JPEG 2000 encoder (pylibjpeg-openjpeg): "
                          "pip install 'lnzoo[dicom]'")
    return pydicom



def _plan(n: int, row: dict, instance: int, rng: np.random.Generator) -> _File:
    """Which frame, how many frames, which syntax and overlays file ``n`` gets: fixed patterns over the
    running number so every kind appears in a phantom of a few patients, the rest from ``rng``."""
    cdfi = n % 4 == 3
    cine = n % 4 == 1
    spectral = n % 5 == 4
    syntax = _SYNTAXES[(n + n // 4) % 4]  # shifts by one every 4 files: cine files meet every syntax
    photometric = "RGB"
    if n % 10 == 2:
        photometric = "MONOCHROME2"
    elif n % 20 == 7:
        photometric = "PALETTE COLOR"
        if syntax not in ("ExplicitVRLittleEndian", "RLELossless"):
            syntax = "RLELossless"
    frames = int(rng.integers(4, 7)) if cine else 1
    calipers = bool(rng.random() < 0.4)
    scale = 1.0 if spectral else float(_SCALES[int(rng.integers(0, len(_SCALES)))])
    canvas = (int(_CANVAS_W[int(rng.integers(0, len(_CANVAS_W)))]),
              int(_CANVAS_H[int(rng.integers(0, len(_CANVAS_H)))]))
    return _File(n=n, row=row, instance=instance, cdfi=cdfi, frames=frames, syntax=syntax,
                 photometric=photometric, spectral=spectral, calipers=calipers, scale=scale, canvas=canvas)





def _shifted(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``img`` moved by (dy, dx) pixels, edges repeated (no wrap-around)."""
    pad = ((2, 2), (2, 2)) + ((0, 0),) * (img.ndim - 2)
    p = np.pad(img, pad, mode="edge")
    h, w = img.shape[:2]
    return p[2 - dy:2 - dy + h, 2 - dx:2 - dx + w]


def _cine(region: np.ndarray, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Frame 0 as rendered; each later frame shifted by up to 2 px with fresh noise on its grey pixels."""
    out = [region]
    grey = (region[..., 0] == region[..., 1]) & (region[..., 1] == region[..., 2])
    for _ in range(frames - 1):
        dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
        if dy == 0 and dx == 0:
            dx = 1
        moved = _shifted(region, dy, dx).astype(np.int16)
        moved_grey = _shifted(grey, dy, dx) & (moved[..., 0] > 0)
        noise = np.rint(rng.normal(0, 6, size=moved.shape[:2])).astype(np.int16)
        moved[moved_grey] += noise[moved_grey][:, None]
        out.append(np.clip(moved, 0, 255).astype(np.uint8))
    return out


def _screen(f: _File, phi: dict, frame: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
    """Draw file ``f``'s screen: returns (frames as H x W x 3 uint8 arrays, region box, spectral box or None).

    The static part (black canvas, text around the region, the spectral strip) is drawn once; each
    frame pastes its own region content onto a copy and redraws the static overlays inside it."""
    S = frame.shape[0]
    rw = rh = int(round(S * f.scale))
    size = int(rng.integers(13, 16))
    lines_left = [_PROBE, f"{FIELD_DEPTH_MM / 10:.1f} cm", "LYMPH NODE", f"G {phi['gain']}",
                  "CF PRF 1.5k" if f.cdfi else "FR 25 Hz"]
    if f.spectral:
        lines_left.append("PW 5.0 MHz")
    panel_w = max(_text_size(t, size)[0] for t in lines_left) + 8
    line_h = _text_size("Ag", size)[1] + 4
    banner_h = 6 + 2 * line_h
    W, H = f.canvas
    need_h = banner_h + 8 + rh + (_GAP + _SPECTRAL_H if f.spectral else 0) + _EDGE
    W, H = max(W, panel_w + 12 + rw + _EDGE), max(H, need_h)
    f.canvas = (W, H)
    x0 = int(rng.integers(panel_w + 12, W - rw - _EDGE + 1))
    y0 = int(rng.integers(banner_h + 8, H - (need_h - banner_h - 8) + 1))
    region = [x0, y0, x0 + rw, y0 + rh]

    base = Image.new("RGB", (W, H), (0, 0, 0))
    draw = ImageDraw.Draw(base)
    shade = _WHITE if rng.random() < 0.5 else _GREY
    study = phi["study_date"]
    when = f"{study[:4]}-{study[4:6]}-{study[6:]} {phi['study_time'][:2]}:{phi['study_time'][2:4]}"
    texts = [((8, 6), phi["institution"], "la"), ((W - 8, 6), when, "ra"),
             ((8, 6 + line_h), phi["name"], "la")]
    name_w = _text_size(phi["name"], size)[0]
    texts.append(((8 + name_w + 16, 6 + line_h), phi["id"], "la"))
    texts.append(((W - 8, 6 + line_h), f"MI 0.{int(rng.integers(5, 10))}  TIs 0.{int(rng.integers(1, 4))}", "ra"))
    for i, line in enumerate(lines_left):
        texts.append(((6, banner_h + 8 + i * line_h), line, "la"))
    for xy, text, anchor in texts:
        f.text_outside.append(_text(draw, xy, text, size, shade, anchor))
        f.text_outside_text.append(text)

    spectral = None
    if f.spectral:
        sy0 = region[3] + _GAP
        spectral = [x0, sy0, x0 + rw, sy0 + _SPECTRAL_H]
        strip = spectral_strip(rw, _SPECTRAL_H, rng)
        base.paste(Image.fromarray(np.repeat(strip[..., None], 3, axis=2)), (x0, sy0))

    # region content at display size, then the cine frames made from it
    img = Image.fromarray(frame).convert("RGB")
    if rw != S:
        img = img.resize((rw, rh), Image.BILINEAR)
    content = _cine(np.asarray(img), f.frames, rng)

    # the calipers (shared with the phantom's planted shortcuts): decided once, redrawn on every frame
    plan = None
    if f.calipers:
        plan = plan_calipers(mask, rng, size - 1, region=(region[0], region[1], region[2], region[3]), scale=rw / S)
        if plan is not None:
            f.caliper_boxes = [list(b) for b in plan.boxes]
            f.measure_lines = [list(plan.line)]

    frames = []
    for arr in content:
        im = base.copy()
        im.paste(Image.fromarray(arr), (x0, y0))
        if plan is not None:
            box = draw_caliper_plan(ImageDraw.Draw(im), plan)
            if len(f.text_inside) == 0:
                f.text_inside.append(box)
        frames.append(np.asarray(im))
    return frames, region, spectral


def _jpeg(frame: np.ndarray) -> bytes:
    """One frame as baseline JPEG, quality 90; colour as YCbCr 4:2:2 (DICOM's YBR_FULL_422)."""
    buf = io.BytesIO()
    img = Image.fromarray(frame)
    opts = {"subsampling": 1} if img.mode == "RGB" else {}
    img.save(buf, format="JPEG", quality=90, optimize=False, progressive=False, **opts)
    return buf.getvalue()


def _uid(*parts) -> str:
    """A deterministic ``2.25.<UUID>`` UID from the phantom's arguments and the object it names.

    A name-based (version 5) UUID, as ISO/IEC 9834-8 allows under 2.25; pydicom's
    ``generate_uid(prefix=None, entropy_srcs=...)`` would ignore the entropy and return a random one."""
    name = "/".join(["lnzoo-dicom-phantom", str(DICOM_PHANTOM_VERSION), *map(str, parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"


def _region_item(box: list[int], spatial: int, data_type: int, units: tuple[int, int],
                 delta: tuple[float, float], reference: tuple[int, int]):
    """One SequenceOfUltrasoundRegions item for ``box`` (x1/y1 exclusive; written inclusive)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = spatial, data_type, 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = box[0], box[1]
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = box[2] - 1, box[3] - 1
    item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX, item.PhysicalDeltaY = delta
    item.ReferencePixelX0, item.ReferencePixelY0 = reference
    return item


def _dataset(f: _File, phi: dict, frames: list[np.ndarray], region, spectral, uids: dict, pixel_mm):
    """The DICOM dataset of file ``f`` with its pixel data encoded in ``f.syntax``."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence

    multi = f.frames > 1
    sop_class = pydicom.uid.UltrasoundMultiFrameImageStorage if multi else pydicom.uid.UltrasoundImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uids["sop"]
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian  # compress() below switches it
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uids["sop"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = phi["study_date"]
    ds.StudyTime = ds.SeriesTime = phi["study_time"]
    ds.ContentTime = f"{phi['study_time'][:4]}{(int(phi['study_time'][4:]) + f.instance) % 60:02d}"
    ds.AccessionNumber = phi["accession"]
    ds.Modality = "US"
    ds.Manufacturer = "lnzoo phantom"
    ds.InstitutionName = phi["institution"]
    ds.ReferringPhysicianName = phi["referrer"]
    ds.StudyDescription = "US NECK LYMPH NODES (SYNTHETIC)"
    ds.SeriesDescription = "LYMPH NODE"
    ds.ManufacturerModelName = "SYNTHETIC SCANNER"
    ds.PatientName = phi["name"]
    ds.PatientID = phi["id"]
    ds.PatientBirthDate = phi["birth_date"]
    ds.PatientSex = f.row.get("sex", "") or "O"
    ds.PatientAge = f"{phi['age']:03d}Y"
    ds.BodyPartExamined = "NECK"
    ds.TransducerData = [_PROBE, "", ""]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, f.instance
    ds.BurnedInAnnotation = "YES"

    W, H = f.canvas
    ds.Rows, ds.Columns = H, W
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if multi:
        ds.NumberOfFrames = f.frames
        ds.FrameTime = "40"
        ds.CineRate = 25
        ds.FrameIncrementPointer = 0x00181063  # FrameTime
    regions = [_region_item(region, 1, 2 if f.cdfi else 1, (3, 3),
                            (pixel_mm[0] / 10, pixel_mm[1] / 10), ((region[2] - region[0]) // 2, 0))]
    if spectral is not None:
        # seconds across, cm/s up; the reference pixel sits on the baseline
        sw = spectral[2] - spectral[0]
        regions.append(_region_item(spectral, 3, 3, (4, 7), (2.6 / sw, 1.0), (0, int(_SPECTRAL_H * 0.72))))
    ds.SequenceOfUltrasoundRegions = Sequence(regions)

    stack = np.stack(frames)  # (n, H, W, 3)
    if f.photometric == "MONOCHROME2":
        stack = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in frames])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    elif f.photometric == "PALETTE COLOR":
        # one palette for every frame: quantise the first, map the rest onto it
        pal_img = Image.fromarray(frames[0]).quantize(256, method=Image.Quantize.MEDIANCUT,
                                                       dither=Image.Dither.NONE)
        stack = np.stack([np.asarray(pal_img)] + [np.asarray(Image.fromarray(a).quantize(
            palette=pal_img, dither=Image.Dither.NONE)) for a in frames[1:]])
        lut = np.zeros((256, 3), np.uint16)
        pal = np.frombuffer(bytes(pal_img.getpalette()[:768]), np.uint8).reshape(-1, 3)
        lut[:len(pal)] = pal.astype(np.uint16) * 257
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "PALETTE COLOR"
        for i, colour in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", lut[:, i].astype("<u2").tobytes())
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    if not multi:
        stack = stack[0]

    if f.syntax == "JPEGBaseline8Bit":
        encoded = [_jpeg(a) for a in (stack if multi else [stack])]
        raw = stack.nbytes
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
        if ds.SamplesPerPixel == 3:
            ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{raw / sum(len(e) for e in encoded):.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.PixelData = np.ascontiguousarray(stack).tobytes()
        ds["PixelData"].VR = "OB"
        if f.syntax == "RLELossless":
            # pylibjpeg-rle (the dicom extra) is ~50x faster than pydicom's own Python encoder
            from pydicom.pixels import get_encoder

            plugins = get_encoder(pydicom.uid.RLELossless).available_plugins
            ds.compress(pydicom.uid.RLELossless, encoding_plugin="pylibjpeg" if "pylibjpeg" in plugins else "pydicom",
                        generate_instance_uid=False)
        elif f.syntax == "JPEG2000Lossless":
            ds.compress(pydicom.uid.JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    return ds


def _readme(seed: int, patients: int, difficulty: float, n_files: int) -> str:
    return (
        "lnzoo synthetic lymph node ultrasound phantom -- DICOM edition\n"
        "===============================================================\n\n"
        "SYNTHETIC, NOT CLINICAL DATA.\n"
        "Every image comes from lnzoo's random phantom; every patient name, ID, birth date,\n"
        "accession number, hospital and date written into these files and burned into their\n"
        "pixels is made up. None of it belongs to a person.\n\n"
        f"DICOM_PHANTOM_VERSION = {DICOM_PHANTOM_VERSION}\nPHANTOM_VERSION = {PHANTOM_VERSION}\n"
        f"seed = {seed}\npatients = {patients}\ndifficulty = {difficulty}\nfiles = {n_files}\n\n"
        "dicom/<folder>/IM0001.dcm: ultrasound DICOM, one folder per patient. Each file is a\n"
        "scanner screen: the ultrasound region (SequenceOfUltrasoundRegions) surrounded by\n"
        "burned-in fake PHI; some carry calipers and a measurement inside the region, some a\n"
        "spectral Doppler strip (a second region), some are cine loops. Transfer syntaxes:\n"
        "Explicit VR Little Endian, RLE Lossless, JPEG Baseline, JPEG 2000 Lossless.\n"
        "labels.csv: one row per study, keyed by accession_number (DICOM AccessionNumber).\n"
        "truth.json: per file, the PHI written, the region and every drawn box\n"
        "([x0, y0, x1, y1] canvas pixels, x1/y1 exclusive), for testing an ingest.\n"
    )


def generate_dicom_phantom(out: Path, patients: int = 24, seed: int = 0, difficulty: float = 0.5,
                           progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the phantom as ultrasound DICOM into ``out``; return the path of ``out/truth.json``.

    Synthetic data for testing DICOM ingest, not clinical data. The PNG phantom comes from
    :func:`lnzoo.data.phantom.ensure_phantom` (cached). ``out/dicom`` is rebuilt whole (a folder
    written by an earlier call is replaced; one this function did not write is refused with
    FileExistsError); README.txt, labels.csv and truth.json are overwritten, truth.json last.
    ``progress(done, total)`` is called as the PNG phantom is rendered (first half) and as each
    patient's files are written (second half). Raises ImportError without pydicom and its encoders.
    """
    check_dicom_support()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; the DICOM phantom goes into a folder")
    dicom_dir = out / "dicom"
    if dicom_dir.exists() and not (out / "truth.json").is_file():
        raise FileExistsError(f"{dicom_dir} exists and was not written by the DICOM phantom (no truth.json "
                              "beside it); choose another --out")
    total = 2 * int(patients) if isinstance(patients, int) and patients > 0 else 1
    manifest = ensure_phantom(patients=patients, seed=seed, difficulty=difficulty,
                              progress=(lambda d, t: progress(d, 2 * t)) if progress is not None else None)
    patients, seed, difficulty = int(patients), int(seed), float(difficulty)
    root = manifest.parent
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_patient: dict[str, list[dict]] = {}
    for row in rows:
        by_patient.setdefault(row["patient"], []).append(row)

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dicom-", dir=out))
    truth: dict[str, dict] = {}
    labels: list[dict] = []
    n = 0
    try:
        for idx, pid in enumerate(sorted(by_patient), start=1):
            prows = by_patient[pid]
            phi = fake_identity(seed, idx, prows[0])
            folder = hashlib.sha256(f"lnzoo-dicom-{seed}-{difficulty}-{idx}".encode()).hexdigest()[:10].upper()
            (tmp / folder).mkdir()
            uids = {"study": _uid(seed, difficulty, pid, "study"), "series": _uid(seed, difficulty, pid, "series")}
            labels.append({"accession_number": phi["accession"], **{c: prows[0].get(c, "") for c in LABEL_COLUMNS}})
            for k, row in enumerate(prows, start=1):
                rng = np.random.default_rng([seed, idx, 7, k])
                f = _plan(n, row, k, rng)
                source = row["cdfi"] if f.cdfi else row["path"]
                with Image.open(root / source) as im:
                    frame = np.asarray(im)
                with Image.open(root / row["mask"]) as im:
                    mask = np.asarray(im) > 0
                frames, region, spectral = _screen(f, phi, frame, mask, rng)
                rw = region[2] - region[0]
                pixel_mm = (FIELD_DEPTH_MM / rw, FIELD_DEPTH_MM / (region[3] - region[1]))
                ds = _dataset(f, phi, frames, region, spectral,
                              {**uids, "sop": _uid(seed, difficulty, pid, k, "image")}, pixel_mm)
                name = f"IM{k:04d}.dcm"
                ds.save_as(tmp / folder / name, enforce_file_format=True)
                truth[f"dicom/{folder}/{name}"] = {
                    "patient": pid,
                    "phi": {key: phi[key] for key in ("name", "id", "birth_date", "accession", "institution",
                                                      "study_date")},
                    "canvas": list(f.canvas),
                    "region": region,
                    "region_data_type": 2 if f.cdfi else 1,
                    "spectral_region": spectral,
                    "frames": f.frames,
                    "transfer_syntax": f.syntax,
                    "photometric": str(ds.PhotometricInterpretation),
                    "pixel_mm": [round(pixel_mm[0], 6), round(pixel_mm[1], 6)],
                    "text_outside": f.text_outside,
                    "text_outside_text": f.text_outside_text,
                    "text_inside": f.text_inside,
                    "calipers": f.caliper_boxes,
                    "measure_lines": f.measure_lines,
                    "source_png": source,
                }
                n += 1
            if progress is not None:
                progress(patients + idx, total)
        # swap the new tree in whole; an old one (ours: truth.json was beside it) goes
        old = None
        if dicom_dir.exists():
            old = out / f"{tmp.name}-old"
            dicom_dir.rename(old)
        tmp.rename(dicom_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    (out / "README.txt").write_text(_readme(seed, patients, difficulty, n), encoding="utf-8", newline="\n")
    write_atomic(out / "labels.csv", csv_text(("accession_number", *LABEL_COLUMNS), labels, line_end="\n"))
    doc = {"version": 1, "synthetic": True,
           "phantom": {"patients": patients, "seed": seed, "difficulty": difficulty,
                       "phantom_version": PHANTOM_VERSION, "dicom_phantom_version": DICOM_PHANTOM_VERSION},
           "files": truth}
    return write_atomic(out / "truth.json", json.dumps(doc, indent=1) + "\n")
