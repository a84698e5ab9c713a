"""lnzoo serve through FastAPI's TestClient: every endpoint, every bad input, the temporary folder, the cascade."""
from __future__ import annotations

import base64
import csv
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from lnzoo.bundle import model_info  # noqa: E402
from lnzoo.decision import OperatingPoint  # noqa: E402
from lnzoo.data.samples import Sample  # noqa: E402
from lnzoo.errors import LnzooError  # noqa: E402
from lnzoo.predict import Ensemble, predict_rows, run_cascade  # noqa: E402
from lnzoo.serve import create_app, run_server  # noqa: E402
from lnzoo.serve.uploads import RequestError, parse_box  # noqa: E402


def phantom_images(run: Path, column: str = "path") -> list[Path]:
    with (run / "predictions.csv").open(newline="") as fh:
        return [Path(r[column]) for r in csv.DictReader(fh)]


def png_bytes(size=(64, 48), colour=(120, 80, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tiny_run):
    return TestClient(create_app([tiny_run]))


@pytest.fixture(scope="module")
def image(tiny_run) -> Path:
    return phantom_images(tiny_run)[0]


@pytest.fixture(scope="module")
def roi_run(tmp_path_factory, lnzoo_cache) -> Path:
    """A tiny model with a 'full' and a 'roi' view (the ROI box of the phantom's manifest)."""
    from lnzoo.pipeline import fit_folds
    from lnzoo.plugins import load_plugins
    from lnzoo.recipe import load_recipe
    from tests.conftest import REPO, TINY

    host = load_plugins()
    run = tmp_path_factory.mktemp("roi") / "run"
    sets = [*TINY, "data.views=['full','roi']", "data.phantom.source='manifest'", "model.fusion={name='concat'}",
            "cv.folds=2", "cv.run_folds=[0]", "train.epochs=1"]
    fit_folds(load_recipe(REPO / "recipes" / "stage1_aux.toml", sets=sets, host=host), host, run)
    return run


def post(client, path: Path | None = None, data=None, files=None, field="full"):
    files = dict(files or {})
    if path is not None:
        files[field] = (path.name, path.read_bytes(), "image/png")
    return client.post("/api/predict", files=files or None, data=data or {})


# -- endpoints -----------------------------------------------------------------------------------------------------
def test_healthz_counts_the_loaded_fold_models(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "stages": 1, "members": 2}


def test_api_model_is_model_info_with_the_form_it_takes(client, tiny_run):
    r = client.get("/api/model")
    assert r.status_code == 200
    got, info = r.json(), model_info(tiny_run)
    for key in ("tasks", "views", "thresholds", "main_task"):
        assert got[key] == info[key]
    assert got["metrics"]["cross_validation"]["malignancy"]["auc"] == pytest.approx(
        info["metrics"]["cross_validation"]["malignancy"]["auc"])
    assert got["tasks"]["malignancy"]["classes"] == ["benign", "malignant"]
    assert got["members"] == 2 and got["kind"] == "model"
    assert got["form"]["files"] == ["full"] and got["form"]["required_view"] == "full"
    assert got["form"]["accepted_fields"] == ["full", "gradcam", "frame"]  # frame: of a DICOM loop


def test_docs_and_openapi_describe_the_upload_fields(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["full"] and set(body["properties"]) == {"full", "gradcam", "frame"}
    assert {"/healthz", "/api/model"} <= set(spec["paths"])


def test_the_page_works_offline(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "/api/predict" in page and "/api/model" in page and "el(\"canvas\"" in page and "mousedown" in page
    for external in ("http://", "https://", "<link", "src=\"//", "cdn"):
        assert external not in page, external


# -- predictions -----------------------------------------------------------------------------------------------------
def test_raw_probabilities_are_lnzoo_predicts_and_calibrated_the_ensembles(client, tiny_run, image):
    r = post(client, image, data={"gradcam": "false"})
    assert r.status_code == 200, r.text
    got = r.json()
    expected = predict_rows([tiny_run], [image])[0]
    calibrated, _ = Ensemble([tiny_run]).predict([image], calibrated=True)
    assert got["views_used"] == ["full"] and "gradcam" not in got and got["members"] == 2
    assert set(got["tasks"]) == {"malignancy", "enlargement"}
    for task, res in got["tasks"].items():
        for k, cls in enumerate(res["classes"]):
            assert abs(res["raw_probabilities"][cls] - expected[f"p_{task}_{cls}"]) <= 1e-6
            assert res["probabilities"][cls] == pytest.approx(calibrated[task][0][k], abs=1e-9)
        assert sum(res["probabilities"].values()) == pytest.approx(1.0)
    # fold 2 of the tiny run has a fitted temperature: calibration is applied, not skipped
    mal = got["tasks"]["malignancy"]
    assert mal["probabilities"] != mal["raw_probabilities"]


def test_the_call_follows_the_stored_threshold(tiny_run, image):
    app = create_app([tiny_run])
    client = TestClient(app)
    info = model_info(tiny_run)
    res = post(client, image, data={"gradcam": "false"}).json()["tasks"]
    for task, t in res.items():
        assert t["threshold"] == info["thresholds"][task]
        op = OperatingPoint.from_dict(t["classes"], info["tasks"][task]["positive"], info["thresholds"][task])
        assert t["call"] == op.calls(np.array([[t["raw_probabilities"][c] for c in t["classes"]]]),
                                     np.array([[t["probabilities"][c] for c in t["classes"]]]))[0]
        pos = info["tasks"][task]["positive"]
        assert (t["call"] == pos) == (t["probabilities"][pos] >= t["threshold"]["value"])
    # move the stored threshold below and above the case: the call flips with it, whatever the argmax says
    stored = app.state.server.stages[0].info["thresholds"]["malignancy"]
    p = res["malignancy"]["probabilities"]["malignant"]
    for value, call in ((p - 1e-3, "malignant"), (p + 1e-3, "benign")):
        stored["value"] = value
        again = post(client, image, data={"gradcam": "false"}).json()["tasks"]["malignancy"]
        assert again["call"] == call and again["threshold"]["value"] == value


def test_gradcam_is_one_png_per_view_from_the_first_fold_model(client, image):
    got = post(client, image).json()
    assert set(got["gradcam"]) == {"full"}
    png = Image.open(io.BytesIO(base64.b64decode(got["gradcam"]["full"])))
    assert png.format == "PNG" and png.width >= 256


def test_uploads_never_outlive_the_request(tiny_run, image, tmp_path, monkeypatch):
    client = TestClient(create_app([tiny_run]))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    seen = []
    real = tempfile.TemporaryDirectory

    class Spy(real):  # the request's folder, while it lives, holds the upload (Grad-CAM is drawn in memory)
        def cleanup(self):
            seen.append(sorted(p.name for p in Path(self.name).rglob("*")))
            super().cleanup()

    monkeypatch.setattr(tempfile, "TemporaryDirectory", Spy)
    got = post(client, image)
    assert got.status_code == 200 and got.json()["gradcam"]["full"]
    assert seen == [["full.png"]]  # the overlay never touched the disk
    assert post(client, None, files={"full": ("x.png", png_bytes()[:60], "image/png")}).status_code == 422
    assert post(client, None, data={"gradcam": "false"}).status_code == 422  # fails after the folder exists
    assert list(scratch.iterdir()) == []


def test_a_model_that_fails_to_load_stops_the_server_with_its_error(tiny_run, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(tiny_run, broken)
    weights = broken / "fold1" / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(LnzooError, match="fold1"):
        create_app([broken])
    with pytest.raises(LnzooError, match="expected a run directory"):
        run_server([tmp_path / "nothing.txt"], [], host="127.0.0.1", port=1)  # never listens
    with pytest.raises(LnzooError, match="either MODEL"):
        create_app([tiny_run], [tiny_run, tiny_run])
    with pytest.raises(LnzooError, match="two or more"):
        create_app([], [tiny_run])


def test_the_cli_refuses_a_broken_model_before_listening(tmp_path):
    from tests.conftest import run_cli

    done = run_cli("serve", str(tmp_path / "missing.safetensors"), "--port", "1", timeout=120)
    assert done.returncode == 2 and "expected a run directory" in done.stderr
    assert "Uvicorn running" not in done.stderr + done.stdout


# -- bad input: a 4xx JSON error that says what is wrong -------------------------------------------------------------
def error_of(r, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    return body["error"]


def test_a_non_image_or_unsupported_format_is_415(client):
    msg = error_of(post(client, files={"full": ("notes.txt", b"just some text", "text/plain")}), 415)
    assert "full" in msg and "PNG" in msg
    ppm = io.BytesIO()
    Image.new("RGB", (8, 8)).save(ppm, format="PPM")
    assert "PPM images are not accepted" in error_of(post(client, files={"full": ("a.ppm", ppm.getvalue())}), 415)


def test_a_multi_picture_jpeg_from_a_camera_is_read_as_its_first_picture(client, image):
    first = Image.open(image).convert("RGB")
    mpo = io.BytesIO()
    first.save(mpo, format="MPO", save_all=True, append_images=[Image.new("RGB", first.size)])
    assert Image.open(io.BytesIO(mpo.getvalue())).format == "MPO"
    jpeg = io.BytesIO()
    first.save(jpeg, format="JPEG")
    got = post(client, files={"full": ("cam.jpg", mpo.getvalue())}, data={"gradcam": "false"})
    assert got.status_code == 200, got.text
    plain = post(client, files={"full": ("cam.jpg", jpeg.getvalue())}, data={"gradcam": "false"}).json()
    assert got.json()["tasks"] == plain["tasks"]


def _encoded(image: Path, kind: str) -> tuple[str, bytes]:
    """The phantom image as another kind of file: (suffix, bytes)."""
    base = Image.open(image).convert("RGB")
    buf = io.BytesIO()
    if kind == "grey png":
        base.convert("L").save(buf, format="PNG")
    elif kind == "rgba png":
        rgba = base.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(base.size))
        rgba.save(buf, format="PNG")
    elif kind == "16-bit png":
        Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257).save(buf, format="PNG")
    elif kind == "rotated jpeg":  # EXIF orientation 6: the model reads it upright, as a file
        exif = Image.Exif()
        exif[0x0112] = 6
        base.save(buf, format="JPEG", exif=exif)
    elif kind == "palette gif":
        base.convert("P").save(buf, format="GIF")
    return {"grey png": ".png", "rgba png": ".png", "16-bit png": ".png", "rotated jpeg": ".jpg",
            "palette gif": ".gif"}[kind], buf.getvalue()


@pytest.mark.parametrize("kind", ["grey png", "rgba png", "16-bit png", "rotated jpeg", "palette gif"])
def test_an_upload_is_decoded_once_and_read_as_lnzoo_predict_reads_its_file(client, tiny_run, image, tmp_path,
                                                                           monkeypatch, kind):
    suffix, data = _encoded(image, kind)
    file = tmp_path / f"upload{suffix}"
    file.write_bytes(data)
    expected = predict_rows([tiny_run], [file])[0]
    decodes = []
    real = Image._getdecoder
    monkeypatch.setattr(Image, "_getdecoder", lambda *a, **k: decodes.append(a[0]) or real(*a, **k))
    got = post(client, files={"full": (file.name, data)}, data={"gradcam": "false"})
    assert got.status_code == 200, got.text
    assert len(decodes) == 1  # by the upload's check; the model reads those pixels
    for task, res in got.json()["tasks"].items():
        for cls in res["classes"]:
            assert abs(res["raw_probabilities"][cls] - expected[f"p_{task}_{cls}"]) <= 1e-6


def test_a_corrupt_or_empty_image_is_422(client):
    assert "corrupt" in error_of(post(client, files={"full": ("a.png", png_bytes()[:80])}), 422)
    assert "empty" in error_of(post(client, files={"full": ("a.png", b"")}), 422)


def test_over_the_size_limits_is_413(tiny_run, image):
    small = TestClient(create_app([tiny_run], max_upload_mb=0.0005))  # 524 bytes
    assert "limit of 0.0005 MB (524 bytes)" in error_of(post(small, files={"full": ("a.png", png_bytes() + bytes(600))}), 413)
    narrow = TestClient(create_app([tiny_run], max_side=32))
    assert "64x48 pixels, over the limit of 32" in error_of(post(narrow, files={"full": ("a.png", png_bytes())}), 413)


def test_a_missing_required_view_names_the_views(client):
    msg = error_of(post(client, data={"gradcam": "false"}), 422)
    assert "missing the view 'full'" in msg and "['full']" in msg


def test_an_unknown_field_names_the_accepted_ones(client, image):
    msg = error_of(post(client, image, data={"cdfi_score": "3"}), 422)
    assert "cdfi_score" in msg and "['full', 'gradcam', 'frame']" in msg
    # a box for a model without a 'roi' view is unknown too
    assert "'box'" in error_of(post(client, image, data={"box": "1,2,3,4"}), 422)


def test_wrong_kinds_of_field_are_422(client, image):
    assert "must be an image file" in error_of(post(client, data={"full": "a path"}), 422)
    assert "takes text" in error_of(post(client, image, files={"gradcam": ("g.txt", b"true")}), 422)
    assert "expected true or false" in error_of(post(client, image, data={"gradcam": "maybe"}), 422)


def test_a_declared_body_over_the_limit_is_refused_before_reading(tiny_run):
    small = TestClient(create_app([tiny_run], max_upload_mb=0.0005))
    r = small.post("/api/predict", content=b"x" * 3_000_000, headers={"content-type": "multipart/form-data; "
                                                                      "boundary=zzz"})
    assert "over the limit" in error_of(r, 413)


def test_unknown_routes_are_json_errors(client):
    assert error_of(client.get("/nothing"), 404) == "Not Found"


PART = (b"--B\r\nContent-Disposition: form-data; name=\"full\"; filename=\"n.png\"\r\nContent-Type: image/png\r\n\r\n"
        + png_bytes())


@pytest.mark.parametrize("arrived", [b"", PART[:20], PART[:90], PART[:-30], PART + b"\r\n--B\r\nContent-Disp"],
                         ids=["nothing", "in a part's headers", "at the file's start", "mid file", "between fields"])
def test_a_client_gone_mid_upload_is_one_log_line_not_a_traceback(client, caplog, arrived):
    """The client closes the connection before its body arrives whole (a closed tab, a lost network): the
    server's log gets one line, the app raises nothing (uvicorn would print a traceback), nothing is predicted."""
    import asyncio
    import logging

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"x"), (b"content-type", b"multipart/form-data; boundary=B"),
                         (b"content-length", str(len(PART) + 1000).encode())]}
    inbox = [{"type": "http.request", "body": arrived, "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive():
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        asyncio.run(client.app(scope, receive, send))  # an exception here is uvicorn's traceback
    said = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert said == [("POST /api/predict: the client disconnected before its request arrived whole; nothing was "
                     "predicted")]
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400


# -- ROI boxes -------------------------------------------------------------------------------------------------------
def test_parse_box_takes_four_ordered_numbers_inside_the_image():
    assert parse_box("1, 2, 30, 40", (64, 48)) == (1.0, 2.0, 30.0, 40.0)
    assert parse_box("1 2 30 40", None) == (1.0, 2.0, 30.0, 40.0)
    for bad, why in (("1,2,3", "four numbers"), ("a,b,c,d", "four numbers"), ("1,2,3,nan", "four numbers"),
                     ("5,2,3,40", "x0 < x1"), ("0,0,65,10", "outside the 64x48"), ("-1,0,5,5", "outside")):
        with pytest.raises(RequestError, match=why):
            parse_box(bad, (64, 48))


def test_a_roi_model_predicts_the_box_as_lnzoo_predict_does(roi_run):
    client = TestClient(create_app([roi_run]))
    form = client.get("/api/model").json()["form"]
    assert form["files"] == ["full"] and form["box_view"] == "full" and "box" in form["accepted_fields"]
    image = phantom_images(roi_run)[0]
    with Image.open(image) as img:
        w, h = img.size
    box = (w * 0.2, h * 0.25, w * 0.7, h * 0.8)
    got = post(client, image, data={"box": ",".join(map(str, box))}).json()
    assert got["views_used"] == ["full", "roi"]
    expected = predict_rows([roi_run], [Sample({"full": image, "roi": image}, "", {}, "x", rois={"roi": box})])[0]
    for cls, p in got["tasks"]["malignancy"]["raw_probabilities"].items():
        assert abs(p - expected[f"p_malignancy_{cls}"]) <= 1e-6
    assert set(got["gradcam"]) == {"full", "roi"}  # an overlay on the full image and on the box's crop
    crop = Image.open(io.BytesIO(base64.b64decode(got["gradcam"]["roi"])))
    assert crop.width > 0 and "gradcam_note" not in got
    # no box: the 'roi' view is absent, the full image still predicts
    assert post(client, image, data={"gradcam": "false"}).json()["views_used"] == ["full"]
    assert "outside the" in error_of(post(client, image, data={"box": f"0,0,{w + 5},{h}"}), 422)
    assert "four numbers" in error_of(post(client, image, data={"box": "1,2"}), 422)
    assert "no 'full' image" in error_of(post(client, data={"box": "1,2,3,4"}), 422)


# -- the cascade -------------------------------------------------------------------------------------------------------
def test_the_cascade_takes_the_path_run_cascade_takes(tiny_run):
    client = TestClient(create_app([], [tiny_run, tiny_run]))
    described = client.get("/api/model").json()
    assert described["kind"] == "cascade" and described["passes_on"] == ["malignant"]
    assert len(described["stages"]) == 2
    images = phantom_images(tiny_run)[:4]
    expected = run_cascade([tiny_run, tiny_run], images)
    for image, want in zip(images, expected):
        got = post(client, image, data={"gradcam": "false"}).json()
        assert got["path"] == want["path"]
        assert len(got["stages"]) == want["path"].count(">") + 1
        for s in got["stages"]:
            assert s["routed_as"] == want[f"stage{s['stage']}"]
            for cls, p in s["tasks"]["malignancy"]["raw_probabilities"].items():
                assert abs(p - want[f"p_malignancy_{cls}"]) <= 1e-6
        assert got["tasks"] == got["stages"][0]["tasks"]


def test_a_benign_call_ends_the_cascade_at_stage_one(tiny_run):
    images = phantom_images(tiny_run)
    rows = predict_rows([tiny_run], images)
    benign = [img for img, r in zip(images, rows) if r["malignancy_pred"] == "benign"]
    if not benign:
        pytest.skip("the tiny model calls no phantom image benign")
    got = post(TestClient(create_app([], [tiny_run, tiny_run])), benign[0], data={"gradcam": "false"}).json()
    assert got["path"] == "malignancy:benign" and len(got["stages"]) == 1


def test_results_are_finite_json(client, image):
    got = post(client, image, data={"gradcam": "false"}).json()
    values = [p for t in got["tasks"].values() for p in [*t["probabilities"].values(), *t["raw_probabilities"].values()]]
    assert np.isfinite(values).all() and all(0 <= v <= 1 for v in values)
