"""The DICOM phantom (lnzoo.data.phantom_dicom, ``lnzoo synth --dicom``): every file decodes, carries the
syntaxes, photometrics, cine loops and regions it promises, and truth.json describes its pixels truly --
the ground truth DICOM ingest is tested against."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.pixels import apply_color_lut  # noqa: E402

from lnzoo.data.phantom import ensure_phantom  # noqa: E402
from lnzoo.data.phantom_dicom import LABEL_COLUMNS, generate_dicom_phantom  # noqa: E402
from tests.conftest import invoke_cli  # noqa: E402

PATIENTS = 8
LOSSLESS = ("ExplicitVRLittleEndian", "RLELossless", "JPEG2000Lossless")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """(out folder, truth.json's files, progress calls) of one 8-patient DICOM phantom."""
    out = tmp_path_factory.mktemp("dicom-phantom")
    calls: list[tuple[int, int]] = []
    truth = generate_dicom_phantom(out, patients=PATIENTS, seed=0, progress=lambda d, t: calls.append((d, t)))
    assert truth == out / "truth.json"
    return out, json.loads(truth.read_text(encoding="utf-8"))["files"], calls


def _read(out: Path, rel: str):
    ds = pydicom.dcmread(out / rel)
    return ds, ds.pixel_array


def _rgb_frames(ds, arr: np.ndarray) -> np.ndarray:
    """Decoded pixels as (frames, H, W, 3) uint8 whatever the photometric interpretation."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        arr = arr[None]
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        arr = (arr // 257).astype(np.uint8) if arr.max() > 255 else arr.astype(np.uint8)
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=3)
    return arr


def _inside(box, outer) -> bool:
    return box[0] >= outer[0] and box[1] >= outer[1] and box[2] <= outer[2] and box[3] <= outer[3]


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_every_file_decodes_with_its_header(phantom):
    out, files, calls = phantom
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "dicom").rglob("*.dcm"))
    assert on_disk == sorted(files)
    assert len(files) >= PATIENTS
    for rel, t in files.items():
        ds, arr = _read(out, rel)
        W, H = t["canvas"]
        assert (ds.Rows, ds.Columns) == (H, W)
        assert arr.shape[:3 if t["frames"] > 1 else 2] == ((t["frames"], H, W) if t["frames"] > 1 else (H, W))
        assert ds.Modality == "US" and ds.BurnedInAnnotation == "YES" and ds.Manufacturer == "lnzoo phantom"
        multi = pydicom.uid.UltrasoundMultiFrameImageStorage
        assert ds.SOPClassUID == (multi if t["frames"] > 1 else pydicom.uid.UltrasoundImageStorage)
        assert ds.file_meta.TransferSyntaxUID.keyword == t["transfer_syntax"]
        assert ds.PhotometricInterpretation == t["photometric"]
        phi = t["phi"]
        assert (str(ds.PatientName), ds.PatientID, ds.AccessionNumber) == (phi["name"], phi["id"], phi["accession"])
        assert (ds.PatientBirthDate, ds.InstitutionName, ds.StudyDate) == (
            phi["birth_date"], phi["institution"], phi["study_date"])
        # the path names no one: neither the patient's name parts nor an ID
        for part in [*phi["name"].split("^"), phi["id"], phi["accession"], t["patient"]]:
            assert part not in rel
        if t["frames"] > 1:
            assert int(ds.NumberOfFrames) == t["frames"] > 1 and float(ds.FrameTime) > 0 and ds.CineRate
    # one name, ID and accession per patient, never shared between patients
    by_patient = {t["patient"]: t["phi"] for t in files.values()}
    for key in ("name", "id", "accession"):
        assert len({p[key] for p in by_patient.values()}) == len(by_patient) == PATIENTS
    assert calls[-1][0] == calls[-1][1] and [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert "NOT CLINICAL DATA" in (out / "README.txt").read_text(encoding="utf-8")


def test_syntaxes_photometrics_and_kinds_are_all_there(phantom):
    out, files, _ = phantom
    assert {t["transfer_syntax"] for t in files.values()} == {
        "ExplicitVRLittleEndian", "RLELossless", "JPEGBaseline8Bit", "JPEG2000Lossless"}
    assert {"RGB", "YBR_FULL_422", "MONOCHROME2", "PALETTE COLOR"} <= {t["photometric"] for t in files.values()}
    for t in files.values():
        if t["transfer_syntax"] == "JPEGBaseline8Bit":
            ds = pydicom.dcmread(out / next(r for r, v in files.items() if v is t))
            assert ds.LossyImageCompression == "01"
    assert any(t["frames"] > 1 for t in files.values())
    assert any(t["spectral_region"] for t in files.values())
    assert any(t["calipers"] for t in files.values())
    assert {t["region_data_type"] for t in files.values()} == {1, 2}
    assert any("/cdfi/" in t["source_png"] for t in files.values())


def test_cine_frames_move_inside_the_region_and_nowhere_else(phantom):
    out, files, _ = phantom
    checked = 0
    for rel, t in files.items():
        if t["frames"] == 1 or t["transfer_syntax"] not in ("ExplicitVRLittleEndian", "RLELossless"):
            continue
        ds, arr = _read(out, rel)
        x0, y0, x1, y1 = t["region"]
        outside = np.ones(arr.shape[1:3], bool)
        outside[y0:y1, x0:x1] = False
        for k in range(1, t["frames"]):
            assert not np.array_equal(arr[k, y0:y1, x0:x1], arr[0, y0:y1, x0:x1])
            assert np.array_equal(arr[k][outside], arr[0][outside])
        checked += 1
    assert checked >= 1


def test_regions_in_the_header_match_the_truth(phantom):
    out, files, _ = phantom
    for rel, t in files.items():
        ds = pydicom.dcmread(out / rel, stop_before_pixels=True)
        regions = list(ds.SequenceOfUltrasoundRegions)
        assert len(regions) == (2 if t["spectral_region"] else 1)
        image = regions[0]
        assert (image.RegionSpatialFormat, image.RegionDataType) == (1, t["region_data_type"])
        assert [image.RegionLocationMinX0, image.RegionLocationMinY0,
                image.RegionLocationMaxX1 + 1, image.RegionLocationMaxY1 + 1] == t["region"]
        assert (image.PhysicalUnitsXDirection, image.PhysicalUnitsYDirection) == (3, 3)
        assert image.PhysicalDeltaX == pytest.approx(t["pixel_mm"][0] / 10, rel=1e-5)
        assert image.PhysicalDeltaY == pytest.approx(t["pixel_mm"][1] / 10, rel=1e-5)
        # 32 mm of depth over the region's height, whatever the display scale
        assert t["pixel_mm"][1] * (t["region"][3] - t["region"][1]) == pytest.approx(32.0, rel=1e-4)
        assert _inside(t["region"], [0, 0, *t["canvas"]])
        if t["spectral_region"]:
            spec = regions[1]
            assert (spec.RegionSpatialFormat, spec.RegionDataType) == (3, 3)
            assert [spec.RegionLocationMinX0, spec.RegionLocationMinY0,
                    spec.RegionLocationMaxX1 + 1, spec.RegionLocationMaxY1 + 1] == t["spectral_region"]
            assert not _overlaps(t["spectral_region"], t["region"])
            assert _inside(t["spectral_region"], [0, 0, *t["canvas"]])


def test_drawn_boxes_are_where_truth_says(phantom):
    out, files, _ = phantom
    for rel, t in files.items():
        ds, arr = _read(out, rel)
        first = _rgb_frames(ds, arr)[0].astype(int)
        region, canvas = t["region"], [0, 0, *t["canvas"]]
        assert len(t["text_outside"]) == len(t["text_outside_text"]) >= 7
        for box in t["text_outside"]:
            assert _inside(box, canvas) and not _overlaps(box, region)
            if t["spectral_region"]:
                assert not _overlaps(box, t["spectral_region"])
            assert first[box[1]:box[3], box[0]:box[2]].max() > 150, (rel, box)
        for value in (t["phi"]["name"], t["phi"]["id"]):
            assert value in t["text_outside_text"]
        for box in t["text_inside"] + t["calipers"]:
            assert _inside(box, region)
            assert first[box[1]:box[3], box[0]:box[2]].max() > 150
        assert len(t["calipers"]) in (0, 2) and len(t["text_inside"]) == (1 if t["calipers"] else 0)
        if t["calipers"] and t["photometric"] == "RGB" and t["transfer_syntax"] in LOSSLESS:
            # yellow or green strokes: red and blue channels far apart somewhere in each cross
            for x0, y0, x1, y1 in t["calipers"]:
                patch = first[y0:y1, x0:x1]
                assert ((patch[..., 1] == 255) & (patch[..., 2] == 0)).any(), (rel, t["calipers"])


def test_labels_join_every_file_and_copy_the_phantom(phantom):
    out, files, _ = phantom
    with open(out / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["accession_number", *LABEL_COLUMNS]
    by_acc = {r["accession_number"]: r for r in rows}
    assert len(by_acc) == len(rows) == PATIENTS
    with open(ensure_phantom(patients=PATIENTS, seed=0, difficulty=0.5), newline="", encoding="utf-8") as fh:
        manifest = {r["patient"]: r for r in csv.DictReader(fh)}
    seen = set()
    for rel, t in files.items():
        acc = str(pydicom.dcmread(out / rel, stop_before_pixels=True).AccessionNumber)
        assert acc in by_acc
        seen.add(acc)
        assert {c: by_acc[acc][c] for c in LABEL_COLUMNS} == {c: manifest[t["patient"]][c] for c in LABEL_COLUMNS}
    assert seen == set(by_acc)


def test_same_arguments_write_the_same_bytes(phantom, tmp_path):
    out, files, _ = phantom
    again = tmp_path / "again"
    generate_dicom_phantom(again, patients=PATIENTS, seed=0)
    names = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in names:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    # a rerun into the same folder replaces the tree whole (nothing stale, nothing left over)
    generate_dicom_phantom(again, patients=2, seed=0)
    truth = json.loads((again / "truth.json").read_text(encoding="utf-8"))["files"]
    assert sorted(p.relative_to(again).as_posix() for p in (again / "dicom").rglob("*.dcm")) == sorted(truth)
    assert sorted(p.name for p in again.iterdir()) == ["README.txt", "dicom", "labels.csv", "truth.json"]


def test_a_foreign_dicom_folder_is_not_replaced(tmp_path):
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "mine.dcm").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        generate_dicom_phantom(tmp_path, patients=2)
    assert (tmp_path / "dicom" / "mine.dcm").read_bytes() == b"x"
    result = invoke_cli("synth", "--dicom", "--out", tmp_path, "--patients", "2")
    assert result.returncode == 2


def test_cli_synth_dicom(tmp_path):
    out = tmp_path / "d"
    result = invoke_cli("synth", "--dicom", "--out", out, "--patients", "6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "truth.json").is_file() and (out / "labels.csv").is_file()
    printed = "".join(result.stdout.split())  # rich may fold a long path over lines
    assert str(out / "labels.csv") in printed and str(out / "truth.json") in printed
    assert len(json.loads((out / "truth.json").read_text(encoding="utf-8"))["files"]) >= 6


def test_cli_synth_dicom_without_pydicom_says_how_to_get_it(tmp_path, monkeypatch):
    import lnzoo.data.phantom_dicom as mod

    def missing():
        raise ImportError("the DICOM phantom needs pydicom: pip install 'lnzoo[dicom]'")
    monkeypatch.setattr(mod, "check_dicom_support", missing)
    result = invoke_cli("synth", "--dicom", "--out", tmp_path / "d", "--patients", "2")
    assert result.returncode == 2
    assert "lnzoo[dicom]" in result.stdout + result.stderr
    assert not (tmp_path / "d").exists()
