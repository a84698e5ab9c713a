"""Burned-in marks (lnzoo.ingest.marks) on synthetic scanner-like images: calipers and readouts found in every
overlay colour, after JPEG too; clean B-mode, colour flow, power Doppler and bright echoes never flagged; the mask
covers what was drawn and fill() takes it away; the image area found on a screen with text around it.

The scene builders here are also used by benchmarks/marks.py (detection and false-flag rates)."""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from lnzoo.ingest.area import image_area
from lnzoo.ingest.marks import Marks, fill, find_marks

COLOURS = {"yellow": (255, 255, 0), "green": (0, 255, 0), "cyan": (0, 255, 255), "white": (255, 255, 255)}
READOUTS = ("D1 12.3 mm", "D2 0.84 cm", "LT NECK", "Dist 1.23cm", "RT LEVEL II", "Area 0.52 cm2")


# ---------------------------------------------------------------------------------------------------- scenes
def tissue(rng: np.random.Generator, h: int = 256, w: int = 256, *, gain: float = 95.0,
           echoes: bool = False) -> np.ndarray:
    """Speckle-like B-mode (H, W, 3) uint8: smoothed Rayleigh noise (grains wider than tall) under a slowly varying
    echogenicity, a dark round node; ``echoes`` adds bright fascia-like lines and calcification-like dots."""
    speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, (h, w)), (0.7, 1.4))
    speckle /= speckle.mean()
    bg = ndimage.gaussian_filter(rng.normal(size=(h, w)), 25)
    bg = 0.75 + 0.25 * bg / (np.abs(bg).max() + 1e-9)
    img = speckle * bg * gain * rng.uniform(0.75, 1.25)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.08, 0.18) * h, rng.uniform(0.1, 0.22) * w
    node = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img *= 1 - 0.65 * ndimage.gaussian_filter(node.astype(float), 2)
    if echoes:
        bright = np.zeros((h, w))
        for _ in range(int(rng.integers(2, 5))):  # fascia-like lines, 2-4 px thick
            y = int(rng.integers(10, h - 10))
            x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
            bright[y:y + int(rng.integers(2, 5)), x0:x1 + 20] = rng.uniform(150, 220)
        for _ in range(int(rng.integers(3, 9))):  # calcification-like dots
            y, x, r = rng.integers(5, h - 5), rng.integers(5, w - 5), rng.uniform(1.5, 3.5)
            bright[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = rng.uniform(170, 240)
        img += ndimage.gaussian_filter(bright, 1.0)
    g = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def with_flow(rng: np.random.Generator, rgb: np.ndarray, *, power: bool = False) -> np.ndarray:
    """``rgb`` with 2-4 vessels painted in colour flow: red / blue by direction, yellow / cyan at the top of the
    scale and aliased (the other colour) at the centre of fast ones; ``power``: an orange power-Doppler map
    (dark red -> orange -> yellow-orange at the strongest)."""
    h, w = rgb.shape[:2]
    out = rgb.copy()
    yy, xx = np.mgrid[:h, :w]
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx, ang = rng.uniform(4, 14), rng.uniform(10, 45), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
        v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
        r2 = (u / rx) ** 2 + (v / ry) ** 2
        inside = r2 < 1
        p = np.clip(1 - r2, 0, 1) * rng.uniform(0.5, 1.4)
        if power:
            p = np.clip(p, 0, 1)
            col = np.stack([90 + 165 * p, 20 + 200 * p ** 1.5, 10 + 60 * p ** 3], -1)
        else:
            vel = np.where(p > 1, p - 2, p) * rng.choice([-1, 1])  # aliasing past the scale
            a = np.abs(vel)
            top = np.clip((a - 0.75) / 0.25, 0, 1) * 200
            red = np.stack([80 + 175 * a, top, np.zeros_like(a)], -1)
            blue = np.stack([np.zeros_like(a), top, 80 + 175 * a], -1)
            col = np.where((vel > 0)[..., None], red, blue)
            inside &= a > 0.06  # the wall filter
        out[inside] = np.clip(col[inside], 0, 255).astype(np.uint8)
    return out


def jpeg(rgb: np.ndarray, quality: int = 85) -> np.ndarray:
    """A JPEG round trip with 4:2:2 chroma subsampling, as scanners store them."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, subsampling="4:2:2")
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@dataclass
class Drawing:
    """An image to draw marks on, and the truth: a layer with every drawn pixel (anti-aliased text at >= 50%)."""

    rgb: np.ndarray
    image: Image.Image = field(init=False)
    layer: Image.Image = field(init=False)

    def __post_init__(self) -> None:
        self.image = Image.fromarray(self.rgb)
        self.layer = Image.new("L", self.image.size)
        self._draws = (ImageDraw.Draw(self.image), ImageDraw.Draw(self.layer))

    def caliper(self, cx: int, cy: int, size: int, width: int, colour: tuple[int, int, int], shape: str) -> None:
        """A '+' or 'x' caliper, ``size`` px across, strokes ``width`` px."""
        r = size // 2
        lines = ([((cx - r, cy), (cx + r, cy)), ((cx, cy - r), (cx, cy + r))] if shape == "+" else
                 [((cx - r, cy - r), (cx + r, cy + r)), ((cx - r, cy + r), (cx + r, cy - r))])
        for d, fill_ in zip(self._draws, (colour, 255)):
            for line in lines:
                d.line(line, fill=fill_, width=width)

    def dotted(self, p: tuple[int, int], q: tuple[int, int], colour: tuple[int, int, int], step: int = 5,
               clear: float = 12.0) -> None:
        """A dotted line of 2x2 dots every ``step`` px from ``p`` to ``q``, leaving ``clear`` px free at both ends
        (the calipers' arms)."""
        length = float(np.hypot(q[0] - p[0], q[1] - p[1]))
        for t in np.arange(clear, length - clear, step):
            x = round(p[0] + t / length * (q[0] - p[0]))
            y = round(p[1] + t / length * (q[1] - p[1]))
            for d, fill_ in zip(self._draws, (colour, 255)):
                d.rectangle([x, y, x + 1, y + 1], fill=fill_)

    def text(self, xy: tuple[int, int], s: str, colour: tuple[int, int, int], size: int) -> None:
        """``s`` in Pillow's default font at ``size`` px."""
        font = ImageFont.load_default(size=size)
        for d, fill_ in zip(self._draws, (colour, 255)):
            d.text(xy, s, fill=fill_, font=font)

    def result(self, compress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(the image, optionally JPEG round-tripped; the drawn pixels)."""
        rgb = np.asarray(self.image)
        return (jpeg(rgb) if compress else rgb.copy()), np.asarray(self.layer) >= 128


BACKGROUNDS = ("bmode", "flow", "power", "echoes", "bright")


def background(rng: np.random.Generator, kind: str, h: int = 256, w: int = 256) -> np.ndarray:
    """A clean image of one kind: B-mode, colour flow, power Doppler, B-mode with bright echoes, or over-gained
    B-mode ('bright': mean ~200, speckle saturating at 255)."""
    base = tissue(rng, h, w, echoes=kind == "echoes", gain=200.0 if kind == "bright" else 95.0)
    if kind in ("flow", "power"):
        base = with_flow(rng, base, power=kind == "power")
    return base


def random_scene(rng: np.random.Generator, case: str, colour: str = "yellow", *, bg: str = "bmode",
                 compress: bool = False, h: int = 256, w: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(image, drawn pixels) for ``case``: 'caliper' (one, or two joined by a dotted line), 'text' (a readout),
    'clean' (nothing drawn). Caliper 7-15 px, strokes 1-2 px, '+' or 'x'; text 12-16 px."""
    d = Drawing(background(rng, bg, h, w))
    col = COLOURS[colour]
    if case == "caliper":
        size, width = int(rng.integers(7, 16)), int(rng.integers(1, 3))
        shape = str(rng.choice(["+", "x"]))
        p = (int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20)))
        d.caliper(*p, size, width, col, shape)
        if rng.random() < 0.5:  # a second caliper, apart from the first, and the dotted line between
            while True:
                q = (int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20)))
                if np.hypot(q[0] - p[0], q[1] - p[1]) > 3 * size:
                    break
            d.caliper(*q, size, width, col, shape)
            d.dotted(p, q, col, clear=size / 2 * np.sqrt(2) + 3)
    elif case == "text":
        s = str(rng.choice(READOUTS))
        size = int(rng.integers(12, 17))
        d.text((int(rng.integers(2, w - 110)), int(rng.integers(2, h - 22))), s, col, size)
    elif case != "clean":
        raise ValueError(case)
    return d.result(compress)


def screen(rng: np.random.Generator, frames: int = 1, h: int = 300, w: int = 400,
           box: tuple[int, int, int, int] = (90, 40, 330, 260)) -> np.ndarray:
    """A scanner screen (T, H, W, 3): black, with patient / hospital / probe text, a grey-scale bar and depth ticks
    around the ultrasound image pasted at ``box``; the speckle moves between frames, the rest is static."""
    x0, y0, x1, y1 = box
    out = np.zeros((frames, h, w, 3), np.uint8)
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=13)
    d.text((5, 4), "DOE^JANE  ID 0012345  2024-03-01 10:22", fill=(230, 230, 230), font=font)
    d.text((5, 20), "CITY HOSPITAL  L12-5  38Hz", fill=(200, 200, 200), font=font)
    d.text((5, h - 18), "Depth 4.0cm  Gain 52  DR 60", fill=(220, 220, 220), font=font)
    d.text((x1 + 10, y0 + 30), "MI 0.9", fill=(230, 230, 230), font=font)
    d.text((x1 + 10, y0 + 50), "TIs 0.1", fill=(230, 230, 230), font=font)
    for i in range(64):  # grey-scale bar, 8 px wide, left of the image
        d.rectangle([x0 - 30, y0 + 2 * i, x0 - 23, y0 + 2 * i + 1], fill=(4 * i,) * 3)
    for y in range(y0, y1, 20):  # depth ticks
        d.line([(x1 + 2, y), (x1 + 6, y)], fill=(200, 200, 200))
    static = np.asarray(img)
    for t in range(frames):
        out[t] = static
        out[t, y0:y1, x0:x1] = tissue(rng, y1 - y0, x1 - x0)
    return out


def dilated(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` grown by ``px`` pixels (3x3 steps)."""
    return ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=px) if px else mask


# ---------------------------------------------------------------------------------------------------- API
def test_marks_api_and_columns():
    rng = np.random.default_rng(0)
    d = Drawing(tissue(rng))
    d.caliper(100, 100, 11, 1, COLOURS["yellow"], "+")
    rgb, _ = d.result()
    m = find_marks(rgb)
    assert isinstance(m, Marks) and m.has_caliper and not m.has_text
    assert m.as_columns() == {"marks_caliper": 1, "marks_text": 0}
    assert m.mask.dtype == bool and m.mask.shape == rgb.shape[:2]
    x0, y0, x1, y1 = m.calipers[0]
    assert x0 <= 100 < x1 and y0 <= 100 < y1 and x1 - x0 <= 14
    with pytest.raises(AttributeError):
        m.calipers = ()  # type: ignore[misc]  # frozen
    clean = find_marks(tissue(rng)[..., 0])  # greyscale (H, W) accepted
    assert clean.as_columns() == {"marks_caliper": 0, "marks_text": 0} and not clean.mask.any()
    with pytest.raises(ValueError):
        find_marks(np.zeros((4, 4, 2), np.uint8))


# ---------------------------------------------------------------------------------------------------- detection
CALIPER_CASES = [
    # colour, shape, size, stroke width
    ("yellow", "+", 11, 1), ("yellow", "x", 9, 2), ("green", "+", 13, 2), ("green", "x", 15, 1),
    ("cyan", "+", 7, 1), ("cyan", "x", 11, 1), ("white", "+", 9, 2), ("white", "x", 13, 1),
]


@pytest.mark.parametrize("compress", [False, True], ids=["png", "jpeg"])
@pytest.mark.parametrize("colour,shape,size,width", CALIPER_CASES)
def test_caliper_found(colour, shape, size, width, compress):
    rng = np.random.default_rng(size * 10 + width)
    d = Drawing(tissue(rng))
    d.caliper(70, 90, size, width, COLOURS[colour], shape)
    d.caliper(180, 160, size, width, COLOURS[colour], shape)
    d.dotted((70, 90), (180, 160), COLOURS[colour])
    rgb, drawn = d.result(compress)
    m = find_marks(rgb)
    assert m.has_caliper and not m.has_text
    assert len(m.calipers) == 2
    recall = (m.mask & drawn).sum() / drawn.sum()
    assert recall >= 0.9, recall
    # little else: the mask stays within 2 px of what was drawn
    assert (m.mask & ~dilated(drawn, 2)).sum() <= 0.1 * drawn.sum()


@pytest.mark.parametrize("compress", [False, True], ids=["png", "jpeg"])
@pytest.mark.parametrize("colour,text,size", [("yellow", "D1 12.3 mm", 14), ("white", "D2 0.84 cm", 12),
                                              ("yellow", "LT NECK", 16), ("white", "Dist 1.23cm", 13),
                                              ("cyan", "RT LEVEL II", 12)])
def test_readout_found(colour, text, size, compress):
    rng = np.random.default_rng(size)
    d = Drawing(tissue(rng))
    d.text((30, 200), text, COLOURS[colour], size)
    rgb, drawn = d.result(compress)
    m = find_marks(rgb)
    assert m.has_text and not m.has_caliper
    x0, y0, x1, y1 = m.text[0]
    ys, xs = np.nonzero(drawn)
    assert abs(x0 - xs.min()) <= 3 and abs(x1 - 1 - xs.max()) <= 3 and abs(y0 - ys.min()) <= 3
    recall = (m.mask & drawn).sum() / drawn.sum()
    assert recall >= 0.9, recall
    assert (m.mask & ~dilated(drawn, 2)).sum() <= 0.1 * drawn.sum()


@pytest.mark.parametrize("compress", [False, True], ids=["png", "jpeg"])
@pytest.mark.parametrize("kind", BACKGROUNDS)
def test_clean_images_not_flagged(kind, compress):
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        rgb = background(rng, kind)
        m = find_marks(jpeg(rgb) if compress else rgb)
        assert not m.has_caliper and not m.has_text, (kind, seed, m)
        assert m.mask.sum() <= 30, (kind, seed, m.mask.sum())


def test_caliper_and_text_together_on_colour_flow():
    rng = np.random.default_rng(7)
    d = Drawing(background(rng, "flow"))
    d.caliper(40, 40, 11, 1, COLOURS["green"], "+")
    d.text((120, 225), "V 23.4 cm/s", COLOURS["yellow"], 14)
    rgb, drawn = d.result(True)
    m = find_marks(rgb)
    assert m.has_caliper and m.has_text
    assert m.as_columns() == {"marks_caliper": 1, "marks_text": 1}


def test_documented_blind_spots_stay_documented():
    """What the module docstring says it misses, it misses: if one of these starts passing, update the docstring."""
    rng = np.random.default_rng(21)
    d = Drawing(tissue(rng))
    d.caliper(80, 80, 11, 1, (150, 150, 150), "+")  # a grey caliper (a green one in a MONOCHROME2 export)
    d.text((30, 200), "D1", COLOURS["yellow"], 14)  # two characters
    d.text((150, 30), "12.3 mm", (140, 140, 140), 14)  # grey text on grey tissue
    rgb, _ = d.result()
    m = find_marks(rgb)
    assert not m.has_caliper and not m.has_text


# ---------------------------------------------------------------------------------------------------- fill
@pytest.mark.parametrize("kind", ["caliper", "text"])
def test_fill_removes_marks_and_nothing_else(kind):
    rng = np.random.default_rng(11)
    rgb, drawn = random_scene(rng, kind, "yellow", compress=True)
    m = find_marks(rgb)
    assert m.mask.any()
    out = fill(rgb, m.mask)
    assert out.shape == rgb.shape and out.dtype == rgb.dtype
    grown = dilated(m.mask, 2)
    assert np.array_equal(out[~grown], rgb[~grown])  # nothing changes outside the dilated mask
    after = find_marks(out)
    assert not after.has_caliper and not after.has_text and not after.mask.any()
    # no overlay colour left where the marks were: the filled pixels are about as grey as the tissue around,
    # whose JPEG'd chroma fringe (up to ~40 of 255) the fill averages in; overlay colours have 150-255
    chroma = np.ptp(out[grown].astype(int), axis=1)
    assert chroma.max() < 50 and chroma.mean() < 12, (chroma.max(), chroma.mean())
    assert grown[drawn].all()  # every drawn pixel was in the filled area
    # the fill takes the surroundings' brightness (no black or white holes)
    ring = dilated(grown, 3) & ~grown
    assert abs(out[grown].mean() - rgb[ring].mean()) < 25


def test_fill_edge_cases():
    rgb = tissue(np.random.default_rng(3), 64, 64)
    assert np.array_equal(fill(rgb, np.zeros((64, 64), bool)), rgb)
    grey = rgb[..., 0]
    mask = np.zeros((64, 64), bool)
    mask[30, 10:50] = True
    out = fill(grey, mask, grow=1)
    assert out.shape == grey.shape and np.array_equal(out[:25], grey[:25])
    with pytest.raises(ValueError):
        fill(rgb, np.zeros((10, 10), bool))


# ---------------------------------------------------------------------------------------------------- property
# derandomized: the same 40 draws every run. Over 1500 random draws of this domain about 0.2% are missed (a JPEG'd
# 1-px 'x' that loses its centre pixel, a speckle grain touching an arm): a blind spot measured, not a flaky test
@settings(max_examples=40, deadline=None, derandomize=True)
@given(cx=st.integers(20, 236), cy=st.integers(20, 236), colour=st.sampled_from(sorted(COLOURS)),
       shape=st.sampled_from(["+", "x"]), size=st.integers(7, 15), width=st.integers(1, 2),
       compress=st.booleans())
def test_any_caliper_found(cx, cy, colour, shape, size, width, compress):
    if shape == "x" and width == 2:
        size = max(size, 11)  # smaller 2-px 'x' shapes turn into blobs under JPEG: a documented blind spot
    d = Drawing(_PROPERTY_TISSUE)
    d.caliper(cx, cy, size, width, COLOURS[colour], shape)
    rgb, drawn = d.result(compress)
    m = find_marks(rgb)
    assert m.has_caliper and not m.has_text
    assert any(x0 <= cx < x1 and y0 <= cy < y1 for x0, y0, x1, y1 in m.calipers)
    assert (m.mask & drawn).sum() >= 0.9 * drawn.sum()


_PROPERTY_TISSUE = tissue(np.random.default_rng(2024))


# ---------------------------------------------------------------------------------------------------- image area
BOX = (90, 40, 330, 260)


def test_image_area_cine_moving_content():
    frames = screen(np.random.default_rng(5), frames=5, box=BOX)
    box, how = image_area(frames)
    assert how == "moving content"
    assert box is not None and max(abs(a - b) for a, b in zip(box, BOX)) <= 3, box
    grey_box, _ = image_area(frames[..., 0])  # (T, H, W) greyscale
    assert grey_box == box


def test_image_area_cine_keeps_a_dark_bottom():
    frames = screen(np.random.default_rng(9), frames=8, box=BOX)  # the ingest samples up to 8 frames of a loop
    x0, y0, x1, y1 = BOX
    fade = np.linspace(1.0, 0.1, y1 - y0)[None, :, None, None]  # deep attenuation: the bottom nearly black
    frames[:, y0:y1, x0:x1] = (frames[:, y0:y1, x0:x1] * fade).astype(np.uint8)
    box, how = image_area(frames)
    assert how == "moving content" and max(abs(a - b) for a, b in zip(box, BOX)) <= 3, box


def test_image_area_single_frame():
    frames = screen(np.random.default_rng(6), frames=1, box=BOX)
    box, how = image_area(frames)
    assert how == "largest bright area"
    assert box is not None and max(abs(a - b) for a, b in zip(box, BOX)) <= 3, box
    assert image_area(frames[0]) == (box, how)  # one (H, W, 3) frame without the T axis


def test_image_area_frozen_loop_falls_back():
    frame = screen(np.random.default_rng(8), frames=1, box=BOX)
    box, how = image_area(np.repeat(frame, 4, axis=0))
    assert how == "largest bright area" and box is not None
    assert max(abs(a - b) for a, b in zip(box, BOX)) <= 3


def test_image_area_none_when_nothing_credible():
    black = np.zeros((3, 200, 300, 3), np.uint8)
    box, why = image_area(black)
    assert box is None and "dark" in why
    text_only = Image.new("RGB", (300, 200))
    d = ImageDraw.Draw(text_only)
    font = ImageFont.load_default(size=14)
    for i in range(10):
        d.text((5, 5 + 19 * i), f"PATIENT {i} ID 00{i}23 2024-01-0{i}", fill=(255, 255, 255), font=font)
    box, why = image_area(np.asarray(text_only)[None])
    assert box is None, box
    small = np.zeros((1, 200, 300), np.uint8)
    small[0, 10:40, 10:60] = 120  # a bright patch of 2.5% of the frame
    box, why = image_area(small)
    assert box is None and "10%" in why
