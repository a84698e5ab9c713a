"""Input kinds besides the image views: report text, morphology, covariates; the LLNM-style recipe."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lnzoo.data.samples import Sample
from lnzoo.plugins import load_plugins
from lnzoo.recipe import load_recipe
from lnzoo.testing import check_input
from tests.conftest import LLNM, LLNM_TINY as TINY, invoke_cli

HOST = load_plugins()


def _rows(texts, base=None):
    return [Sample({}, f"P{i}", {}, f"m.csv:{i + 2}", cells={"report": t}, base=base) for i, t in enumerate(texts)]


REPORTS = ["右侧颈部II区可见一淋巴结，大小约12×6mm，淋巴门结构可见", "A hypoechoic round node, hilum absent.",
           "左侧颈部Ⅳ区淋巴结，形态不规则，边界不清", "", "An oval node with preserved fatty hilum. Impression: reactive.",
           "淋巴门结构消失，考虑转移"]


def test_text_kind_meets_the_contract_and_treats_an_empty_report_as_missing():
    check_input("text", _rows(REPORTS * 3), host=HOST, column="report", max_length=16, dim=16, heads=2, layers=1)
    kind = HOST.get("input", "text").build(column="report", max_length=8, min_frequency=1)
    problems: list[str] = []
    assert kind.check(_rows(REPORTS), problems) == set() and not problems  # no row is bad for having no report
    assert "5 report(s)" in kind.data_note() and "1 empty" in kind.data_note()
    assert "over 8 tokens (truncated)" in kind.data_note()
    state = kind.fit(_rows(REPORTS))
    assert kind.encode(_rows([""])[0], state) is None and kind.encode(_rows(["  nan "])[0], state) is None
    ids = kind.encode(_rows([REPORTS[0]])[0], state)
    assert ids.shape == (8,) and ids.dtype == np.int64 and (ids > 0).all()  # truncated to max_length, no padding
    # Chinese is read character by character, English as words: no sub-word spans two CJK characters
    tokens = kind.tokens(_rows(["淋巴门结构消失"])[0], state)
    assert tokens == list("淋巴门结构消失")
    assert kind.tokens(_rows(["hilum absent"])[0], state)[0] in ("hilum", "hi")


def test_the_vocabulary_is_fitted_on_the_training_reports_only():
    kind = HOST.get("input", "text").build(column="report", max_length=8, min_frequency=1)
    state = kind.fit(_rows(["hilum present", "hilum absent"]))
    vocab = json.loads(state["tokenizer"])["model"]["vocab"]
    assert "hilum" in vocab and "microcalcification" not in vocab
    unseen = kind.encode(_rows(["microcalcification"])[0], state)
    assert set(unseen[unseen > 0].tolist()) <= {vocab[t] for t in vocab if len(t.lstrip("#")) <= 1} | {1}


def _mask_rows(tmp_path: Path) -> list[Sample]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        img = (rng.random((64, 64)) * 255).astype(np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        if i != 3:  # row 3: an empty mask, a missing input
            mask[16:40 + i, 20:44] = 255
        Image.fromarray(img).save(tmp_path / f"i{i}.png")
        Image.fromarray(mask).save(tmp_path / f"m{i}.png")
        rows.append(Sample({}, f"P{i}", {}, f"m.csv:{i + 2}", cells={"path": f"i{i}.png", "mask": f"m{i}.png"},
                           base=tmp_path))
    return rows


def test_morphology_kind_meets_the_contract_names_bad_masks_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LNZOO_CACHE", str(tmp_path / "cache"))
    rows = _mask_rows(tmp_path)
    check_input("morphology", rows, host=HOST)
    kind = HOST.get("input", "morphology").build()
    problems: list[str] = []
    (tmp_path / "m5.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((10, 10), np.uint8) + 255).save(tmp_path / "m6.png")  # does not fit its 64 px image
    rows[7].cells["mask"] = "gone.png"
    assert kind.check(rows, problems) == {5, 6, 7}
    assert any(p.startswith("m.csv:7: morphology") and "m5.png" in p for p in problems)
    assert any(p.startswith("m.csv:8: morphology") and "(10, 10)" in p for p in problems)
    assert any(p.startswith("m.csv:9: morphology") and "gone.png" in p and "not found" in p for p in problems)
    state = kind.fit(rows[:5])
    assert kind.encode(rows[3], state) is None  # empty mask: missing
    assert "1 empty" in kind.data_note()
    fresh = HOST.get("input", "morphology").build()  # a new run: the disk cache answers, nothing is recomputed
    fresh.check(rows[:5], [])
    assert fresh.cache.misses == 0 and fresh.cache.hits == 5


def test_covariates_are_an_input_kind_too():
    rows = [Sample({}, f"P{i}", {}, f"m.csv:{i + 2}", cells={"age": str(40 + i), "sex": "MF"[i % 2]})
            for i in range(6)] + [Sample({}, "Q", {}, "m.csv:9", cells={"age": "", "sex": ""})]
    check_input("covariates", rows, host=HOST, columns=["age", "sex"])
    kind = HOST.get("input", "covariates").build(columns=["age", "sex"])
    kind.check(rows, [])
    assert kind.encode(rows[-1], kind.fit(rows)) is None  # nothing known: missing, like a view not acquired


@pytest.mark.parametrize("sets, message", [
    (["data.inputs.report.name=txt"], "unknown input 'txt'; did you mean 'text'"),
    (["data.inputs.report.max_lenght=64"], "input 'text' takes no argument 'max_lenght'; did you mean 'max_length'"),
    (["data.inputs.report.column=reprot_zh"], "no row of the data has a column 'reprot_zh'"),
    (["train.method='linear_probe'"], "need an encoder trained with them"),
    (["data.inputs.full={name='text'}"], "also an image view"),
    (["data.inputs.present={name='text', column='report_zh'}"], "an input's name is a word"),
    (["data.inputs.lnm={name='text', column='report_zh'}"], "'lnm' is also a task"),
])
def test_recipe_mistakes_about_inputs_are_named(sets, message, lnzoo_cache):
    out = invoke_cli("validate", LLNM, "--quick", "--set", "data.phantom.patients=40",  # the fixture's phantom
                     *[a for s in sets for a in ("--set", s)])
    assert out.returncode == 2 and message in out.stdout + out.stderr, out.stdout + out.stderr


def test_llnm_recipe_fuses_image_report_morphology_and_covariates(llnm_run):
    side = json.loads((llnm_run / "fold0" / "best.json").read_text())
    assert [e["name"] for e in side["inputs"]] == ["covariates", "report", "morphology"]
    morph = side["inputs"][2]["state"]
    assert "shape.circularity" in morph["features"] and len(morph["mean"]) == len(morph["features"])
    from lnzoo.inference import load
    predictor = load(llnm_run / "fold0" / "best.safetensors", HOST)
    assert predictor.model.members == ["full", "covariates", "report", "morphology"]
    metrics = json.loads((llnm_run / "metrics.json").read_text())
    assert "report:" in metrics["data"] and "morphology:" in metrics["data"]


def test_llnm_predictions_reproduce_from_the_rows_and_a_missing_report_still_predicts(llnm_run):
    from lnzoo.data.run_data import load_run_data, recipe_tasks
    from lnzoo.inference import load

    rows = list(csv.DictReader((llnm_run / "predictions.csv").open()))[:6]
    member = load(llnm_run / "fold0" / "best.safetensors", HOST)
    recipe = load_recipe(llnm_run / "recipe.toml", host=HOST)
    pool = load_run_data(recipe, recipe_tasks(recipe, HOST), HOST).pool
    by_path = {str(s.views["full"]): s for s in pool}
    samples = [by_path[r["path"]] for r in rows]
    got = member.predict(samples).proba["lnm"][:, 1]
    assert np.allclose(got, [float(r["p_lnm_N1"]) for r in rows], atol=1e-5)  # one inference path
    bare = [Sample(dict(s.views), s.patient, {}, s.origin, cells={**s.cells, "report_zh": ""}, base=s.base)
            for s in samples]
    p_bare = member.predict(bare).proba["lnm"][:, 1]
    assert np.isfinite(p_bare).all() and not np.allclose(p_bare, got)  # the report is missing, not fatal


def test_a_model_without_image_views_trains_on_its_other_inputs(lnzoo_cache, tmp_path):
    from lnzoo.pipeline import fit_folds

    sets = [*TINY, "data.views=[]", "data.covariates=[]", "data.inputs.morphology={name='morphology'}"]
    recipe = load_recipe(LLNM, host=HOST, sets=sets)
    fit_folds(recipe, HOST, tmp_path / "run")
    side = json.loads((tmp_path / "run" / "fold0" / "best.json").read_text())
    assert side["views"] == [] and [e["name"] for e in side["inputs"]] == ["report", "morphology"]
    from lnzoo.inference import load
    predictor = load(tmp_path / "run" / "fold0" / "best.safetensors", HOST)
    assert len(predictor.model.backbones) == 0 and predictor.model.members == ["report", "morphology"]
    # explain: no image to map, but which input mattered
    from lnzoo.data.run_data import load_run_data, recipe_tasks
    pool = load_run_data(recipe, recipe_tasks(recipe, HOST), HOST).pool
    from lnzoo.explain import explain
    assert explain(predictor, pool[:2], tmp_path / "x", host=HOST) == []
    assert {r["removed"] for r in csv.DictReader((tmp_path / "x" / "occlusion.csv").open())} == {"report", "morphology"}
    # served: the report as text, the mask and the image it outlines as files (no view uploads the image)
    from fastapi.testclient import TestClient

    from lnzoo.predict import Ensemble, predict_rows
    from lnzoo.serve.app import create_app
    row = next(s for s in pool if s.cells.get("report_zh") and np.asarray(Image.open(s.cell_path("mask"))).any())
    client = TestClient(create_app([tmp_path / "run"], plugin_host=HOST))
    form = client.get("/api/model").json()["form"]
    assert form["files"] == [] and form["required_view"] is None
    assert form["input_files"] == ["mask", "path"] and form["covariates"] == ["report_zh"]
    files = {"mask": ("m.png", row.cell_path("mask").read_bytes()), "path": ("i.png", row.cell_path("path").read_bytes())}
    got = client.post("/api/predict", files=files, data={"report_zh": row.cells["report_zh"]})
    assert got.status_code == 200, got.text
    assert got.json()["inputs_used"] == ["report", "morphology"] and got.json()["gradcam"] == {}
    assert got.json()["tasks"]["lnm"]["raw_probabilities"]["N1"] == pytest.approx(
        float(predict_rows([tmp_path / "run"], [row], HOST)[0]["p_lnm_N1"]), abs=2e-6)
    image_only = client.post("/api/predict", files={"path": files["path"]}, data={"report_zh": row.cells["report_zh"]})
    assert image_only.status_code == 200 and image_only.json()["inputs_used"] == ["report"]  # no mask: missing
    nothing = client.post("/api/predict", data={"gradcam": "false"})
    assert nothing.status_code == 422 and "give at least one of its inputs" in nothing.json()["error"]
    # a row that gives none of its inputs is named, not predicted as the head's bias
    from lnzoo.errors import UsageError
    blank = Sample({}, "Q", {}, "rows.csv:5", cells={**pool[0].cells, "report_zh": "", "mask": ""}, base=pool[0].base)
    with pytest.raises(UsageError, match="rows.csv:5: none of the inputs"):
        Ensemble([tmp_path / "run"], HOST).predict([blank])


def test_an_input_kind_that_breaks_its_contract_is_named():
    from lnzoo.inputs import build_kind
    from lnzoo.errors import UsageError

    class Half:  # a plugin's kind that forgot encode and encoder
        column, dtype = "x", "float32"

        def check(self, samples, problems):
            return set()

        def fit(self, samples):
            return {}

        def shape(self, state):
            return (1,)

    import types

    import lnzoo
    plugin = types.ModuleType("acme_half")

    @lnzoo.hookimpl
    def lnzoo_register_inputs(register):
        register("half", lambda column="x": Half(), "a kind missing two methods")
    plugin.lnzoo_register_inputs = lnzoo_register_inputs
    host = load_plugins(extra=[("acme-half", plugin)], entry_points=[], strict=False)
    with pytest.raises(UsageError, match=r"does not satisfy lnzoo.contracts.InputKind: missing \['encode', 'encoder'\]"):
        build_kind("h", {"name": "half"}, host)


def test_explain_says_which_input_mattered(llnm_run, tmp_path):
    from lnzoo.data.run_data import load_run_data, recipe_tasks
    from lnzoo.explain import explain
    from lnzoo.inference import load

    member = load(llnm_run / "fold0" / "best.safetensors", HOST)
    recipe = load_recipe(llnm_run / "recipe.toml", host=HOST)
    sample = next(s for s in load_run_data(recipe, recipe_tasks(recipe, HOST), HOST).pool
                  if s.cells.get("report_zh"))
    explain(member, [sample], tmp_path / "x", host=HOST)
    rows = list(csv.DictReader((tmp_path / "x" / "occlusion.csv").open()))
    assert {r["removed"] for r in rows} == {"full", "covariates", "report", "morphology"}
    row = next(r for r in rows if r["removed"] == "report")
    cls = member.tasks["lnm"].classes.index(row["class"])
    bare = Sample(dict(sample.views), sample.patient, {}, sample.origin, cells={**sample.cells, "report_zh": ""},
                  base=sample.base)
    # removing an input is what a row without it gets: the same probability
    assert float(row["p_without"]) == pytest.approx(member.predict([bare]).proba["lnm"][0, cls], abs=1e-5)
    assert float(row["p_all"]) == pytest.approx(member.predict([sample]).proba["lnm"][0, cls], abs=1e-5)


def test_the_report_lists_the_morphology_features_effect_sizes(llnm_run):
    from lnzoo.report import write_report

    effects = json.loads((llnm_run / "inputs.json").read_text())
    assert set(effects) == {"covariates", "morphology"}  # the inputs with named features (not the report text)
    d = dict(zip(effects["morphology"]["features"], effects["morphology"]["cohens_d"]["N1"]))
    assert d["shape.aspect_ratio"] < -0.5  # the phantom's metastatic nodes are rounder than the benign ones
    page = write_report(llnm_run, n_boot=50).read_text()
    assert "Input features between classes" in page and "shape.aspect_ratio" in page


def test_standardized_mean_difference_is_cohens_d():
    from lnzoo.evaluation.stats import standardized_mean_difference

    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (30, 3)), rng.normal(0.0, 1.0, (50, 3))
    for j in range(3):
        x, y = a[:, j].tolist(), b[:, j].tolist()
        mx, my = sum(x) / len(x), sum(y) / len(y)
        sx = sum((v - mx) ** 2 for v in x) / (len(x) - 1)
        sy = sum((v - my) ** 2 for v in y) / (len(y) - 1)
        pooled = (((len(x) - 1) * sx + (len(y) - 1) * sy) / (len(x) + len(y) - 2)) ** 0.5
        assert standardized_mean_difference(a, b)[j] == pytest.approx((mx - my) / pooled)
    assert np.isnan(standardized_mean_difference(a[:1], b)).all()


def test_predict_from_a_manifest_reads_every_input_and_says_which_were_given(llnm_run, tmp_path):
    from lnzoo.predict import manifest_samples, predict_rows

    rows = list(csv.DictReader((llnm_run / "predictions.csv").open()))[:4]
    recipe = load_recipe(llnm_run / "recipe.toml", host=HOST)
    from lnzoo.data.run_data import load_run_data, recipe_tasks
    pool = {str(s.views["full"]): s for s in load_run_data(recipe, recipe_tasks(recipe, HOST), HOST).pool}
    samples = [pool[r["path"]] for r in rows]
    # the rows with absolute paths: the manifest lives elsewhere
    cells = [{**s.cells, "path": str(s.views["full"]), "mask": str(s.cell_path("mask"))} for s in samples]
    cells[1]["report_zh"] = ""  # no report for this row: predicted without it
    manifest = tmp_path / "rows.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(cells[0]))
        w.writeheader()
        w.writerows(cells)
    got = predict_rows([llnm_run], manifest_samples([llnm_run], manifest, HOST), HOST)
    without = tmp_path / "no_report_column.csv"  # a typo'd or dropped column would make every report missing
    with without.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=[c for c in cells[0] if c != "report_zh"], extrasaction="ignore")
        w.writeheader()
        w.writerows(cells)
    from lnzoo.errors import DataError
    with pytest.raises(DataError, match=r"no_report_column.csv:1: missing column\(s\) \['report_zh'\]"):
        manifest_samples([llnm_run], without, HOST)
    assert [g["inputs_used"] for g in got] == ["covariates+report+morphology", "covariates+morphology",
                                               "covariates+report+morphology", "covariates+report+morphology"]
    for i in (0, 2, 3):
        assert float(got[i]["p_lnm_N1"]) == pytest.approx(float(rows[i]["p_lnm_N1"]), abs=2e-6)
    from lnzoo.inference import load
    member = load(llnm_run / "fold0" / "best.safetensors", HOST)  # the row without its report, as the model reads it
    bare = Sample(dict(samples[1].views), "", {}, "x", cells={**samples[1].cells, "report_zh": ""}, base=samples[1].base)
    assert float(got[1]["p_lnm_N1"]) == pytest.approx(member.predict([bare]).proba["lnm"][0, 1], abs=2e-6)


def test_a_text_input_can_start_from_a_local_pretrained_one(llnm_run, tmp_path):
    from lnzoo.checkpoint import read_weights
    from lnzoo.errors import UsageError

    kind = HOST.get("input", "text").build(column="report_zh", init=str(llnm_run))  # default dim 128, max 128
    rows = _rows(["淋巴门结构消失"])
    for r in rows:
        r.cells["report_zh"] = r.cells["report"]
    kind.check(rows, [])
    state = kind.fit(rows)
    pretrained = json.loads((llnm_run / "fold0" / "best.json").read_text())["inputs"][1]
    assert state["tokenizer"] == pretrained["state"]["tokenizer"]  # its vocabulary, not one fitted on `rows`
    assert kind.arch["dim"] == 32 and state["max_length"] == 48  # the pretrained encoder's shape
    encoder = kind.encoder(state, out_features=64)  # another output width: only the projection is new
    weights = read_weights(llnm_run / "fold0" / "best.safetensors")
    assert np.array_equal(encoder.embed.weight.detach().numpy(), weights["inputs.report.embed.weight"].numpy())
    # a checkpoint of this model rebuilds the encoder from its sidecar alone (no init file, the defaults unused)
    reloaded = HOST.get("input", "text").build(column="report_zh").encoder(json.loads(json.dumps(state)), 64)
    assert reloaded.embed.weight.shape == encoder.embed.weight.shape
    assert set(reloaded.state_dict()) == set(encoder.state_dict())
    missing = HOST.get("input", "text").build(column="report_zh", init=str(tmp_path / "nothing.safetensors"))
    with pytest.raises(UsageError, match="nothing.safetensors: expected a run directory, a model bundle"):
        missing.fit(rows)


def test_the_vocabulary_numbers_its_tokens_the_same_in_every_process():
    import subprocess
    import sys

    code = ("import hashlib, sys; from lnzoo.plugins import load_plugins; from lnzoo.data.samples import Sample; "
            "k = load_plugins().get('input', 'text').build(column='r', min_frequency=1); "
            "rows = [Sample({}, str(i), {}, 'm.csv:%d' % i, cells={'r': t}) for i, t in enumerate(sys.argv[1:])]; "
            "print(hashlib.sha1(k.fit(rows)['tokenizer'].encode()).hexdigest())")
    texts = [*REPORTS, "hilum absent, round, ill-defined margin", "淋巴门结构可见，边界清"] * 2
    runs = {subprocess.run([sys.executable, "-c", code, *texts], capture_output=True, text=True, check=True,
                           timeout=120).stdout for _ in range(3)}
    assert len(runs) == 1  # the trainer alone numbers them differently each time (DDP ranks, a resumed fold)


# -- serving, ONNX, test-time flips and the mean teacher with inputs ----------------------------------------------
def _llnm_rows(llnm_run, n=4):
    """The first ``n`` cross-validation rows of the LLNM run with a report and a non-empty mask, as Samples."""
    from lnzoo.data.run_data import load_run_data, recipe_tasks

    recipe = load_recipe(llnm_run / "recipe.toml", host=HOST)
    pool = load_run_data(recipe, recipe_tasks(recipe, HOST), HOST).pool
    return [s for s in pool if s.cells.get("report_zh") and np.asarray(Image.open(s.cell_path("mask"))).any()][:n]


def test_the_server_takes_the_report_and_the_mask_and_answers_as_predict_does(llnm_run):
    from fastapi.testclient import TestClient

    from lnzoo.predict import predict_rows
    from lnzoo.serve.app import create_app

    sample = _llnm_rows(llnm_run, 1)[0]
    client = TestClient(create_app([llnm_run], plugin_host=HOST))
    form = client.get("/api/model").json()["form"]
    assert form["input_files"] == ["mask"] and form["covariates"] == ["age", "sex", "report_zh"]
    text = {c: sample.cells[c] for c in form["covariates"]} | {"gradcam": "false"}
    image = ("node.png", sample.views["full"].read_bytes(), "image/png")
    mask = ("node_mask.png", sample.cell_path("mask").read_bytes(), "image/png")

    got = client.post("/api/predict", files={"full": image, "mask": mask}, data=text)
    assert got.status_code == 200, got.text
    got = got.json()
    assert got["inputs_used"] == ["covariates", "report", "morphology"]
    expected = predict_rows([llnm_run], [sample], HOST)[0]
    assert got["tasks"]["lnm"]["raw_probabilities"]["N1"] == pytest.approx(float(expected["p_lnm_N1"]), abs=2e-6)

    # no mask uploaded: morphology is missing, as in a manifest row with an empty mask cell
    bare = client.post("/api/predict", files={"full": image}, data=text).json()
    no_mask = Sample(dict(sample.views), "", {}, "x", cells={**sample.cells, "mask": ""}, base=sample.base)
    assert bare["inputs_used"] == ["covariates", "report"]
    assert bare["tasks"]["lnm"]["raw_probabilities"]["N1"] == pytest.approx(
        float(predict_rows([llnm_run], [no_mask], HOST)[0]["p_lnm_N1"]), abs=2e-6)

    # a bad mask is refused with the morphology kind's own reason, before anything is predicted
    small = Image.open(sample.cell_path("mask")).resize((9, 9))
    import io
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    bad = client.post("/api/predict", files={"full": image, "mask": ("m.png", buf.getvalue(), "image/png")}, data=text)
    assert bad.status_code == 422 and bad.json()["error"].startswith("mask: the input 'morphology' cannot read this file")
    assert "'mask' file" in bad.json()["error"] and "(9, 9) differs from image shape (256, 256)" in \
        bad.json()["error"] and "lnzoo-serve-" not in bad.json()["error"], bad.json()
    garbage = client.post("/api/predict", files={"full": image, "mask": ("m.png", b"not a png", "image/png")}, data=text)
    assert garbage.status_code == 422 and "mask:" in garbage.json()["error"]
    as_text = client.post("/api/predict", files={"full": image}, data={**text, "mask": "m.png"})
    assert as_text.status_code == 422 and "must be a file" in as_text.json()["error"]

    # what is derived from an upload never reaches the disk cache (it is a patient's image)
    from lnzoo.data.morphology import cache_dir
    before = sorted(cache_dir().rglob("*")) if cache_dir().exists() else []
    mirrored = io.BytesIO()
    Image.open(sample.cell_path("mask")).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored, format="PNG")
    fresh = client.post("/api/predict", files={"full": image, "mask": ("m.png", mirrored.getvalue(), "image/png")},
                        data=text)
    assert fresh.status_code == 200 and fresh.json()["inputs_used"] == ["covariates", "report", "morphology"]
    assert (sorted(cache_dir().rglob("*")) if cache_dir().exists() else []) == before

    # a kind failing on a file in its own way (a plugin's ValueError) is a 422 for that field, no temporary path
    item = dict(client.app.state.server.input_kinds())["mask"]

    def broken(samples, problems):
        raise ValueError(f"unreadable bytes in {samples[0].cell_path('mask')}")
    item.kind.check = broken
    try:
        odd = client.post("/api/predict", files={"full": image, "mask": mask}, data=text)
    finally:
        del item.kind.check
    assert odd.status_code == 422, odd.text
    assert odd.json()["error"] == "mask: the input 'morphology' cannot read this file: ValueError: unreadable bytes " \
                                  "in the 'mask' file"


def test_the_llnm_model_exports_to_onnx_and_predicts_as_torch_does(llnm_run, tmp_path):
    pytest.importorskip("onnxruntime", reason='the ONNX engine needs the export extra: pip install -e ".[export]"')
    from lnzoo.export import export_bundle
    from lnzoo.predict import predict_rows

    bundle = export_bundle(llnm_run, tmp_path / "bundle", folds=[0], onnx=True, host=HOST)
    samples = _llnm_rows(llnm_run, 4)
    samples[1] = Sample(dict(samples[1].views), "", {}, "x", cells={**samples[1].cells, "report_zh": ""},
                        base=samples[1].base)  # a missing report goes through the graph's mask as well
    torch_rows = predict_rows([bundle], samples, HOST)
    onnx_rows = predict_rows([bundle], samples, HOST, engine="onnx")
    assert [r["inputs_used"] for r in onnx_rows] == [r["inputs_used"] for r in torch_rows]
    assert onnx_rows[1]["inputs_used"] == "covariates+morphology"
    for a, b in zip(torch_rows, onnx_rows):
        assert float(a["p_lnm_N1"]) == pytest.approx(float(b["p_lnm_N1"]), abs=1e-4)


def _random_inputs(predictor, n):
    import torch

    gen = torch.Generator().manual_seed(1)
    return {i.name: torch.randint(2, 40, (n, *i.shape), generator=gen) if i.kind.dtype == "int64"
            else torch.randn(n, *i.shape, generator=gen) for i in predictor.inputs}


def test_hflip_averages_over_the_mirror_with_the_other_inputs_unflipped(llnm_run):
    import torch

    from lnzoo.inference import load
    from lnzoo.model import predict_probabilities

    predictor = load(llnm_run / "fold0" / "best.safetensors", HOST)
    model = predictor.model.eval()
    x, inputs = torch.randn(3, 1, 3, 32, 32), _random_inputs(predictor, 3)
    present = torch.ones(3, len(model.members), dtype=torch.bool)
    present[1, 2] = False  # row 1 without its report
    with torch.no_grad():
        _, plain = predict_probabilities(model, x, present, inputs)
        _, mirror = predict_probabilities(model, x.flip(-1), present, inputs)
        _, tta = predict_probabilities(model, x, present, inputs, tta="hflip")
    torch.testing.assert_close(tta["lnm"], 0.5 * (plain["lnm"] + mirror["lnm"]))
    assert not torch.allclose(tta["lnm"], plain["lnm"])


def test_the_mean_teacher_sees_the_unlabelled_rows_own_inputs(llnm_run):
    import torch

    from lnzoo.contracts import head_loss
    from lnzoo.data.samples import MISSING
    from lnzoo.inference import load
    from lnzoo.train.averaging import MeanTeacher

    predictor = load(llnm_run / "fold0" / "best.safetensors", HOST)
    model = predictor.model.eval()
    teacher = MeanTeacher(model, {"ema": 0.99, "threshold": 0.0, "rampup_epochs": 0}, "lnm")
    x, inputs = torch.randn(4, 1, 3, 32, 32), _random_inputs(predictor, 4)
    present = torch.ones(4, len(model.members), dtype=torch.bool)
    y = torch.tensor([MISSING, 0, MISSING, 1])
    with torch.no_grad():
        student = model(x, present, inputs)["lnm"]
        loss = teacher.loss(model, x, present, inputs, student, y)
        rows = torch.tensor([0, 2])  # the unlabelled ones, each with its own report, mask and covariates
        t_out = model(x[rows].flip(-1), present[rows], {k: v[rows] for k, v in inputs.items()})["lnm"]
        expected = head_loss(model.heads["lnm"], student[rows], t_out.argmax(1))
    torch.testing.assert_close(loss, expected)  # the teacher starts as the student's copy
