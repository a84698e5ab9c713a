"""One reader of DICOM ultrasound for all of lnzoo: ``lnzoo ingest``, and a ``.dcm`` path given to ``run``,
``predict``, ``explain`` or ``serve`` (:func:`lnzoo.data.images.read_pixels`), so a file reads the same everywhere.

- **Decoding**: whatever pydicom decodes with the ``dicom`` extra's plugins (pylibjpeg with openjpeg and rle, GDCM;
  Pillow for JPEG baseline). A compression none of them reads is named with the extra to install.
- **Colour**: RGB out, always. YBR_FULL / YBR_FULL_422 / YBR_RCT / YBR_ICT converted by pydicom's decoders,
  PALETTE COLOR through the file's lookup tables, MONOCHROME1 inverted so that bright is echogenic, greyscale
  copied to three channels.
- **More than 8 bits** (rare in ultrasound): the rescale (modality LUT) first; then the file's first VOI window
  when it has one, else the stored range of the whole file (every frame: one scale for a loop), mapped linearly to
  0..255.
- **The ultrasound region** (:meth:`DicomImage.region`): of ``SequenceOfUltrasoundRegions``, the largest 2-D
  region (RegionSpatialFormat 1) showing tissue or colour flow (RegionDataType 1 or 2); a spectral Doppler strip,
  an M-mode or a trace is never taken for the image. Without such a region, or with one that does not fit the
  frame, the image area is found from the pixels (:func:`lnzoo.ingest.area.image_area`: what moves in a loop,
  else the largest bright area once text and thin marks are removed); failing that, the whole frame, with a
  warning. The physical pixel size (PhysicalDeltaX/Y, in mm) comes with a header region.
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnzoo.errors import DataError, UsageError

EXTRA = "pip install 'lnzoo[dicom]'"
IMAGE_DATA_TYPES = {1: "tissue", 2: "color flow"}  # RegionDataType of a region that is the image
ULTRASOUND = {"US"}


@dataclass(frozen=True)
class Region:
    """Where the ultrasound image is in the frame: ``box`` (x0, y0, x1, y1; x1/y1 exclusive), what it shows,
    where the box came from, and millimetres per pixel (x, y) when the header gives them."""

    box: tuple[int, int, int, int]
    kind: str  # "tissue", "color flow", or "" when not known
    source: str  # "header", "moving content", "largest bright area", "whole frame"
    pixel_mm: tuple[float, float] | None = None


@dataclass
class DicomImage:
    """A DICOM file opened for its pixels: the header, the frame count, and what was found odd on the way."""

    path: Path
    ds: Any
    n_frames: int
    warnings: list[str] = field(default_factory=list)
    _region: Region | None = None
    _scale: tuple[float, float] | None = None

    @property
    def modality(self) -> str:
        return str(self.ds.get("Modality", "") or "")

    def frame(self, index: int = 0) -> np.ndarray:
        """Frame ``index`` as RGB uint8 (H, W, 3), the whole frame."""
        return self.frames([index])[0]

    def frames(self, indices: list[int]) -> np.ndarray:
        """The frames ``indices`` as RGB uint8 (k, H, W, 3)."""
        out = []
        for i in indices:
            if not 0 <= i < self.n_frames:
                raise DataError([f"{self.path}: frame {i} asked for, the file has {self.n_frames}"])
            out.append(self._to_rgb(self._decode(i)))
        return np.stack(out)

    def region(self) -> Region:
        """The ultrasound region (see the module's docstring); decided once per file."""
        if self._region is None:
            self._region = self._header_region() or self._found_region()
        return self._region

    def cropped(self, index: int = 0) -> np.ndarray:
        """Frame ``index`` cut to :meth:`region`."""
        x0, y0, x1, y1 = self.region().box
        return self.frame(index)[y0:y1, x0:x1]

    # -- decoding --------------------------------------------------------------------------------------------------
    def _decode(self, index: int) -> np.ndarray:
        from pydicom.pixels import pixel_array

        self._check_decoder()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = pixel_array(self.ds, index=index if self.n_frames > 1 else None)
        except Exception as exc:  # noqa: BLE001 - the pixel handlers raise whatever their decoder raises
            raise DataError([_undecodable(self.path, exc)]) from None
        if arr.size == 0:
            raise DataError([_undecodable(self.path, ValueError("the image has no pixels"))])
        return arr

    def _check_decoder(self) -> None:
        """A compression that no installed decoder reads is named with what to install, before decoding."""
        from pydicom.pixels import get_decoder

        syntax = getattr(getattr(self.ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is None or not syntax.is_compressed:
            return
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise DataError([f"{self.path}: its compression, {syntax.name}, is one no DICOM decoder for Python "
                             "reads; export the images uncompressed or as JPEG from the PACS"]) from None
        if not decoder.is_available:
            needs = "; ".join(decoder.missing_dependencies)
            raise DataError([f"{self.path}: its compression, {syntax.name}, needs a decoder that is not installed "
                             f"({needs}): {EXTRA}"])

    def _to_rgb(self, arr: np.ndarray) -> np.ndarray:
        from pydicom.pixels import apply_color_lut

        photometric = str(self.ds.get("PhotometricInterpretation", "") or "")
        if photometric == "PALETTE COLOR":
            try:
                arr = apply_color_lut(arr, self.ds)
            except Exception as exc:  # noqa: BLE001 - a damaged or missing lookup table
                raise DataError([f"{self.path}: PALETTE COLOR without a usable colour table ({_first_line(exc)})"]) \
                    from None
            if arr.dtype != np.uint8:  # 16-bit table entries
                arr = (arr.astype(np.float64) / 257.0).round().astype(np.uint8)
        elif arr.ndim == 2:
            arr = self._grey8(arr)
            if photometric == "MONOCHROME1":
                arr = 255 - arr
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.dtype != np.uint8:
            arr = self._grey8(arr) if arr.ndim == 2 else np.clip(self._scaled(arr), 0, 255)
        return np.ascontiguousarray(arr.astype(np.uint8))

    def _grey8(self, arr: np.ndarray) -> np.ndarray:
        if arr.dtype == np.uint8 and int(self.ds.get("BitsStored", 8) or 8) <= 8:
            return arr
        return np.clip(self._scaled(arr), 0, 255).astype(np.uint8)

    def _scaled(self, arr: np.ndarray) -> np.ndarray:
        """More than 8 bits to 0..255: rescale, then the first VOI window, else the file's stored range."""
        from pydicom.pixels import apply_modality_lut

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = apply_modality_lut(arr, self.ds).astype(np.float64)
        if self._scale is None:
            centre, width = self.ds.get("WindowCenter"), self.ds.get("WindowWidth")
            if centre is not None and width is not None:
                c = float(centre[0] if _many(centre) else centre)
                w = max(float(width[0] if _many(width) else width), 1.0)
                self._scale = (c - w / 2, c + w / 2)
            else:
                bits = int(self.ds.get("BitsStored", 16) or 16)
                signed = int(self.ds.get("PixelRepresentation", 0) or 0) == 1
                lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
                self._scale = (float(lo), float(hi))
        lo, hi = self._scale
        return (values - lo) / max(hi - lo, 1e-9) * 255.0

    # -- the region ------------------------------------------------------------------------------------------------
    def _header_region(self) -> Region | None:
        rows, cols = int(self.ds.Rows), int(self.ds.Columns)
        best: tuple[int, Region] | None = None
        for item in self.ds.get("SequenceOfUltrasoundRegions", None) or []:
            kind = IMAGE_DATA_TYPES.get(int(item.get("RegionDataType", 0) or 0))
            if int(item.get("RegionSpatialFormat", 0) or 0) != 1 or kind is None:
                continue  # a spectral strip, an M-mode, a trace or a bar: never the image
            try:
                x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
                x1, y1 = int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1  # inclusive in DICOM
            except (AttributeError, TypeError, ValueError):
                self.warnings.append("an ultrasound region without its corners: ignored")
                continue
            if not (0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows):
                self.warnings.append(f"ultrasound region x {x0}..{x1 - 1}, y {y0}..{y1 - 1} lies outside the "
                                     f"{cols}x{rows} frame: ignored, the image area found from the pixels")
                continue
            area = (x1 - x0) * (y1 - y0)
            if best is None or area > best[0]:
                best = (area, Region((x0, y0, x1, y1), kind, "header", _pixel_mm(item)))
        return best[1] if best else None

    def _found_region(self) -> Region:
        from lnzoo.ingest.area import image_area

        # a loop: up to 8 frames spread over it, for what moves between them (the rule is frame_indices' max:8)
        box, how = image_area(self.frames(frame_indices(self.n_frames, "max:8")))
        if box is None:
            self.warnings.append(f"no ultrasound region in the header and none found in the pixels ({how}): "
                                 "the whole frame is kept")
            return Region((0, 0, int(self.ds.Columns), int(self.ds.Rows)), "", "whole frame")
        return Region(tuple(int(v) for v in box), "", how)  # type: ignore[arg-type]


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` starts as a DICOM file does (the 128-byte preamble, then ``DICM``)."""
    return data[128:132] == b"DICM"


def open_dicom(path: str | Path, data: bytes | None = None) -> DicomImage:
    """Read the header and pixel data of ``path`` (or of ``data``, an upload, named ``path`` in messages); a file
    that is not DICOM, is truncated, or holds no image is a :class:`DataError` naming it and why."""
    import io

    path = Path(path)
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise DataError([f"{path}: reading DICOM needs pydicom: {EXTRA}"]) from None
    try:
        with warnings.catch_warnings():  # pydicom's notes on odd values: the image reads, or the error says why
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path) if data is None else io.BytesIO(data))
    except InvalidDicomError:
        raise DataError([f"{path}: not a DICOM file (no DICOM header); is it another format named .dcm?"]) from None
    except OSError:
        raise  # the file itself (missing, unreadable): the caller names it
    except Exception as exc:  # noqa: BLE001 - pydicom reports a damaged file with many exception types
        raise DataError([f"{path}: corrupt or truncated DICOM file ({_first_line(exc)})"]) from None
    if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        why = "its header describes an image but the file ends before the pixel data: truncated?" \
            if "Rows" in ds and "Columns" in ds else "no image in it: truncated, or not an image, e.g. a report"
        raise DataError([f"{path}: a DICOM file without pixel data ({why})"])
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
        int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DataError([f"{path}: a DICOM image header without a usable size or frame count "
                         f"({_first_line(exc)})"]) from None
    if n < 1:
        raise DataError([f"{path}: NumberOfFrames is {n}"])
    return DicomImage(path, ds, n)


def frame_indices(n: int, rule: str) -> list[int]:
    """Which frames of an ``n``-frame loop ``--frames`` takes: ``all``, ``middle``, ``every:K`` (0, K, 2K, ...) or
    ``max:K`` (at most K, evenly spread, first and last included)."""
    rule = rule.strip().lower()
    if rule == "all":
        return list(range(n))
    if rule == "middle":
        return [n // 2]
    kind, _, value = rule.partition(":")
    try:
        k = int(value)
    except ValueError:
        k = 0
    if kind not in ("every", "max") or k < 1:
        raise DataError([f"--frames {rule!r}: give all, middle, every:K or max:K with K a whole number >= 1"])
    if kind == "every":
        return list(range(0, n, k))
    if k >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))


# the frame of a cine loop lnzoo's models read (lnzoo predict --frame); 0, the first, unless a command sets it
FRAME: contextvars.ContextVar[int] = contextvars.ContextVar("lnzoo_dicom_frame", default=0)


@contextlib.contextmanager
def reading_frame(index: int):
    """Within the block, a DICOM loop given to a model is read at frame ``index`` (a one-frame file at 0)."""
    if index < 0:
        raise UsageError(f"--frame {index}: give a frame number, 0 for the first")
    token = FRAME.set(index)
    try:
        yield
    finally:
        FRAME.reset(token)


def read_dicom_image(path: str | Path, index: int | None = None):
    """A DICOM file as lnzoo's models read it (:func:`lnzoo.data.images.read_pixels`): frame ``index`` (default:
    :data:`FRAME`, the first unless a command chose another; a single-frame file always its one), cut to the
    ultrasound region, RGB, as a PIL image."""
    from PIL import Image

    image = open_dicom(path)
    index = FRAME.get() if index is None else index
    return Image.fromarray(image.cropped(index if image.n_frames > 1 else 0))


def _pixel_mm(item: Any) -> tuple[float, float] | None:
    """PhysicalDeltaX/Y in mm per pixel, when the region's units are centimetres (PhysicalUnits 3)."""
    try:
        if int(item.PhysicalUnitsXDirection) == 3 and int(item.PhysicalUnitsYDirection) == 3:
            dx, dy = abs(float(item.PhysicalDeltaX)) * 10.0, abs(float(item.PhysicalDeltaY)) * 10.0
            return (dx, dy) if dx > 0 and dy > 0 else None
    except (AttributeError, TypeError, ValueError):
        pass
    return None


def _many(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _undecodable(path: Path, exc: BaseException) -> str:
    why = f"truncated, or its size, bit depth or compression is not what the header says ({_first_line(exc)})"
    return f"{path}: DICOM pixel data that cannot be decoded: {why}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
