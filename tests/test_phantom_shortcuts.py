"""Planted shortcuts in the phantom (lnzoo.data.phantom_shortcuts, ``lnzoo synth --shortcut``,
``data.phantom.shortcut``): the marks come at the promised rate per class, move nothing else, and the burned-in
mark detector sees the calipers -- the ground truth ``lnzoo audit`` is tested against."""
from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lnzoo.data.phantom import MANIFEST_COLUMNS, MODALITIES, PHANTOM_VERSION, ensure_phantom, generate_phantom
from lnzoo.data.phantom_shortcuts import (KINDS, SCANNER_B_GAIN, _field, draw_calipers, normalize_shortcuts,
                                          parse_shortcuts, presence_probability)
from lnzoo.ingest.marks import find_marks
from tests.conftest import invoke_cli

REPO = Path(__file__).resolve().parents[1]
PATIENTS, SEED = 70, 1
SHORTCUTS = ["calipers:0.8", "doppler_box:0", "scanner:0.7"]
SET_SHORTCUTS = "data.phantom.shortcut=['calipers:0.8', 'doppler_box:0', 'scanner:0.7']"
IMAGE_COLUMNS = ("path", "crop", "cdfi", "cdfi_crop", "elasto", "elasto_crop", "mask")


def _rows(manifest: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(manifest, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(root: Path, rel: str) -> np.ndarray:
    with Image.open(root / rel) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def planted():
    """(root, rows) of a 70-patient phantom with all three kinds; doppler_box at strength 0. Through the cache, so
    the recipe tests below read the same phantom."""
    manifest = ensure_phantom(patients=PATIENTS, seed=SEED, shortcuts=SHORTCUTS)
    return manifest.parent, _rows(manifest)[1]


@pytest.fixture(scope="module")
def clean20(tmp_path_factory):
    """The clean phantom's first 20 patients at the same seed (patient i does not depend on the patient count)."""
    root = tmp_path_factory.mktemp("clean20")
    return root, _rows(generate_phantom(root, patients=20, seed=SEED))[1]


# -- parsing and the definition of strength --------------------------------------------------------------------
def test_parse_shortcuts():
    assert parse_shortcuts(["scanner:0.7", " calipers : 0.8 "]) == {"calipers": 0.8, "scanner": 0.7}
    assert list(parse_shortcuts(["scanner:1", "doppler_box:0", "calipers:.5"])) == list(KINDS)  # KINDS order
    assert parse_shortcuts(None) == parse_shortcuts([]) == normalize_shortcuts({}) == {}
    assert normalize_shortcuts({"calipers": 0.8}) == normalize_shortcuts(["calipers:0.8"]) == {"calipers": 0.8}


@pytest.mark.parametrize("item,why", [("calipers:2", "outside [0, 1]"), ("calipers:-0.1", "outside"),
                                      ("calipers:nan", "outside"), ("calipers", "no strength"),
                                      ("lasers:0.5", "unknown kind 'lasers'"), ("scanner:high", "not a number")])
def test_parse_errors_name_the_item_and_the_kinds(item, why):
    with pytest.raises(ValueError) as exc:
        parse_shortcuts(["doppler_box:0.5", item])
    msg = str(exc.value)
    assert repr(item) in msg and why in msg
    assert all(kind in msg for kind in KINDS)


def test_a_kind_given_twice_is_refused():
    with pytest.raises(ValueError, match="'calipers:0.2'.*twice"):
        parse_shortcuts(["calipers:0.8", "calipers:0.2"])


@pytest.mark.parametrize("s", [0.0, 0.3, 0.8, 1.0])
def test_strength_is_the_phi_correlation_with_balanced_classes(s):
    pm, pb = presence_probability(s, True), presence_probability(s, False)
    assert (pm, pb) == pytest.approx(((1 + s) / 2, (1 - s) / 2))
    # 2x2 table for P(malignant) = 1/2
    n11, n10, n01, n00 = 0.5 * pm, 0.5 * (1 - pm), 0.5 * pb, 0.5 * (1 - pb)
    phi = (n11 * n00 - n10 * n01) / math.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00))
    assert phi == pytest.approx(s)


# -- the planted phantom ---------------------------------------------------------------------------------------
def _rate(rows, column, value, cls):
    sel = [r for r in rows if r["malignancy"] == cls]
    return sum(r[column] == value for r in sel) / len(sel), len(sel)


def _tolerance(p: float, n: int) -> float:
    """4 binomial standard deviations (images are decided independently), at least one image's worth."""
    return 4 * math.sqrt(max(p * (1 - p), 0.05) / n) + 1 / n


@pytest.mark.parametrize("kind,column,value,s", [("calipers", "marks_caliper", "1", 0.8),
                                                 ("scanner", "scanner", "B", 0.7),
                                                 ("doppler_box", "doppler_box", "1", 0.0)])
def test_rates_per_class_follow_the_strength(planted, kind, column, value, s):
    _, rows = planted
    (rm, nm), (rb, nb) = _rate(rows, column, value, "malignant"), _rate(rows, column, value, "benign")
    assert nm > 40 and nb > 40
    assert abs(rm - (1 + s) / 2) <= _tolerance((1 + s) / 2, nm), (kind, rm, nm)
    assert abs(rb - (1 - s) / 2) <= _tolerance((1 - s) / 2, nb), (kind, rb, nb)
    if s == 0:  # no correlation: the two classes differ by no more than chance
        assert abs(rm - rb) <= 4 * math.sqrt(0.25 / nm + 0.25 / nb)
    else:
        assert rm - rb > s / 2


def test_columns_and_readme(planted):
    root, rows = planted
    header, _ = _rows(root / "manifest.csv")
    assert header == [*MANIFEST_COLUMNS, "marks_caliper", "doppler_box", "scanner"]
    assert {r["marks_caliper"] for r in rows} == {r["doppler_box"] for r in rows} == {"0", "1"}
    assert {r["scanner"] for r in rows} == {"A", "B"}
    readme = (root / "README.txt").read_text(encoding="utf-8")
    assert "PLANTED SHORTCUTS" in readme and "NOT CLINICAL DATA" in readme
    for item in ("calipers     s = 0.8", "doppler_box  s = 0:", "scanner      s = 0.7", "(1+s)/2"):
        assert item in readme
    # only the planted kinds' columns, in KINDS order
    one = Path(ensure_phantom(patients=8, seed=SEED, shortcuts=["scanner:0.5"]))
    assert _rows(one)[0] == [*MANIFEST_COLUMNS, "scanner"]


def test_no_shortcuts_is_the_clean_phantom(tmp_path):
    plain = generate_phantom(tmp_path / "plain", patients=8, seed=2)
    for name, value in (("none", None), ("empty", [])):
        again = generate_phantom(tmp_path / name, patients=8, seed=2, shortcuts=value)
        assert again.read_bytes() == plain.read_bytes()
        a, b = _tree(tmp_path / "plain"), _tree(tmp_path / name)
        assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    # the cache key without shortcuts is the one it always was; with them, another folder
    key = {"patients": 8, "seed": 2, "difficulty": 0.5, "frame_size": 256, "version": PHANTOM_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    cached = ensure_phantom(patients=8, seed=2, shortcuts=None)
    assert cached.parent.name == f"v{PHANTOM_VERSION}-{digest}"
    assert ensure_phantom(patients=8, seed=2, shortcuts=[]) == cached == ensure_phantom(patients=8, seed=2)
    assert _tree(cached.parent) == _tree(tmp_path / "plain")
    with pytest.raises(ValueError, match="calipers:3"):
        ensure_phantom(patients=8, seed=2, shortcuts=["calipers:3"])


def test_planted_phantom_has_its_own_cache_folder(planted):
    root, _ = planted
    assert root == ensure_phantom(patients=PATIENTS, seed=SEED,
                                  shortcuts={"scanner": 0.7, "calipers": 0.8, "doppler_box": 0}).parent
    key = {"patients": PATIENTS, "seed": SEED, "difficulty": 0.5, "frame_size": 256, "version": PHANTOM_VERSION}
    clean = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    assert root.name != f"v{PHANTOM_VERSION}-{clean}"


def test_unmarked_images_equal_the_clean_phantom(planted, clean20):
    root, rows = planted
    croot, crows = clean20
    clean = {r["path"]: r for r in crows}
    mine = [r for r in rows if int(r["patient"][1:]) <= 20]
    assert [r["path"] for r in mine] == [r["path"] for r in crows]
    kinds_seen = {"none": 0, "doppler_only": 0, "scanner_only": 0, "calipers": 0}
    for r in mine:
        c = clean[r["path"]]
        assert {k: r[k] for k in MANIFEST_COLUMNS} == c  # every clean column as it was
        assert (root / r["mask"]).read_bytes() == (croot / c["mask"]).read_bytes()
        cal, box, b = r["marks_caliper"] == "1", r["doppler_box"] == "1", r["scanner"] == "B"
        same = {col: (root / r[col]).read_bytes() == (croot / c[col]).read_bytes() for col in IMAGE_COLUMNS}
        if not (cal or box or b):
            kinds_seen["none"] += 1
            assert all(same.values()), r["path"]
            continue
        assert not same["path"], r["path"]  # something is drawn on the 2d frame
        if cal:
            kinds_seen["calipers"] += 1
            assert not same["cdfi"] and not same["elasto"]  # calipers on every modality
        if box and not cal and not b:
            kinds_seen["doppler_only"] += 1
            # the Doppler box is on the 2d full frame only, outside the ROI crop
            assert same["crop"] and same["cdfi"] and same["elasto"] and same["cdfi_crop"], r["path"]
            assert _pixels(root, r["path"]).ndim == 3  # a coloured mark: the 2d frame is stored as RGB
        if b and not cal and not box:
            kinds_seen["scanner_only"] += 1
            g, gc = _pixels(root, r["path"]).astype(int), _pixels(croot, c["path"]).astype(int)
            assert g.ndim == 2  # grey stays grey
            fx0, fx1 = _field(g.shape[0])
            diff = g - gc
            body = diff[20:, fx0:fx1]  # below the logo
            assert body.min() >= 0 and body.max() == SCANNER_B_GAIN
            assert np.mean(body == np.minimum(SCANNER_B_GAIN, 255 - gc[20:, fx0:fx1])) == 1.0
            assert (diff[:, :fx0][20:] == 0).all()  # the margins keep their black
            assert (diff[:16, :fx0] != 0).any()  # the logo
            crop, ccrop = _pixels(root, r["crop"]).astype(int), _pixels(croot, c["crop"]).astype(int)
            assert 10 < float((crop - ccrop).mean()) <= SCANNER_B_GAIN  # the gain shows in the crop
    assert all(n > 0 for n in kinds_seen.values()), kinds_seen


def test_adding_a_shortcut_moves_nothing_else(planted, tmp_path):
    root, rows = planted
    only = generate_phantom(tmp_path / "only", patients=14, seed=SEED, shortcuts=["calipers:0.8"])
    header, orows = _rows(only)
    assert header == [*MANIFEST_COLUMNS, "marks_caliper"]
    mine = {r["path"]: r for r in rows}
    compared = 0
    for r in orows:
        m = mine[r["path"]]
        assert {k: m[k] for k in header} == r  # the calipers decided alike, whatever else is planted
        if m["doppler_box"] == "0" and m["scanner"] == "A":
            compared += 1
            for col in IMAGE_COLUMNS:
                assert (root / m[col]).read_bytes() == (tmp_path / "only" / r[col]).read_bytes(), (r["path"], col)
    assert compared > 5


def test_find_marks_sees_the_calipers(planted):
    root, rows = planted
    hits = {"1": [], "0": []}
    for r in rows:
        hits[r["marks_caliper"]].append(find_marks(_pixels(root, r["path"])).has_caliper)
    recall, false_rate = float(np.mean(hits["1"])), float(np.mean(hits["0"]))
    assert len(hits["1"]) > 40 and len(hits["0"]) > 40
    assert recall >= 0.9, recall
    assert false_rate <= 0.05, false_rate  # Doppler boxes and the scanner logo are no calipers


def test_calipers_are_on_every_modality_and_in_the_crop(planted):
    root, rows = planted
    r = next(r for r in rows if r["marks_caliper"] == "1" and r["doppler_box"] == "0" and r["scanner"] == "A")
    for mod in MODALITIES:
        col = {"2d": "path"}.get(mod, mod)
        arr = _pixels(root, r[col])
        yellow = (arr[..., 0] == 255) & (arr[..., 1] == 255) & (arr[..., 2] == 0)
        green = (arr[..., 0] == 0) & (arr[..., 1] == 255) & (arr[..., 2] == 0)
        assert yellow.sum() + green.sum() > 20, (mod, r["path"])
    crop = _pixels(root, r["crop"])
    assert crop.ndim == 3 and ((crop[..., 1] == 255) & (crop[..., 2] == 0)).sum() > 8  # the crosses fall inside


def test_draw_calipers_on_any_image():
    S = 200
    yy, xx = np.mgrid[0:S, 0:S]
    mask = ((xx - 100) / 50.0) ** 2 + ((yy - 110) / 22.0) ** 2 <= 1
    img = Image.fromarray(np.full((S, S, 3), 60, np.uint8))
    boxes = draw_calipers(img, mask, np.random.default_rng(0))
    assert len(boxes) == 3  # two crosses and the readout
    (a, b, text) = boxes
    assert abs((a[0] + a[2]) / 2 - 50.5) <= 1.5 and abs((b[0] + b[2]) / 2 - 150.5) <= 1.5
    assert not (text[0] < max(a[2], b[2]) and min(a[0], b[0]) < text[2] and text[1] < a[3] and a[1] < text[3])
    marks = find_marks(np.asarray(img))
    assert len(marks.calipers) == 2
    with pytest.raises(ValueError, match="RGB"):
        draw_calipers(img.convert("L"), mask, np.random.default_rng(0))


# -- the CLI and recipes ---------------------------------------------------------------------------------------
def test_synth_refuses_a_bad_shortcut(tmp_path):
    done = invoke_cli("synth", "--shortcut", "calipers:2", "--out", tmp_path / "x")
    assert done.returncode == 2
    assert "calipers:2" in done.stdout + done.stderr
    assert not (tmp_path / "x").exists()
    done = invoke_cli("synth", "--dicom", "--shortcut", "calipers:0.5", "--out", tmp_path / "y")
    assert done.returncode == 2 and "--dicom" in done.stdout + done.stderr


def test_synth_plants_shortcuts(tmp_path):
    done = invoke_cli("synth", "--patients", "8", "--seed", "3", "--out", tmp_path / "p",
                      "--shortcut", "scanner:0.5", "--shortcut", "calipers:0.8")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "planted shortcuts: calipers 0.8, scanner 0.5" in done.stdout
    header, rows = _rows(tmp_path / "p" / "manifest.csv")
    assert header[-2:] == ["marks_caliper", "scanner"]
    assert "PLANTED SHORTCUTS" in (tmp_path / "p" / "README.txt").read_text(encoding="utf-8")


def test_recipe_validates_with_shortcuts(planted):
    done = invoke_cli("validate", REPO / "recipes" / "stage1_aux.toml", "--quick", "--set", SET_SHORTCUTS,
                      "--set", f"data.phantom.patients={PATIENTS}", "--set", f"data.phantom.seed={SEED}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "planted shortcuts: calipers 0.8, doppler_box 0, scanner 0.7" in " ".join(done.stdout.split())
    bad = invoke_cli("validate", REPO / "recipes" / "stage1_aux.toml", "--quick",
                     "--set", "data.phantom.shortcut=['calipers:high']", "--set", "data.phantom.patients=8")
    assert bad.returncode == 2 and "data.phantom.shortcut" in bad.stdout + bad.stderr


def test_loaded_data_carries_the_shortcut_columns(planted):
    from lnzoo.data.run_data import load_run_data, recipe_tasks
    from lnzoo.plugins import load_plugins
    from lnzoo.recipe import load_recipe

    host = load_plugins()
    recipe = load_recipe(REPO / "recipes" / "stage1_aux.toml", host=host,
                         sets=[SET_SHORTCUTS, 'data.phantom.source="manifest"', f"data.phantom.patients={PATIENTS}",
                               f"data.phantom.seed={SEED}"])
    data = load_run_data(recipe, recipe_tasks(recipe, host), host, check_files_too=False)
    root, rows = planted
    by_path = {str((root / r["path"]).resolve()): r for r in rows}
    assert len(data.pool) == len(rows)
    for s in data.pool:
        r = by_path[str(Path(s.views["full"]).resolve())]
        assert (s.cells["marks_caliper"], s.cells["doppler_box"], s.cells["scanner"]) == \
            (r["marks_caliper"], r["doppler_box"], r["scanner"])
    assert "planted shortcuts" in data.description
