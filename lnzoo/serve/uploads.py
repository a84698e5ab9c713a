"""Reading and checking an ``/api/predict`` request: known fields, images that decode whole within the
limits, a box inside its image; the checked uploads written into the request's temporary folder as one
:class:`~lnzoo.data.samples.Sample`. Every problem is a :class:`RequestError` (a 4xx answer)."""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request
from PIL import Image
from starlette.datastructures import FormData, UploadFile

from lnzoo.ingest.dicom import is_dicom

if TYPE_CHECKING:
    from lnzoo.data.samples import Sample
    from lnzoo.serve.app import Server

# MPO: the multi-picture JPEG many cameras and phones write; its first picture reads as a JPEG
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif",
                 "WEBP": ".webp"}  # and DICOM (a .dcm upload: lnzoo.ingest.dicom)
FORM_SLACK = 1 << 20             # bytes a request may carry beyond its files (field names, text fields)


class RequestError(Exception):
    """What is wrong with a request: answered as ``{"error": message}`` with ``status``, nothing changed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# -- reading and checking a request -------------------------------------------------------------------------------
@dataclass
class Upload:
    """One checked upload: its bytes, its file suffix and, for an image, its (width, height) and its pixels as
    :func:`lnzoo.data.images.read_pixels` reads the file written from it (decoded once, by the check)."""

    data: bytes
    suffix: str
    size: tuple[int, int] | None = None
    image: Image.Image | None = None


@dataclass
class Submission:
    """A checked /api/predict request."""

    files: dict[str, Upload]
    box: tuple[float, float, float, float] | None
    covariates: dict[str, str]
    gradcam: bool
    inputs: dict[str, Upload] = field(default_factory=dict)  # column -> the file an input reads (a mask)


def check_size(data: bytes, name: str, max_upload_mb: float) -> None:
    """An upload that is not empty and within the per-file limit."""
    if not data:
        raise RequestError(422, f"{name}: the file is empty")
    max_bytes = round(max_upload_mb * 2**20)
    if len(data) > max_bytes:
        raise RequestError(413, f"{name}: over the limit of {max_upload_mb:g} MB ({max_bytes:,} bytes) per file "
                                "(lnzoo serve --max-upload-mb)")


def check_image(data: bytes, name: str, max_upload_mb: float, max_side: int, frame: int = 0) -> Upload:
    """Decode an upload with PIL: an image of a supported format, within the limits, that decodes whole (a DICOM
    file: its frame ``frame``)."""
    from PIL import ImageOps, UnidentifiedImageError

    check_size(data, name, max_upload_mb)
    if is_dicom(data):
        return _check_dicom(data, name, max_side, frame)
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError):
        raise RequestError(415, f"{name}: not an image file of a known format; accepted formats: "
                                f"{', '.join(sorted(IMAGE_FORMATS))}, DICOM") from None
    with img:
        if img.format not in IMAGE_FORMATS:
            raise RequestError(415, f"{name}: {img.format} images are not accepted; accepted formats: "
                                    f"{', '.join(sorted(IMAGE_FORMATS))}, DICOM")
        if max(img.size) > max_side:
            raise RequestError(413, f"{name}: {img.width}x{img.height} pixels, over the limit of {max_side} pixels "
                                    "a side (lnzoo serve --max-side)")
        try:
            img.load()
            pixels = ImageOps.exif_transpose(img)  # as the model reads the file (lnzoo.data.images.read_pixels)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise RequestError(422, f"{name}: corrupt or truncated {img.format} image ({exc})") from None
    return Upload(data, IMAGE_FORMATS[img.format], pixels.size, pixels)


def _check_dicom(data: bytes, name: str, max_side: int, frame: int) -> Upload:
    """A DICOM upload, read as every DICOM file is (:mod:`lnzoo.ingest.dicom`: the frame asked for, the first by
    default, cut to the ultrasound region) and kept as that PNG: the model reads the pixels lnzoo predict reads, and
    nothing of the header goes further (or into an answer); a box is drawn on the crop."""
    from lnzoo.errors import DataError
    from lnzoo.ingest.dicom import open_dicom

    try:
        image = open_dicom(name, data)
        if max(int(image.ds.Rows), int(image.ds.Columns)) > max_side:
            raise RequestError(413, f"{name}: {image.ds.Columns}x{image.ds.Rows} pixels, over the limit of "
                                    f"{max_side} pixels a side (lnzoo serve --max-side)")
        rgb = image.cropped(frame if image.n_frames > 1 else 0)
    except DataError as exc:
        raise RequestError(422, "; ".join(exc.problems)) from None
    buf = io.BytesIO()
    pixels = Image.fromarray(rgb)
    pixels.save(buf, format="PNG")  # lossless: the PNG decodes to these pixels
    return Upload(buf.getvalue(), ".png", (rgb.shape[1], rgb.shape[0]), pixels)


def check_input_file(data: bytes, filename: str | None, name: str, max_upload_mb: float) -> Upload:
    """The file an input reads (a mask, a feature CSV): not empty, within the size limit; its suffix kept when it
    is a plain one, since a kind may read by it. What is in it is the input kind's to check."""
    check_size(data, name, max_upload_mb)
    suffix = Path(filename or "").suffix.lower()
    return Upload(data, suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else "")


def parse_box(text: str, size: tuple[int, int] | None) -> tuple[float, float, float, float]:
    """'x0,y0,x1,y1' in pixels of the image it is drawn on, inside it, with x0 < x1 and y0 < y1."""
    parts = text.replace(",", " ").split()
    try:
        box = tuple(float(v) for v in parts)
    except ValueError:
        box = ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise RequestError(422, f"box {text!r}: expected four numbers x0,y0,x1,y1 (pixels)")
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        raise RequestError(422, f"box {text!r}: needs x0 < x1 and y0 < y1")
    if size is not None and (x0 < 0 or y0 < 0 or x1 > size[0] or y1 > size[1]):
        raise RequestError(422, f"box {text!r} lies outside the {size[0]}x{size[1]} image it is drawn on")
    return box  # type: ignore[return-value]


def parse_flag(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off", ""):
        raise RequestError(422, f"{name} {text!r}: expected true or false")
    return value in ("true", "1", "yes", "on", "")


def check_declared_size(request: Request, server: Server) -> None:
    """Refuse a request whose declared size exceeds what its files may carry, before reading it."""
    declared = request.headers.get("content-length")
    limit = server.max_bytes * server.uploads + FORM_SLACK
    if not (declared and declared.isdigit()):  # a chunked body could grow past every limit before it is read
        raise RequestError(411, "the request gives no Content-Length; send the form with one (browsers, curl and "
                                "HTTP libraries do)")
    if int(declared) > limit:
        raise RequestError(413, f"the request is {int(declared):,} bytes, over the limit of "
                                f"{server.max_upload_mb:g} MB per file (lnzoo serve --max-upload-mb)")


async def read_form(form: FormData, server: Server) -> Submission:
    """The form's fields, checked: known names, files where files belong, images that decode, a valid box."""
    unknown = sorted({k for k in form.keys() if k not in server.accepted})
    if unknown:
        raise RequestError(422, f"unknown form field(s) {unknown}; this model accepts {server.accepted}")
    files: dict[str, Upload] = {}
    inputs: dict[str, Upload] = {}
    text: dict[str, str] = {}
    frame_text = str(form.get("frame") or "0").strip()
    if not frame_text.isdigit():
        raise RequestError(422, f"frame {frame_text!r}: expected a frame number, 0 for the first")
    for name, value in form.multi_items():
        if name in files or name in text or name in inputs:
            raise RequestError(422, f"form field {name!r} is given twice")
        if name in server.input_files:
            if not isinstance(value, UploadFile):
                raise RequestError(422, f"form field {name!r} must be a file (an input of the model reads it), "
                                        "not text")
            inputs[name] = check_input_file(await value.read(server.max_bytes + 1), value.filename, name,
                                            server.max_upload_mb)
        elif name in server.file_fields:
            if not isinstance(value, UploadFile):
                raise RequestError(422, f"form field {name!r} must be an image file, not text")
            files[name] = check_image(await value.read(server.max_bytes + 1), name, server.max_upload_mb,
                                      server.max_side, int(frame_text))
        elif isinstance(value, UploadFile):
            raise RequestError(422, f"form field {name!r} takes text, not a file")
        else:
            text[name] = value
    box = None
    if text.get("box", "").strip():
        source = server.roi_source
        box = parse_box(text["box"], files[source].size if source in files else None)
    return Submission(files, box, {c: text[c] for c in server.covariates if c in text},
                      parse_flag(text.get("gradcam", "true"), "gradcam"), inputs)


def write_sample(req: Submission, folder: Path, server: Server) -> tuple[Sample, dict[Path, Image.Image]]:
    """The uploads written into ``folder`` (a request's temporary one), as one Sample of every view; and each
    written image's pixels as its check decoded them."""
    from lnzoo.data.samples import VIEW_COLUMN, Sample

    paths = {}
    for view, upload in req.files.items():
        paths[view] = folder / f"{view}{upload.suffix}"  # our own names: nothing the client sent names a file
        paths[view].write_bytes(upload.data)
    views: dict[str, Path | None] = {v: paths.get(v) for v in server.views}
    rois = {}
    if server.roi_source:
        source = paths.get(server.roi_source)
        if req.box is not None and source is None:
            raise RequestError(422, f"a box is given but no {server.roi_source!r} image to draw it on")
        views["roi"] = source if req.box is not None else None  # no box: no ROI, the view is absent
        if req.box is not None:
            rois["roi"] = req.box
    required = server.required_view
    if required is not None and views.get(required) is None:
        need = f"the {server.roi_source!r} image and a box x0,y0,x1,y1" if required == "roi" else \
            f"an image in the form field {required!r}"
        others = [v for v in server.views if v != required]
        optional = f"; {', '.join(map(repr, others))} optional" if others else ""
        raise RequestError(422, f"missing the view {required!r}: give {need}. This model takes the views "
                                f"{server.views} (file fields {server.file_fields}): {required!r} required{optional}")
    cells = dict(req.covariates)
    for view, path in paths.items():  # the images as a manifest row names them (an input may read one, as morphology)
        cells[VIEW_COLUMN.get(view, view)] = path.name
    for k, (column, upload) in enumerate(req.inputs.items()):
        cells[column] = (folder / f"input{k}{upload.suffix}").name
        (folder / cells[column]).write_bytes(upload.data)
    pixels = {paths[v]: up.image for v, up in req.files.items() if up.image is not None}
    return Sample(views, "", {}, "upload", cells=cells, rois=rois, base=folder), pixels


def check_input_files(sample, req: Submission, server: Server) -> None:
    """Each uploaded input file through its input kind's own check and then its encoding with the model's fitted
    state (a mask that does not fit its image, a file that does not read, a feature the model needs and the file
    lacks): a 422 naming the field and the reason, before anything is predicted. An input whose own column is not
    uploaded (the image a mask outlines, without the mask) is missing, not checked."""
    from lnzoo.errors import LnzooError

    checked: set[int] = set()
    for column, item in server.input_kinds():
        if item.kind.column != column or column not in req.inputs or id(item) in checked:
            continue
        checked.add(id(item))
        problems: list[str] = []
        try:
            bad = item.kind.check([sample], problems)
            if not bad and not problems:
                item.encode(sample)  # what depends on the fitted state (the features the model was fitted on)
        except LnzooError as exc:
            bad, problems = {0}, [*problems, *(getattr(exc, "problems", None) or [str(exc)])]
        except (ValueError, OSError, KeyError, TypeError, IndexError) as exc:  # a plugin's kind failing on its file
            bad, problems = {0}, [*problems, f"{type(exc).__name__}: {exc}"]
        if bad or problems:
            reasons = "; ".join(p.removeprefix(f"{sample.origin}: ") for p in problems) or "refused by the input kind"
            raise RequestError(422, f"{column}: the input {item.name!r} cannot read this file: "
                                    f"{_without_temporary_names(reasons, sample, req)}")


def _without_temporary_names(text: str, sample, req: Submission) -> str:
    """A message with the request folder's paths and file names replaced by the form fields they came from."""
    names = {str(q): f"the {v!r} image" for v, p in sample.views.items() if p is not None for q in (p, p.resolve())}
    for c in req.inputs:
        path = sample.cell_path(c)
        names |= {str(path): f"the {c!r} file", path.name: f"the {c!r} file"}
    if sample.base is not None:
        names |= {str(sample.base.resolve()): "the upload", str(sample.base): "the upload"}
    for path, name in sorted(names.items(), key=lambda kv: -len(kv[0])):  # the longest first: whole paths, then names
        text = text.replace(path, name)
    return text
