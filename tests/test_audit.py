"""``lnzoo audit``: the lesion blanked and alone, each check's verdict and its reason when it cannot run, and the
planted shortcut of the phantom flagged where the clean phantom is not."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnzoo.audit import blank_lesion, lesion_alone
from tests.conftest import invoke_cli


def _image(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 120, (h, w, 3)).astype(np.uint8)
    return img


@given(x0=st.integers(0, 70), y0=st.integers(0, 50), bw=st.integers(1, 40), bh=st.integers(1, 40))
@settings(max_examples=60, deadline=None)
def test_blanking_changes_only_the_grown_box_and_fills_it_from_the_tissue_beside_it(x0, y0, bw, bh):
    img = _image()
    box = (x0, y0, min(80, x0 + bw), min(60, y0 + bh))
    img[box[1]:box[3], box[0]:box[2]] = 255  # the lesion: brighter than anything around it
    out = blank_lesion(img, box)
    gx, gy = 0.1 * (box[2] - box[0]), 0.1 * (box[3] - box[1])
    gx0, gy0 = max(0, int(box[0] - gx)), max(0, int(box[1] - gy))
    gx1, gy1 = min(80, int(np.ceil(box[2] + gx))), min(60, int(np.ceil(box[3] + gy)))
    outside = np.ones((60, 80), bool)
    outside[gy0:gy1, gx0:gx1] = False
    assert np.array_equal(out[outside], img[outside])
    if (gx1 - gx0, gy1 - gy0) != (80, 60):
        assert (out[gy0:gy1, gx0:gx1] < 255).all()  # no lesion pixel left: the fill is the tissue beside it
    alone = lesion_alone(img, box)
    assert np.array_equal(alone[gy0:gy1, gx0:gx1], img[gy0:gy1, gx0:gx1])
    if outside.any():
        assert len(np.unique(alone[outside].reshape(-1, 3), axis=0)) == 1  # one flat colour around it


def test_the_audit_of_a_run_without_rois_or_metadata_says_why_those_checks_did_not_run(tiny_run, tmp_path):
    done = invoke_cli("audit", tiny_run, "--out", tmp_path / "a")
    assert done.returncode == 0, done.stderr
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    verdicts = {c["name"]: c for c in audit["checks"]}
    assert verdicts["outside"]["verdict"] == "not run" and "no row has an ROI" in verdicts["outside"]["sentence"]
    assert verdicts["attention"]["verdict"] == "not run" and "no row has an ROI" in verdicts["attention"]["sentence"]
    assert verdicts["marks"]["verdict"] == "ok" and "detector" in verdicts["marks"]["source"]  # the clean phantom
    assert verdicts["metadata"]["verdict"] in ("not run", "ok")
    assert audit["task"] == "malignancy" and audit["images"] > 0 and audit["flagged"] == []
    assert "Shortcut audit" in (tmp_path / "a" / "audit.html").read_text()
    assert "Marks against labels" in done.stdout and "Outside the lesion" in done.stdout


def test_an_unfinished_run_is_refused_as_every_reader_refuses_it(tiny_run, tmp_path):
    from lnzoo.rundir import RunDir

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    RunDir(copy, writer=True).update_run(status="interrupted")
    done = invoke_cli("audit", copy, "--out", tmp_path / "a")
    assert done.returncode == 2 and "not a finished run" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "a").exists()


def test_the_audit_becomes_a_section_of_the_runs_report(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    assert invoke_cli("audit", copy).returncode == 0
    assert (copy / "audit.json").is_file() and (copy / "audit.html").is_file()
    done = invoke_cli("report", copy, "--n-boot", "20")
    assert done.returncode == 0, done.stderr
    html = (copy / "report.html").read_text(encoding="utf-8")
    assert "id='audit'" in html and "Marks against labels" in html


@pytest.mark.slow
def test_a_planted_caliper_shortcut_is_flagged_and_the_clean_phantom_is_not(tmp_path):
    """The phantom draws calipers on 95% of malignant and 5% of benign images (data.phantom.shortcut): the audit
    says the marks carry the label; on the same phantom without the shortcut no mark is found."""
    from tests.conftest import REPO, TINY

    def trained(name: str, *extra: str):
        sets = [*TINY, "cv.run_folds=[0]", "train.epochs=2", "data.phantom.source='manifest'", *extra]
        done = invoke_cli("run", REPO / "recipes" / "stage1_aux.toml", "--quick",
                          *[x for s in sets for x in ("--set", s)], "--n-boot", "20", "--out", tmp_path / name)
        assert done.returncode == 0, done.stderr
        audited = invoke_cli("audit", tmp_path / name)
        assert audited.returncode == 0, audited.stderr
        return {c["name"]: c for c in json.loads((tmp_path / name / "audit.json").read_text())["checks"]}

    cheat = trained("cheat", "data.phantom.shortcut=['calipers:0.9']")
    assert cheat["marks"]["verdict"] == "flag" and cheat["marks"]["marks_auc"]["ci"][0] > 0.6
    assert cheat["marks"]["source"].startswith("the manifest's columns marks_caliper")
    assert cheat["marks"]["rate"]["positive"] > 0.8 > 0.2 > cheat["marks"]["rate"]["negative"]
    assert cheat["outside"]["verdict"] in ("flag", "ok") and cheat["outside"]["images"] > 0  # bbox: it ran
    attention = cheat["attention"]
    assert attention["images"] + attention["empty_maps"] == cheat["outside"]["images"]  # every ROI image mapped
    assert 0 <= attention["median_share"] <= 1
    assert 0 < attention["median_roi_area"] < 1 and len(attention["overlays_png_base64"]) == 3
    assert "data:image/png;base64," in (tmp_path / "cheat" / "audit.html").read_text()
    clean = trained("clean")
    assert clean["marks"]["verdict"] == "ok" and clean["marks"].get("images_with_marks", 0) == 0
    masked = trained("masked", "data.phantom.shortcut=['calipers:0.9']", "data.mask_marks=true")
    assert masked["marks"]["verdict"] == "flag"  # the data still carries the marks; the model no longer sees them
    from lnzoo.record import ModelRecord

    record = ModelRecord.read(tmp_path / "masked" / "fold0" / "best.safetensors")
    assert record.preprocessing.mask_marks is True  # predict and serve mask as training did


def test_mask_marks_fills_the_calipers_before_the_model_sees_the_image_and_travels_with_the_model(tmp_path):
    """data.mask_marks: the mitigation for a caliper shortcut. The decoded image has no caliper colour left, the
    rest is as it was, and the preprocessing stored with the model asks for it (so predict and serve mask too)."""
    from PIL import Image, ImageDraw

    from lnzoo.data.images import Preprocessing, load_image

    rng = np.random.default_rng(0)
    img = np.repeat(rng.integers(50, 140, (128, 128, 1)), 3, axis=2).astype(np.uint8)
    drawn = Image.fromarray(img)
    draw = ImageDraw.Draw(drawn)
    for cx, cy in ((40, 60), (90, 70)):  # two yellow calipers, as a sonographer's measurement
        draw.line([(cx - 5, cy), (cx + 5, cy)], fill=(255, 255, 0), width=1)
        draw.line([(cx, cy - 5), (cx, cy + 5)], fill=(255, 255, 0), width=1)
    drawn.save(tmp_path / "node.png")
    plain = load_image(tmp_path / "node.png", Preprocessing(128))
    masked = load_image(tmp_path / "node.png", Preprocessing(128, mask_marks=True))
    yellow = lambda a: (a[..., 0] > 200) & (a[..., 1] > 200) & (a[..., 2] < 80)  # noqa: E731
    assert yellow(plain).sum() > 30 and not yellow(masked).any()
    far = np.ones((128, 128), bool)
    far[50:80, 30:100] = False
    assert np.array_equal(plain[far], masked[far])  # nothing else changed


def test_balance_by_names_a_column_the_data_lacks_and_takes_one_it_has():
    from tests.conftest import REPO

    recipe = REPO / "recipes" / "stage1_aux.toml"
    missing = invoke_cli("validate", recipe, "--quick", "--set", "data.balance_by='scanner'")
    assert missing.returncode == 2 and "data.balance_by = 'scanner': no training row has a column 'scanner'" \
        in " ".join(missing.stderr.split())
    given = invoke_cli("validate", recipe, "--quick", "--set", "data.balance_by='scanner'", "--set",
                       "data.phantom.source='manifest'", "--set", "data.phantom.shortcut=['scanner:0.9']")
    assert given.returncode == 0, given.stderr


@pytest.mark.slow
def test_the_control_model_trains_on_the_blanked_images_on_the_runs_folds_and_is_reused(tmp_path):
    """--retrain-control: the recipe trained again on every image with its lesion blanked (the rows' other cells
    kept), on the run's own folds; its held-out AUC is the audit's control figure, and the next audit reuses it."""
    import csv
    from pathlib import Path

    from lnzoo.audit.control import CONTROL_DIR
    from tests.conftest import REPO, TINY

    def rows(path):
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    sets = [*TINY, "cv.run_folds=[1]", "data.phantom.source='manifest'", "data.phantom.shortcut=['scanner:0.8']"]
    done = invoke_cli("run", REPO / "recipes" / "stage1_aux.toml", "--quick", *[x for s in sets for x in ("--set", s)],
                      "--n-boot", "20", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    audited = invoke_cli("audit", tmp_path / "run", "--retrain-control", "--out", tmp_path / "a")
    assert audited.returncode == 0, audited.stderr
    control = {c["name"]: c for c in json.loads((tmp_path / "a" / "audit.json").read_text())["checks"]}["control"]
    assert control["verdict"] in ("ok", "flag") and control["left_out"] == 0
    folder = tmp_path / "a" / CONTROL_DIR
    run_folds = {r["patient"]: r["fold"] for r in rows(tmp_path / "run" / "folds.csv")}
    control_folds = {r["patient"]: r["fold"] for r in rows(folder / "run" / "folds.csv")}
    assert len(control_folds) > 10 and all(run_folds[p] == k for p, k in control_folds.items())
    held = [r for r in rows(folder / "run" / "predictions.csv") if r["part"] == "cv"]
    assert {r["fold"] for r in held} == {"1"} and control["control_auc"]["n"] == len(held)
    assert {r["patient"] for r in held} == {p for p, k in run_folds.items() if k == "1"}  # the run's held-out fold
    manifest = rows(folder / "manifest.csv")
    assert len(manifest) == control["images"] and {r["scanner"] for r in manifest} == {"A", "B"}  # cells travel
    assert all(Path(r["path"]).is_relative_to(folder) and Path(r["path"]).name == "blanked-full.png" for r in manifest)
    assert "bbox" not in manifest[0]  # the lesion is gone, and so is its box
    again = invoke_cli("audit", tmp_path / "run", "--retrain-control", "--out", tmp_path / "a")
    assert again.returncode == 0 and "reusing the finished control run" in again.stderr
    assert "Control model (lesion blanked)" in again.stdout


def test_a_recipe_that_sees_the_lesion_another_way_gets_no_control_model_and_says_why():
    from lnzoo.audit.control import _unsupported
    from lnzoo.recipe import load_recipe
    from tests.conftest import REPO

    assert _unsupported(load_recipe(REPO / "recipes" / "stage1_aux.toml", quick=True).config) is None
    crop = _unsupported(load_recipe(REPO / "recipes" / "stage3_origin_fusion.toml", quick=True).config)
    assert crop and "crop" in crop
    llnm = _unsupported(load_recipe(REPO / "recipes" / "llnm_multimodal.toml", quick=True).config)
    assert llnm and "inputs beside the images" in llnm
