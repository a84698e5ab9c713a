"""The ultrasound image area on a scanner screen whose file gives no ultrasound region (:func:`image_area`).

The rule:

- several frames: the pixels whose brightness range over the frames exceeds 4 levels (averaged over 5x5, and 2
  levels at the pixel itself): the live image; burned-in text, bars and the black screen are static. Opened by a
  square of ~1/64 of the frame's smaller side to drop small changes (a clock, a frame counter), closed by twice
  that and hole-filled to take back still dark parts (an anechoic node), and the box of the largest component.
  If nothing moves (a frozen loop), the single-frame rule on the frames' mean;
- one frame: the non-dark pixels (brightness > 10), opened by a square of ~1/32 of the frame's smaller side to
  drop text, ticks and grey-scale / colour bars (thin or small), closed by the same and hole-filled to bridge dark
  tissue, and the box of the largest component.

An area under 10% of the frame is not credible: ``(None, reason)``. Known misses: a bar or text block touching the
image and wider than the opening is taken in with it; the dark bottom of a deeply attenuated image can be left
out of a single-frame box (it moves, so a loop of ~8 frames keeps it; 2 frames may not); in a JPEG-compressed
loop, static marks sharing JPEG blocks with the image (depth ticks right beside it) flicker with it and can add
up to a block (~5-8 px) on that side; an image with black margins of its own (inside the declared region) gets
the box of its visible content; a sector (fan) image gets the box around the fan.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from lnzoo.ingest.marks import _SQUARE3, _as_rgb, _luma

MIN_AREA_FRACTION = 0.10
MOVING_LEVELS = 4.0  # a pixel moves when its brightness range over the frames, averaged over 5x5, exceeds this


def _open(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary opening by a k x k square, k odd (separable minimum then maximum filters: fast for large k)."""
    k |= 1  # an even window would shift the result by a pixel
    u = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)
    return ndimage.maximum_filter(ndimage.minimum_filter(u, k, mode="constant", cval=0), k, mode="constant") > 0


def _close(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary closing by a k x k square, k odd; the frame's edge does not erode what touches it."""
    k |= 1
    u = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)
    return ndimage.minimum_filter(ndimage.maximum_filter(u, k, mode="constant", cval=0), k, mode="nearest") > 0


def _largest_box(region: np.ndarray, min_fraction: float) -> tuple[tuple[int, int, int, int] | None, str]:
    """The bounding box of the largest 8-connected component of ``region``, or None with why."""
    labels, n = ndimage.label(region, structure=_SQUARE3)
    if n == 0:
        return None, "nothing left"
    sizes = np.bincount(labels.ravel())[1:]
    best = int(np.argmax(sizes)) + 1
    sl = ndimage.find_objects(labels, max_label=best)[best - 1]
    box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    frac = (box[2] - box[0]) * (box[3] - box[1]) / region.size
    if frac < min_fraction:
        return None, f"the largest area covers {frac:.0%} of the frame, under {min_fraction:.0%}"
    return box, ""


def _bright_area(grey: np.ndarray) -> tuple[tuple[int, int, int, int] | None, str]:
    """The single-frame rule: the largest non-dark filled area once text, ticks and bars are opened away."""
    h, w = grey.shape
    nondark = grey > 10.0
    if not nondark.any():
        return None, "the frame is dark"
    k = max(5, round(min(h, w) / 32))
    solid = _open(nondark, k)
    if not solid.any():
        return None, "no filled bright area (only text, ticks or bars)"
    solid = ndimage.binary_fill_holes(_close(solid, k))
    box, why = _largest_box(solid, MIN_AREA_FRACTION)
    return box, why or "largest bright area"


def image_area(frames: np.ndarray) -> tuple[tuple[int, int, int, int] | None, str]:
    """The box (x0, y0, x1, y1; x1/y1 exclusive) of the ultrasound image on a scanner screen, from a frame stack
    (T, H, W, 3) or (T, H, W) (T = 1 for one image; a single (H, W, 3) frame is accepted too), with how it was
    found ("moving content", "largest bright area"), or (None, why) when no credible area (>= 10% of the frame)
    is found. The rule is the module docstring's."""
    a = np.asarray(frames)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4):
        a = a[None]  # one frame given without the T axis
    if a.ndim in (3, 4) and a.shape[0] == 0:
        raise ValueError("no frames")
    if a.ndim == 4:
        grey = np.stack([_luma(_as_rgb(f)) for f in a])
    elif a.ndim == 3:
        grey = a.astype(np.float32)
    else:
        raise ValueError(f"expected frames (T, H, W, 3) or (T, H, W), got shape {a.shape}")
    t, h, w = grey.shape
    if t > 1:
        spread = grey.max(axis=0) - grey.min(axis=0)
        moving = (ndimage.uniform_filter(spread, 5) > MOVING_LEVELS) & (spread > MOVING_LEVELS / 2)
        if moving.mean() > 0.001:
            k = max(3, round(min(h, w) / 64))
            solid = ndimage.binary_fill_holes(_close(_open(moving, k), 2 * k + 1))
            box, why = _largest_box(solid, MIN_AREA_FRACTION)
            if box is not None:
                return box, "moving content"
        box, why = _bright_area(grey.mean(axis=0))
        return (box, why) if box is not None else (None, f"nothing moves between frames and {why}")
    return _bright_area(grey[0])
