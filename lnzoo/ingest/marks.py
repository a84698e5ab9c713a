"""Burned-in marks inside an ultrasound image (calipers, measurement readouts, annotations). Plain image processing
(numpy, scipy.ndimage, one skimage skeleton): no OCR, no learned model, so what it finds and what it misses follow from the rules below, and ``benchmarks/marks.py`` measures them.

**The rule, in short** (:func:`find_marks`): overlay pixels are vividly yellow / green / cyan / magenta, or
near-white and much brighter than what is right around them; only thin structures count (strokes of 1-3 px,
not the blobs of colour flow or bright echoes). A caliper is a small, square, mirror-symmetric cross of two
unbroken strokes of similar length ('+' or 'x'); text is a horizontal line of three or more character-sized thin
components of similar height at regular spacing. The mask is those, plus dotted lines between calipers and any
other thin overlay-coloured stroke, grown into their blurred edges.

**Candidate pixels.** A pixel is a candidate when it is

- *overlay-coloured*: its hue is yellow (45-75 deg), green (75-165), cyan (165-200) or magenta (280-335), and it
  is either strongly saturated (chroma, max - min channel, >= 80 of 255, brightest channel >= 140) or moderately
  saturated (chroma >= 35) on a thin bright stroke (>= 40 grey levels above the image's greyscale opening by a
  5x5 square: JPEG's 4:2:2 chroma halves the colour of a 1-px vertical line, never its brightness). The reds,
  oranges and blues of colour flow and power Doppler (335-45 and 200-280 deg) never are; or
- *near-white*: every channel >= 170, chroma < 60, and >= 60 grey levels above that 5x5 opening (part of
  something narrower than 5 px and much brighter than its surroundings), except in straight horizontal or
  vertical runs of 33 px or more (a fascia echo, a depth scale: taken out so that they do not join the characters
  or crosses they pass through into one component).

Candidates are grouped into 8-connected components; a component is *thin* when at most 40% of its pixels survive
a binary opening by a 4x4 square (strokes up to 3 px vanish; flow blobs, the yellow core of a power-Doppler blob
and bright echoes several pixels across do not). Thick components are never marks. *Colour flow* is red / orange
/ blue (chroma >= 50) in areas at least 3 px across; a component is *on colour flow* when over 30% of its pixels
lie within 2 px of such an area, or over half of the 2-px ring around it is red / orange / blue with chroma >= 50
(a thin vessel's yellow core between its orange rims).

**What the thin components are.**

- *Caliper*: a thin component 6-31 px on each side, sides within 1.6x, filling at most 55% of its box, with a
  pixel at its centroid; >= 85% of its pixels within (stroke width / 2 + 0.75) px of two lines through the
  centroid, horizontal + vertical ('+') or the two diagonals ('x'); four arms each reaching >= 55% of the
  half-size, opposite arms within 0.6x of each other and the two strokes' lengths too; the box's corners ('+') or
  side middles ('x') empty (letters like R or K fill them); mirror-symmetric about both strokes (>= 80% of
  pixels mirrored within 1 px: speckle zigzags are not); each stroke unbroken along its length; stroke width
  (area / skeleton length) at most 0.4x the size. A *white* cross must also be drawn sharply: the 1-px ring around
  it and the pixels between its arms near the centre are >= 50 grey levels darker than its strokes (a speckle
  ridge or the top-hat residue of a blurred bright dot is not). A cross on colour flow is taken for flow.
- *Text*: character-sized thin components (6-30 px tall, up to 8x as wide as tall, >= 6 px) linked left to
  right when they overlap vertically by half the smaller height, heights within 2.2x, gaps -2 px to 1.2x the
  height; a line is text when it has >= 2 components counting as >= 3 characters (a component wider than tall
  counts floor(width / height): characters that blur merges), its vertical centres vary by at most 0.25x its
  median height, and its median gap is at most 0.8x that height. A cross in such a line is a character
  (scanners print the caliper symbol before its readout); punctuation and the dots of i inside the line's box go
  with it; a line made only of components on colour flow is not text.
- *Dotted line*: between two calipers, >= 3 small (<= 4 px) candidate components within 3 px of the segment
  joining their centres.
- *Other coloured strokes* (arrows, colour-box outlines, body markers): every other thin component, >= 3 px,
  mostly overlay-coloured, not on colour flow (the yellow, cyan or magenta seams where flow colours meet or alias,
  a thin vessel's yellow core, are flow). A white thin component that is none of the above is left alone: bright
  specular echoes look the same.

The mask is those components grown by up to 2 px into weaker candidates (overlay hue with chroma >= 35, or >= 30
grey levels above the opening and brighter than 110): the anti-aliased and JPEG-blurred edges.

**Blind spots** (those with a figure are measured by ``benchmarks/marks.py`` on synthetic images; real scanners
will add their own):

- grey or dim text and calipers (a grey that tissue also has: a green caliper in a MONOCHROME2 export is grey
  150), and white marks on tissue nearly as bright as they are (echogenic fat, over-gained images: ~90% of white
  calipers found there): neither overlay-coloured nor much brighter than their surroundings;
- marks drawn over colour flow: a cross or stroke on colour flow is taken for flow (calipers on a flow image:
  90-98% found, the misses those drawn on a vessel); the flow map's own yellow / cyan (aliasing, the top of a
  power map) is rejected by thickness and by its flow-coloured rim, so only a thin jet of such colour with no rim
  could pass as an "other coloured stroke" (masked, though never a caliper or text by itself);
- calipers that are not crosses (dots, arrows, open squares, a '+' with a gap at the centre), crosses under 6 px
  or over ~31 px, crosses with strokes of 3 px or more (a '+' under ~11 px, and a quarter or more of 'x' shapes:
  the arms merge into a blob), and crosses touching another mark (a dotted line that starts on an arm,
  overlapping calipers);
- text of one or two characters ("D1", "LN", a lone number), fonts under ~10 px (characters < 6 px tall) or
  over 30 px tall, vertical text, bold strokes of 4 px or more;
- on the synthetic scenes no clean image was flagged, but bright speckle or echoes that line up as character-
  sized thin blobs, or form a small sharp symmetric cross, would be (see the benchmark's false-flag column).

**Filling** (:func:`fill`): the mask is dilated by ``grow`` px (anti-aliased fringes, JPEG ringing), then filled
from its edge inwards, each pixel taking the mean of its already-known 8 neighbours (an onion-peel average).
Pixels outside the dilated mask are returned unchanged. Filled strokes are smooth, tissue-coloured lines: the
speckle inside them is not invented, and a JPEG chroma fringe beyond the dilation is averaged in faintly.

The image area of a screen without a header region is :mod:`lnzoo.ingest.area`'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# hue ranges in degrees (0 red, 60 yellow, 120 green, 180 cyan, 240 blue, 300 magenta)
OVERLAY_HUES: tuple[tuple[float, float], ...] = ((45.0, 75.0), (75.0, 165.0), (165.0, 200.0), (280.0, 335.0))
STRONG_CHROMA = 80.0  # overlay-coloured candidates: chroma (max - min channel) at least this ...
STRONG_BRIGHT = 140.0  # ... and the brightest channel at least this
WEAK_CHROMA = 35.0  # the grown edge of a mark; an overlay colour this saturated on a thin bright stroke ...
COLOUR_TOPHAT = 40.0  # ... at least this far above the 5x5 greyscale opening is a candidate too
FLOW_CHROMA = 50.0  # red / orange / blue areas this saturated are colour flow
WHITE_MIN = 170.0  # near-white candidates: every channel at least this ...
WHITE_CHROMA = 60.0  # ... chroma under this ...
TOPHAT = 60.0  # ... and this much above the 5x5 greyscale opening
WEAK_TOPHAT, WEAK_LEVEL = 30.0, 110.0
THIN_OPEN = 4  # square side of the opening that thin strokes do not survive
THIN_FRACTION = 0.4
CALIPER_SIDE = (6, 31)
WHITE_CONTRAST = 50.0  # grey levels between a white cross's strokes and the pixels around them
CHAR_HEIGHT = (6, 30)
MIN_CHARS = 3
GROW = 2  # px the mask grows into weak candidates
DOT_DISTANCE = 3.0
LINE_LENGTH = 33  # white straight runs this long (odd, longer than any caliper arm) are lines, not marks

_SQUARE3 = np.ones((3, 3), bool)


@dataclass(frozen=True, eq=False)
class Marks:
    """What :func:`find_marks` found: boxes (x0, y0, x1, y1; x1/y1 exclusive) of calipers and of text lines, and the
    boolean mask (H x W) of every pixel judged overlay (those, dotted lines, other coloured strokes)."""

    calipers: tuple[tuple[int, int, int, int], ...]
    text: tuple[tuple[int, int, int, int], ...]
    mask: np.ndarray = field(repr=False)

    @property
    def has_caliper(self) -> bool:
        """True when at least one caliper cross was found."""
        return bool(self.calipers)

    @property
    def has_text(self) -> bool:
        """True when at least one line of text was found."""
        return bool(self.text)

    def as_columns(self) -> dict[str, int]:
        """The manifest columns ``marks_caliper`` and ``marks_text`` (0 or 1)."""
        return {"marks_caliper": int(self.has_caliper), "marks_text": int(self.has_text)}


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """``image`` as an (H, W, 3) array; (H, W) greyscale is repeated, an alpha channel dropped."""
    a = np.asarray(image)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return a[..., :3]
    if a.ndim == 3 and a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    raise ValueError(f"expected an (H, W, 3) RGB or (H, W) greyscale image, got shape {a.shape}")


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Brightness (ITU-R BT.601 luma) as float32."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b


def _candidates(rgb: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-pixel maps: strong overlay colour, strong near-white, weak candidates (either kind), colour flow (areas
    3 px across), flow-coloured pixels (any)."""
    rgb16 = rgb.astype(np.int16)
    r, g, b = rgb16[..., 0], rgb16[..., 1], rgb16[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    chroma = (mx - mn).astype(np.float32)
    # hue in degrees (the usual hexcone formula), only where there is colour to speak of
    coloured = chroma >= min(WEAK_CHROMA, FLOW_CHROMA)
    rc, gc, bc, mc, cc = (v[coloured].astype(np.float32) for v in (r, g, b, mx, chroma))
    hue = 60.0 * np.where(mc == rc, ((gc - bc) / cc) % 6.0, np.where(mc == gc, (bc - rc) / cc + 2.0,
                                                                     (rc - gc) / cc + 4.0))
    in_range = np.zeros(hue.shape, bool)
    for lo, hi in OVERLAY_HUES:
        in_range |= (hue >= lo) & (hue < hi)
    overlay_hue = np.zeros(chroma.shape, bool)
    overlay_hue[coloured] = in_range
    flow_hue = np.zeros(chroma.shape, bool)
    flow_hue[coloured] = ~in_range
    y = _luma(rgb)
    opened = ndimage.maximum_filter(ndimage.minimum_filter(y, size=5), size=5)
    tophat = y - opened
    colour_weak = overlay_hue & (chroma >= WEAK_CHROMA)
    colour_strong = overlay_hue & (((chroma >= STRONG_CHROMA) & (mx >= STRONG_BRIGHT))
                                   | (colour_weak & (tophat >= COLOUR_TOPHAT)))
    # colour flow: red / orange / blue areas at least 3 px across (the 1-px JPEG fringes of a yellow stroke are not)
    flow_px = flow_hue & (chroma >= FLOW_CHROMA)
    flow = ndimage.binary_opening(flow_px, _SQUARE3)
    white_strong = (mn >= WHITE_MIN) & (chroma < WHITE_CHROMA) & (tophat >= TOPHAT)
    # long straight white runs (a fascia echo, a depth scale) are no mark; taken out, they no longer join the
    # characters or crosses that they cross into one component
    white_strong &= ~(_runs(white_strong, 0) | _runs(white_strong, 1))
    weak = colour_weak | ((tophat >= WEAK_TOPHAT) & (y >= WEAK_LEVEL))
    return colour_strong, white_strong, weak, flow, flow_px


def _runs(mask: np.ndarray, axis: int, length: int = LINE_LENGTH) -> np.ndarray:
    """The pixels of ``mask`` in straight runs of at least ``length`` px along ``axis`` (an opening by a line)."""
    u = mask.view(np.uint8)
    eroded = ndimage.minimum_filter1d(u, length, axis=axis, mode="constant", cval=0)
    return ndimage.maximum_filter1d(eroded, length, axis=axis, mode="constant", origin=0) > 0


def _sharp(comp: np.ndarray, patch: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> bool:
    """Whether a white component (``patch``: the RGB pixels of its box) is drawn sharply: the pixels right around
    it, and those between its arms near its centre, are much darker than it (a speckle ridge or a blurred bright
    dot leaves thin residues under the top-hat too, but what surrounds them is nearly as bright)."""
    h, w = comp.shape
    padded = np.pad(comp, 1)
    y = np.pad(_luma(patch), 1, mode="edge")
    stroke = float(np.median(y[padded]))
    ring = ndimage.binary_dilation(padded, _SQUARE3) & ~padded
    if stroke - float(np.median(y[ring])) < WHITE_CONTRAST:
        return False
    gy, gx = np.mgrid[:h + 2, :w + 2]
    near = np.hypot(gy - 1 - ys.mean(), gx - 1 - xs.mean()) <= max(2.5, 0.3 * max(h, w))
    between = near & ~ndimage.binary_dilation(padded, _SQUARE3)
    if not between.any():
        between = near & ~padded
    return bool(between.any()) and stroke - float(np.median(y[between])) >= WHITE_CONTRAST


def _cross_kind(comp: np.ndarray, patch: np.ndarray, white: bool) -> str | None:
    """'+' or 'x' when the component (a cropped boolean image; ``patch``: the RGB pixels of its box) is two centred
    crossing strokes of similar length, else None; a ``white`` one must also be drawn sharply (:func:`_sharp`)."""
    from skimage.morphology import skeletonize

    h, w = comp.shape
    if not (CALIPER_SIDE[0] <= h <= CALIPER_SIDE[1] and CALIPER_SIDE[0] <= w <= CALIPER_SIDE[1]):
        return None
    if max(h, w) > 1.6 * min(h, w) or comp.mean() > 0.55:
        return None
    ys, xs = np.nonzero(comp)
    cy, cx = int(round(ys.mean())), int(round(xs.mean()))
    if not comp[max(cy - 1, 0):cy + 2, max(cx - 1, 0):cx + 2].any():
        return None  # the strokes cross at the centre: a ring or an arc is no cross
    if white and not _sharp(comp, patch, ys, xs):
        return None
    width = len(ys) / max(int(skeletonize(comp).sum()), 1)  # stroke width: area over skeleton length
    if width > 0.4 * max(h, w):
        return None  # strokes as wide as the arms are long: a blob, not a cross
    tol = width / 2 + 0.75  # how far from a stroke's centre line its pixels may lie
    half = (max(h, w) - 1) / 2.0
    dy, dx = ys - ys.mean(), xs - xs.mean()
    mh, mw = (h - 1) / 2, (w - 1) / 2
    for kind, (a, b) in (("+", (dx, dy)), ("x", ((dx + dy) / np.sqrt(2), (dx - dy) / np.sqrt(2)))):
        # a, b: coordinates along the two strokes; a pixel of stroke 1 has |b| small, of stroke 2 |a| small
        on1, on2 = np.abs(b) <= tol, np.abs(a) <= tol
        if (on1 | on2).mean() < 0.85 or not on1.any() or not on2.any():
            continue
        # four arms, each reaching most of the way to the box's edge, opposite arms and both strokes alike
        arms = (-a[on1].min(), a[on1].max(), -b[on2].min(), b[on2].max())
        reach = half if kind == "+" else half * np.sqrt(2)
        if min(arms) < 0.55 * reach:
            continue
        if min(arms[0], arms[1]) < 0.6 * max(arms[0], arms[1]) or min(arms[2], arms[3]) < 0.6 * max(arms[2], arms[3]):
            continue
        len1, len2 = arms[0] + arms[1], arms[2] + arms[3]
        if min(len1, len2) < 0.6 * max(len1, len2):
            continue
        # the box's corners ('+') or the middles of its sides ('x') are empty: a letter such as R or K fills them
        probes = ([(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)] if kind == "+" else
                  [(0, mw), (h - 1, mw), (mh, 0), (mh, w - 1)])
        if any(comp[int(np.floor(py)):int(np.ceil(py)) + 1, int(np.floor(qx)):int(np.ceil(qx)) + 1].any()
               for py, qx in probes):
            continue
        # mirror-symmetric about both strokes, as drawn crosses are (speckle's bright zigzags are not)
        if not _mirror_symmetric(comp, ys, xs, kind):
            continue
        # each stroke is unbroken along its length (a letter's bars and bowls leave gaps on the centre lines)
        if any(np.diff(np.unique(np.rint(along[on]))).max(initial=1) > 2 for along, on in ((a, on1), (b, on2))):
            continue
        return kind
    return None


def _mirror_symmetric(comp: np.ndarray, ys: np.ndarray, xs: np.ndarray, kind: str) -> bool:
    """Whether at least 80% of the component's pixels have their mirror image, within 1 px, in the component, for
    each of the two mirrors through its centroid along its strokes ('+': vertical and horizontal; 'x': the
    diagonals)."""
    h, w = comp.shape
    near = ndimage.binary_dilation(comp, _SQUARE3)
    cy, cx = ys.mean(), xs.mean()
    dy, dx = ys - cy, xs - cx
    mirrors = (((dy, -dx), (-dy, dx)) if kind == "+" else ((dx, dy), (-dx, -dy)))
    for my, mx in mirrors:
        yy = np.clip(np.rint(cy + my).astype(int), 0, h - 1)
        xx = np.clip(np.rint(cx + mx).astype(int), 0, w - 1)
        if near[yy, xx].mean() < 0.8:
            return False
    return True


def _text_lines(chars: list[tuple[int, int, int, int, int]]) -> list[list[int]]:
    """Group character-sized components (x0, y0, x1, y1, index) into horizontal lines of text; lists of indices."""
    order = sorted(range(len(chars)), key=lambda i: chars[i][0])
    parent = list(range(len(chars)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    max_gap = 1.2 * CHAR_HEIGHT[1]
    for pos, i in enumerate(order):
        x0, y0, x1, y1, _ = chars[i]
        hi = y1 - y0
        for j in order[pos + 1:]:
            u0, v0, u1, v1, _ = chars[j]
            if u0 - x1 > max_gap:
                break
            hj = v1 - v0
            overlap = min(y1, v1) - max(y0, v0)
            if overlap < 0.5 * min(hi, hj) or max(hi, hj) > 2.2 * min(hi, hj):
                continue
            gap = u0 - x1
            if -2 <= gap <= 1.2 * max(hi, hj):
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(chars)):
        groups.setdefault(root(i), []).append(i)
    lines = []
    for members in groups.values():
        if len(members) < 2:
            continue
        boxes = np.array([chars[i][:4] for i in members], float)
        heights = boxes[:, 3] - boxes[:, 1]
        # characters that blur merges are one wide component: count it as width / height characters
        n_chars = np.maximum(1, np.floor((boxes[:, 2] - boxes[:, 0]) / heights)).sum()
        if n_chars < MIN_CHARS:
            continue
        centres = (boxes[:, 1] + boxes[:, 3]) / 2
        med_h = float(np.median(heights))
        xs = np.argsort(boxes[:, 0])
        gaps = boxes[xs[1:], 0] - np.maximum.accumulate(boxes[xs, 2])[:-1]
        if np.std(centres) > 0.25 * med_h or np.median(gaps) > 0.8 * med_h:
            continue
        lines.append(members)
    return lines


def find_marks(rgb: np.ndarray) -> Marks:
    """Calipers, text lines and the overlay mask of an RGB (H, W, 3) or greyscale (H, W) uint8 image (another
    dtype is clipped to 0..255, so scale a 0..1 float image first): the rule is the module docstring's. About
    30 ms for 640x480 on one core."""
    img = _as_rgb(rgb)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    colour_strong, white_strong, weak, flow, flow_px = _candidates(img)
    strong = colour_strong | white_strong
    labels, n = ndimage.label(strong, structure=_SQUARE3)
    if n == 0:
        return Marks((), (), np.zeros((h, w), bool))
    idx = np.arange(n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)
    survive = np.bincount(labels[ndimage.binary_opening(strong, np.ones((THIN_OPEN, THIN_OPEN), bool))],
                          minlength=n + 1)
    thin = survive <= THIN_FRACTION * area
    n_colour = np.bincount(labels[colour_strong], minlength=n + 1)
    # on colour flow: > 30% of the pixels within 2 px of a flow area, or more than half of the 2-px ring around
    # the component flow-coloured (a thin vessel's yellow core between its orange rims)
    near_flow = ndimage.binary_dilation(flow, _SQUARE3, iterations=2)
    ring_of = np.where(strong, 0, ndimage.maximum_filter(labels, size=5))
    ring_n = np.bincount(ring_of.ravel(), minlength=n + 1)
    ring_flow = np.bincount(ring_of[flow_px], minlength=n + 1)
    on_flow = (np.bincount(labels[near_flow], minlength=n + 1) > 0.3 * area) | (ring_flow > 0.5 * ring_n)
    slices = ndimage.find_objects(labels)

    crosses: list[tuple[int, int, int, int, int]] = []
    chars: list[tuple[int, int, int, int, int]] = []
    small: list[int] = []
    keep = np.zeros(n + 1, bool)
    for lab in idx[1:][thin[1:]]:
        sl = slices[lab - 1]
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        bh, bw = y1 - y0, x1 - x0
        if max(bh, bw) <= 4:
            small.append(int(lab))
        crop = labels[sl] == lab
        if not on_flow[lab] and _cross_kind(crop, img[sl], n_colour[lab] < 0.5 * area[lab]) is not None:
            crosses.append((x0, y0, x1, y1, int(lab)))
        if CHAR_HEIGHT[0] <= bh <= CHAR_HEIGHT[1] and bw <= 8 * bh and area[lab] >= 6:
            chars.append((x0, y0, x1, y1, int(lab)))
    # other coloured strokes (arrows, body markers, colour-box outlines), unless they are flow's own seams
    keep[thin & (n_colour >= 0.5 * area) & (area >= 3) & ~on_flow] = True
    keep[0] = False

    text_boxes: list[tuple[int, int, int, int]] = []
    in_text: set[int] = set()
    for members in _text_lines(chars):
        if all(on_flow[chars[i][4]] for i in members):
            continue  # a line of flow seams, not text
        bx0 = min(chars[i][0] for i in members)
        by0 = min(chars[i][1] for i in members)
        bx1 = max(chars[i][2] for i in members)
        by1 = max(chars[i][3] for i in members)
        box = (bx0, by0, bx1, by1)
        text_boxes.append(box)
        for i in members:
            in_text.add(chars[i][4])
        # punctuation, the dots of i and j: small thin components inside the line's box
        sub = labels[max(by0 - 2, 0):by1 + 2, max(bx0 - 2, 0):bx1 + 2]
        for lab in np.unique(sub[sub > 0]):
            sl = slices[lab - 1]
            if thin[lab] and sl[0].stop - sl[0].start <= by1 - by0 + 2:
                in_text.add(int(lab))
    for lab in in_text:
        keep[lab] = True
    calipers = [c for c in crosses if c[4] not in in_text]
    for c in calipers:
        keep[c[4]] = True
    # dotted lines between calipers
    if len(calipers) >= 2 and small:
        cents = np.array([((c[0] + c[2] - 1) / 2, (c[1] + c[3] - 1) / 2) for c in calipers])
        smalls = np.array(small)
        centre_of = np.array([((slices[i - 1][1].start + slices[i - 1][1].stop - 1) / 2,
                               (slices[i - 1][0].start + slices[i - 1][0].stop - 1) / 2) for i in smalls])
        for i in range(len(calipers)):
            for j in range(i + 1, len(calipers)):
                p, q = cents[i], cents[j]
                d = q - p
                length = float(np.hypot(*d))
                if length < 1:
                    continue
                t = ((centre_of - p) @ d) / (length * length)
                foot = p + np.clip(t, 0, 1)[:, None] * d
                dist = np.hypot(*(centre_of - foot).T)
                on = (dist <= DOT_DISTANCE) & (t > 0) & (t < 1)
                if on.sum() >= 3:
                    keep[smalls[on]] = True
    accepted = keep[labels]
    if accepted.any():
        accepted = ndimage.binary_dilation(accepted, _SQUARE3, iterations=GROW, mask=weak | strong)
    return Marks(tuple(c[:4] for c in sorted(calipers, key=lambda c: (c[1], c[0]))),
                 tuple(sorted(text_boxes, key=lambda b: (b[1], b[0]))), accepted)


def fill(rgb: np.ndarray, mask: np.ndarray, grow: int = 2) -> np.ndarray:
    """``rgb`` (H, W, C) or (H, W) with the pixels of ``mask`` (dilated by ``grow`` px first, so that anti-aliased
    and JPEG-blurred edges go too) replaced by the surrounding background: filled from the edge inwards, each pixel
    taking the mean of its 8 neighbours already known (an onion-peel average). Same shape and dtype as ``rgb``;
    pixels outside the dilated mask are unchanged. Filled strokes are smooth: speckle is not invented."""
    src = np.asarray(rgb)
    m = np.asarray(mask, bool)
    if m.shape != src.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match the image's {src.shape[:2]}")
    if grow > 0 and m.any():
        m = ndimage.binary_dilation(m, _SQUARE3, iterations=grow)
    out = src.copy()
    if not m.any() or m.all():
        return out  # nothing to fill, or nothing known to fill from
    h, w = m.shape
    ys, xs = np.nonzero(m)
    sy = slice(max(ys.min() - 1, 0), min(ys.max() + 2, h))  # the crop around the mask, for speed
    sx = slice(max(xs.min() - 1, 0), min(xs.max() + 2, w))
    todo = m[sy, sx].copy()
    known = ~todo
    vals = src[sy, sx].astype(np.float32).reshape(todo.shape + (-1,))
    while todo.any():
        weight = known.astype(np.float32)
        count = ndimage.uniform_filter(weight, 3, mode="constant")
        front = todo & (count > 0)
        if not front.any():  # cannot happen: the crop has known pixels unless the mask is everything
            break
        for c in range(vals.shape[2]):
            total = ndimage.uniform_filter(vals[..., c] * weight, 3, mode="constant")
            vals[..., c][front] = total[front] / count[front]
        known |= front
        todo &= ~front
    if np.issubdtype(src.dtype, np.integer):
        info = np.iinfo(src.dtype)
        vals = np.clip(np.rint(vals), info.min, info.max)
    crop = out[sy, sx].reshape(vals.shape)
    crop[m[sy, sx]] = vals[m[sy, sx]].astype(src.dtype)
    out[sy, sx] = crop.reshape(out[sy, sx].shape)
    return out
