"""Ultrasound augmentation: effect, identity at p=0, dtype/range, shared parameters across views, speed."""
from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from lnzoo.data.us_augment import (AUGMENT_KEYS, AcousticShadow, DepthAttenuation, GainTGC, Speckle,
                                   ultrasound_augment)

ALL = [Speckle, GainTGC, DepthAttenuation, AcousticShadow]


def textured(h=96, w=80, dtype=torch.uint8, seed=1):
    """A mid-grey RGB image with structure (so multiplicative maps visibly change it)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(40, 200, (3, h, w), generator=g, dtype=torch.uint8)
    return tv_tensors.Image(x if dtype == torch.uint8 else x.to(dtype) / 255.0)


def const(h, w, value=0.5):
    return tv_tensors.Image(torch.full((3, h, w), value, dtype=torch.float32))


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_p1_changes_keeps_shape_dtype_range(cls, dtype):
    torch.manual_seed(0)
    x = textured(dtype=dtype)
    y = cls(p=1.0)(x)
    assert isinstance(y, tv_tensors.Image)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(y, x)
    top = 255 if dtype == torch.uint8 else 1.0
    assert y.min() >= 0 and y.max() <= top


@pytest.mark.parametrize("cls", ALL)
def test_clamps_bright_images(cls):
    torch.manual_seed(0)
    kw = {"gain": (1.25, 1.25)} if cls is GainTGC else {}
    for x in (tv_tensors.Image(torch.full((3, 32, 32), 250, dtype=torch.uint8)), const(32, 32, 0.98)):
        y = cls(p=1.0, **kw)(x)
        assert y.dtype == x.dtype and y.min() >= 0 and y.max() <= (255 if x.dtype == torch.uint8 else 1.0)


@pytest.mark.parametrize("cls", ALL)
def test_p0_is_identity_and_consumes_no_rng(cls):
    x = textured()
    torch.manual_seed(3)
    y = cls(p=0.0)(x)
    assert torch.equal(y, x)
    after = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(4))  # disabling a transform does not shift the RNG stream


def test_probability_gate_applies_about_p():
    torch.manual_seed(0)
    x = const(8, 8)
    t = DepthAttenuation(p=0.3)
    hits = sum(not torch.equal(t(x), x) for _ in range(400))
    assert 80 < hits < 160


@pytest.mark.parametrize("cls", ALL)
def test_seeding_reproducible(cls):
    x = textured()
    torch.manual_seed(0)
    a = cls(p=1.0)([x, x])
    torch.manual_seed(0)
    b = cls(p=1.0)([x, x])
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_non_images_untouched():
    torch.manual_seed(0)
    x = textured(32, 32)
    mask = tv_tensors.Mask(torch.ones(32, 32, dtype=torch.uint8))
    label = torch.tensor([1.0, 2.0])
    y, m, lab = DepthAttenuation(p=1.0)(x, mask, label)
    assert not torch.equal(y, x)
    assert m is mask and lab is label


def test_depth_attenuation_monotone_and_shared_across_view_sizes():
    torch.manual_seed(0)
    a, b = DepthAttenuation(p=1.0)([const(64, 48), const(128, 100)])
    ra, rb = a[0, :, 0], b[0, :, 0]
    assert ra[-1] < ra[0] and ra[0] == pytest.approx(0.5)
    assert (ra[1:] <= ra[:-1]).all() and (rb[1:] <= rb[:-1]).all()
    # depth = row / H: row r of the 64-row view sits at the depth of row 2r of the 128-row view
    assert torch.allclose(ra, rb[::2], atol=1e-6)
    # constant across x and across channels (multiplicative on all channels keeps hue)
    assert torch.allclose(a, a[:1, :, :1].expand_as(a))
    # the factor is exp(-alpha * depth) with alpha in the default range
    alpha = -torch.log(ra[1:] / 0.5) / (torch.arange(1, 64) / 64)
    assert torch.allclose(alpha, alpha[0].expand_as(alpha), atol=1e-4) and 0.3 <= alpha[0] <= 1.2


def test_gain_tgc_depth_dependent_and_shared():
    torch.manual_seed(1)
    t = GainTGC(p=1.0, gain=(1.0, 1.0), tgc_points=3, tgc_range=(0.5, 1.5))
    a, b = t([const(60, 40, 0.4), const(120, 30, 0.4)])
    ra, rb = a[0, :, 0] / 0.4, b[0, :, 0] / 0.4
    assert torch.allclose(ra, rb[::2], atol=1e-5)
    assert ra.max() - ra.min() > 0.05  # varies with depth
    assert torch.allclose(a, a[:1, :, :1].expand_as(a))  # not with x or channel
    assert (ra >= 0.5 - 1e-6).all() and (ra <= 1.5 + 1e-6).all()  # no overshoot beyond the knots
    assert (ra[1:] - ra[:-1]).abs().max() < 0.1  # smooth: no jumps
    # a single knot is a flat curve: just gain * knot
    torch.manual_seed(2)
    (c,) = GainTGC(p=1.0, tgc_points=1)([const(50, 50, 0.4)])
    assert torch.allclose(c, c[0, 0, 0].expand_as(c))


def test_gain_tgc_knots_follow_depth():
    # curve hits the knots at depth 0 and at the knot positions (i / (n - 1))
    torch.manual_seed(5)
    t = GainTGC(p=1.0, gain=(1.0, 1.0), tgc_points=3, tgc_range=(0.5, 1.5))
    params = t.make_params([])
    curve = t._map(params, 100, 1, torch.zeros(1, 100, 1))[:, 0]
    assert curve[0] == pytest.approx(float(params["knots"][0]), rel=1e-5)
    assert curve[50] == pytest.approx(float(params["knots"][1]), rel=1e-5)


def test_acoustic_shadow_band_shared_across_views():
    for seed in range(5):
        torch.manual_seed(seed)
        a, b = AcousticShadow(p=1.0)([const(64, 64), const(96, 160)])
        col_a, col_b = a[0, -1], b[0, -1]  # bottom row: always inside the shadow
        xa = (col_a.argmin() + 0.5) / 64
        xb = (col_b.argmin() + 0.5) / 160
        assert abs(xa - xb) < 1.5 / 64
        assert torch.allclose(a[0, -1].min(), b[0, -1].min(), atol=0.02)  # same darkening
        assert torch.equal(a[0, 0], torch.full((64,), 0.5))  # top row (probe) never shadowed
        assert torch.allclose(a[0], a[2])  # same on every channel
        # darker going down inside the band (shadow starts at some depth), never brighter
        col = a[0, :, col_a.argmin()]
        assert (col[1:] <= col[:-1] + 1e-6).all() and col[-1] < col[0]


def test_speckle_keeps_mean_adds_variance():
    torch.manual_seed(0)
    x = const(256, 256, 0.5)
    (y,) = Speckle(p=1.0, strength=0.2)([x])
    assert y.mean() == pytest.approx(0.5, rel=0.02)
    rel_std = float(y.std() / 0.5)
    assert 0.15 < rel_std < 0.25  # strength is the multiplier's relative std
    assert torch.allclose(y[0], y[1]) and torch.allclose(y[0], y[2])  # same field on all channels (hue kept)
    # spatially correlated: neighbours are more alike than far pixels
    d = y[0] - y[0].mean()
    corr_lat = float((d[:, 1:] * d[:, :-1]).mean() / d.var())
    assert corr_lat > 0.3
    # same noise level at the borders as in the middle (no padding artefacts)
    edge = float(torch.cat([y[0, :, 0], y[0, :, -1], y[0, 0], y[0, -1]]).std() / 0.5)
    assert abs(edge - rel_std) < 0.03


def test_speckle_uint8_mean_kept():
    torch.manual_seed(0)
    x = tv_tensors.Image(torch.full((3, 128, 128), 100, dtype=torch.uint8))
    y = Speckle(p=1.0, strength=0.1)(x)
    assert y.float().mean() == pytest.approx(100, rel=0.02)
    assert y.float().std() > 5


def test_colour_hue_kept():
    # dark enough that no channel clips (clamping is the only thing that can shift hue)
    torch.manual_seed(0)
    x = tv_tensors.Image(torch.tensor([0.4, 0.2, 0.1]).view(3, 1, 1).expand(3, 40, 40).clone())
    for cls in ALL:
        y = cls(p=1.0)(x)
        ratio = y / x
        assert torch.allclose(ratio[0], ratio[1], atol=1e-5) and torch.allclose(ratio[0], ratio[2], atol=1e-5)


def test_inside_compose_with_geometric_ops():
    torch.manual_seed(0)
    views = [textured(64, 64), textured(64, 64, seed=2), textured(32, 48, seed=3)]
    out = v2.Compose([v2.RandomHorizontalFlip(1.0), Speckle(p=1.0)])(views)
    assert isinstance(out, list) and len(out) == 3
    for o, v in zip(out, views):
        assert isinstance(o, tv_tensors.Image) and o.shape == v.shape and o.dtype == torch.uint8
        assert not torch.equal(o, v.flip(-1))  # speckled after the flip
    full = v2.Compose([v2.RandomHorizontalFlip(0.5), *ultrasound_augment(
        {"speckle": 1.0, "gain": 1.0, "depth_attenuation": 1.0, "shadow": 1.0})])
    out = full(views)
    assert [o.shape for o in out] == [v.shape for v in views]


def test_factory():
    ops = ultrasound_augment({"speckle": 0.5, "gain": 0.5, "depth_attenuation": 0.3, "shadow": 0.2})
    assert [type(o) for o in ops] == [DepthAttenuation, AcousticShadow, Speckle, GainTGC]
    assert [o.p for o in ops] == [0.3, 0.2, 0.5, 0.5]
    assert ultrasound_augment({}) == [] and ultrasound_augment({"speckle": 0, "shadow": 0.0}) == []
    (op,) = ultrasound_augment({"shadow": {"p": 0.4, "width": (0.1, 0.1)}})
    assert isinstance(op, AcousticShadow) and op.p == 0.4 and op.width == (0.1, 0.1)
    assert set(AUGMENT_KEYS) == {"speckle", "gain", "depth_attenuation", "shadow"}
    with pytest.raises(ValueError, match="unknown"):
        ultrasound_augment({"speckel": 0.5})
    with pytest.raises(ValueError):
        ultrasound_augment({"gain": 1.5})
    with pytest.raises(ValueError):
        ultrasound_augment({"gain": True})
