"""Hand-crafted morphology features of a lymph node from its mask and its greyscale ultrasound image.

After TiNet and LLNM-Net, which feed a classifier with what a sonographer reads besides the pixels: the
shape of the node (size, aspect, circularity, solidity, "taller than wide"), its echogenicity inside and in
a ring around it, the sharpness and regularity of its margin, and GLCM texture inside it. Every feature is
computed with scikit-image from one image and its mask, in resolution-independent units where a unit
matters (fractions, ratios, degrees, intensities on 0..1), so images of different sizes compare. The
values are raw: the caller standardises them with the mean and sd of the training part only, as it does
the clinical covariates. ``MorphologyCache`` keeps results in memory and optionally on disk, keyed by the
bytes of both files, so the second epoch (and the next run) computes nothing.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.spatial import ConvexHull
from skimage.feature import graycomatrix, graycoprops
from skimage.filters import sobel
from skimage.measure import label, regionprops
from skimage.morphology import diamond, erosion, isotropic_dilation

FEATURE_VERSION: int = 1  # bump when a formula changes: it is part of the cache key, so old entries go stale

DESCRIPTIONS: dict[str, str] = {
    "shape.area_fraction": "nodule area / image area (largest connected component)",
    "shape.aspect_ratio": "major / minor axis length of the fitted ellipse (>= 1)",
    "shape.circularity": "4*pi*area / perimeter^2, clipped to [0, 1]; 1 is a disk",
    "shape.solidity": "area / convex hull area; low for lobulated or spiculated nodes",
    "shape.convexity": "convex hull perimeter / perimeter, clipped to [0, 1]; low for an indented contour",
    "shape.orientation": "long axis from the horizontal, degrees 0..90; 90 = vertical (arbitrary for a round node)",
    "shape.taller_than_wide": "bounding box height / width; > 1 is 'taller than wide'",
    "echo.inside_mean": "mean intensity inside the mask (0..1)",
    "echo.inside_sd": "sd of the intensity inside the mask",
    "echo.ring_mean": "mean intensity of a ring around the nodule (width ~10% of its diameter, >= 3 px)",
    "echo.ring_sd": "sd of the intensity in that ring",
    "echo.contrast": "inside_mean - ring_mean; < 0 for a hypoechoic nodule",
    "margin.gradient_mean": "mean Sobel gradient magnitude on the contour pixels: margin sharpness",
    "margin.gradient_cv": "sd / mean of that gradient along the contour: low for a regular, well-defined margin",
    "margin.roughness": "perimeter / perimeter of the ellipse with the same axes; > 1 for an irregular margin",
    "texture.contrast": "GLCM contrast inside the mask (32 levels, distances 1 and 2, 4 angles, averaged)",
    "texture.dissimilarity": "GLCM dissimilarity inside the mask",
    "texture.homogeneity": "GLCM homogeneity inside the mask; high for a uniform interior",
    "texture.energy": "GLCM energy (sqrt of the angular second moment) inside the mask",
    "texture.correlation": "GLCM correlation inside the mask; 0 where undefined (a constant interior)",
    "texture.entropy": "entropy (bits) of the normalised GLCM inside the mask",
}
FEATURES: tuple[str, ...] = tuple(DESCRIPTIONS)
# with the pixel size (``pixel_mm``, e.g. from lnzoo ingest), the node's size in millimetres, after these
SIZE_DESCRIPTIONS: dict[str, str] = {
    "size.long_axis_mm": "major axis length of the fitted ellipse, mm",
    "size.short_axis_mm": "minor axis length of the fitted ellipse, mm (the short-axis diameter sonographers read)",
    "size.area_mm2": "area of the largest connected component, mm^2",
}

_LEVELS = 32
_DISTANCES = (1, 2)
_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
_MIN_AREA = 9          # px: below a 3x3 square, perimeter and ellipse fit are mostly discretisation noise
_MIN_MINOR_AXIS = 1.0  # px: a one-pixel line has no width, so aspect ratio and circularity are undefined
_LUMA = np.array([0.2125, 0.7154, 0.0721])  # the weights of skimage.color.rgb2gray, without its alpha handling


def cache_dir() -> Path:
    """Where the disk cache lives by default: ``$LNZOO_CACHE/morphology`` or ``~/.cache/lnzoo/morphology``."""
    from lnzoo.files import cache_root
    return cache_root("morphology")


def _grey(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        pass
    elif arr.ndim != 2:
        raise ValueError(f"image of shape {arr.shape}: expected (H, W) or (H, W, 3|4)")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float64)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
    else:
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        # a float image is taken as 0..1 unless its values say it is still on the 8-bit scale
        if arr.size and arr.max() > 1.0:
            arr = arr / 255.0
    if arr.ndim == 3:
        # alpha is dropped, not blended: ultrasound frames are opaque and blending would brighten them
        arr = arr[..., 0] if arr.shape[2] == 1 else arr[..., :3] @ _LUMA
    return np.clip(arr, 0.0, 1.0)


def _ellipse_perimeter(major: float, minor: float) -> float:
    a, b = major / 2.0, minor / 2.0
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))  # Ramanujan's first approximation


def _texture(grey: np.ndarray, mask: np.ndarray) -> list[float]:
    # level 0 marks "outside the mask": computed as one more level and then dropped, so pairs that
    # straddle the contour (nodule against background) never count as texture
    q = np.minimum((grey * _LEVELS).astype(np.uint8), _LEVELS - 1) + 1
    q[~mask] = 0
    glcm = graycomatrix(q, distances=list(_DISTANCES), angles=list(_ANGLES), levels=_LEVELS + 1,
                        symmetric=True, normed=False)[1:, 1:].astype(np.float64)
    counts = glcm.sum(axis=(0, 1))
    valid = counts > 0  # a thin mask may have no pair at distance 2 in some direction
    if not valid.any():
        return [0.0] * 6
    p = glcm[:, :, valid] / counts[valid]
    p = p.reshape(_LEVELS, _LEVELS, -1, 1)
    props = [graycoprops(p, name).ravel() for name in ("contrast", "dissimilarity", "homogeneity", "energy",
                                                        "correlation")]
    # correlation is 0/0 when only one grey level occurs; skimage reports 1 there, which would read as
    # "perfectly correlated" for what is really "no variation to correlate"
    constant = (p.sum(axis=1) > 0).sum(axis=0).ravel() <= 1
    props[4] = np.where(constant, 0.0, props[4])
    logp = np.log2(p, where=p > 0, out=np.zeros_like(p))
    entropy = -(p * logp).sum(axis=(0, 1)).ravel()
    return [float(np.mean(v)) for v in (*props, entropy)]


def extract(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The features named in ``FEATURES`` (float64, all finite) of the nodule ``mask`` marks in ``image``.

    ``image`` is (H, W) or (H, W, 3|4), uint8 or float, converted to grey on 0..1; ``mask`` is (H, W),
    nonzero = nodule. Shape and margin features describe the largest connected component; echogenicity
    and texture use every mask pixel. None when the mask marks nothing; ValueError when the shapes differ
    or the nodule is too small to measure.
    """
    grey = _grey(image)
    m = np.asarray(mask)
    if m.shape != grey.shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {np.shape(image)}: "
                         "the mask must be (H, W) with the image's height and width")
    m = m != 0
    if not m.any():
        return None
    height, width = m.shape
    area_all = int(m.sum())
    ring_radius = max(3, round(0.1 * math.sqrt(4.0 * area_all / math.pi)))

    # everything below works on a crop around the mask (wide enough for the ring and the Sobel kernel),
    # which keeps a small nodule in a large frame cheap; the crop is clipped to the image, as the ring is
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    pad = ring_radius + 2
    r0, r1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, height)
    c0, c1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, width)
    g, mm = grey[r0:r1, c0:c1], m[r0:r1, c0:c1]

    comp = _largest(mm)
    region = regionprops(comp.astype(np.uint8))[0]
    area = float(region.area)
    major, minor = float(region.axis_major_length), float(region.axis_minor_length)
    if area < _MIN_AREA or minor < _MIN_MINOR_AXIS:
        raise ValueError(f"the mask's largest region has an area of {int(area)} px and a width of {minor:.1f} px: "
                         f"too small to measure (needs at least {_MIN_AREA} px and a width of "
                         f"{_MIN_MINOR_AXIS:g} px)")
    perim = float(region.perimeter)
    # the margin: pixels of the node next to a pixel outside it; where the node runs off the image its
    # edge is no margin (reflect mode keeps those pixels), but the hull below needs them (constant mode)
    contour = comp & ~erosion(comp, diamond(1))
    outline = comp & ~erosion(comp, diamond(1), mode="constant", cval=0)
    # the convex hull of the pixel squares (corners of the outline pixels) as a polygon: exact, so
    # solidity never exceeds 1, and it spares regionprops' rasterised hull, the slowest step for a large node
    ys, xs = np.nonzero(outline)
    corners = np.concatenate([np.stack([ys + dy, xs + dx], axis=1) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
    hull = ConvexHull(corners)
    hull_area, hull_perim = float(hull.volume), float(hull.area)  # in 2-D qhull's "volume" is the area
    bbox_h = region.bbox[2] - region.bbox[0]
    bbox_w = region.bbox[3] - region.bbox[1]
    # skimage measures orientation from the row axis (0 = long axis vertical); the reading convention is
    # the angle from the horizontal, so that 90 means "taller than wide" as sonographers say it
    orientation = 90.0 - abs(math.degrees(region.orientation))
    shape = [
        area / float(height * width),
        major / minor,
        min(4.0 * math.pi * area / perim ** 2, 1.0) if perim > 0 else 1.0,
        min(area / hull_area, 1.0),
        min(hull_perim / perim, 1.0) if perim > 0 else 1.0,
        min(max(orientation, 0.0), 90.0),
        bbox_h / bbox_w,
    ]

    inside = g[mm]
    ring = isotropic_dilation(mm, ring_radius) & ~mm  # a Euclidean disk of that radius, via a distance map
    inside_mean, inside_sd = float(inside.mean()), float(inside.std())
    if ring.any():
        ring_mean, ring_sd = float(g[ring].mean()), float(g[ring].std())
    else:  # the mask covers the whole image: no surroundings, so no contrast rather than a made-up one
        ring_mean, ring_sd = inside_mean, 0.0
    echo = [inside_mean, inside_sd, ring_mean, ring_sd, inside_mean - ring_mean]

    grad = sobel(g)[contour]
    grad_mean = float(grad.mean()) if grad.size else 0.0
    grad_cv = float(grad.std() / grad_mean) if grad_mean > 0 else 0.0
    ellipse_perim = _ellipse_perimeter(major, minor)
    margin = [grad_mean, grad_cv, perim / ellipse_perim if ellipse_perim > 0 else 1.0]

    tr0, tr1 = rows[0] - r0, rows[-1] - r0 + 1
    tc0, tc1 = cols[0] - c0, cols[-1] - c0 + 1
    texture = _texture(g[tr0:tr1, tc0:tc1], mm[tr0:tr1, tc0:tc1])

    out = np.array(shape + echo + margin + texture, dtype=np.float64)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask that marks something."""
    labels = label(mask, connectivity=2)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def size_px(mask_path: Path | str) -> tuple[float, float, float] | None:
    """The major and minor axis of the fitted ellipse and the area, in pixels, of the largest region of the mask
    file (as :func:`extract` measures it); None when the mask marks nothing."""
    m = _decode(_read_bytes(mask_path, "mask"), mask_path, "mask", as_mask=True)
    if not m.any():
        return None
    region = regionprops(_largest(m).astype(np.uint8))[0]
    return float(region.axis_major_length), float(region.axis_minor_length), float(region.area)


def _read_bytes(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: not found") from None
    except OSError as exc:
        raise ValueError(f"{what} {path}: not readable ({exc.strerror or exc})") from None


def _decode(data: bytes, path: Path | str, what: str, as_mask: bool) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if as_mask:
                # masks as the rest of lnzoo reads them (lnzoo.data.images): grey, anything above 0 marks
                return np.asarray(img.convert("L")) > 0
            # the image as the model sees it (EXIF orientation applied, as lnzoo.data.images.read_pixels)
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I;16"):
                return np.asarray(img, dtype=np.uint16)
            if img.mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGB")
            return np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{what} {path}: not a readable image ({exc})") from None


def _compute(image_path, mask_path, image_bytes: bytes, mask_bytes: bytes) -> np.ndarray | None:
    image = _decode(image_bytes, image_path, "image", as_mask=False)
    mask = _decode(mask_bytes, mask_path, "mask", as_mask=True)
    try:
        return extract(image, mask)
    except ValueError as exc:
        raise ValueError(f"{image_path} with mask {mask_path}: {exc}") from None


def features_of(image_path, mask_path, cache: MorphologyCache | None = None) -> np.ndarray | None:
    """``extract`` on two files read with PIL (the mask as grey, > 0), through ``cache`` when given.

    A missing or undecodable file is a ValueError naming it and saying "not found" or "not a readable image".
    """
    if cache is not None:
        return cache.get(image_path, mask_path)
    return _compute(image_path, mask_path, _read_bytes(image_path, "image"), _read_bytes(mask_path, "mask"))


class MorphologyCache:
    """Features per (image, mask) pair, in memory and, with ``disk_dir``, as ``.npy`` files that outlive the run.

    Keyed by the sha1 of ``FEATURE_VERSION`` and the bytes of both files, not their paths, so an edited mask
    or a changed formula is recomputed and a copied dataset is not. An empty mask is cached as an empty
    array. ``hits`` counts answers from memory or disk, ``misses`` the pairs computed.
    """

    def __init__(self, disk_dir: Path | None = None):
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._memory: dict[str, np.ndarray] = {}
        self._seen: dict[tuple, str] = {}  # (path, mtime, size) of both files -> content key
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(image_bytes: bytes, mask_bytes: bytes) -> str:
        h = hashlib.sha1()
        # lengths before contents, so no two different pairs of files hash the same concatenation
        for part in (f"lnzoo.morphology:{FEATURE_VERSION}".encode(), image_bytes, mask_bytes):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / key[:2] / f"{key}.npy"

    def _load(self, key: str) -> np.ndarray | None:
        if self.disk_dir is None:
            return None
        try:
            arr = np.load(self._path(key), allow_pickle=False)
        except (OSError, ValueError, EOFError):  # absent, truncated or not an .npy: recompute
            return None
        if arr.dtype != np.float64 or arr.shape not in ((0,), (len(FEATURES),)) or not np.isfinite(arr).all():
            return None
        return arr

    def _store(self, key: str, arr: np.ndarray) -> None:
        if self.disk_dir is None:
            return
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # a unique temporary name then os.replace: data-loader workers writing the same entry at once
            # never leave a half-written file under the final name
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{key}.", suffix=".tmp",
                                             delete=False) as f:
                tmp = f.name
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, path)
            tmp = None
        except OSError:
            pass  # a read-only or full cache disk costs recomputation next run, never the run itself
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    @staticmethod
    def _stamp(path) -> tuple | None:
        try:
            st = os.stat(path)
        except OSError:
            return None  # reading it says what is wrong
        return (str(path), st.st_mtime_ns, st.st_size)

    def get(self, image_path, mask_path) -> np.ndarray | None:
        """The features of the pair (a copy), or None for an empty mask; computed at most once per content.

        A pair seen before whose files kept their modification time and size is answered without reading them
        (every epoch after the first); otherwise both files are read and hashed."""
        stamps = (self._stamp(image_path), self._stamp(mask_path))
        known = self._seen.get(stamps) if None not in stamps else None
        if known is not None and known in self._memory:
            self.hits += 1
            arr = self._memory[known]
            return None if arr.size == 0 else arr.copy()
        image_bytes = _read_bytes(image_path, "image")
        mask_bytes = _read_bytes(mask_path, "mask")
        key = self.key(image_bytes, mask_bytes)
        if None not in stamps:
            self._seen[stamps] = key
        arr = self._memory.get(key)
        if arr is None:
            arr = self._load(key)
            if arr is not None:
                self._memory[key] = arr
        if arr is not None:
            self.hits += 1
        else:
            self.misses += 1
            features = _compute(image_path, mask_path, image_bytes, mask_bytes)
            arr = np.empty(0, dtype=np.float64) if features is None else features
            self._memory[key] = arr
            self._store(key, arr)
        return None if arr.size == 0 else arr.copy()
