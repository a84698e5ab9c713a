"""DICOM images that cannot be read, each named with its reason (a DataError, exit 2) by ``lnzoo validate`` and
``lnzoo predict``, never a traceback: the broken files are made with pydicom's own API."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from tests.conftest import REPO, invoke_cli, phantom_rows  # noqa: E402

RECIPE = str(REPO / "recipes" / "stage1_aux.toml")


def dicom(rows: int = 32, cols: int = 40, pixels: bool = True, syntax=ExplicitVRLittleEndian) -> bytes:
    """An 8-bit greyscale ultrasound frame as a DICOM file (header rows x cols; pixel data of 32 x 40)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "US", "P0001"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if pixels:
        frame = (np.arange(32 * 40) % 251).astype(np.uint8).tobytes()
        ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG \xff\xd9"]) if syntax == JPEGBaseline8Bit else frame
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 32), (90, 90, 90)).save(buf, format="PNG")
    return buf.getvalue()


# name: (the file's bytes, what the message says about it)
BROKEN = {
    "no_pixel_data": (lambda: dicom(pixels=False), "a DICOM file without pixel data"),
    "truncated_pixel_data": (lambda: dicom()[:-500], "DICOM pixel data that cannot be decoded"),
    "truncated_header": (lambda: dicom()[:200], "a DICOM file without pixel data (no image in it: truncated"),
    "not_dicom": (_png, "not a DICOM file (no DICOM header)"),
    "header_larger_than_pixels": (lambda: dicom(rows=64), "DICOM pixel data that cannot be decoded"),
    "undecodable_compression": (lambda: dicom(syntax=JPEGBaseline8Bit), "DICOM pixel data that cannot be decoded"),
    "empty": (lambda: b"", "empty file"),
}


def _write(folder: Path, name: str) -> Path:
    path = folder / f"{name}.dcm"
    path.write_bytes(BROKEN[name][0]())
    return path


def test_a_good_dicom_file_is_read(tmp_path):
    from lnzoo.data.images import Preprocessing, load_image

    path = tmp_path / "good.dcm"
    path.write_bytes(dicom())
    pixels = load_image(path, Preprocessing(image_size=16))
    assert pixels.shape == (16, 16, 3) and pixels.max() > pixels.min()


def test_validate_names_every_broken_dicom_file_and_why(tmp_path):
    rows = phantom_rows(24)
    broken = {name: _write(tmp_path, name) for name in BROKEN}
    good = tmp_path / "good.dcm"
    good.write_bytes(dicom())
    for row, path in zip(rows, [good, *broken.values()]):  # one image per row, each its own file
        row["path"] = str(path)
    manifest = tmp_path / "nodes.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    done = invoke_cli("validate", RECIPE, "--quick", "--set", f"data.train='{manifest.as_posix()}'")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    text = done.stderr.replace("\n", " ")
    for line, (name, path) in enumerate(broken.items(), start=3):  # the header, then the good file's row
        assert f"{manifest}:{line}: {path}: {BROKEN[name][1]}" in " ".join(text.split()), (name, done.stderr)
    assert f"{good}:" not in text  # the good DICOM file reads


@pytest.mark.parametrize("name", list(BROKEN))
def test_predict_names_a_broken_dicom_file_and_why(tiny_run, tmp_path, name):
    path = _write(tmp_path, name)
    done = invoke_cli("predict", "--model", tiny_run, path, "--out", tmp_path / "calls.csv")
    assert done.returncode == 2, done.stderr
    assert f"{path}: {BROKEN[name][1]}" in " ".join(done.stderr.split())
    assert not (tmp_path / "calls.csv").exists()
