"""Shortcuts planted in the synthetic phantom on request -- spurious cues that correlate with malignancy.

SYNTHETIC, NOT CLINICAL DATA. This module makes the phantom (:mod:`lnzoo.data.phantom`) cheat on purpose, so
that ``lnzoo audit`` can be tested on a dataset where the answer is known: a model may score well by looking at a
burned-in mark or a scanner's look instead of at the node. It is asked for with ``lnzoo synth --shortcut
KIND:STRENGTH`` (repeatable) or a recipe's ``data.phantom.shortcut = ["KIND:STRENGTH", ...]``.

**The three kinds.**

* ``calipers``: the measurement a sonographer leaves on the screen: two caliper '+' crosses (yellow or green,
  9 px across, 1-2 px strokes) at the two ends of the node's long axis with a dotted line between them, and a
  "D1 x.x mm" readout (yellow or white) in a corner of the imaged field, placed clear of the crosses. Drawn into the full
  frame of every modality of the image (2d, cdfi, elasto), the same marks on each; the crops are cut from the
  marked frames, so they show whatever part falls inside them (the crosses, at the node's edge, mostly do; the
  readout seldom). Manifest column ``marks_caliper`` (1 where drawn, else 0), the name the mark detector
  (:mod:`lnzoo.ingest.marks`) gives its column.
* ``doppler_box``: the outline of a colour-Doppler sampling box (a 1-2 px green or yellow rectangle, 1.4-1.6x the
  node's bounding box each way around its centre, shifted a little, clipped to the frame) drawn on the 2d frame
  only. At that size it lies outside the ROI crop (bounding box + 10 % a side), so the crops never show it: it
  is a shortcut of the full frame only. Column ``doppler_box`` (0/1).
* ``scanner``: which of two scanners acquired the image. Column ``scanner``, "A" or "B"; B is the marked
  value. Scanner B images are brighter (+15 grey levels on the grey pixels of the imaged field, on all three
  modalities; colour flow and the elastography overlay keep their colours) and carry a small "SB" logo in the
  top-left corner of the full frames. The gain shows in the crops too; the logo does not. Scanner A images are
  the phantom's as they are.

**Strength.** A shortcut's strength ``s`` is a number in [0, 1]. Each image is decided on its own (the images of
one patient independently): the mark (or scanner B) is present on a malignant image with probability
``(1 + s) / 2`` and on a benign one with probability ``(1 - s) / 2``. Malignant is the phantom's ``malignancy``
label, so metastatic nodes and lymphomas alike. ``s = 0``: present on half the images of either class, no
correlation; ``s = 1``: on every malignant image and on no benign one. With balanced classes the phi coefficient
between the mark and malignancy is exactly ``s`` (P(mark) = 1/2); with the phantom's ~55 % malignant images it is
``s * sqrt(p (1 - p) / (m (1 - m)))`` (p the malignant share, m = P(mark)), within 0.5 % of ``s``.

**Nothing else moves.** Every decision and every drawing choice of kind K on image k of patient i comes from
``numpy.random.default_rng([seed, i, SHORTCUT_STREAM, kind index, k])``, a stream of its own: planting a
shortcut, or another one beside it, changes no other pixel, file or column. An image without a mark (no calipers,
no box, scanner A) is byte-identical to the clean phantom's; a 2d frame that gets a coloured mark (calipers or a
Doppler box) is written as RGB instead of greyscale, as a scanner's export of an annotated frame is; so is its
crop when the mark reaches into it (otherwise the crop stays greyscale, byte-identical to the clean one). A phantom
without shortcuts is the phantom as it always was: the same files, the same manifest, the same cache folder.

Drawn in this order, each on top of the last: scanner B's gain, the Doppler box, the calipers, scanner B's logo.

The caliper drawing is shared with the DICOM phantom (:mod:`lnzoo.data.phantom_dicom`), which puts the same
measurement on 40 % of its screens at random (no correlation with the label): :func:`plan_calipers` decides,
:func:`draw_caliper_plan` draws (once per cine frame there), :func:`draw_calipers` does both on one image.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lnzoo.data.phantom_render import FIELD_DEPTH_MM, PROBE_WIDTH_MM

__all__ = [
    "KINDS",
    "COLUMNS",
    "SHORTCUT_STREAM",
    "SCANNER_B_GAIN",
    "CaliperPlan",
    "DopplerBox",
    "Planted",
    "parse_shortcuts",
    "normalize_shortcuts",
    "presence_probability",
    "describe_shortcuts",
    "shortcut_columns",
    "long_axis",
    "plan_calipers",
    "draw_caliper_plan",
    "draw_calipers",
    "plan_image",
    "apply_planted",
    "grey_if_grey",
    "readme_section",
]

KINDS = ("calipers", "doppler_box", "scanner")
# kind -> its manifest column (appended after the phantom's own columns, in KINDS order)
COLUMNS = {"calipers": "marks_caliper", "doppler_box": "doppler_box", "scanner": "scanner"}
# the phantom's per-patient streams are 0-4 (clinical, node, acquisition, lists, report); the shortcuts take 5
SHORTCUT_STREAM = 5
SCANNER_B_GAIN = 15  # grey levels scanner B adds to the grey pixels of the imaged field
SCANNER_B_LOGO = "SB"

YELLOW, GREEN, WHITE = (255, 255, 0), (0, 255, 0), (255, 255, 255)
_LOGO_GREY = 200


# ----------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------


def _kinds_hint() -> str:
    return f"give KIND:STRENGTH, KIND one of {', '.join(KINDS)} and STRENGTH a number in [0, 1] (e.g. calipers:0.8)"


def parse_shortcuts(items: Iterable[str] | None) -> dict[str, float]:
    """``["calipers:0.8", "scanner:0.7"]`` -> ``{"calipers": 0.8, "scanner": 0.7}`` (in :data:`KINDS` order).

    Raises ValueError naming the bad item (and the three kinds) for an unknown kind, a strength that is not a
    number in [0, 1], a missing colon, or a kind given twice. ``None`` or an empty list: no shortcuts."""
    if items is None:
        return {}
    if isinstance(items, str):
        items = [items]
    found: dict[str, float] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"shortcut {item!r} is not a string; {_kinds_hint()}")
        kind, sep, value = item.strip().partition(":")
        kind = kind.strip()
        if not sep:
            raise ValueError(f"shortcut {item!r} has no strength; {_kinds_hint()}")
        if kind not in KINDS:
            raise ValueError(f"shortcut {item!r}: unknown kind {kind!r}; {_kinds_hint()}")
        try:
            strength = float(value)
        except ValueError:
            raise ValueError(f"shortcut {item!r}: strength {value.strip()!r} is not a number; {_kinds_hint()}") from None
        if not (0.0 <= strength <= 1.0):  # NaN fails too
            raise ValueError(f"shortcut {item!r}: strength {strength:g} is outside [0, 1]; {_kinds_hint()}")
        if kind in found:
            raise ValueError(f"shortcut {item!r}: {kind} is given twice; give each kind once")
        found[kind] = strength
    return {k: found[k] for k in KINDS if k in found}


def normalize_shortcuts(value: Mapping[str, float] | Iterable[str] | str | None) -> dict[str, float]:
    """The shortcuts as ``{kind: strength}`` in :data:`KINDS` order, from None, a list of "KIND:STRENGTH" strings
    or a mapping; ValueError as :func:`parse_shortcuts` for anything else."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return parse_shortcuts([f"{k}:{v}" for k, v in value.items()])
    return parse_shortcuts(value)


def presence_probability(strength: float, malignant: bool) -> float:
    """P(mark present) on one image: ``(1 + s) / 2`` when malignant, ``(1 - s) / 2`` when benign."""
    return (1.0 + strength) / 2.0 if malignant else (1.0 - strength) / 2.0


def describe_shortcuts(shortcuts: Mapping[str, float]) -> str:
    """``"calipers 0.8, scanner 0.7"``, or ``""`` for none."""
    return ", ".join(f"{k} {v:g}" for k, v in shortcuts.items())


def shortcut_columns(shortcuts: Mapping[str, float]) -> tuple[str, ...]:
    """The manifest columns the planted shortcuts add, in :data:`KINDS` order (none: an empty tuple)."""
    return tuple(COLUMNS[k] for k in KINDS if k in shortcuts)


# ----------------------------------------------------------------------------------------
# Text (shared with the DICOM phantom)
# ----------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def overlay_font(size: int):
    """Pillow's bundled scalable font at ``size`` px; the old bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int, fill,
              anchor: str = "la") -> list[int]:
    """Draw ``text`` and return its box (x1/y1 exclusive)."""
    font = overlay_font(size)
    draw.text(xy, text, fill=fill, font=font, anchor=anchor)
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=font, anchor=anchor)
    return [int(x0), int(y0), int(x1), int(y1)]


def text_size(text: str, size: int) -> tuple[int, int]:
    """Width and height in px of ``text`` drawn at ``size`` from (0, 0) (its box's right and bottom edges)."""
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=overlay_font(size))
    return int(x1), int(y1)


# ----------------------------------------------------------------------------------------
# Calipers
# ----------------------------------------------------------------------------------------


def long_axis(mask: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """The two mask pixels farthest apart along the node's principal axis, as (x, y) frame pixels."""
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs, ys], axis=1).astype(np.float64)
    centred = pts - pts.mean(axis=0)
    _, vecs = np.linalg.eigh(centred.T @ centred)
    proj = centred @ vecs[:, -1]
    a, b = pts[int(np.argmin(proj))], pts[int(np.argmax(proj))]
    return (float(a[0]), float(a[1])), (float(b[0]), float(b[1]))


@dataclass(frozen=True)
class CaliperPlan:
    """One measurement, decided before it is drawn (so the same marks go onto several frames)."""

    ends: tuple[tuple[int, int], tuple[int, int]]   # the two crosses' centres (x, y), drawing pixels
    colour: tuple[int, int, int]                    # crosses and dotted line: yellow or green
    stroke: int                                     # 1 or 2 px
    boxes: tuple[tuple[int, int, int, int], ...]    # the crosses' boxes (x0, y0, x1, y1; x1/y1 exclusive)
    readout: str                                    # "D1 12.3 mm"
    text_xy: tuple[int, int]                        # the readout's top-left corner
    text_size: int                                  # its font size in px
    text_colour: tuple[int, int, int]               # yellow or white

    @property
    def line(self) -> tuple[int, int, int, int]:
        """The measured segment, x0 y0 x1 y1 (the crosses' centres)."""
        return (*self.ends[0], *self.ends[1])


def default_text_size(frame_size: int) -> int:
    """The readout's font size on a phantom frame of ``frame_size`` px: 13 px at 256, never under 9."""
    return max(9, int(round(frame_size / 20)))


def plan_calipers(mask: np.ndarray, rng: np.random.Generator, text_px: int,
                  region: tuple[int, int, int, int] | None = None, scale: float = 1.0,
                  require_inside: bool = True,
                  text_area: tuple[int, int, int, int] | None = None) -> CaliperPlan | None:
    """Decide a measurement of the node in ``mask`` (S x S, frame pixels) shown at ``scale`` in ``region``
    (x0, y0, x1, y1 of the drawing; default the frame itself at ``(0, 0)``); the readout goes into a corner of
    ``text_area`` (default ``region``).

    Draws from ``rng`` in a fixed order: the crosses' colour, their stroke, then (when it goes on) the readout's
    corner and its colour. With ``require_inside`` a cross box reaching outside ``region`` gives None after the
    first two draws (the DICOM phantom then draws no calipers); without it the marks are planned anyway and
    drawing clips them. The readout ("D1 x.x mm", the long axis in mm at the phantom's ``FIELD_DEPTH_MM``) takes
    the first corner, from a random one on, that stays 4 px clear of both crosses (the last tried if none does).
    """
    S = mask.shape[0]
    if region is None:
        side = int(round(S * scale))
        region = (0, 0, side, side)
    x0, y0 = region[0], region[1]
    a, b = long_axis(mask)
    ends = tuple((int(round((p[0] + 0.5) * scale - 0.5)) + x0, int(round((p[1] + 0.5) * scale - 0.5)) + y0)
                 for p in (a, b))
    colour = YELLOW if rng.random() < 0.5 else GREEN
    stroke = 1 + int(rng.random() < 0.5)
    boxes = [(cx - 5, cy - 5, cx + 6, cy + 6) for cx, cy in ends]
    inside = all(bx[0] >= region[0] and bx[1] >= region[1] and bx[2] <= region[2] and bx[3] <= region[3]
                 for bx in boxes)
    if require_inside and not inside:
        return None
    mm = math.dist(a, b) * FIELD_DEPTH_MM / S
    readout = f"D1 {mm:.1f} mm"
    tw, th = text_size(readout, text_px)
    ta = region if text_area is None else text_area
    corners = [(ta[0] + 6, ta[1] + 6), (ta[2] - 6 - tw, ta[1] + 6), (ta[0] + 6, ta[3] - 6 - th),
               (ta[2] - 6 - tw, ta[3] - 6 - th)]
    start = int(rng.integers(0, 4))
    for c in range(4):
        cx, cy = corners[(start + c) % 4]
        box = [cx, cy, cx + tw, cy + th]
        if not any(box[0] < bx[2] + 4 and bx[0] - 4 < box[2] and box[1] < bx[3] + 4 and bx[1] - 4 < box[3]
                   for bx in boxes):
            break
    text_colour = YELLOW if rng.random() < 0.5 else WHITE
    return CaliperPlan(ends=ends, colour=colour, stroke=stroke, boxes=tuple(boxes), readout=readout,
                       text_xy=(cx, cy), text_size=text_px, text_colour=text_colour)


def draw_caliper_plan(draw: ImageDraw.ImageDraw, plan: CaliperPlan) -> list[int]:
    """Draw ``plan`` on an RGB image: the dotted line (a dot every ~4 px, clear of the crosses), the two '+'
    crosses (9 px), then the readout. Returns the readout's box (x1/y1 exclusive)."""
    (xa, ya), (xb, yb) = plan.ends
    steps = int(math.dist(plan.ends[0], plan.ends[1]) // 4)
    for s in range(2, steps - 1):  # dotted line, clear of the crosses
        px, py = xa + (xb - xa) * s / steps, ya + (yb - ya) * s / steps
        draw.point((int(round(px)), int(round(py))), fill=plan.colour)
    for cx, cy in plan.ends:
        draw.line([(cx - 4, cy), (cx + 4, cy)], fill=plan.colour, width=plan.stroke)
        draw.line([(cx, cy - 4), (cx, cy + 4)], fill=plan.colour, width=plan.stroke)
    return draw_text(draw, plan.text_xy, plan.readout, plan.text_size, plan.text_colour)


def draw_calipers(image: Image.Image, mask: np.ndarray, rng: np.random.Generator,
                  text_px: int | None = None) -> list[list[int]]:
    """Measure the node of ``mask`` (the image's size) on ``image`` (RGB, drawn in place): calipers, dotted line
    and readout, clipped at the image's edge. Returns the boxes ``[cross, cross, readout]`` (x0, y0, x1, y1;
    x1/y1 exclusive)."""
    if image.mode != "RGB":
        raise ValueError(f"draw_calipers draws in colour on an RGB image, got mode {image.mode!r}")
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask shape {mask.shape} does not match the image's {(image.height, image.width)}")
    if not np.any(mask):
        raise ValueError("the mask marks no node to measure")
    plan = plan_calipers(mask, rng, text_px or default_text_size(image.width),
                         region=(0, 0, image.width, image.height), require_inside=False)
    assert plan is not None  # require_inside=False always plans
    text_box = draw_caliper_plan(ImageDraw.Draw(image), plan)
    return [list(b) for b in plan.boxes] + [text_box]


# ----------------------------------------------------------------------------------------
# Doppler box, scanner B
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DopplerBox:
    """A colour-Doppler sampling box outline: (x0, y0, x1, y1) inclusive corners, colour, stroke."""

    box: tuple[int, int, int, int]
    colour: tuple[int, int, int]
    stroke: int


def plan_doppler_box(bbox: tuple[int, int, int, int], S: int, rng: np.random.Generator) -> DopplerBox:
    """A box 1.4-1.6x the node's bounding box each way, its centre shifted by up to ~5 % of the box, inside the
    S x S frame; green or yellow, 1 or 2 px."""
    x0, y0, x1, y1 = bbox
    w, h = x1 - x0, y1 - y0
    fx, fy = rng.uniform(1.4, 1.6, size=2)
    cx = (x0 + x1) / 2 + float(rng.normal(0, 0.03 * w))
    cy = (y0 + y1) / 2 + float(rng.normal(0, 0.03 * h))
    hw, hh = max(3.0, fx * w / 2), max(3.0, fy * h / 2)
    box = (int(np.clip(round(cx - hw), 0, S - 1)), int(np.clip(round(cy - hh), 0, S - 1)),
           int(np.clip(round(cx + hw), 0, S - 1)), int(np.clip(round(cy + hh), 0, S - 1)))
    colour = GREEN if rng.random() < 0.5 else YELLOW
    stroke = 1 + int(rng.random() < 0.5)
    return DopplerBox(box, colour, stroke)


def _field(S: int) -> tuple[int, int]:
    """The imaged field's columns [fx0, fx1) of an S-px phantom frame (as :mod:`lnzoo.data.phantom_render`)."""
    half = PROBE_WIDTH_MM / 2 * S / FIELD_DEPTH_MM
    return int(round(S / 2 - half)), int(round(S / 2 + half))


def _scanner_gain(arr: np.ndarray) -> np.ndarray:
    """Scanner B's brighter gain: +SCANNER_B_GAIN on the grey pixels of the imaged field (colour stays)."""
    S = arr.shape[0]
    fx0, fx1 = _field(S)
    out = arr.copy()
    part = out[:, fx0:fx1].astype(np.int16)
    if part.ndim == 2:
        part += SCANNER_B_GAIN
    else:
        grey = (part[..., 0] == part[..., 1]) & (part[..., 1] == part[..., 2])
        part[grey] += SCANNER_B_GAIN
    out[:, fx0:fx1] = np.clip(part, 0, 255).astype(np.uint8)
    return out


def _logo_size(S: int) -> int:
    return max(8, int(round(S / 24)))


# ----------------------------------------------------------------------------------------
# One image
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planted:
    """The shortcuts of one image: what will be drawn, and its manifest cells (only the planted kinds')."""

    calipers: CaliperPlan | None
    doppler: DopplerBox | None
    scanner_b: bool
    cells: dict[str, str]

    @property
    def marked(self) -> bool:
        """Whether anything is drawn or changed on this image."""
        return self.calipers is not None or self.doppler is not None or self.scanner_b


def _stream(seed: int, patient: int, kind: str, image: int) -> np.random.Generator:
    return np.random.default_rng([seed, patient, SHORTCUT_STREAM, KINDS.index(kind), image])


def plan_image(shortcuts: Mapping[str, float], seed: int, patient: int, image: int, malignant: bool,
               mask: np.ndarray, bbox: tuple[int, int, int, int]) -> Planted:
    """Decide the shortcuts of image ``image`` (1-based) of patient ``patient`` (1-based): each planted kind
    from its own stream (:data:`SHORTCUT_STREAM`), present with :func:`presence_probability`."""
    S = mask.shape[0]
    calipers = doppler = None
    scanner_b = False
    cells: dict[str, str] = {}
    for kind, strength in shortcuts.items():
        rng = _stream(seed, patient, kind, image)
        present = bool(rng.random() < presence_probability(strength, malignant))
        if kind == "calipers":
            if present:  # the readout inside the imaged field, clear of scanner B's logo in the margin
                fx0, fx1 = _field(S)
                calipers = plan_calipers(mask, rng, default_text_size(S), region=(0, 0, S, S), require_inside=False,
                                         text_area=(fx0, 0, fx1, S))
            cells[COLUMNS[kind]] = str(int(present))
        elif kind == "doppler_box":
            if present:
                doppler = plan_doppler_box(bbox, S, rng)
            cells[COLUMNS[kind]] = str(int(present))
        else:  # scanner
            scanner_b = present
            cells[COLUMNS[kind]] = "B" if present else "A"
    return Planted(calipers, doppler, scanner_b, cells)


def apply_planted(planted: Planted, frames: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The full frames (modality -> array: "2d" greyscale H x W, the others H x W x 3) with ``planted`` drawn in.

    Frames with nothing to draw are returned as the same arrays (untouched); the 2d frame becomes RGB when a
    coloured mark (calipers, Doppler box) goes on it."""
    out = dict(frames)
    if not planted.marked:
        return out
    if planted.scanner_b:
        out = {mod: _scanner_gain(arr) for mod, arr in out.items()}
    for mod, arr in out.items():
        doppler = planted.doppler if mod == "2d" else None
        if planted.calipers is None and doppler is None and not planted.scanner_b:
            continue
        coloured = planted.calipers is not None or doppler is not None
        im = Image.fromarray(np.ascontiguousarray(arr))
        if coloured and im.mode != "RGB":
            im = im.convert("RGB")
        draw = ImageDraw.Draw(im)
        if doppler is not None:
            draw.rectangle(doppler.box, outline=doppler.colour, width=doppler.stroke)
        if planted.calipers is not None:
            draw_caliper_plan(draw, planted.calipers)
        if planted.scanner_b:
            fill = _LOGO_GREY if im.mode == "L" else (_LOGO_GREY,) * 3
            draw_text(draw, (2, 1), SCANNER_B_LOGO, _logo_size(arr.shape[0]), fill)
        out[mod] = np.asarray(im)
    return out


def grey_if_grey(arr: np.ndarray) -> np.ndarray:
    """An RGB array whose pixels are all grey (R = G = B) as H x W greyscale; anything else as it is. A 2d crop
    cut from a frame that became RGB for a mark outside the crop is stored as the clean phantom's greyscale."""
    if arr.ndim == 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        return arr[..., 0]
    return arr


def readme_section(shortcuts: Mapping[str, float], counts: Mapping[str, Mapping[str, tuple[int, int]]]) -> str:
    """The README paragraph naming the planted shortcuts; ``counts[kind][class] = (marked, images)``."""
    lines = [
        "",
        "PLANTED SHORTCUTS (lnzoo synth --shortcut / data.phantom.shortcut): spurious cues that",
        "correlate with malignancy on purpose, to test whether a model looks at the node.",
        "Strength s: the mark (scanner B) is on a malignant image (metastatic or lymphoma) with",
        "probability (1+s)/2 and on a benign one with (1-s)/2, each image decided on its own.",
    ]
    for kind, s in shortcuts.items():
        c = counts.get(kind, {})
        m, mn = c.get("malignant", (0, 0))
        b, bn = c.get("benign", (0, 0))
        verb = "scanner B on" if kind == "scanner" else "drawn on"
        lines.append(f"  {kind:<12} s = {s:g}: p = {presence_probability(s, True):.2f} malignant, "
                     f"{presence_probability(s, False):.2f} benign; {verb} {m}/{mn} malignant, {b}/{bn} benign "
                     f"images (column {COLUMNS[kind]})")
    what = {
        "calipers": "calipers: two '+' crosses at the ends of the long axis, a dotted line and a 'D1 x.x mm'\n"
                    "  readout, on the full frames of all three modalities (the crops show what falls inside)",
        "doppler_box": "doppler_box: a green/yellow Doppler sampling box outline, ~1.5x the node's box, on the 2d\n"
                       "  full frame only (outside the crop)",
        "scanner": f"scanner: 'B' images are brighter (+{SCANNER_B_GAIN} grey levels in the field, all modalities,\n"
                   f"  crops included) and carry an '{SCANNER_B_LOGO}' logo top left on the full frames",
    }
    lines += [what[k] for k in shortcuts]
    lines.append("A 2d frame with a coloured mark is stored as RGB; unmarked images equal the clean phantom's.")
    return "\n".join(lines) + "\n"
