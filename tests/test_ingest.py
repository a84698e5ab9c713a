"""``lnzoo ingest``: DICOM ultrasound into a dataset. Real files nobody here wrote (pydicom's own ultrasound test
files), files built here to hold one odd property each, and the promise that no identifier leaves ingest."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pydicom = pytest.importorskip("pydicom")

from PIL import Image  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid  # noqa: E402

from lnzoo.errors import DataError, UsageError  # noqa: E402
from lnzoo.ingest.dataset import ingest  # noqa: E402
from lnzoo.ingest.dicom import frame_indices, open_dicom  # noqa: E402
from tests.conftest import invoke_cli  # noqa: E402

PHI = {"PatientName": "Fakename^Jane", "PatientID": "MRN-998877", "PatientBirthDate": "19700101",
       "AccessionNumber": "ACC-445566", "InstitutionName": "St Nowhere Hospital", "StudyDate": "20240229",
       "ReferringPhysicianName": "Doctor^Who"}
REAL = ["examples_jpeg2k.dcm", "examples_ybr_color.dcm", "examples_palette.dcm", "examples_rgb_color.dcm"]


def us_file(path: Path, pixels: np.ndarray | None = None, *, photometric: str = "MONOCHROME2", bits: int = 8,
            regions: list[dict] | None = None, modality: str = "US", frames_declared: int | None = None,
            extra: dict | None = None, sop: str | None = None) -> Path:
    """An ultrasound DICOM file of ``pixels`` ((H, W), (H, W, 3), or a leading frame axis), with PHI in its header."""
    pixels = np.zeros((64, 80), np.uint8) if pixels is None else pixels
    multi = pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] != 3)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = sop or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.5"
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = modality, "Acme", "Scanner 9"
    for key, value in PHI.items():
        setattr(ds, key, value)
    shape = pixels.shape[1:] if multi else pixels.shape
    ds.Rows, ds.Columns = shape[0], shape[1]
    ds.SamplesPerPixel = 3 if len(shape) == 3 else 1
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if multi or frames_declared:
        ds.NumberOfFrames = frames_declared or pixels.shape[0]
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    if regions:
        items = []
        for r in regions:
            item = Dataset()
            item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = r["format"], r["type"], 0
            item.RegionLocationMinX0, item.RegionLocationMinY0 = r["box"][0], r["box"][1]
            item.RegionLocationMaxX1, item.RegionLocationMaxY1 = r["box"][2] - 1, r["box"][3] - 1  # inclusive
            item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3
            item.PhysicalDeltaX = item.PhysicalDeltaY = r.get("cm", 0.01)
            items.append(item)
        ds.SequenceOfUltrasoundRegions = items
    ds.PixelData = pixels.astype(np.uint16 if bits > 8 else np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def rows_of(out: Path, name: str = "manifest.csv") -> list[dict]:
    with (out / name).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def png(out: Path, row: dict) -> np.ndarray:
    with Image.open(out / row["path"]) as img:
        return np.asarray(img.convert("RGB"))


def every_byte(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def no_identifier_in(folder: Path, values, family_names: bool = True) -> None:
    blob = every_byte(folder)
    for value in values:
        variants = {str(value), str(value).replace("^", " "), *([str(value).split("^")[0]] if family_names else [])}
        for variant in variants:
            if len(variant) >= 3:
                assert variant.encode() not in blob, f"{variant!r} was written under {folder}"


@pytest.fixture(autouse=True)
def _own_key(monkeypatch):
    monkeypatch.setenv("LNZOO_INGEST_KEY", "a test key that is long enough")


# -- real files nobody here wrote ------------------------------------------------------------------------------------
def _reference(name: str) -> np.ndarray:
    """pydicom's own decoding of the file, all frames, as RGB uint8: what ingest's pixels must equal."""
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(get_testdata_file(name))
    arr = ds.pixel_array
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        arr = (arr / 257).round().astype(np.uint8) if arr.dtype != np.uint8 else arr
    return arr if arr.ndim == 4 else arr[None]


@pytest.mark.parametrize("name", REAL)
def test_pydicoms_ultrasound_files_are_ingested_with_their_colours_frames_and_no_identifier(tmp_path, name):
    src = tmp_path / "pacs" / name
    src.parent.mkdir()
    shutil.copy(get_testdata_file(name), src)
    done = ingest([src.parent], tmp_path / "ds")
    ds = pydicom.dcmread(src)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    assert done.counts == {"ingested": 1} and done.frames == frames
    rows = rows_of(tmp_path / "ds")
    assert [int(r["frame"]) for r in rows] == list(range(frames))
    assert len({r["loop"] for r in rows}) == 1 and len({r["patient"] for r in rows}) == 1
    reference = _reference(name)
    for row in rows[:3]:
        x0, y0, x1, y1 = (int(row[k]) for k in ("region_x0", "region_y0", "region_x1", "region_y1"))
        expected = reference[int(row["frame"])][y0:y1, x0:x1]
        got = png(tmp_path / "ds", row)
        assert got.shape == expected.shape and np.array_equal(got, expected), name  # the colours as pydicom's
    no_identifier_in(tmp_path / "ds", [ds.PatientName, ds.PatientID, ds.SOPInstanceUID, ds.StudyInstanceUID,
                                       *([ds.InstitutionName] if ds.get("InstitutionName") else [])])


@pytest.mark.parametrize("name", ["examples_jpeg2k.dcm", "examples_rgb_color.dcm"])
def test_the_burned_in_hospital_name_is_cut_away_with_the_screen_around_the_image(tmp_path, name):
    """These frames have no region in the header: the image area is found from the pixels, and the text above it
    (the hospital's name, the patient's, the time) is left outside the crop."""
    src = tmp_path / "pacs" / name
    src.parent.mkdir()
    shutil.copy(get_testdata_file(name), src)
    ingest([src.parent], tmp_path / "ds")
    (row,) = rows_of(tmp_path / "ds")
    height = pydicom.dcmread(src).Rows
    assert row["region_source"] != "whole frame"
    assert int(row["region_y0"]) >= 0.1 * height  # the name is written in the top 10% of the screen
    assert int(row["width"]) * int(row["height"]) >= 0.3 * height * pydicom.dcmread(src).Columns


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "examples_palette.dcm"])
def test_a_header_region_that_does_not_fit_the_frame_is_named_and_not_used(tmp_path, name):
    src = tmp_path / "pacs" / name
    src.parent.mkdir()
    shutil.copy(get_testdata_file(name), src)
    ingest([src.parent], tmp_path / "ds", frames="middle")
    (entry,) = rows_of(tmp_path / "ds", "ingest_log.csv")
    assert entry["status"] == "ingested" and "lies outside the" in entry["reason"], entry
    (row,) = rows_of(tmp_path / "ds")
    assert row["region_source"] != "header"


# -- the region, the colours, the bits ------------------------------------------------------------------------------
def _screen(h: int = 120, w: int = 160, box=(30, 20, 130, 100), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frame = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    frame[y0:y1, x0:x1] = rng.integers(40, 200, (y1 - y0, x1 - x0))
    return frame


def test_the_largest_tissue_region_is_the_image_and_a_spectral_strip_never_is(tmp_path):
    frame = _screen(h=160, box=(20, 10, 140, 90))
    frame[100:150, 10:150] = 90  # a spectral Doppler strip, larger than the image
    us_file(tmp_path / "in" / "a.dcm", frame, regions=[
        {"format": 3, "type": 3, "box": (10, 100, 150, 150)},  # PW spectral Doppler: never the image
        {"format": 1, "type": 1, "box": (20, 10, 140, 90), "cm": 0.005},
        {"format": 1, "type": 1, "box": (0, 0, 10, 10)},  # a smaller tissue region
    ])
    ingest([tmp_path / "in"], tmp_path / "ds")
    (row,) = rows_of(tmp_path / "ds")
    assert (row["region_x0"], row["region_y0"], row["region_x1"], row["region_y1"]) == ("20", "10", "140", "90")
    assert row["region_source"] == "header" and row["region_kind"] == "tissue"
    assert float(row["pixel_mm_x"]) == pytest.approx(0.05) and float(row["pixel_mm_y"]) == pytest.approx(0.05)
    assert np.array_equal(png(tmp_path / "ds", row)[..., 0], frame[10:90, 20:140])


@pytest.mark.parametrize("photometric, bits, values, expect", [
    ("MONOCHROME2", 8, [0, 128, 255], [0, 128, 255]),
    ("MONOCHROME1", 8, [0, 128, 255], [255, 127, 0]),  # inverted: bright is echogenic
    ("MONOCHROME2", 16, [0, 32768, 65535], [0, 127, 255]),  # the stored range, linearly
])
def test_greyscale_is_shown_bright_for_echogenic_and_scaled_to_8_bits_by_the_stated_rule(
        tmp_path, photometric, bits, values, expect):
    frame = np.zeros((40, 60), np.uint16 if bits > 8 else np.uint8)
    for i, v in enumerate(values):
        frame[:, i * 20:(i + 1) * 20] = v
    image = open_dicom(us_file(tmp_path / "a.dcm", frame, photometric=photometric, bits=bits))
    got = image.frame(0)
    assert got.dtype == np.uint8 and got.shape == (40, 60, 3)
    assert [int(got[0, i * 20, 0]) for i in range(3)] == expect


def test_a_16_bit_window_in_the_header_decides_the_scale(tmp_path):
    frame = np.full((20, 30), 1000, np.uint16)
    frame[:, 10:20], frame[:, 20:] = 1500, 4000
    image = open_dicom(us_file(tmp_path / "a.dcm", frame, bits=16, extra={"WindowCenter": 1500, "WindowWidth": 1000}))
    assert [int(image.frame(0)[0, x, 0]) for x in (0, 10, 20)] == [0, 127, 255]


# -- loops and frames -----------------------------------------------------------------------------------------------
@given(n=st.integers(1, 300), k=st.integers(1, 50))
@settings(max_examples=80, deadline=None)
def test_frame_rules_take_frames_of_the_loop_in_order_and_no_other(n, k):
    for rule in ("all", "middle", f"every:{k}", f"max:{k}"):
        got = frame_indices(n, rule)
        assert got == sorted(set(got)) and got and all(0 <= i < n for i in got)
    assert frame_indices(n, f"every:{k}") == list(range(0, n, k))
    assert len(frame_indices(n, f"max:{k}")) == min(n, k)
    if min(n, k) >= 2:
        assert frame_indices(n, f"max:{k}")[0] == 0 and frame_indices(n, f"max:{k}")[-1] == n - 1


@pytest.mark.parametrize("rule", ["some", "every:0", "max:x", "every:", "max:-2"])
def test_a_bad_frame_rule_is_refused_before_any_file_is_read(tmp_path, rule):
    with pytest.raises(DataError, match="--frames"):
        ingest([tmp_path], tmp_path / "ds", frames=rule)
    assert not (tmp_path / "ds").exists()


def test_every_frame_of_a_loop_shares_patient_and_loop_and_the_static_text_stays_out(tmp_path):
    rng = np.random.default_rng(1)
    loop = np.zeros((6, 120, 160), np.uint8)
    loop[:, 5:15, 5:100] = 255  # burned-in text band: the same in every frame
    loop[:, 30:110, 40:150] = rng.integers(30, 220, (6, 80, 110))  # the live image
    us_file(tmp_path / "in" / "loop.dcm", loop)
    ingest([tmp_path / "in"], tmp_path / "ds", frames="every:2")
    rows = rows_of(tmp_path / "ds")
    assert [r["frame"] for r in rows] == ["0", "2", "4"] and {r["frames"] for r in rows} == {"6"}
    assert len({(r["patient"], r["loop"], r["study"]) for r in rows}) == 1
    assert rows[0]["region_source"] == "moving content"
    x0, y0, x1, y1 = (int(rows[0][k]) for k in ("region_x0", "region_y0", "region_x1", "region_y1"))
    assert y0 >= 15 and abs(x0 - 40) <= 3 and abs(x1 - 150) <= 3 and abs(y1 - 110) <= 3


# -- bad files: named in the log, the rest ingested ------------------------------------------------------------------
def test_bad_files_are_named_with_their_reason_and_the_rest_of_the_folder_is_ingested(tmp_path):
    src = tmp_path / "in"
    us_file(src / "good.dcm", _screen())
    us_file(src / "ct.dcm", _screen(), modality="CT")
    us_file(src / "short_loop.dcm", np.stack([_screen()] * 3), frames_declared=5)
    no_pixels = us_file(src / "no_pixels.dcm", _screen())
    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    (src / "truncated.dcm").write_bytes(us_file(tmp_path / "t.dcm", _screen()).read_bytes()[:-3000])
    us_file(src / "outside.dcm", _screen(), regions=[{"format": 1, "type": 1, "box": (100, 60, 400, 300)}])
    (src / "notes.txt").write_text("not an image")
    done = ingest([src], tmp_path / "ds")
    log = {r["file"]: r for r in rows_of(tmp_path / "ds", "ingest_log.csv")}
    assert set(log) == {"good.dcm", "ct.dcm", "short_loop.dcm", "no_pixels.dcm", "truncated.dcm", "outside.dcm"}
    assert log["good.dcm"]["status"] == "ingested" and log["good.dcm"]["reason"] == ""
    assert log["ct.dcm"]["status"] == "refused" and "not ultrasound" in log["ct.dcm"]["reason"]
    assert log["short_loop.dcm"]["status"] == "refused" and "cannot be decoded" in log["short_loop.dcm"]["reason"]
    assert "without pixel data" in log["no_pixels.dcm"]["reason"]
    assert log["truncated.dcm"]["status"] == "refused"
    assert log["outside.dcm"]["status"] == "ingested" and "lies outside the 160x120 frame" in log["outside.dcm"]["reason"]
    assert done.counts == {"ingested": 2, "refused": 4}
    again = ingest([src], tmp_path / "ds2", any_modality=True)
    assert again.counts["ingested"] == 3  # the CT file, when asked for


def test_a_compression_no_decoder_reads_is_named(tmp_path):
    path = us_file(tmp_path / "in" / "a.dcm", _screen())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML  # video: no pixel decoder in pydicom
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(path)
    ingest([tmp_path / "in"], tmp_path / "ds")
    (entry,) = rows_of(tmp_path / "ds", "ingest_log.csv")
    assert entry["status"] == "refused" and "no DICOM decoder for Python reads" in entry["reason"]


# -- de-identification ----------------------------------------------------------------------------------------------
def test_pseudonyms_are_stable_under_one_key_and_nothing_identifying_is_written(tmp_path, monkeypatch):
    sop = generate_uid()
    us_file(tmp_path / "in" / "a.dcm", _screen(), sop=sop)
    ingest([tmp_path / "in"], tmp_path / "one")
    ingest([tmp_path / "in"], tmp_path / "two")
    monkeypatch.setenv("LNZOO_INGEST_KEY", "another key, long enough too")
    ingest([tmp_path / "in"], tmp_path / "three")
    one, two, three = (rows_of(tmp_path / d)[0] for d in ("one", "two", "three"))
    for col in ("patient", "study", "series", "exam", "loop"):
        assert one[col] == two[col] != three[col] and one[col]
    for folder in ("one", "two", "three"):
        no_identifier_in(tmp_path / folder, [*PHI.values(), sop, "1.2.3.4"])
    with Image.open(tmp_path / "one" / one["path"]) as img:
        assert not img.info.get("text") and set(img.info) <= {"dpi", "gamma"}  # no metadata in the PNG


def test_without_a_key_one_is_created_beside_the_dataset_private_and_git_ignored(tmp_path, monkeypatch):
    monkeypatch.delenv("LNZOO_INGEST_KEY")
    us_file(tmp_path / "in" / "a.dcm", _screen())
    first = ingest([tmp_path / "in"], tmp_path / "ds")
    key = tmp_path / "ds.ingest-key"
    assert key.is_file() and oct(key.stat().st_mode & 0o777) == "0o600" and "(new)" in first.key_source
    assert "ds.ingest-key" in (tmp_path / ".gitignore").read_text().splitlines()
    assert not list((tmp_path / "ds").rglob("*key*"))  # never inside the dataset
    shutil.rmtree(tmp_path / "ds")
    ingest([tmp_path / "in"], tmp_path / "ds")  # the same key again: the same pseudonyms
    assert (tmp_path / ".gitignore").read_text().splitlines().count("ds.ingest-key") == 1


def test_ingesting_again_adds_only_the_new_files(tmp_path):
    us_file(tmp_path / "in" / "a.dcm", _screen(seed=1))
    ingest([tmp_path / "in"], tmp_path / "ds")
    before = (tmp_path / "ds" / "manifest.csv").read_bytes()
    us_file(tmp_path / "in" / "b.dcm", _screen(seed=2))
    again = ingest([tmp_path / "in"], tmp_path / "ds")
    assert again.counts == {"skipped": 1, "ingested": 1}
    rows = rows_of(tmp_path / "ds")
    assert len(rows) == 2 and (tmp_path / "ds" / "manifest.csv").read_bytes().startswith(before.split(b"\r\n")[0])
    log = rows_of(tmp_path / "ds", "ingest_log.csv")
    assert [(r["file"], r["status"]) for r in log] == [("a.dcm", "ingested"), ("a.dcm", "skipped"),
                                                       ("b.dcm", "ingested")]


@pytest.mark.parametrize("key_column, value", [("accession_number", PHI["AccessionNumber"]), ("study", "1.2.3.4"),
                                               ("series", "1.2.3.4.5"), ("file", "a.dcm")])
def test_labels_join_by_accession_study_series_or_file_and_identifying_columns_are_dropped(tmp_path, key_column,
                                                                                          value):
    us_file(tmp_path / "in" / "a.dcm", _screen())
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{key_column},malignancy,patient_name,mrn,path\n{value},malignant,{PHI['PatientName']},"
                      f"{PHI['PatientID']},elsewhere.png\n", encoding="utf-8")
    done = ingest([tmp_path / "in"], tmp_path / "ds", labels=labels)
    (row,) = rows_of(tmp_path / "ds")
    assert row["malignancy"] == "malignant" and done.unlabelled == 0
    assert row["path"].startswith("images/")  # a label column named like one ingest writes does not replace it
    assert "patient_name" not in row and "mrn" not in row and value not in row.values()
    assert key_column in ("study", "series") or key_column not in row  # those two are the pseudonym columns
    no_identifier_in(tmp_path / "ds", PHI.values())


def test_the_command_prints_what_it_did_and_where_the_key_is(tmp_path):
    us_file(tmp_path / "in" / "a.dcm", _screen())
    done = invoke_cli("ingest", tmp_path / "in", "--out", tmp_path / "ds", "--frames", "max:4")
    assert done.returncode == 0, done.stderr
    assert "ingested" in done.stdout and "pseudonym key: $LNZOO_INGEST_KEY" in done.stdout
    assert "frames/s" in done.stdout
    bad = invoke_cli("ingest", tmp_path / "in", "--out", tmp_path / "in" / "ds")
    assert bad.returncode == 2 and "inside the DICOM folder" in bad.stderr
    assert os.path.exists(tmp_path / "ds" / "manifest.csv")


def test_predict_reads_a_dicom_file_as_ingest_cuts_it(tmp_path):
    """A .dcm given to lnzoo's image reader (predict, serve, a manifest row) is the same crop ingest writes."""
    from lnzoo.data.images import read_pixels

    path = us_file(tmp_path / "in" / "a.dcm", _screen(), regions=[{"format": 1, "type": 1, "box": (30, 20, 130, 100)}])
    ingest([tmp_path / "in"], tmp_path / "ds", inside_marks="keep")
    (row,) = rows_of(tmp_path / "ds")
    with read_pixels(path) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), png(tmp_path / "ds", row))



def test_the_server_takes_a_dicom_upload_as_ingest_cuts_it_and_answers_nothing_of_its_header(tiny_run, tmp_path):
    from fastapi.testclient import TestClient

    from lnzoo.serve import create_app

    rng = np.random.default_rng(3)
    frame = _screen(h=200, w=240, box=(40, 30, 200, 170))
    frame[5:15, 5:120] = 255  # burned-in text above the region
    path = us_file(tmp_path / "in" / "a.dcm", frame + rng.integers(0, 2, frame.shape).astype(np.uint8),
                   regions=[{"format": 1, "type": 1, "box": (40, 30, 200, 170)}])
    ingest([tmp_path / "in"], tmp_path / "ds", inside_marks="keep")
    (row,) = rows_of(tmp_path / "ds")
    client = TestClient(create_app([tiny_run]))

    def ask(name: str, data: bytes, kind: str):
        got = client.post("/api/predict", files={"full": (name, data, kind)}, data={"gradcam": "false"})
        assert got.status_code == 200, got.text
        return got

    by_dicom = ask("a.dcm", path.read_bytes(), "application/dicom")
    by_png = ask("a.png", (tmp_path / "ds" / row["path"]).read_bytes(), "image/png")
    assert by_dicom.json()["tasks"] == by_png.json()["tasks"]
    for value in [*PHI.values(), pydicom.dcmread(path).SOPInstanceUID]:
        assert str(value) not in by_dicom.text and str(value).split("^")[0] not in by_dicom.text
    truncated = client.post("/api/predict", files={"full": ("b.dcm", path.read_bytes()[:-5000], "application/dicom")})
    assert truncated.status_code == 422 and "full: DICOM pixel data that cannot be decoded" in truncated.json()["error"]


# -- the DICOM phantom: a scanner's screens with fake identities burned in -----------------------------------------
@pytest.fixture(scope="module")
def dicom_phantom(tmp_path_factory):
    from lnzoo.data.phantom_dicom import generate_dicom_phantom

    out = tmp_path_factory.mktemp("dicom_phantom")
    truth = generate_dicom_phantom(out, patients=12, seed=3)
    return out, json.loads(truth.read_text())["files"]


def _ingested(out: Path) -> list[tuple[str, dict]]:
    """(file, manifest row) pairs, the file from the log (the manifest keeps no file name)."""
    log = rows_of(out, "ingest_log.csv")
    files = [e["file"] for e in log if e["status"] == "ingested" for _ in range(int(e["frames"]))]
    rows = rows_of(out)
    assert len(files) == len(rows)
    return list(zip(files, rows))


def test_the_dicom_phantom_is_cut_to_its_regions_flagged_where_marked_and_leaves_no_identity(dicom_phantom, tmp_path,
                                                                                           monkeypatch):
    src, truth = dicom_phantom
    monkeypatch.delenv("LNZOO_INGEST_KEY")
    done = ingest([src], tmp_path / "ds")
    assert done.counts == {"ingested": len(truth)} and "(new)" in done.key_source
    pairs = _ingested(tmp_path / "ds")
    assert sum(int(truth[f]["frames"]) for f in truth) == len(pairs)
    flagged = {(bool(truth[f]["calipers"]), r["marks_caliper"] == "1") for f, r in pairs}
    assert flagged == {(True, True), (False, False)}  # every drawn caliper flagged, nothing else
    assert {(bool(truth[f]["text_inside"]), r["marks_text"] == "1") for f, r in pairs} == {(True, True), (False, False)}
    for file, row in pairs:
        t = truth[file]
        box = [int(row[k]) for k in ("region_x0", "region_y0", "region_x1", "region_y1")]
        assert box == t["region"] and row["region_source"] == "header", file  # the crop is the region
        for x0, y0, x1, y1 in t["text_outside"]:  # no burned-in text of the screen inside the crop
            assert x1 <= box[0] or x0 >= box[2] or y1 <= box[1] or y0 >= box[3], (file, (x0, y0, x1, y1))
        assert float(row["pixel_mm_x"]) == pytest.approx(t["pixel_mm"][0], rel=1e-4)
        assert row["malignancy"] != "" or row["enlargement"] != "" or row["pathology3"] != ""  # labels joined
    patients = {}
    for file, row in pairs:  # one pseudonym per phantom patient, distinct between patients
        patients.setdefault(truth[file]["patient"], set()).add(row["patient"])
    assert all(len(p) == 1 for p in patients.values()) and len(set().union(*patients.values())) == len(patients)
    phi = {v for t in truth.values() for v in t["phi"].values() if v}
    no_identifier_in(tmp_path / "ds", phi, family_names=False)  # the phantom's model is a SYNTHETIC SCANNER
    assert not any(value.encode() in (tmp_path / ".gitignore").read_bytes() for value in phi)
    again = ingest([src], tmp_path / "ds2")  # a dataset of its own gets a key of its own ...
    assert {r["patient"] for _, r in _ingested(tmp_path / "ds2")}.isdisjoint({r["patient"] for _, r in pairs})
    same = ingest([src], tmp_path / "ds3", key_file=tmp_path / "ds.ingest-key")  # ... the first one's key
    assert [r["patient"] for _, r in _ingested(tmp_path / "ds3")] == [r["patient"] for _, r in pairs]
    assert again.counts == same.counts


def test_masking_fills_the_calipers_and_leaves_the_rest_of_the_image(dicom_phantom, tmp_path):
    src, truth = dicom_phantom
    ingest([src], tmp_path / "flag", frames="middle")
    ingest([src], tmp_path / "mask", frames="middle", inside_marks="mask")
    for (file, flag), (_, mask) in zip(_ingested(tmp_path / "flag"), _ingested(tmp_path / "mask")):
        a, b = png(tmp_path / "flag", flag), png(tmp_path / "mask", mask)
        if not truth[file]["calipers"]:
            assert np.array_equal(a, b) and mask["marks_masked"] == "0"
            continue
        assert mask["marks_masked"] == "1"
        changed = np.any(a != b, axis=2)
        assert 0 < changed.mean() < 0.1  # the marks, not the image
        if truth[file]["region_data_type"] != 1:
            continue  # a caliper on colour flow may be taken for flow: the detector's documented blind spot
        x0, y0 = truth[file]["region"][:2]
        for cx0, cy0, cx1, cy1 in truth[file]["calipers"]:
            patch = b[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0].astype(int)
            yellow_or_green = (patch[..., 1] > 200) & (patch[..., 2] < 80)
            assert not yellow_or_green.any(), file  # no caliper colour left


@pytest.mark.slow
def test_a_run_trains_on_the_ingested_phantom_and_no_identity_reaches_the_run_or_its_bundle(dicom_phantom, tmp_path):
    from tests.conftest import REPO, TINY

    src, truth = dicom_phantom
    ingest([src], tmp_path / "ds", frames="max:2")
    sets = [x for s in [*TINY, "cv.run_folds=[0]", "train.epochs=1", f"data.train='{(tmp_path / 'ds' / 'manifest.csv').as_posix()}'"]
            for x in ("--set", s)]
    done = invoke_cli("run", REPO / "recipes" / "stage1_aux.toml", "--quick", *sets, "--n-boot", "20",
                      "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"
    exported = invoke_cli("export", tmp_path / "run", "--out", tmp_path / "bundle")
    assert exported.returncode == 0, exported.stderr
    phi = {v for t in truth.values() for v in t["phi"].values() if v}
    for folder in ("run", "bundle"):  # reports, predictions, sidecars, the model card
        no_identifier_in(tmp_path / folder, phi, family_names=False)


def test_a_mapping_only_when_asked_never_inside_the_dataset_and_study_days_without_dates(tmp_path):
    us_file(tmp_path / "in" / "a.dcm", _screen(seed=1), extra={"StudyDate": "20240101"})
    us_file(tmp_path / "in" / "b.dcm", _screen(seed=2), extra={"StudyDate": "20240111",
                                                               "StudyInstanceUID": "1.2.3.9"})
    with pytest.raises(UsageError, match="re-identifies"):
        ingest([tmp_path / "in"], tmp_path / "ds", mapping=tmp_path / "ds" / "map.csv")
    done = ingest([tmp_path / "in"], tmp_path / "ds", mapping=tmp_path / "map.csv", study_days=True)
    assert done.counts == {"ingested": 2}
    rows = rows_of(tmp_path / "ds")
    assert sorted(r["study_day"] for r in rows) == ["0", "10"]
    (pair,) = rows_of(tmp_path, "map.csv")
    assert pair == {"patient": rows[0]["patient"], "patient_id": PHI["PatientID"]}
    no_identifier_in(tmp_path / "ds", [*PHI.values(), "20240101", "20240111", "2024-01-01"])
    with pytest.raises(UsageError, match="needs every study in one ingest"):
        ingest([tmp_path / "in"], tmp_path / "ds", study_days=True)


def test_overlay_planes_are_not_drawn_and_the_log_says_so(tmp_path):
    src = tmp_path / "in" / "overlay.dcm"
    src.parent.mkdir()
    shutil.copy(get_testdata_file("examples_overlay.dcm"), src)
    ingest([src.parent], tmp_path / "ds", any_modality=True)
    (entry,) = rows_of(tmp_path / "ds", "ingest_log.csv")
    assert entry["status"] == "ingested" and "overlay plane(s)" in entry["reason"]


def test_predict_and_serve_read_the_frame_of_a_loop_they_are_asked_for(tiny_run, tmp_path):
    from fastapi.testclient import TestClient

    from lnzoo.serve import create_app

    loop = np.stack([_screen(seed=s) for s in range(3)])
    loop[2] = 0  # the last frame is black: its call must differ from the first's probabilities
    loop[2, 20:100, 30:130] = 255
    path = us_file(tmp_path / "in" / "loop.dcm", loop, regions=[{"format": 1, "type": 1, "box": (30, 20, 130, 100)}])
    calls = {}
    for frame in ("0", "2"):
        done = invoke_cli("predict", "--model", tiny_run, path, "--frame", frame, "--out", tmp_path / f"f{frame}.csv")
        assert done.returncode == 0, done.stderr
        calls[frame] = rows_of(tmp_path, f"f{frame}.csv")[0]
    key = next(k for k in calls["0"] if k.startswith("p_malignancy_"))
    assert calls["0"][key] != calls["2"][key]
    beyond = invoke_cli("predict", "--model", tiny_run, path, "--frame", "5", "--out", tmp_path / "f5.csv")
    assert beyond.returncode == 2 and "frame 5 asked for, the file has 3" in beyond.stderr
    client = TestClient(create_app([tiny_run]))
    for frame in ("0", "2"):
        got = client.post("/api/predict", files={"full": ("loop.dcm", path.read_bytes(), "application/dicom")},
                          data={"gradcam": "false", "frame": frame})
        assert got.status_code == 200, got.text
        served = got.json()["tasks"]["malignancy"]["raw_probabilities"]
        assert served[key.removeprefix("p_malignancy_")] == pytest.approx(float(calls[frame][key]), abs=1e-5)
    bad = client.post("/api/predict", files={"full": ("loop.dcm", path.read_bytes(), "application/dicom")},
                      data={"frame": "x"})
    assert bad.status_code == 422 and "frame 'x'" in bad.json()["error"]
