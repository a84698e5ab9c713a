"""Every stage recipe trains on the phantom; the fused multimodal model; ensembles; the stage cascade."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lnzoo.plugins import load_plugins
from lnzoo.errors import UsageError
from lnzoo.predict import Ensemble, predict_rows, run_cascade
from lnzoo.recipe import load_recipe
from lnzoo.pipeline import fit_folds
from tests.conftest import REPO

HOST = load_plugins()
TINY = ["model.backbone={name='timm', model_name='test_resnet'}", "data.image_size=32", "train.epochs=1",
        "cv.folds=2", "data.batch_size=16", "train.threads=2", "model.shared_backbone=true"]
RECIPES = sorted(p for p in (REPO / "recipes").glob("*.toml") if p.name != "base.toml")


@pytest.fixture
def cache_env(lnzoo_cache):
    """Runs use the session's phantom cache (see conftest)."""
    return lnzoo_cache


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates_plain_and_quick(path):
    load_recipe(path, host=HOST)
    quick = load_recipe(path, host=HOST, quick=True)
    assert quick["cv.run_folds"] == [0]


def _run(tmp: Path, recipe: str, sets=()):
    r = load_recipe(REPO / "recipes" / recipe, host=HOST, sets=[*TINY, *sets])
    fit_folds(r, HOST, tmp)
    return tmp


@pytest.fixture(scope="module")
def stage_runs(lnzoo_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    phantom = ["data.phantom.patients=60"]
    return {
        "s1": _run(root / "s1", "stage1_aux.toml", [*phantom, "cv.run_folds=[0, 1]"]),
        "s2": _run(root / "s2", "stage2_metastasis_lymphoma.toml", [*phantom, "cv.run_folds=[0]"]),
        "s3": _run(root / "s3", "stage3_origin_fusion.toml", ["data.phantom.patients=90", "cv.run_folds=[0]"]),
    }


def test_stage2_has_an_external_centre_and_stage3_fuses_two_views(stage_runs):
    m2 = json.loads((stage_runs["s2"] / "metrics.json").read_text())
    assert "metastasis" in m2["external"] and m2["main_task"] == "metastasis"
    rows = list(csv.DictReader((stage_runs["s2"] / "predictions.csv").open()))
    assert {r["part"] for r in rows} == {"cv", "external"}
    assert all(r["metastasis_true"] for r in rows)  # benign nodes (no stage-II label) are not trained on
    side = json.loads((stage_runs["s3"] / "fold0" / "best.json").read_text())
    assert side["views"] == ["full", "crop"] and side["recipe"]["model"]["fusion"]["name"] == "concat"


def test_a_run_predicts_as_the_average_of_its_fold_models(stage_runs):
    image = next((stage_runs["s1"]).glob("predictions.csv"))
    first = next(csv.DictReader(image.open()))["path"]
    ens = Ensemble([stage_runs["s1"]], HOST)
    assert len(ens.members) == 2
    both, _ = ens.predict([Path(first)])
    singles = [Ensemble([stage_runs["s1"] / f"fold{k}" / "best.safetensors"], HOST).predict([Path(first)])[0]
               for k in (0, 1)]
    assert np.allclose(both["malignancy"], (singles[0]["malignancy"] + singles[1]["malignancy"]) / 2)
    rows = predict_rows([stage_runs["s1"]], [Path(first)], HOST)
    assert rows[0]["members"] == 2 and rows[0]["malignancy_pred"] in ("benign", "malignant")


def test_cascade_routes_malignant_nodes_to_stage2_and_metastatic_to_stage3(stage_runs, tmp_path):
    images = [Path(r["path"]) for r in csv.DictReader((stage_runs["s1"] / "predictions.csv").open())][:12]
    rows = run_cascade([stage_runs["s1"], stage_runs["s2"], stage_runs["s3"]], images, HOST)
    assert len(rows) == len(images)
    for r in rows:
        assert r["path"].startswith(f"malignancy:{r['stage1']}")
        if r["stage1"] == "benign":
            assert "stage2" not in r
        else:
            assert "p_metastasis_metastatic" in r
            assert ("stage3" in r) == (r["stage2"] == "metastatic")
    # which class passes on comes from each stage's task definition, or is given per stage
    benign_first = run_cascade([stage_runs["s1"], stage_runs["s2"]], images, HOST, passes_on=["benign"])
    assert all(("stage2" in r) == (r["stage1"] == "benign") for r in benign_first)
    mixed = run_cascade([stage_runs["s1"], stage_runs["s2"], stage_runs["s3"]], images, HOST,
                        passes_on=["-", "lymphoma"])  # "-": stage I's own passes_on (malignant)
    assert all(("stage2" in r) == (r["stage1"] == "malignant") and ("stage3" in r) == (r.get("stage2") == "lymphoma")
               for r in mixed)
    # a stage I checkpoint written before sidecars stored passes_on takes it from the registered task
    import json
    import shutil
    old = tmp_path / "old_s1"
    shutil.copytree(stage_runs["s1"], old)
    from safetensors.torch import load_file, save_file
    for sidecar in old.glob("fold*/best.json"):
        meta = json.loads(sidecar.read_text())
        for task in meta["tasks"].values():
            task.pop("passes_on", None)
        for key in ("weights_sha256", "definition_sha256"):  # nor their weights' checksums
            meta.pop(key)
        sidecar.write_text(json.dumps(meta))
        weights = sidecar.with_suffix(".safetensors")
        save_file(load_file(weights), weights)
    two = run_cascade([stage_runs["s1"], stage_runs["s2"]], images, HOST)
    from lnzoo.integrity import modified_allowed
    with modified_allowed():  # checkpoints from before the checksums are read only when the user says so
        assert run_cascade([old, stage_runs["s2"]], images, HOST) == two
    with pytest.raises(UsageError, match="names no class that passes on"):
        run_cascade([stage_runs["s3"], stage_runs["s2"]], images, HOST)
    with pytest.raises(UsageError, match="'lymph' is not a class"):
        run_cascade([stage_runs["s1"], stage_runs["s2"]], images, HOST, passes_on=["lymph"])


def test_fused_multimodal_model_with_modality_dropout_predicts_with_a_missing_modality(cache_env, tmp_path):
    run = _run(tmp_path / "mm", "multimodal_3class.toml", ["data.phantom.patients=40", "cv.run_folds=[0]"])
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert rows[0]["views_used"] == "2d+cdfi+elasto"
    first = rows[0]
    # at inference the elastography image is missing: the model still predicts and says what it used
    out = predict_rows([run], [[Path(first["path_2d"]), Path(first["path_cdfi"]), None]], HOST)
    assert out[0]["views_used"] == "2d+cdfi"
    probs = [out[0][f"p_pathology3_{c}"] for c in ("benign", "lymphoma", "metastatic")]
    assert abs(sum(probs) - 1) < 1e-4


def test_init_from_loads_a_pretrained_backbone_and_replaces_the_heads(cache_env, tmp_path):
    from safetensors.torch import load_file

    pre = _run(tmp_path / "pre", "pretrain_ultrasound.toml", ["data.phantom.patients=40"])
    run = _run(tmp_path / "ft", "multimodal_3class.toml",
               ["data.phantom.patients=40", "cv.run_folds=[0]", "model.shared_backbone=false", "train.lr=1e-12",
                "train.ema=0.0", f"model.init_from='{pre.as_posix()}'"])
    side = json.loads((run / "fold0" / "best.json").read_text())
    report = side["init_from"]
    assert report["backbone_loaded"] == report["backbone_total"] > 0 and report["heads"] == "new (replaced)"
    source = load_file(str(pre / "fold0" / "best.safetensors"))
    tuned = load_file(str(run / "fold0" / "best.safetensors"))
    key = next(k for k in source if k.startswith("backbones.0.") and "conv" in k and k.endswith("weight"))
    for branch in range(3):  # the shared pretraining backbone fills every branch (lr 1e-12 keeps it as loaded)
        assert np.allclose(tuned[key.replace("backbones.0.", f"backbones.{branch}.")].numpy(), source[key].numpy(),
                           rtol=0, atol=1e-8)
    assert not np.allclose(tuned["backbones.1." + key[len("backbones.0."):]].numpy(), 0, atol=1e-3)
    with pytest.raises(Exception, match="init_from"):
        _run(tmp_path / "bad", "stage1_aux.toml", ["data.phantom.patients=40", "cv.run_folds=[0]",
                                                    f"model.init_from='{(tmp_path / 'nope').as_posix()}'"])


def test_clinical_covariates_join_the_image_features_and_are_encoded_from_training_rows(cache_env, tmp_path):
    run = _run(tmp_path / "cov", "stage2_metastasis_lymphoma.toml",
               ["data.phantom.patients=50", "cv.run_folds=[0]", "data.phantom.external=false",
                "data.covariates=['age', 'sex', 'axis_ratio', 'elasto_score', 'flow_pattern', 'hilum']"])
    side = json.loads((run / "fold0" / "best.json").read_text())
    (entry,) = side["inputs"]  # the covariates are one input of the fusion, after the image view
    assert entry["name"] == "covariates" and entry["table"]["name"] == "covariates"
    spec = {c["name"]: c for c in entry["state"]["covariates"]}
    assert spec["age"]["kind"] == "numeric" and spec["sex"]["kind"] == "categorical"
    assert set(spec["flow_pattern"]["levels"]) <= {"none", "hilar", "peripheral", "mixed"}
    from lnzoo.inference import load
    model = load(run / "fold0" / "best.safetensors", HOST).model
    assert model.members == ["full", "covariates"] and side["recipe"]["model"]["fusion"]["name"] == "concat"
    # images alone (no covariates at inference) still predict: covariates count as missing
    first = next(csv.DictReader((run / "predictions.csv").open()))["path"]
    assert predict_rows([run], [Path(first)], HOST)[0]["metastasis_pred"] in ("metastatic", "lymphoma")
    # Grad-CAM explains the prediction the model makes with the covariates given, not one without them
    from lnzoo.data.samples import Sample
    from lnzoo.explain import explain
    from lnzoo.predict import Ensemble
    given = Sample({"full": Path(first)}, "P", {}, "row 2", cells={"age": "83", "sex": spec["sex"]["levels"][0]})
    bare = Sample({"full": Path(first)}, "P", {}, "row 2")
    ens = Ensemble([run], HOST)
    p_given, p_bare = (ens.predict([s])[0]["metastasis"][0] for s in (given, bare))
    assert abs(p_given - p_bare).max() > 1e-6  # the covariates move this prediction
    explain(ens.members[0], [given], tmp_path / "cam", tasks=["metastasis"], host=HOST)
    cam = next(csv.DictReader((tmp_path / "cam" / "explain.csv").open()))
    one = Ensemble.of(ens.members[:1], [ens.members[0].source])  # the one model explained: its calibrated call
    served = one.predict([given], calibrated=True)[0]["metastasis"][0]
    assert float(cam["p_predicted"]) == pytest.approx(served.max(), abs=1e-5)
    assert cam["predicted"] == one.tasks["metastasis"][int(served.argmax())]


def test_linear_probe_fits_a_logistic_regression_per_fold_and_serves_it_as_a_linear_head(cache_env, tmp_path):
    run = _run(tmp_path / "lp", "linear_probe.toml", ["data.phantom.patients=60", "cv.run_folds=[0, 1]"])
    hist = list(csv.DictReader((run / "fold0" / "history.csv").open()))
    assert hist[0]["task"] == "malignancy" and float(hist[0]["C"]) > 0
    rows = [r for r in csv.DictReader((run / "predictions.csv").open()) if r["fold"] == "0"]
    # the served model reproduces the stored held-out probabilities
    served = predict_rows([run / "fold0" / "best.safetensors"], [Path(r["path"]) for r in rows[:5]], HOST)
    for r, s in zip(rows[:5], served):
        assert abs(float(r["p_malignancy_malignant"]) - s["p_malignancy_malignant"]) < 1e-4
    with pytest.raises(Exception, match="linear_probe"):
        load_recipe(REPO / "recipes" / "linear_probe.toml", host=HOST, sets=["model.head={name='mlp'}"])


def test_mean_teacher_variant_trains(cache_env, tmp_path):
    run = _run(tmp_path / "mt", "stage1_aux_mean_teacher.toml",
               ["data.phantom.patients=40", "cv.run_folds=[0]", "train.epochs=2", "train.mean_teacher.threshold=0.5"])
    side = json.loads((run / "fold0" / "best.json").read_text())
    assert side["recipe"]["train"]["mean_teacher"]["weight"] == 0.1
    assert (run / "fold0" / "history.csv").read_text().count("\n") == 3
