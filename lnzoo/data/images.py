"""Image decoding and the preprocessing stored with every checkpoint (resize mode, size, normalisation)."""
from __future__ import annotations

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

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return NORMALISATION[self.normalize]

    def as_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean_std[0]), "std": list(self.mean_std[1]), "channels": "RGB"}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (8/16-bit grey, palette, RGBA, CMYK) -> 8-bit RGB; grey is replicated into 3 channels."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = np.percentile(arr, (0.5, 99.5)) if arr.size else (0.0, 1.0)
        arr = np.clip((arr - lo) / max(hi - lo, 1e-9), 0, 1) * 255.0
        img = Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_image(path: Path, pre: Preprocessing, origin: str = "") -> np.ndarray:
    """Decode and resize one image to (H, W, 3) uint8; a bad file is a DataError naming the row."""
    where = f"{origin}: " if origin else ""
    try:
        if path.stat().st_size == 0:
            raise DataError([f"{where}{path}: empty file"])
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb(ImageOps.exif_transpose(img))
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError([f"{where}{path}: file not found"]) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError([f"{where}{path}: unreadable or corrupt image ({exc})"]) from None
    size = pre.image_size
    if pre.resize == "letterbox":
        rgb = ImageOps.pad(rgb, (size, size), method=Image.BILINEAR, color=(0, 0, 0))
    else:
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.array(rgb, dtype=np.uint8)  # a writable copy: torch wraps it without copying again
