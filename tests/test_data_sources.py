"""Seed list files and manifests: aliases, BOM/CRLF, merging main + auxiliary lists, clear row errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lnzoo.data.images import Preprocessing, load_image
from lnzoo.data.samples import MISSING, load_source
from lnzoo.data.splits import check_leakage, patient_folds
from lnzoo.errors import DataError
from lnzoo.plugins import load_plugins

HOST = load_plugins()
TASKS = {n: HOST.get("task", n).build() for n in ("malignancy", "enlargement")}
CFG = {"views": ["full"], "crop_suffix": "-crop", "patient_regex": r"^(P\d+)_", "label_columns": {}}


def _img(path, value=128, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 30), value, np.uint8)).convert(mode).save(path)


def test_main_and_aux_lists_merge_by_path_with_missing_labels(tmp_path):
    for name in ("P1_1", "P1_2", "P2_1"):
        _img(tmp_path / "img" / f"{name}.png")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "main.txt").write_bytes("\ufeff../img/P1_1.png,良性\r\n../img/P2_1.png,恶性\r\n".encode())
    (lists / "aux.txt").write_text("../img/P1_1.png,肿大\n../img/P1_2.png,非肿大\n", encoding="utf-8")
    samples = load_source([str(lists / "main.txt"), str(lists / "aux.txt")], TASKS, CFG)
    by_name = {s.views["full"].name: s for s in samples}
    assert by_name["P1_1.png"].labels == {"malignancy": 0, "enlargement": 1}       # both labels
    assert by_name["P1_2.png"].labels == {"malignancy": MISSING, "enlargement": 0}  # aux only
    assert by_name["P2_1.png"].labels == {"malignancy": 1, "enlargement": MISSING}  # main only
    assert by_name["P1_2.png"].patient == "P1"


def test_every_bad_row_is_reported_with_file_and_line(tmp_path):
    lists = tmp_path / "main.txt"
    lists.write_text("a/P1_1.png,良性\nno comma here\na/P2_1.png,恶姓\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_source(str(lists), TASKS, CFG)
    text = str(info.value)
    assert f"{lists}:2: expected 'path,label'" in text and f"{lists}:3: label '恶姓'" in text


def test_manifest_with_label_column_mapping(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text("path,patient,mal\na.png,p1,benign\nb.png,p2,\n", encoding="utf-8")
    cfg = {**CFG, "label_columns": {"malignancy": "mal"}}
    samples = load_source(str(tmp_path / "m.csv"), {"malignancy": TASKS["malignancy"]}, cfg)
    assert [s.labels["malignancy"] for s in samples] == [0, MISSING]
    assert [s.patient for s in samples] == ["p1", "p2"]


def test_grey_16bit_palette_and_rgba_become_rgb_and_corrupt_files_are_named(tmp_path):
    pre = Preprocessing(16)
    grey16 = tmp_path / "g16.png"
    Image.fromarray((np.arange(400).reshape(20, 20) * 100).astype(np.uint16)).save(grey16)
    arr = load_image(grey16, pre)
    assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8 and arr.max() > 200
    assert np.array_equal(arr[..., 0], arr[..., 2])  # grey replicated to 3 channels
    for mode in ("P", "RGBA", "L"):
        _img(tmp_path / f"x_{mode}.png", mode=mode)
        assert load_image(tmp_path / f"x_{mode}.png", pre).shape == (16, 16, 3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png: unreadable or corrupt"):
        load_image(bad, pre, "list.txt:4")


def test_folds_are_patient_grouped_and_leakage_is_refused(tmp_path):
    from lnzoo.data.samples import Sample
    samples = [Sample({"full": tmp_path / f"{p}_{i}.png"}, p, {"malignancy": int(p[1:]) % 2}, "x")
               for p in [f"P{j}" for j in range(20)] for i in range(3)]
    folds = patient_folds(samples, 5, "malignancy", seed=0)
    assert set(folds.values()) == set(range(5)) and len(folds) == 20
    assert folds == patient_folds(samples, 5, "malignancy", seed=0)  # seeded
    with pytest.raises(DataError, match="patient 'P3' is in both"):
        check_leakage({"train": samples[:12], "test": samples[9:15]})
