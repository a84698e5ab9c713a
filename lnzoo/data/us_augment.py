"""Ultrasound-specific intensity augmentation as torchvision v2 transforms.

Every transform multiplies the image by a non-negative map (the same for all channels, so colour
overlays in CDFI / elastography keep their hue), then clamps to the valid range and returns the
input dtype. One set of random parameters is drawn per call and shared by all images in it, in
relative coordinates (fractions of height / width), so that the views of one sample get matching
depth-dependent effects whatever their size. Depth is ``row / H`` with the probe at the top.

The physics follows the usual B-mode image-formation picture (as in e.g. the USAugment paper by
Ostvik et al.): multiplicative speckle, operator gain and time-gain compensation (TGC), exponential
attenuation with depth, and acoustic shadows cast along the beam behind strong reflectors.
Random numbers come from torch's global RNG, so ``torch.manual_seed`` makes runs reproducible.

Limitation: a view only knows its own extent, so a ROI crop gets the full depth range of its
effects over its own height rather than the depth sub-range it was cut from.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["Speckle", "GainTGC", "DepthAttenuation", "AcousticShadow", "ultrasound_augment", "AUGMENT_KEYS"]


def _is_pure_tensor(inpt: Any) -> bool:
    return isinstance(inpt, torch.Tensor) and not isinstance(inpt, tv_tensors.TVTensor)


def _range(value: Any, name: str, low: float = 0.0) -> tuple[float, float]:
    """Validate a ``(lo, hi)`` pair (a single number means a fixed value)."""
    lo, hi = (value, value) if isinstance(value, (int, float)) else tuple(value)
    lo, hi = float(lo), float(hi)
    if not (low <= lo <= hi):
        raise ValueError(f"{name} must be a pair {low} <= lo <= hi, got {value!r}")
    return lo, hi


def _uniform(lo: float, hi: float, n: int | None = None) -> Any:
    """A float in [lo, hi), or a tensor of ``n`` of them."""
    if n is None:
        return lo + (hi - lo) * float(torch.rand(()))
    return lo + (hi - lo) * torch.rand(n)


def _log_uniform(lo: float, hi: float, n: int | None = None) -> Any:
    # log-uniform so that e.g. x0.8 and x1.25 are equally likely (symmetric brightening / darkening)
    u = _uniform(math.log(lo), math.log(hi), n)
    return math.exp(u) if n is None else torch.exp(u)


def _depth(h: int, device: torch.device) -> torch.Tensor:
    """Relative depth ``row / H`` as an (H, 1) column (exactly scale-consistent across view sizes)."""
    return (torch.arange(h, device=device, dtype=torch.float32) / h).unsqueeze(1)


def _apply(inpt: torch.Tensor, mult: torch.Tensor) -> torch.Tensor:
    """Multiply by a map broadcastable over (..., C, H, W), clamp to the valid range, keep dtype and type."""
    x = inpt.as_subclass(torch.Tensor)
    if x.dtype.is_floating_point:
        # promotes half to float32 for the arithmetic, keeps float64 at full precision
        out = torch.mul(x, mult).clamp_(0.0, 1.0).to(x.dtype)
    else:
        top = torch.iinfo(x.dtype).max
        # uint8 * float promotes to float without a separate conversion; round rather than truncate
        # so that a map of 1 is exactly the identity and there is no downward bias
        out = torch.mul(x, mult).round_().clamp_(0, top).to(x.dtype)
    return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class _UltrasoundTransform(v2.Transform):
    """Base: probability gate, one parameter draw per call, a multiplicative map per image."""

    # images (and a lone pure tensor, by torchvision's usual heuristic); masks, boxes, labels pass through
    _transformed_types = (tv_tensors.Image, _is_pure_tensor)

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # p = 0 / 1 draw nothing for the gate, so disabling a transform does not shift the RNG stream
        if self.p <= 0.0 or (self.p < 1.0 and float(torch.rand(())) >= self.p):
            return {"apply": False}
        return {"apply": True, **self._draw()}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"] or inpt.ndim < 2:
            return inpt
        h, w = inpt.shape[-2:]
        return _apply(inpt, self._map(params, h, w, inpt))

    def _draw(self) -> dict[str, Any]:
        raise NotImplementedError

    def _map(self, params: dict[str, Any], h: int, w: int, inpt: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _gauss1d(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class Speckle(_UltrasoundTransform):
    """Multiplicative, spatially correlated speckle-like noise with mean 1 and relative std ``strength``."""

    def __init__(self, p: float = 0.5, strength: tuple[float, float] = (0.05, 0.2),
                 grain: tuple[float, float] = (1.0, 0.6)):
        super().__init__(p)
        self.strength = _range(strength, "strength")
        self.grain = tuple(float(g) for g in grain)
        if len(self.grain) != 2 or min(self.grain) < 0:
            raise ValueError(f"grain must be (lateral, axial) sigmas in pixels >= 0, got {grain!r}")
        # speckle cells are longer laterally than axially (lateral resolution is the poorer one)
        lat, ax = self.grain
        self._kx = _gauss1d(lat) if lat > 0 else torch.ones(1)
        self._ky = _gauss1d(ax) if ax > 0 else torch.ones(1)
        # a blur of unit-variance white noise has variance sum(k^2); undo it so strength is the final std
        self._norm = float(self._kx.square().sum().sqrt() * self._ky.square().sum().sqrt())

    def _draw(self) -> dict[str, Any]:
        return {"strength": _uniform(*self.strength)}

    def _map(self, params, h, w, inpt):
        s = params["strength"]
        lead = inpt.shape[:-3] if inpt.ndim >= 3 else ()
        # one field per image, shared by its channels (keeps hue); fresh per view: speckle is per-image
        kx, ky = self._kx.to(inpt.device), self._ky.to(inpt.device)
        # draw a margin and blur with 'valid' convolutions: no padding, so the noise level is the
        # same at the borders as in the middle (replicate/zero padding would raise/lower it there)
        z = torch.randn(math.prod(lead), 1, h + len(ky) - 1, w + len(kx) - 1, device=inpt.device)
        if len(kx) > 1:
            z = F.conv2d(z, kx.view(1, 1, 1, -1))
        if len(ky) > 1:
            z = F.conv2d(z, ky.view(1, 1, -1, 1))
        # log-normal multiplier: log-compressed B-mode makes speckle roughly additive Gaussian in
        # displayed log-intensity; exp(s z - s^2/2) has mean exactly 1 and std ~ s, and is never negative
        # (a gamma multiplier is the textbook intensity model but sampling it is ~10x slower on CPU)
        m = torch.exp(z.mul_(s / self._norm).sub_(0.5 * s * s))
        return m.view(*lead, 1, h, w) if inpt.ndim >= 3 else m.view(h, w)


class GainTGC(_UltrasoundTransform):
    """Overall gain times a smooth time-gain-compensation curve along depth through ``tgc_points`` knots."""

    def __init__(self, p: float = 0.5, gain: tuple[float, float] = (0.8, 1.25), tgc_points: int = 4,
                 tgc_range: tuple[float, float] = (0.8, 1.2)):
        super().__init__(p)
        self.gain = _range(gain, "gain", low=1e-6)
        self.tgc_range = _range(tgc_range, "tgc_range", low=1e-6)
        if int(tgc_points) < 1:
            raise ValueError(f"tgc_points must be >= 1, got {tgc_points}")
        self.tgc_points = int(tgc_points)

    def _draw(self) -> dict[str, Any]:
        return {"gain": _log_uniform(*self.gain), "knots": _log_uniform(*self.tgc_range, n=self.tgc_points)}

    def _map(self, params, h, w, inpt):
        knots = params["knots"].to(inpt.device)
        n = len(knots)
        if n == 1:
            curve = knots.expand(h, 1)
        else:
            # knots evenly spaced from the probe (depth 0) to the bottom (depth 1), like TGC sliders
            pos = _depth(h, inpt.device) * (n - 1)
            idx = pos.floor().long().clamp_(0, n - 2)
            t = pos - idx
            # smoothstep easing: C1-continuous and never overshoots the knots (a cubic spline can)
            t = t * t * (3.0 - 2.0 * t)
            curve = knots[idx] * (1.0 - t) + knots[idx + 1] * t
        return curve * params["gain"]


class DepthAttenuation(_UltrasoundTransform):
    """Exponential attenuation with depth, ``I * exp(-alpha * row / H)`` with alpha drawn from ``strength``."""

    def __init__(self, p: float = 0.5, strength: tuple[float, float] = (0.3, 1.2)):
        super().__init__(p)
        self.strength = _range(strength, "strength")

    def _draw(self) -> dict[str, Any]:
        return {"alpha": _uniform(*self.strength)}

    def _map(self, params, h, w, inpt):
        return torch.exp(_depth(h, inpt.device) * -params["alpha"])


class AcousticShadow(_UltrasoundTransform):
    """A vertical shadow band below a random depth, Gaussian across x, darkening by ``strength``."""

    def __init__(self, p: float = 0.3, width: tuple[float, float] = (0.05, 0.2),
                 strength: tuple[float, float] = (0.3, 0.8), start: tuple[float, float] = (0.1, 0.7)):
        super().__init__(p)
        self.width = _range(width, "width")
        self.strength = _range(strength, "strength")
        self.start = _range(start, "start")
        if self.strength[1] > 1.0 or self.start[1] > 1.0:
            raise ValueError("strength and start must lie in [0, 1]")

    def _draw(self) -> dict[str, Any]:
        width = _uniform(*self.width)
        return {"center": _uniform(0.0, 1.0), "width": width, "strength": _uniform(*self.strength),
                "start": _uniform(*self.start)}

    def _map(self, params, h, w, inpt):
        dev = inpt.device
        # pixel centres across x so that a horizontal flip mirrors the band exactly
        x = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        # width = full width between the sigma points of the Gaussian profile
        sigma = max(params["width"] / 2.0, 1e-6)
        across = torch.exp(-0.5 * ((x - params["center"]) / sigma) ** 2)
        # the shadow begins just behind the reflector; a short smooth onset (~2% of depth) avoids a
        # hard horizontal edge that a network could key on
        along = torch.sigmoid((_depth(h, dev) - params["start"]) / 0.005)
        return 1.0 - params["strength"] * (along * across)


AUGMENT_KEYS = {"speckle": Speckle, "gain": GainTGC, "depth_attenuation": DepthAttenuation,
                "shadow": AcousticShadow}
# tissue-side effects first, then speckle, then the scanner's gain / TGC (the maps multiply, so the
# order only matters through clamping)
_ORDER = ("depth_attenuation", "shadow", "speckle", "gain")


def ultrasound_augment(cfg: Mapping[str, Any]) -> list[v2.Transform]:
    """Build the enabled transforms from ``{key: probability}`` (0 = off) or ``{key: {"p": .., **kwargs}}``."""
    unknown = set(cfg) - set(AUGMENT_KEYS)
    if unknown:
        raise ValueError(f"unknown ultrasound augmentation(s) {sorted(unknown)}; known: {sorted(AUGMENT_KEYS)}")
    ops: list[v2.Transform] = []
    for key in _ORDER:
        value = cfg.get(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            kwargs = dict(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            kwargs = {"p": float(value)}
        else:
            raise ValueError(f"augment {key}: expected a probability in [0, 1] or a mapping, got {value!r}")
        op = AUGMENT_KEYS[key](**kwargs)  # validates p and the ranges
        if op.p > 0.0:
            ops.append(op)
    return ops
