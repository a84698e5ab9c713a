"""How the phantom's frames are drawn: tissue layers, the node, speckle, attenuation, Doppler and elastography.

Part of :mod:`lnzoo.data.phantom` (synthetic data, NOT clinical data); the node parameters it draws
come from :mod:`lnzoo.data.phantom_nodes`. The field geometry lives here because every drawing function depends on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:  # pragma: no cover
    from lnzoo.data.phantom_nodes import _Node

FIELD_DEPTH_MM = 32.0  # the frame's height (and width) in mm; px per mm = frame_size / FIELD_DEPTH_MM
PROBE_WIDTH_MM = 28.0  # lateral extent of the (linear-probe) image field, centred
CROP_MARGIN = 0.10  # crop = bbox enlarged by 10 % of its size on each side, clipped

# Elastography colormap anchors: stiffness 0 (soft) .. 1 (stiff).
_STIFF_COLORS = np.array([
    (0.00, 205, 30, 30),    # red: softest
    (0.25, 225, 200, 40),   # yellow
    (0.45, 50, 190, 70),    # green: intermediate / normal tissue
    (0.70, 30, 150, 215),   # cyan-blue
    (1.00, 25, 40, 200),    # blue: stiffest
], dtype=np.float32)


def _noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Smooth gaussian noise with unit standard deviation (float32).

    Wide kernels are applied on a coarser grid and upsampled bilinearly (much faster, and
    indistinguishable once smoothed).
    """
    sig = np.broadcast_to(np.asarray(sigma, dtype=float), (2,))
    f = int(min(sig) // 2.5)
    if f >= 2:
        small = (shape[0] // f + 3, shape[1] // f + 3)
        n = rng.standard_normal(small, dtype=np.float32)
        n = ndimage.gaussian_filter(n, tuple(sig / f), mode="wrap", truncate=3.0)
        n = _upsample(_upsample(n, shape[0], f, 0), shape[1], f, 1)
    else:
        n = rng.standard_normal(shape, dtype=np.float32)
        n = ndimage.gaussian_filter(n, tuple(sig), mode="wrap", truncate=3.0)
    s = float(n.std())
    return n / s if s > 0 else n


def _upsample(arr: np.ndarray, n_out: int, f: int, axis: int) -> np.ndarray:
    """Linear interpolation along `axis`: output sample i sits at input coordinate i/f + 1."""
    pos = np.arange(n_out, dtype=np.float32) / f + 1.0
    i0 = pos.astype(np.int64)
    w = pos - i0.astype(np.float32)
    if axis == 0:
        return arr[i0] * (1 - w)[:, None] + arr[i0 + 1] * w[:, None]
    return arr[:, i0] * (1 - w)[None, :] + arr[:, i0 + 1] * w[None, :]


def _stamp_path(canvas: np.ndarray, pts: np.ndarray, value: float) -> None:
    """Mark the pixels along a polyline (points sampled densely) with `value` (max)."""
    h, w = canvas.shape
    if len(pts) < 2:
        return
    seg = np.diff(pts, axis=0)
    n = np.maximum(1, np.ceil(np.hypot(seg[:, 0], seg[:, 1]) * 2).astype(int))
    xs, ys = [], []
    for (x0, y0), (dx, dy), k in zip(pts[:-1], seg, n):
        t = np.arange(k) / k
        xs.append(x0 + dx * t)
        ys.append(y0 + dy * t)
    x = np.rint(np.concatenate(xs)).astype(int)
    y = np.rint(np.concatenate(ys)).astype(int)
    ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    canvas[y[ok], x[ok]] = np.maximum(canvas[y[ok], x[ok]], value)


def _colormap(stiff: np.ndarray) -> np.ndarray:
    s = np.clip(stiff, 0.0, 1.0)
    out = np.empty(s.shape + (3,), np.float32)
    for c in range(3):
        out[..., c] = np.interp(s, _STIFF_COLORS[:, 0], _STIFF_COLORS[:, c + 1])
    return out


@dataclass
class _Template:
    half: int          # template is (2*half+1)^2, node centre at (half, half), long axis along x
    echo: np.ndarray   # linear echogenicity
    spec: np.ndarray   # specular (non-speckled) reflectors: microcalcifications
    mask: np.ndarray   # soft mask 0..1
    alpha: np.ndarray  # attenuation coefficient relative to tissue
    stiff: np.ndarray  # stiffness 0..1
    vel: np.ndarray    # signed flow: >0 towards the probe (red), <0 away (blue)
    outline: np.ndarray  # (2, n) template (u, v) offsets of the mask's pixels, for placement


def _make_template(rng: np.random.Generator, node: _Node, ppm: float) -> _Template:
    a = node.long_mm / 2 * ppm
    b = node.short_mm / 2 * ppm
    half = int(math.ceil(a * 1.3)) + 4
    size = 2 * half + 1
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    u, v = xx, yy
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    phi = np.arctan2(v / b, u / a)
    hilum_sign = 1.0 if rng.random() < 0.5 else -1.0
    # margin: low-order harmonics (lobulation), a hilar notch for nodes with a hilum
    radius = np.ones_like(rho)
    for k in range(2, 10):
        amp = 0.8 * node.irreg * rng.normal() / k ** 0.6
        radius += amp * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    if node.hilum:
        radius -= 0.10 * np.exp(-((phi - hilum_sign * np.pi / 2) / 0.35) ** 2)
    radius = np.clip(radius, 0.75, 1.2)  # the node stays within 1.2x its nominal ellipse
    local = (a * b) / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    sdist = (radius - rho) * local  # ~ signed distance to the margin in px (inside > 0)
    mask = np.clip(0.5 + sdist, 0.0, 1.0)

    mm = ppm  # px per mm, for mm-scaled textures
    n_low = _noise(rng, (size, size), max(1.0, 0.35 * b))
    n_mid = _noise(rng, (size, size), max(0.7, 0.45 * mm))
    db = node.echo + node.het * (0.8 * n_low + 0.6 * n_mid)
    # reticulation: thin bright strands along the zero crossings of band-passed noise, in a
    # darker background
    if node.ret > 0.02:
        w = rng.standard_normal((size, size), dtype=np.float32)
        s1 = max(0.6, 0.4 * mm * node.ret_sc)
        bp = ndimage.gaussian_filter(w, s1) - ndimage.gaussian_filter(w, 2.2 * s1)
        lines = np.exp(-(bp / (0.28 * float(bp.std()) + 1e-6)) ** 2)
        db += node.ret * (14.0 * lines - 5.0)
    # capsule: a thin echogenic rim just inside the margin
    rim = np.exp(-((sdist - 1.2) / (0.12 * mm + 0.6)) ** 2)
    db += node.cap * 9.0 * rim
    alpha = np.full((size, size), node.alpha, np.float32)
    # echogenic fatty hilum: a central band toward the hilar side plus its channel to the notch
    if node.hilum:
        strength = 1.0 if node.pathology == "benign" else 0.7
        ha, hb = a * rng.uniform(0.5, 0.8), b * rng.uniform(0.28, 0.42) * strength
        vo = hilum_sign * b * rng.uniform(0.1, 0.3)
        body = np.exp(-(((u / ha) ** 2 + ((v - vo) / hb) ** 2) ** 1.5))
        sv = (v * hilum_sign > 0) & (v * hilum_sign < b * 1.2)
        chan = np.exp(-(u / (0.35 * hb + 1.0)) ** 2) * sv
        h = np.clip(np.maximum(body, chan) * (1 + 0.15 * n_mid), 0, 1)
        hdb = rng.uniform(3.0, 7.0) * strength - 3.0 * (1 - strength) + 3.0 * n_mid
        db = db * (1 - h) + hdb * h
    echo = np.power(10.0, db / 20.0).astype(np.float32)
    # cystic necrosis: an irregular anechoic patch, low attenuation (enhancement below)
    if node.necrosis:
        r = b * rng.uniform(0.25, 0.55)
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.45)
        cu, cv = a * rad * np.cos(ang), b * rad * np.sin(ang)
        d = np.sqrt((u - cu) ** 2 + (v - cv) ** 2) / r + 0.25 * n_mid
        nm = np.clip((1.0 - d) * 4.0, 0, 1) * mask
        echo = echo * (1 - nm) + 0.015 * nm
        alpha = alpha * (1 - nm) + 0.1 * nm
    # microcalcifications: tiny specular dots
    spec = np.zeros((size, size), np.float32)
    for _ in range(node.ncalc):
        rad, ang = math.sqrt(rng.uniform(0, 0.75 ** 2)), rng.uniform(0, 2 * np.pi)
        x = int(round(half + a * rad * math.cos(ang)))
        y = int(round(half + b * rad * math.sin(ang)))
        spec[y, x] += rng.uniform(2.5, 5.0)
    if node.ncalc:
        spec = ndimage.gaussian_filter(spec, 0.6) * (2 * np.pi * 0.36)
    # stiffness: blue (stiff) share grows with the elasto score
    blue_share = {1: 0.0, 2: 0.25, 3: 0.6, 4: 0.93}[node.elasto]
    sn = _noise(rng, (size, size), max(1.0, 0.3 * b))
    inside = mask > 0.5
    thr = float(np.quantile(sn[inside], 1 - blue_share)) if inside.any() and blue_share else np.inf
    soft = 0.34 + 0.08 * n_mid
    hard = 0.9 + 0.05 * n_mid
    t = np.clip((sn - thr) * 3.0 + 0.5, 0, 1)
    stiff = soft * (1 - t) + hard * t
    vel = _make_vessels(rng, node, a, b, half, hilum_sign, ppm)
    f32 = np.float32
    return _Template(half, echo.astype(f32), spec.astype(f32), mask.astype(f32),
                     alpha.astype(f32), stiff.astype(f32), vel.astype(f32),
                     np.stack([xx[mask > 0], yy[mask > 0]]).astype(f32))


def _make_vessels(rng, node: _Node, a, b, half, hilum_sign, ppm) -> np.ndarray:
    size = 2 * half + 1
    red = np.zeros((size, size), np.float32)
    blue = np.zeros((size, size), np.float32)
    rich = node.richness
    if node.flow in ("hilar", "mixed"):
        # trunk enters at the hilar side and branches along the long axis, artery+vein pairs
        entry = np.array([half + rng.normal(0, 0.1 * a), half + hilum_sign * b * 1.05])
        hub = np.array([half + rng.normal(0, 0.1 * a), half + hilum_sign * b * rng.uniform(0.0, 0.25)])
        nbr = max(1, int(round(rng.uniform(1.5, 3.5) * rich)))
        for i in range(nbr):
            side = 1 if i % 2 == 0 else -1
            reach = a * rng.uniform(0.35, 0.8)
            bend = b * rng.uniform(-0.35, 0.35)
            t = np.linspace(0, 1, 12)
            xs = hub[0] + side * reach * t
            ys = hub[1] + bend * np.sin(np.pi * t * 0.8) + rng.normal(0, 0.03 * b, t.size).cumsum()
            pts = np.stack([xs, ys], 1)
            off = np.array([0.0, 1.6])
            col_r, col_b = (red, blue) if rng.random() < 0.5 else (blue, red)
            _stamp_path(col_r, np.vstack([entry, pts]), rng.uniform(0.6, 1.0))
            _stamp_path(col_b, np.vstack([entry, pts]) + off, rng.uniform(0.5, 0.9))
    if node.flow in ("peripheral", "mixed"):
        narc = max(1, int(round(rng.uniform(2, 4.5) * rich)))
        for _ in range(narc):
            t0 = rng.uniform(0, 2 * np.pi)
            span = rng.uniform(0.4, 1.1)
            t = np.linspace(t0, t0 + span, 14)
            rr = rng.uniform(0.82, 1.0) + rng.normal(0, 0.02, t.size)
            pts = np.stack([half + a * rr * np.cos(t), half + b * rr * np.sin(t)], 1)
            _stamp_path(red if rng.random() < 0.55 else blue, pts, rng.uniform(0.55, 1.0))
            if rng.random() < 0.6:  # a short penetrating branch toward the centre
                tm = t0 + span * rng.uniform(0.2, 0.8)
                r1, r2 = rng.uniform(0.85, 0.95), rng.uniform(0.4, 0.65)
                pts = np.array([[half + a * r * np.cos(tm), half + b * r * np.sin(tm)]
                                for r in np.linspace(r1, r2, 6)])
                _stamp_path(red if rng.random() < 0.5 else blue, pts, rng.uniform(0.5, 0.9))
    width = max(0.6, 0.12 * ppm * (1.0 + 0.3 * (rich - 1)))
    red = ndimage.gaussian_filter(red, width) * 3.0
    blue = ndimage.gaussian_filter(blue, width) * 3.0
    return np.clip(red, 0, 1) - np.clip(blue, 0, 1)


def _background(rng: np.random.Generator, S: int, ppm: float, x_mm: np.ndarray):
    """Layered soft tissue: (dB echo map, attenuation map, stiffness map)."""
    depth = (np.arange(S, dtype=np.float32) + 0.5)[:, None] / ppm
    xw = x_mm[None, :]

    def wavy(base, amp):
        lam = rng.uniform(18, 60)
        return base + amp * np.sin(2 * np.pi * xw / lam + rng.uniform(0, 2 * np.pi))

    skin = wavy(rng.uniform(1.2, 2.0), 0.15)
    fat = wavy(skin + rng.uniform(2.5, 5.0), rng.uniform(0.3, 1.2))
    muscle = wavy(fat + rng.uniform(4.0, 9.0), rng.uniform(0.4, 1.5))
    shape = (S, S)
    n_fine = _noise(rng, shape, (max(0.5, 0.3 * ppm), max(0.8, 0.9 * ppm)))
    n_blot = _noise(rng, shape, max(1.0, 3.0 * ppm))
    db = np.full(shape, -5.0, np.float32) + 2.5 * n_blot + 1.5 * n_fine  # deep fibro-fatty
    in_skin = depth < skin
    in_fat = (~in_skin) & (depth < fat)
    in_musc = (depth >= fat) & (depth < muscle)
    # fat: hypoechoic with thin bright septa
    tilt = rng.uniform(-0.08, 0.08)
    sept = np.sin(2 * np.pi * (depth + tilt * xw) / rng.uniform(0.9, 1.6) + 1.5 * n_blot)
    fat_db = -12.0 + 9.0 * np.clip(sept - 0.6, 0, None) / 0.4 * (n_fine > 0) + 1.5 * n_fine
    # muscle: medium-low echo with oblique fibrillar striations
    beta = rng.uniform(-0.25, 0.25)
    stri = np.sin(2 * np.pi * (depth * math.cos(beta) + xw * math.sin(beta)) / rng.uniform(0.6, 1.0)
                  + 0.8 * n_fine)
    musc_db = -11.0 + 6.0 * np.clip(stri, 0, None) + 1.0 * n_blot
    db = np.where(in_fat, fat_db, db)
    db = np.where(in_musc, musc_db, db)
    db = np.where(in_skin, -1.0 + 1.5 * n_fine, db)
    for bound in (fat, muscle):  # bright fascia lines
        db += 12.0 * np.exp(-((depth - bound) / 0.25) ** 2)
    alpha = np.where(in_fat, 0.9, np.where(in_musc, 1.1, 1.0)).astype(np.float32)
    stiff = 0.42 + 0.1 * _noise(rng, shape, max(1.0, 2.0 * ppm))
    stiff = np.where(in_fat, stiff - 0.1, np.where(in_musc, stiff + 0.06, stiff))
    return db.astype(np.float32), np.broadcast_to(alpha, shape).copy(), stiff.astype(np.float32)


def _render(rng: np.random.Generator, tpl: _Template, node: _Node, S: int, base_angle: float):
    """One acquisition: (grey HxW, cdfi HxWx3, elasto HxWx3 as uint8; mask bool HxW; bbox)."""
    ppm = S / FIELD_DEPTH_MM
    field_half = PROBE_WIDTH_MM / 2 * ppm
    fx0, fx1 = int(round(S / 2 - field_half)), int(round(S / 2 + field_half))
    x_mm = (np.arange(S, dtype=np.float32) + 0.5 - S / 2) / ppm

    # -- placement --------------------------------------------------------------------
    theta = base_angle + rng.normal(0, math.radians(6))
    scale = 1.0 + rng.normal(0, 0.04)
    c, s = math.cos(theta), math.sin(theta)
    ou, ov = tpl.outline  # frame offset of template point (u, v): (c u - s v, s u + c v) * scale
    hx = float(np.abs(c * ou - s * ov).max()) * scale + 1.0
    hy = float(np.abs(s * ou + c * ov).max()) * scale + 1.0
    top = 6.0 * ppm + hy
    lo_x, hi_x = fx0 + hx + 1, fx1 - hx - 1
    lo_y, hi_y = top, S - hy - 2
    cx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else (fx0 + fx1) / 2
    cy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else (lo_y + hi_y) / 2

    db, alpha, stiff = _background(rng, S, ppm, x_mm)
    # occasional vessel (jugular/carotid-like), kept away from the node
    vessel = None
    if rng.random() < 0.25:
        vr = rng.uniform(2.0, 3.5) * ppm
        vx = rng.uniform(fx0 + vr, fx1 - vr)
        vy = rng.uniform(10 * ppm + vr, S - vr - 2)
        flat = rng.uniform(1.1, 1.6)  # veins are compressed by the probe
        if math.hypot(vx - cx, vy - cy) > max(hx, hy) + vr + 2 * ppm:
            vessel = (vx, vy, vr, flat)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    echo = np.power(10.0, db / 20.0)
    if vessel is not None:
        vx, vy, vr, flat = vessel
        dv = np.sqrt((xx - vx) ** 2 + ((yy - vy) * flat) ** 2) - vr
        wall = np.exp(-(dv / (0.25 * ppm + 0.5)) ** 2)
        lumen = np.clip(0.5 - dv, 0, 1)
        echo = echo * (1 - lumen) + 0.012 * lumen + 2.0 * wall * (1 - lumen)
        alpha = alpha * (1 - lumen) + 0.15 * lumen
        stiff = stiff * (1 - lumen) + 0.3 * lumen

    # -- node: inverse-map frame pixels into the template -----------------------------
    rx, ry = int(math.ceil(hx)) + 3, int(math.ceil(hy)) + 3
    y0, y1 = max(0, int(cy) - ry), min(S, int(cy) + ry + 1)
    x0, x1 = max(0, int(cx) - rx), min(S, int(cx) + rx + 1)
    dx = xx[y0:y1, x0:x1] - cx
    dy = yy[y0:y1, x0:x1] - cy
    uu = (c * dx + s * dy) / scale + tpl.half
    vv = (-s * dx + c * dy) / scale + tpl.half
    coords = np.stack([vv, uu])

    def sample(arr):
        return ndimage.map_coordinates(arr, coords, order=1, mode="constant", cval=0.0)

    m = np.zeros((S, S), np.float32)
    m[y0:y1, x0:x1] = sample(tpl.mask)
    sl = (slice(y0, y1), slice(x0, x1))
    mm_ = m[sl]
    echo[sl] = echo[sl] * (1 - mm_) + sample(tpl.echo) * mm_
    alpha[sl] = alpha[sl] * (1 - mm_) + sample(tpl.alpha) * mm_
    stiff[sl] = stiff[sl] * (1 - mm_) + sample(tpl.stiff) * mm_
    spec = np.zeros((S, S), np.float32)
    vel = np.zeros((S, S), np.float32)
    spec[sl] = sample(tpl.spec)
    vel[sl] = sample(tpl.vel) * np.clip(mm_ * 1.5, 0, 1)
    mask = m > 0.5
    mask[:, :fx0] = False  # outside the imaged field (only when a huge node cannot fit)
    mask[:, fx1:] = False
    if not mask.any():  # a node smaller than a pixel: keep at least its centre pixel
        mask[int(np.clip(cy, 0, S - 1)), int(np.clip(cx, 0, S - 1))] = True

    # -- B-mode physics ---------------------------------------------------------------
    echo = ndimage.gaussian_filter(echo, max(0.4, 0.1 * ppm))
    mu = 0.055  # attenuation per mm for alpha = 1 (round trip, after the probe's own TGC)
    path = np.cumsum(alpha, axis=0) / ppm
    depth = (np.arange(S, dtype=np.float32) + 0.5) / ppm
    knots = np.linspace(0, FIELD_DEPTH_MM, 8)
    tgc_db = rng.normal(0, 1.2, knots.size)
    comp = mu * rng.uniform(0.6, 0.85)  # TGC under-compensates: darker with depth
    tgc = np.exp(comp * depth) * np.power(10.0, np.interp(depth, knots, tgc_db) / 20.0)
    gain = 10 ** (rng.normal(0, 2.0) / 20.0)
    lat, ax = max(0.5, 0.3 * ppm), max(0.4, 0.12 * ppm)
    re = ndimage.gaussian_filter(rng.standard_normal((S, S), dtype=np.float32), (ax, lat))
    im = ndimage.gaussian_filter(rng.standard_normal((S, S), dtype=np.float32), (ax, lat))
    # lightly smoothed intensity (compounding-like), so nulls are less pitted than pure Rayleigh
    speck = ndimage.gaussian_filter(re * re + im * im, (0.8 * ax, 0.8 * lat), truncate=3.0)
    speck = np.sqrt(speck / float(speck.mean()))
    sys_gain = (np.exp(-mu * path) * tgc[:, None] * gain).astype(np.float32)
    inten = (echo * speck + spec) * sys_gain
    inten += 0.004 * np.abs(rng.standard_normal((S, S), dtype=np.float32))  # noise floor
    dyn = rng.uniform(44.0, 52.0)
    grey = (20.0 * np.log10(inten + 1e-6) + 0.66 * dyn) / dyn
    grey = np.clip(ndimage.gaussian_filter(grey, max(0.3, 0.07 * ppm), truncate=3.0), 0.0, 1.0)
    grey[:, :fx0] = 0.0
    grey[:, fx1:] = 0.0
    g8 = np.rint(grey * 255).astype(np.uint8)
    # annotations in the right margin: depth ticks every 5 mm, focus marker
    tx = min(S - 2, fx1 + max(2, S // 85))
    for k, dmm in enumerate(np.arange(5.0, FIELD_DEPTH_MM, 5.0)):
        ty = int(round(dmm * ppm))
        ln = 3 if k % 2 == 1 else 1
        g8[ty:ty + 1, tx:min(S, tx + ln)] = 200
    fy = int(round(cy))
    fw = max(2, S // 128)
    for i in range(fw):
        g8[max(0, fy - fw + i + 1):fy + fw - i, min(S - 1, tx + 4 + i)] = 220

    # -- bounding box of the node -----------------------------------------------------
    ys, xs = np.nonzero(mask)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)

    # -- CDFI -------------------------------------------------------------------------
    rgb = np.repeat(g8[:, :, None], 3, axis=2)
    cd = rgb.copy()
    bw, bh = bbox[2] - bbox[0], bbox[3] - bbox[1]
    mx, my = bw * rng.uniform(0.25, 0.45), bh * rng.uniform(0.25, 0.45)
    ox, oy = rng.normal(0, 0.05 * bw), rng.normal(0, 0.05 * bh)
    bx0, by0, bx1, by1 = _box_around(bbox, mx, my, fx0, fx1, S, ox, oy)
    pulse = rng.uniform(0.75, 1.15)
    v = vel * pulse
    if vessel is not None:
        vx, vy, vr, flat = vessel
        lumen = np.clip(0.5 - (dv + 0.8), 0, 1)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        v = np.where(lumen > 0.5, sign * (0.6 + 0.3 * np.clip(1 - (np.hypot(xx - vx, yy - vy) / vr), 0, 1)), v)
    # flash artefacts: a few small blobs anywhere in the box
    nflash = int(rng.poisson(0.8))
    if nflash:
        fl = np.zeros((S, S), np.float32)
        for _ in range(nflash):
            fxp, fyp = int(rng.integers(bx0, bx1)), int(rng.integers(by0, by1))
            fl[fyp, fxp] = rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 4.0)
        fl = ndimage.gaussian_filter(fl, max(0.6, 0.12 * ppm)) * 6.0
        v = v + np.clip(fl, -0.8, 0.8)
    box = np.zeros((S, S), bool)
    box[by0:by1, bx0:bx1] = True
    thr = 0.22
    redm = box & (v > thr)
    bluem = box & (v < -thr)
    va = np.clip(np.abs(v), 0, 1.2)
    cd[redm, 0] = np.clip(130 + 125 * va[redm], 0, 255).astype(np.uint8)
    cd[redm, 1] = np.where(va[redm] > 0.95, 190, 25 + 30 * va[redm]).astype(np.uint8)
    cd[redm, 2] = 15
    cd[bluem, 0] = 15
    cd[bluem, 1] = np.where(va[bluem] > 0.95, 200, 50 + 70 * va[bluem]).astype(np.uint8)
    cd[bluem, 2] = np.clip(150 + 105 * va[bluem], 0, 255).astype(np.uint8)
    _draw_box(cd, bx0, by0, bx1, by1, (190, 190, 190))
    # colour velocity scale bar in the left margin: red on top, blue below
    _vbar(cd, S, fx0, ((230, 60, 20), (30, 60, 230)))

    # -- elastography -----------------------------------------------------------------
    el = rgb.copy()
    mx, my = bw * rng.uniform(0.4, 0.6), bh * rng.uniform(0.4, 0.6)
    ex0, ey0, ex1, ey1 = _box_around(bbox, mx, my, fx0, fx1, S)
    st = ndimage.gaussian_filter(stiff[ey0:ey1, ex0:ex1], max(0.8, 0.35 * ppm))
    st = st + 0.04 * rng.standard_normal(st.shape, dtype=np.float32)
    col = _colormap(st)
    a_el = 0.55
    patch = el[ey0:ey1, ex0:ex1].astype(np.float32)
    el[ey0:ey1, ex0:ex1] = np.rint(patch * (1 - a_el) + col * a_el).astype(np.uint8)
    _draw_box(el, ex0, ey0, ex1, ey1, (235, 235, 235))
    bar = _colormap(np.linspace(0.0, 1.0, 16))
    _vbar(el, S, fx0, [tuple(int(x) for x in cc) for cc in bar])
    return g8, cd, el, mask, bbox


def _box_around(bbox, mx, my, fx0: int, fx1: int, S: int, ox=0.0, oy=0.0):
    """A colour box (x0, y0, x1, y1): bbox widened by (mx, my) a side, shifted by (ox, oy), at
    least 2 px, inside the field."""
    x0 = int(np.clip(bbox[0] - mx + ox, fx0, fx1 - 2))
    x1 = int(np.clip(bbox[2] + mx + ox, x0 + 2, fx1 - 1))
    y0 = int(np.clip(bbox[1] - my + oy, 1, S - 3))
    y1 = int(np.clip(bbox[3] + my + oy, y0 + 2, S - 1))
    return x0, y0, x1, y1


def _draw_box(img: np.ndarray, x0, y0, x1, y1, color) -> None:
    col = np.array(color, np.uint8)
    img[y0, x0:x1] = col
    img[y1 - 1, x0:x1] = col
    img[y0:y1, x0] = col
    img[y0:y1, x1 - 1] = col


def _vbar(img: np.ndarray, S: int, fx0: int, colors) -> None:
    """A small vertical colour bar in the left margin (top colour first)."""
    w = max(2, fx0 // 4)
    x0 = max(0, fx0 // 2 - w // 2)
    ya, yb = int(S * 0.12), int(S * 0.45)
    n = len(colors)
    for i, cc in enumerate(colors):
        s0 = ya + (yb - ya) * i // n
        s1 = ya + (yb - ya) * (i + 1) // n
        img[s0:s1, x0:x0 + w] = np.array(cc, np.uint8)


def _crop_box(bbox, S: int) -> tuple[int, int, int, int]:
    """bbox enlarged by CROP_MARGIN of its width/height on each side, clipped to the frame."""
    x0, y0, x1, y1 = bbox
    mx = int(round(CROP_MARGIN * (x1 - x0)))
    my = int(round(CROP_MARGIN * (y1 - y0)))
    return max(0, x0 - mx), max(0, y0 - my), min(S, x1 + mx), min(S, y1 + my)


def spectral_strip(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A PW Doppler strip (h x w grey): arterial waveforms above a baseline, speckled, with scale ticks."""
    img = np.zeros((h, w), np.float32)
    base = int(h * 0.72)
    t = np.arange(w) / w * 2.6  # seconds across the strip
    period = 60.0 / float(rng.uniform(62, 84))
    phase = (t + float(rng.uniform(0, period))) % period / period
    peak, diastole = float(rng.uniform(0.7, 0.9)), float(rng.uniform(0.15, 0.3))
    env = diastole + (peak - diastole) * np.exp(-((phase - 0.14) / 0.08) ** 2) \
        + 0.08 * np.exp(-((phase - 0.32) / 0.05) ** 2)
    top = (base - env * (base - 6)).astype(int)
    rows = np.arange(h)[:, None]
    inside = (rows >= top[None, :]) & (rows < base)
    depth = np.clip((rows - top[None, :]) / np.maximum(base - top[None, :], 1), 0, 1)
    img[inside] = (200 - 110 * depth)[inside] * rng.uniform(0.55, 1.0, size=(h, w)).astype(np.float32)[inside]
    img[base, :] = 170  # baseline
    img[:, w - 4:w - 1][::12] = 150  # velocity scale ticks on the right edge
    return np.clip(img, 0, 255).astype(np.uint8)
