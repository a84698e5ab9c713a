"""Seed list files and manifests: aliases, BOM/CRLF, merging main + auxiliary lists, clear row errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lnzoo.data.images import Preprocessing, load_image, roi_box
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


def test_class_folder_tree_with_alias_folder_names(tmp_path):
    for cls, n in (("良性", 2), ("malignant", 3)):
        for i in range(n):
            _img(tmp_path / "tree" / cls / f"P{cls[:1]}{i}_1.png")
    (tmp_path / "tree" / "notes").mkdir()
    with pytest.raises(DataError, match="notes: folder name is not a class"):
        load_source(str(tmp_path / "tree"), TASKS, {**CFG, "patient_regex": None, "main_task": "malignancy"})
    (tmp_path / "tree" / "notes").rmdir()
    samples = load_source(str(tmp_path / "tree"), TASKS, {**CFG, "patient_regex": None, "main_task": "malignancy"})
    assert sorted(s.labels["malignancy"] for s in samples) == [0, 0, 1, 1, 1]
    assert all(s.labels["enlargement"] == MISSING for s in samples)


def test_medmnist_npz_splits(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{sp}_images": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8) for sp, n in
              (("train", 6), ("val", 2), ("test", 3))}
    arrays.update({f"{sp}_labels": rng.integers(0, 2, (len(arrays[f"{sp}_images"]), 1)) for sp in ("train", "val", "test")})
    np.savez(tmp_path / "b.npz", **arrays)
    cfg = {**CFG, "main_task": "malignancy"}
    pool = load_source(str(tmp_path / "b.npz"), TASKS, cfg)
    test = load_source(f"{tmp_path / 'b.npz'}#test", TASKS, cfg)
    assert len(pool) == 8 and len(test) == 3
    assert [s.labels["malignancy"] for s in test] == arrays["test_labels"][:, 0].tolist()
    img = load_image(test[1].views["full"], Preprocessing(28))
    assert np.array_equal(img[..., 0], arrays["test_images"][1])


def test_roi_view_crops_to_the_box_or_the_mask_with_margin(tmp_path):
    frame = np.zeros((100, 100), np.uint8)
    frame[40:60, 20:40] = 255  # the "node"
    Image.fromarray(frame).save(tmp_path / "a.png")
    Image.fromarray(frame).save(tmp_path / "a_mask.png")
    (tmp_path / "m.csv").write_text("path,patient,malignancy,bbox,mask\n"
                                    "a.png,p1,benign,20 40 40 60,\n"
                                    "a.png,p2,benign,,a_mask.png\n", encoding="utf-8")
    cfg = {**CFG, "views": ["full", "roi"], "bbox_column": "bbox", "mask_column": "mask"}
    box_s, mask_s = load_source(str(tmp_path / "m.csv"), {"malignancy": TASKS["malignancy"]}, cfg, problems=[])
    pre = Preprocessing(30, roi_margin=0.0)
    for s in (box_s, mask_s):
        roi = load_image(s.views["roi"], pre, roi=s.rois["roi"], margin=0.0)
        assert roi.min() == 255  # exactly the node, nothing around it
    with_margin = load_image(box_s.views["roi"], pre, roi=box_s.rois["roi"], margin=0.5)
    assert with_margin.min() == 0 and with_margin.max() == 255
    bad = tmp_path / "bad.csv"
    bad.write_text("path,patient,malignancy,bbox\na.png,p1,benign,40 40 20\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv:2: bbox '40 40 20' is not 'x0 y0 x1 y1'"):
        load_source(str(bad), {"malignancy": TASKS["malignancy"]}, cfg)


def test_disk_cache_is_keyed_by_content_and_preprocessing(tmp_path):
    from lnzoo.data.dataset import ImageCache

    _img(tmp_path / "a.png", value=10)
    pre = Preprocessing(8)
    first = ImageCache(pre, disk_dir=tmp_path / "cache").get(tmp_path / "a.png")
    entries = list((tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == 1
    again = ImageCache(pre, disk_dir=tmp_path / "cache").get(tmp_path / "a.png")  # a new run: read from disk
    assert np.array_equal(first, again) and len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    _img(tmp_path / "a.png", value=200)  # the file changed: a new entry, never the stale one
    changed = ImageCache(pre, disk_dir=tmp_path / "cache").get(tmp_path / "a.png")
    assert changed.mean() > 150 and len(list((tmp_path / "cache").rglob("*.npy"))) == 2
    ImageCache(Preprocessing(16), disk_dir=tmp_path / "cache").get(tmp_path / "a.png")
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 3


def _image_with_masks(folder) -> None:
    """a.png (a white square on black), its mask ok_mask.png, and an empty_mask.png marking nothing."""
    frame = np.zeros((50, 50), np.uint8)
    frame[10:20, 10:20] = 255
    Image.fromarray(frame).save(folder / "a.png")
    Image.fromarray(frame).save(folder / "ok_mask.png")
    Image.fromarray(np.zeros_like(frame)).save(folder / "empty_mask.png")


def test_data_checks_report_an_empty_or_missing_roi_mask_before_training(tmp_path):
    from lnzoo.data.checks import check_files

    _image_with_masks(tmp_path)
    (tmp_path / "m.csv").write_text("path,patient,malignancy,mask\na.png,p1,benign,ok_mask.png\n"
                                    "a.png,p2,benign,empty_mask.png\na.png,p3,benign,gone.png\n", encoding="utf-8")
    cfg = {**CFG, "views": ["roi"], "mask_column": "mask"}
    samples = load_source(str(tmp_path / "m.csv"), {"malignancy": TASKS["malignancy"]}, cfg, problems=[])
    problems: list[str] = []
    assert check_files(samples, problems, {}) == {1, 2}
    assert any("m.csv:3" in p and "empty_mask.png is empty" in p for p in problems)
    assert any("m.csv:4" in p and "gone.png not found" in p for p in problems)


def test_empty_masks_follow_the_recipe_policy_whole_image_or_missing_view(tmp_path):
    from lnzoo.data.checks import check_files
    from lnzoo.predict import read_serving_manifest

    _image_with_masks(tmp_path)
    (tmp_path / "m.csv").write_text("path,patient,malignancy,mask\na.png,p1,benign,ok_mask.png\n"
                                    "a.png,p2,benign,empty_mask.png\n", encoding="utf-8")
    task = {"malignancy": TASKS["malignancy"]}
    pre = Preprocessing(20)

    whole = {**CFG, "views": ["roi"], "mask_column": "mask", "empty_roi": "whole_image"}
    ok, empty = load_source(str(tmp_path / "m.csv"), task, whole, problems=[])
    assert check_files([ok, empty], [], {}) == set()
    assert "roi" in ok.rois and "roi" not in empty.rois
    uncropped = load_image(empty.views["roi"], pre, roi=empty.rois.get("roi"))
    cropped = load_image(ok.views["roi"], pre, roi=ok.rois["roi"])
    assert uncropped.mean() < cropped.mean()  # the whole frame is mostly black, the crop mostly the square

    missing = {**CFG, "views": ["full", "roi"], "mask_column": "mask", "empty_roi": "missing"}
    ok, empty = load_source(str(tmp_path / "m.csv"), task, missing, problems=[])
    assert empty.views["roi"] is None and empty.views["full"] is not None and ok.views["roi"] is not None

    problems: list[str] = []
    only_roi = {**missing, "views": ["roi"]}
    assert len(load_source(str(tmp_path / "m.csv"), task, only_roi, problems=problems)) == 1
    assert any("m.csv:3" in p and "only view" in p and "whole_image" in p for p in problems)

    # serving reads the same policy from the model's recipe
    (tmp_path / "serve.csv").write_text("path,mask\na.png,empty_mask.png\n", encoding="utf-8")
    served = read_serving_manifest(tmp_path / "serve.csv", ["roi"], whole)
    assert served[0].views["roi"] is not None and not served[0].rois
    with pytest.raises(DataError, match="empty_roi"):
        load_image(empty.views["full"], pre, "m.csv:3", roi=tmp_path / "empty_mask.png")


def test_a_mask_larger_than_its_image_crops_to_its_scaled_extent_even_when_tiny(tmp_path):
    from lnzoo.data.samples import _mask_is_empty

    big = np.zeros((400, 400), np.uint8)
    big[200:203, 300:303] = 255  # 3x3 marked pixels: nearest-neighbour resizing to 40x40 would lose them
    Image.fromarray(big).save(tmp_path / "big_mask.png")
    assert not _mask_is_empty(tmp_path / "big_mask.png")
    x0, y0, x1, y1 = roi_box(tmp_path / "big_mask.png", (40, 40), margin=0.0)
    assert (x0, y0) == (30, 20) and x1 - x0 >= 1 and y1 - y0 >= 1
    half = np.zeros((40, 80), np.uint8)  # a mask at twice the image's width marking its right half
    half[:, 40:] = 255
    Image.fromarray(half).save(tmp_path / "half_mask.png")
    assert roi_box(tmp_path / "half_mask.png", (40, 40), margin=0.0) == (20, 0, 40, 40)


@pytest.mark.parametrize("normalize", ["imagenet", "half"])
def test_every_way_an_image_is_normalised_gives_the_same_bits(normalize):
    """Training (torch tensors), predicting, serving and ONNX (numpy, by table lookup, into a channels-last batch)
    scale pixels by one rule, to the bit: a model never sees other inputs than it was trained on."""
    import torch

    from lnzoo.data.encode import encode_batch
    from lnzoo.data.images import normalise
    from lnzoo.data.samples import Sample

    pre = Preprocessing(16, normalize=normalize)
    rng = np.random.default_rng(0)
    images = {v: rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for v in "ab"}
    every_level = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(16, 16), (3, 16, 16)).copy()
    mean, std = (np.asarray(v, dtype=np.float32).reshape(3, 1, 1) for v in pre.mean_std)
    expected = (every_level.astype(np.float32) / np.float32(255.0) - mean) / std
    assert np.array_equal(normalise(every_level, pre), expected)
    assert np.array_equal(normalise(torch.from_numpy(every_level), pre).numpy(), expected)
    assert np.array_equal(normalise(every_level.astype(np.float64), pre), expected)  # not uint8: computed
    samples = [Sample({"full": "a", "roi": None}, "P1", {}, "r1"), Sample({"full": "b", "roi": "a"}, "P2", {}, "r2")]
    plain, present, _ = encode_batch(samples, ["full", "roi"], pre, lambda p, o, r: images[p])
    last, _, _ = encode_batch(samples, ["full", "roi"], pre, lambda p, o, r: images[p], channels_last=True)
    assert np.array_equal(plain, last) and present.tolist() == [[True, False], [True, True]]
    assert np.array_equal(plain[1, 0], normalise(images["b"].transpose(2, 0, 1), pre)) and not plain[0, 1].any()
    assert torch.from_numpy(last).flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("resize", ["squash", "letterbox"])
def test_a_grey_image_kept_one_band_until_the_end_gives_the_pixels_of_three(tmp_path, resize):
    """Grey images are cropped and resized as one band and replicated last (a third of the work): for sizes up
    and down, odd shapes and ROI boxes, the pixels are those of replicating first, to the bit."""
    from PIL import ImageOps

    rng = np.random.default_rng(1)
    for k in range(40):
        h, w = (int(v) for v in rng.integers(9, 400, 2))
        grey = rng.integers(0, 256, (h, w), dtype=np.uint8) if k % 2 else \
            (np.add.outer(np.arange(h), 3 * np.arange(w)) % 256).astype(np.uint8)
        path = tmp_path / f"g{k}.png"
        Image.fromarray(grey, "L").save(path)
        size = int(rng.choice([16, 48, 96, 224]))
        roi = None if k % 3 == 0 else (0.1 * w, 0.2 * h, 0.9 * w, 0.7 * h)
        pre = Preprocessing(size, resize=resize)
        rgb = Image.fromarray(grey, "L").convert("RGB")  # the order before: replicate, then crop and resize
        if roi is not None:
            rgb = rgb.crop(roi_box(roi, rgb.size, pre.roi_margin))
        rgb = ImageOps.pad(rgb, (size, size), method=Image.BILINEAR, color=(0, 0, 0)) if resize == "letterbox" \
            else rgb.resize((size, size), Image.BILINEAR)
        assert np.array_equal(load_image(path, pre, roi=roi), np.asarray(rgb)), (k, h, w, size, roi)
