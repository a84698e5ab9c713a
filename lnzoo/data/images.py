"""Image decoding and the preprocessing stored with every checkpoint (resize mode, size, normalisation)."""
from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lnzoo.errors import DataError

NORMALISATION = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                 "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes a model input; saved in the checkpoint sidecar so serving matches training."""

    image_size: int
    resize: str = "squash"          # squash | letterbox
    normalize: str = "imagenet"
    roi_margin: float = 0.1         # margin per side when a 'roi' view crops to its box or mask
    mask_marks: bool = False        # burned-in calipers and text found and filled before anything else

    @classmethod
    def of(cls, data_cfg) -> "Preprocessing":
        """The preprocessing a recipe's ``[data]`` section asks for."""
        return cls(data_cfg.image_size, data_cfg.resize, data_cfg.normalize, data_cfg.roi_margin,
                   bool(getattr(data_cfg, "mask_marks", False)))

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return NORMALISATION[self.normalize]

    def as_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean_std[0]), "std": list(self.mean_std[1]), "channels": "RGB"}


def normalise(chw, pre: Preprocessing, out: np.ndarray | None = None):
    """uint8 pixels (..., 3, H, W), a numpy array or a torch tensor, -> float32 model input in the
    checkpoint's normalisation: the one place training, serving (torch or ONNX) and Grad-CAM scale images.

    One float copy scaled in place (``out``: a numpy array to write it into); the same float32 operations in the
    same order on both kinds, so both give the same bits."""
    mean, std = (np.asarray(v, dtype=np.float32).reshape(3, 1, 1) for v in pre.mean_std)
    if isinstance(chw, np.ndarray):
        x = np.empty(chw.shape, dtype=np.float32) if out is None else out
        if chw.dtype == np.uint8:  # each level's value looked up: one pass, computed by the very operations below
            table = _levels(pre.mean_std)
            for c in range(3):
                np.take(table[c], chw[..., c, :, :], out=x[..., c, :, :], mode="clip")
            return x
        x[...] = chw
        x /= np.float32(255.0)
        x -= mean
        x /= std
        return x
    import torch  # only a torch caller passes a tensor
    return chw.to(torch.float32, copy=True).div_(255.0).sub_(torch.from_numpy(mean)).div_(torch.from_numpy(std))


@functools.lru_cache(maxsize=8)
def _levels(mean_std: tuple[tuple[float, ...], tuple[float, ...]]) -> np.ndarray:
    """(3, 256) float32: every uint8 level of each channel normalised, by :func:`normalise`'s float32 operations."""
    mean, std = (np.asarray(v, dtype=np.float32).reshape(3, 1) for v in mean_std)
    table = np.broadcast_to(np.arange(256, dtype=np.float32), (3, 256)).copy()
    table /= np.float32(255.0)
    table -= mean
    table /= std
    table.flags.writeable = False
    return table


def to_rgb(img: Image.Image, keep_grey: bool = False) -> Image.Image:
    """Any mode (8/16-bit grey, palette, RGBA, CMYK) -> 8-bit RGB; grey is replicated into 3 channels.

    ``keep_grey``: a grey image stays one 8-bit band ("L"), to be replicated last: cropping, resizing and padding
    one band give the very pixels of three equal bands (tested), in a third of the time."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = np.percentile(arr, (0.5, 99.5)) if arr.size else (0.0, 1.0)
        arr = np.clip((arr - lo) / max(hi - lo, 1e-9), 0, 1) * 255.0
        img = Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img if keep_grey and img.mode == "L" else img.convert("RGB")


_NPZ: dict[str, dict[str, np.ndarray]] = {}
_NPZ_ITEM = re.compile(r"^(?P<file>.+\.npz)#(?P<split>\w+)\[(?P<index>\d+)\]$")


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, read once per process (no pickles allowed)."""
    key = str(path)
    if key not in _NPZ:
        with np.load(path, allow_pickle=False) as z:
            _NPZ[key] = {k: z[k] for k in z.files}
    return _NPZ[key]


# lnzoo applies its own limit (data.max_image_pixels) with a message naming the file, instead of PIL's
# DecompressionBombWarning (above 89 Mpx) and its bare DecompressionBombError (above twice that)
Image.MAX_IMAGE_PIXELS = None
MAX_PIXELS = [100_000_000]  # set from the recipe's data.max_image_pixels for the run


def set_max_pixels(limit: int) -> None:
    MAX_PIXELS[0] = int(limit)


_DECODED: ContextVar[Mapping[str, Image.Image]] = ContextVar("lnzoo_decoded", default={})


@contextmanager
def decoded(images: Mapping[Path, Image.Image]) -> Iterator[None]:
    """Files whose pixels are already decoded (an upload ``lnzoo serve`` checked by decoding it, as
    :func:`read_pixels` decodes a file): inside this block :func:`read_pixels` takes them instead of decoding the
    file again. Per thread and task (a context variable): another request's files are never seen."""
    token = _DECODED.set({str(p): img for p, img in images.items()})
    try:
        yield
    finally:
        _DECODED.reset(token)


def read_pixels(path: Path) -> Image.Image:
    """Open any supported image: a file PIL reads, a DICOM file (with pydicom), or ``file.npz#split[i]``."""
    m = _NPZ_ITEM.match(str(path))
    if m:
        arr = npz_arrays(Path(m["file"]))[f"{m['split']}_images"][int(m["index"])]
        return Image.fromarray(np.asarray(arr).astype(np.uint8) if arr.dtype != np.uint16 else arr)
    if path.suffix.lower() == ".dcm":  # the first frame, cut to its ultrasound region, as lnzoo ingest does
        from lnzoo.ingest.dicom import read_dicom_image
        return read_dicom_image(path)
    img = Image.open(path)
    if img.width * img.height > MAX_PIXELS[0]:
        img.close()
        raise DataError([f"{path}: {img.width}x{img.height} = {img.width * img.height:,} pixels, over "
                         f"data.max_image_pixels ({MAX_PIXELS[0]:,}); raise it if the image is genuine (a file "
                         "that large may be a decompression bomb)"])
    known = _DECODED.get().get(str(path))
    if known is not None:  # decoded already (a checked upload): its header read, its pixels not decoded again
        img.close()
        return known
    img.load()
    return ImageOps.exif_transpose(img)


def roi_box(roi, size: tuple[int, int], margin: float, origin: str = "") -> tuple[int, int, int, int]:
    """The pixel box a 'roi' view crops to: a given box or a mask's extent, plus a margin per side."""
    if isinstance(roi, Path):
        try:
            with Image.open(roi) as m:
                mask = np.asarray(m.convert("L")) > 0
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError([f"{origin}: mask {roi}: unreadable ({exc})"]) from None
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            raise DataError([f"{origin}: mask {roi} is empty, so there is no ROI to crop "
                             "(data.empty_roi = \"whole_image\" or \"missing\" decides for such rows)"])
        # the mask's extent, scaled to the image when their sizes differ (a few marked pixels of a
        # large mask are never lost to resampling)
        sx, sy = size[0] / mask.shape[1], size[1] / mask.shape[0]
        x0, y0, x1, y1 = xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy
    else:
        x0, y0, x1, y1 = roi
    w, h = x1 - x0, y1 - y0
    x0, x1 = max(0, x0 - margin * w), min(size[0], x1 + margin * w)
    y0, y1 = max(0, y0 - margin * h), min(size[1], y1 + margin * h)
    if x1 <= x0 or y1 <= y0:
        raise DataError([f"{origin}: box {roi} lies outside the {size[0]}x{size[1]} image"])
    bx0, by0 = min(int(round(x0)), size[0] - 1), min(int(round(y0)), size[1] - 1)
    # at least one pixel: a box thinner than a pixel (a mask larger than its image) still crops
    return bx0, by0, max(int(round(x1)), bx0 + 1), max(int(round(y1)), by0 + 1)


def load_image(path: Path, pre: Preprocessing, origin: str = "", roi=None, margin: float = 0.1) -> np.ndarray:
    """Decode (crop to ``roi`` if given) and resize to (H, W, 3) uint8; a bad file is a DataError naming the row."""
    where = f"{origin}: " if origin else ""
    try:
        if not _NPZ_ITEM.match(str(path)) and path.stat().st_size == 0:
            raise DataError([f"{where}{path}: empty file"])
        rgb = to_rgb(read_pixels(path), keep_grey=not pre.mask_marks)  # marks are found in RGB
    except DataError as exc:  # named by read_pixels (a DICOM file, the pixel limit): the row it came from too
        if not where:
            raise
        raise DataError([p if p.startswith(where) else f"{where}{p}" for p in exc.problems]) from None
    except FileNotFoundError:
        raise DataError([f"{where}{path}: file not found"]) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError([f"{where}{path}: unreadable or corrupt image ({exc})"]) from None
    if pre.mask_marks:  # data.mask_marks: what lnzoo ingest --inside-marks mask does, at training and prediction
        from lnzoo.ingest.marks import fill, find_marks

        arr = np.asarray(rgb)
        found = find_marks(arr)
        if found.mask.any():
            rgb = Image.fromarray(fill(arr, found.mask))
    if roi is not None:
        rgb = rgb.crop(roi_box(roi, rgb.size, margin, origin or str(path)))
    size = pre.image_size
    if pre.resize == "letterbox":
        rgb = ImageOps.pad(rgb, (size, size), method=Image.BILINEAR, color=0 if rgb.mode == "L" else (0, 0, 0))
    else:
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.array(rgb.convert("RGB") if rgb.mode != "RGB" else rgb, dtype=np.uint8)  # writable: torch wraps it
