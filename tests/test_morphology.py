"""Morphology features on synthetic nodules: each feature moves the way its definition says it should."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image
from skimage.draw import disk, ellipse, polygon

from lnzoo.data import morphology
from lnzoo.data.morphology import (
    DESCRIPTIONS,
    FEATURE_VERSION,
    FEATURES,
    MorphologyCache,
    cache_dir,
    extract,
    features_of,
)

H = W = 256


def feats(image, mask) -> dict[str, float]:
    out = extract(image, mask)
    assert out is not None
    assert out.dtype == np.float64 and out.shape == (len(FEATURES),)
    assert np.isfinite(out).all()
    return dict(zip(FEATURES, out))


def mask_of(rr, cc) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[rr, cc] = 1
    return m


def disk_mask(radius=50, center=(128, 128)):
    return mask_of(*disk(center, radius, shape=(H, W)))


def ellipse_mask(r_radius, c_radius):
    return mask_of(*ellipse(128, 128, r_radius, c_radius, shape=(H, W)))


def star_mask(points=8, outer=90, inner=40):
    angles = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False)
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return mask_of(*polygon(128 + radii * np.sin(angles), 128 + radii * np.cos(angles), shape=(H, W)))


def flat(value=150):
    return np.full((H, W), value, dtype=np.uint8)


def test_names_and_descriptions():
    assert FEATURE_VERSION == 1
    assert FEATURES == tuple(DESCRIPTIONS) and len(set(FEATURES)) == len(FEATURES)
    assert all(name.split(".")[0] in {"shape", "echo", "margin", "texture"} for name in FEATURES)
    assert all(DESCRIPTIONS[name] and "\n" not in DESCRIPTIONS[name] for name in FEATURES)


def test_disk_is_round():
    f = feats(flat(), disk_mask())
    assert f["shape.circularity"] > 0.85
    assert f["shape.aspect_ratio"] == pytest.approx(1.0, abs=0.05)
    assert f["shape.taller_than_wide"] == pytest.approx(1.0, abs=0.05)
    assert f["shape.solidity"] > 0.95 and f["shape.convexity"] > 0.9
    assert f["margin.roughness"] == pytest.approx(1.0, abs=0.1)
    assert f["shape.area_fraction"] == pytest.approx(np.pi * 50 ** 2 / (H * W), rel=0.05)


def test_ellipse_3_to_1():
    round_ = feats(flat(), disk_mask())
    f = feats(flat(), ellipse_mask(90, 30))
    assert f["shape.aspect_ratio"] == pytest.approx(3.0, rel=0.15)
    assert f["shape.circularity"] < round_["shape.circularity"] - 0.1
    assert 0.0 <= f["shape.circularity"] <= 1.0


def test_orientation_vertical_and_horizontal():
    vertical = feats(flat(), ellipse_mask(90, 30))
    horizontal = feats(flat(), ellipse_mask(30, 90))
    assert vertical["shape.orientation"] == pytest.approx(90.0, abs=5)
    assert vertical["shape.taller_than_wide"] > 1
    assert horizontal["shape.orientation"] == pytest.approx(0.0, abs=5)
    assert horizontal["shape.taller_than_wide"] < 1


def test_star_is_less_solid_and_convex_than_a_disk():
    round_ = feats(flat(), disk_mask(70))
    star = feats(flat(), star_mask())
    assert star["shape.solidity"] < round_["shape.solidity"] - 0.2
    assert star["shape.convexity"] < round_["shape.convexity"] - 0.2
    assert star["margin.roughness"] > round_["margin.roughness"]


def test_echo_contrast_sign():
    m = disk_mask().astype(bool)
    dark = flat(200)
    dark[m] = 50
    bright = flat(50)
    bright[m] = 200
    fd, fb = feats(dark, m), feats(bright, m)
    assert fd["echo.contrast"] < 0 < fb["echo.contrast"]
    assert fd["echo.inside_mean"] == pytest.approx(50 / 255)
    assert fd["echo.ring_mean"] == pytest.approx(200 / 255)
    assert fd["echo.inside_sd"] == pytest.approx(0.0) and fd["echo.ring_sd"] == pytest.approx(0.0)
    # a sharp margin has a strong gradient there; the same mask on a flat image has none
    assert fd["margin.gradient_mean"] > 0.1 and feats(flat(), m)["margin.gradient_mean"] < 1e-9


def test_speckled_interior_has_more_texture_contrast():
    rng = np.random.default_rng(0)
    m = disk_mask().astype(bool)
    uniform = flat(120)
    speckled = flat(120)
    speckled[m] = rng.integers(0, 256, size=int(m.sum()), dtype=np.uint8)
    fu, fs = feats(uniform, m), feats(speckled, m)
    assert fs["texture.contrast"] > fu["texture.contrast"] + 1
    assert fs["texture.homogeneity"] < fu["texture.homogeneity"]
    assert fs["texture.entropy"] > fu["texture.entropy"]
    # a constant interior: correlation is undefined and reported as 0, everything else at its limit
    assert fu["texture.correlation"] == 0.0 and fu["texture.homogeneity"] == pytest.approx(1.0)
    assert fu["texture.energy"] == pytest.approx(1.0) and fu["texture.entropy"] == pytest.approx(0.0)


def test_texture_ignores_the_surroundings():
    m = disk_mask().astype(bool)
    quiet, noisy = flat(120), np.random.default_rng(1).integers(0, 256, (H, W), dtype=np.uint8)
    noisy[m] = 120
    tq, tn = feats(quiet, m), feats(noisy, m)
    for name in FEATURES:
        if name.startswith("texture."):
            assert tq[name] == pytest.approx(tn[name]), name


def test_image_kinds_agree():
    m = disk_mask()
    grey = flat(100)
    grey[m.astype(bool)] = 30
    base = extract(grey, m)
    rgb = np.stack([grey] * 3, axis=-1)
    rgba = np.concatenate([rgb, np.full((H, W, 1), 255, np.uint8)], axis=-1)
    for other in (rgb, rgba, grey / 255.0, grey.astype(np.float32)):
        np.testing.assert_allclose(extract(other, m), base, atol=1e-6)
    np.testing.assert_array_equal(extract(grey, m * 255), base)  # any nonzero value marks the nodule


def test_shape_uses_largest_component_echo_uses_all():
    m = disk_mask(40)
    m[10:20, 10:20] = 1  # a stray blob
    img = flat(200)
    img[10:20, 10:20] = 0
    f, alone = feats(img, m), feats(img, disk_mask(40))
    assert f["shape.area_fraction"] == pytest.approx(alone["shape.area_fraction"])
    assert f["shape.circularity"] == pytest.approx(alone["shape.circularity"])
    assert f["echo.inside_mean"] < alone["echo.inside_mean"]


def test_empty_mask_is_none():
    assert extract(flat(), np.zeros((H, W), np.uint8)) is None


def test_mismatched_shapes():
    with pytest.raises(ValueError) as err:
        extract(flat(), np.ones((100, 120), np.uint8))
    assert "(100, 120)" in str(err.value) and "(256, 256)" in str(err.value)
    with pytest.raises(ValueError, match=r"\(256, 256, 3\)"):
        extract(np.zeros((H, W, 3), np.uint8), np.ones((H, W + 1), np.uint8))


def test_too_small_masks():
    for m in (mask_of([5], [5]), mask_of(np.full(30, 5), np.arange(30))):
        with pytest.raises(ValueError, match=r"area of \d+ px"):
            extract(flat(), m)


def test_nodule_at_the_image_edge_and_whole_image():
    edge = feats(flat(), disk_mask(40, center=(0, 128)))
    assert 0 < edge["shape.solidity"] <= 1 and 0 < edge["shape.convexity"] <= 1
    whole = feats(flat(), np.ones((H, W), np.uint8))
    assert whole["shape.area_fraction"] == 1.0 and whole["echo.contrast"] == 0.0


def save(path, array):
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def pair(tmp_path):
    img = flat(180)
    m = disk_mask().astype(bool)
    img[m] = 60
    return save(tmp_path / "img.png", img), save(tmp_path / "mask.png", (m * 255).astype(np.uint8))


def test_features_of_reads_files(pair, tmp_path):
    image_path, mask_path = pair
    f = features_of(image_path, mask_path)
    np.testing.assert_allclose(f, extract(np.asarray(Image.open(image_path)), np.asarray(Image.open(mask_path))))
    empty = save(tmp_path / "empty.png", np.zeros((H, W), np.uint8))
    assert features_of(image_path, empty) is None


def test_features_of_bad_files(pair, tmp_path):
    image_path, mask_path = pair
    missing = tmp_path / "nope.png"
    with pytest.raises(ValueError, match="not found") as err:
        features_of(missing, mask_path)
    assert "nope.png" in str(err.value)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="not a readable image") as err:
        features_of(image_path, junk)
    assert "junk.png" in str(err.value)
    with pytest.raises(ValueError, match="not found"):
        features_of(image_path, missing, cache=MorphologyCache())


def test_cache_in_memory_and_on_disk(pair, tmp_path, monkeypatch):
    image_path, mask_path = pair
    disk_dir = tmp_path / "cache"
    cache = MorphologyCache(disk_dir)
    first = features_of(image_path, mask_path, cache=cache)
    assert (cache.hits, cache.misses) == (0, 1)
    second = cache.get(image_path, mask_path)
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, second)
    second[:] = -1  # a caller scribbling on its copy leaves the cache intact
    np.testing.assert_array_equal(cache.get(image_path, mask_path), first)

    entries = list(disk_dir.glob("*/*.npy"))
    assert len(entries) == 1 and entries[0].stem.startswith(entries[0].parent.name)
    assert len(entries[0].stem) == 40 and not list(disk_dir.glob("*/*.tmp"))

    def boom(image, mask):
        raise AssertionError("recomputed")
    monkeypatch.setattr(morphology, "extract", boom)
    fresh = MorphologyCache(disk_dir)
    np.testing.assert_array_equal(fresh.get(image_path, mask_path), first)
    assert (fresh.hits, fresh.misses) == (1, 0)
    monkeypatch.undo()

    # an edited mask is new content: recomputed, and different
    save(mask_path, (ellipse_mask(90, 30) * 255).astype(np.uint8))
    edited = fresh.get(image_path, mask_path)
    assert fresh.misses == 1 and not np.allclose(edited, first)
    assert len(list(disk_dir.glob("*/*.npy"))) == 2


def test_cache_damaged_entry_and_empty_mask(pair, tmp_path):
    image_path, mask_path = pair
    disk_dir = tmp_path / "cache"
    good = MorphologyCache(disk_dir).get(image_path, mask_path)
    (entry,) = disk_dir.glob("*/*.npy")
    entry.write_bytes(b"\x93NUMPY garbage")
    again = MorphologyCache(disk_dir)
    np.testing.assert_array_equal(again.get(image_path, mask_path), good)
    assert again.misses == 1
    np.testing.assert_array_equal(np.load(entry, allow_pickle=False), good)  # rewritten

    empty = save(tmp_path / "empty.png", np.zeros((H, W), np.uint8))
    cache = MorphologyCache(disk_dir)
    assert cache.get(image_path, empty) is None and cache.misses == 1
    assert cache.get(image_path, empty) is None and cache.hits == 1
    fresh = MorphologyCache(disk_dir)
    assert fresh.get(image_path, empty) is None and (fresh.hits, fresh.misses) == (1, 0)


def test_memory_only_cache(pair):
    cache = MorphologyCache()
    a = cache.get(*pair)
    b = cache.get(*pair)
    np.testing.assert_array_equal(a, b)
    assert (cache.hits, cache.misses) == (1, 1)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LNZOO_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path / "morphology"
    monkeypatch.delenv("LNZOO_CACHE")
    assert cache_dir().parts[-3:] == (".cache", "lnzoo", "morphology")


@pytest.mark.parametrize("cells, long_mm, area_mm2", [
    ({"pixel_mm_x": "0.1"}, 6.0, 0.01 * np.pi * 30 * 15),  # square pixels: the x size alone
    ({"pixel_mm_x": "0.1", "pixel_mm_y": "0.4"}, 12.0, 0.04 * np.pi * 30 * 15),  # the geometric mean, 0.2 mm
])
def test_with_the_pixel_size_the_nodes_size_is_in_millimetres(tmp_path, cells, long_mm, area_mm2):
    """An ingested manifest's pixel_mm_x/_y turn the node's axes and area into mm: three more features."""
    from lnzoo.data.morphology_input import MorphologyInput
    from lnzoo.data.samples import Sample

    mask = np.zeros((100, 120), np.uint8)
    mask[ellipse(50, 60, 15, 30)] = 255  # semi-axes 15 and 30 px: axes 30 and 60 px
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(np.full((100, 120), 90, np.uint8)).save(tmp_path / "i.png")
    row = Sample({"full": tmp_path / "i.png"}, "P1", {}, "rows.csv:2", cells={"mask": "m.png", "path": "i.png", **cells},
                 base=tmp_path)
    plain, sized = MorphologyInput(cache="memory"), MorphologyInput(cache="memory", pixel_mm="pixel_mm_x")
    assert len(plain.raw(row)) == len(FEATURES)
    got = sized.raw(row)
    assert np.array_equal(got[:len(FEATURES)], plain.raw(row))  # the rest unchanged
    assert got[len(FEATURES)] == pytest.approx(long_mm, rel=0.03)
    assert got[len(FEATURES) + 1] == pytest.approx(long_mm / 2, rel=0.03)
    assert got[len(FEATURES) + 2] == pytest.approx(area_mm2, rel=0.03)
    assert sized.fit([row])["features"][-3:] == ["size.long_axis_mm", "size.short_axis_mm", "size.area_mm2"]
    row.cells["pixel_mm_x"] = ""
    problems: list[str] = []
    assert sized.check([row], problems) == {0} and "is not a positive number of mm" in problems[0]
