"""End to end on a small phantom: run directory, determinism, evaluate, plugin head, no pickles."""
from __future__ import annotations

import json
import os
from pathlib import Path


from lnzoo.plugins import load_plugins
from lnzoo.recipe import load_recipe
from lnzoo.pipeline import fit_folds
from tests.conftest import REPO, run_cli

TINY = ["model.backbone={name='timm', model_name='test_resnet'}", "data.image_size=48", "train.epochs=2",
        "data.phantom.patients=24", "cv.folds=3", "cv.run_folds=[0]", "data.batch_size=16", "train.threads=2"]


def _run(out: Path, sets=(), host=None):
    host = host or load_plugins()
    recipe = load_recipe(REPO / "recipes" / "stage1_aux.toml", sets=[*TINY, *sets], host=host)
    return fit_folds(recipe, host, out)


def test_run_writes_the_run_directory_and_is_deterministic(tmp_path):
    a = _run(tmp_path / "a")
    run = tmp_path / "a"
    for name in ("recipe.toml", "folds.csv", "metrics.json", "predictions.csv", "fold0/best.safetensors",
                 "fold0/best.json", "fold0/last.safetensors", "fold0/history.csv"):
        assert (run / name).is_file(), name
    assert not [p for p in run.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".pickle", ".ckpt")]
    sidecar = json.loads((run / "fold0" / "best.json").read_text())
    assert sidecar["class_maps"]["malignancy"] == {"0": "benign", "1": "malignant"}
    assert sidecar["preprocessing"]["image_size"] == 48 and sidecar["fold"] == 0 and "seed" in sidecar
    assert "lnzoo" in sidecar["versions"] and "torch" in sidecar["versions"]
    pooled = a["cross_validation"]["pooled"]
    assert set(pooled) == {"malignancy", "enlargement"}
    for key in ("accuracy", "auc", "precision", "recall", "f1", "mcc", "confusion_matrix"):
        assert key in pooled["malignancy"]
    header = (run / "predictions.csv").read_text().splitlines()[0].split(",")
    assert {"path", "patient", "malignancy_true", "p_malignancy_benign", "p_malignancy_malignant"} <= set(header)
    _run(tmp_path / "b")
    assert (run / "metrics.json").read_text() == (tmp_path / "b" / "metrics.json").read_text()
    # evaluate reloads the checkpoint and reproduces the stored numbers
    out = run_cli("evaluate", str(run), env={"LNZOO_CACHE": os.environ["LNZOO_CACHE"]})
    assert out.returncode == 0, out.stderr
    assert "reproduced" in out.stdout


def test_a_plugin_head_is_named_in_a_recipe_and_trains(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "plugins" / "lnzoo-ordinal" / "src"))
    import lnzoo_ordinal.plugin as plugin

    host = load_plugins(extra=[("lnzoo-ordinal", plugin)])
    metrics = _run(tmp_path / "c", sets=["model.heads.malignancy={name='coral'}"], host=host)
    assert 0.0 <= metrics["cross_validation"]["pooled"]["malignancy"]["auc"] <= 1.0
    sidecar = json.loads((tmp_path / "c" / "fold0" / "best.json").read_text())
    assert sidecar["recipe"]["model"]["heads"]["malignancy"]["name"] == "coral"


def test_run_refuses_a_data_error_before_training(tmp_path):
    lists = tmp_path / "main.txt"
    lists.write_text("missing/P1_1.png,良性\n", encoding="utf-8")
    out = run_cli("run", str(REPO / "recipes" / "stage1_aux.toml"), "--quick", "--set",
                  f"data.train=['{lists.as_posix()}']", "--set", "data.patient_regex='^(P\\d+)_'",
                  "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and "P1_1.png" in out.stderr and "not found" in out.stderr


def test_ema_and_ultrasound_augmentation_run_and_are_recorded(tmp_path):
    metrics = _run(tmp_path / "e", sets=["train.ema=0.9", "data.augment.speckle=0.5", "data.augment.gain=0.5",
                                         "data.augment.depth_attenuation=0.3", "data.augment.shadow=0.2",
                                         "data.views=['full', 'crop']", "model.fusion={name='attention'}"])
    assert metrics["cross_validation"]["pooled"]["malignancy"]["n"] > 0
    sidecar = json.loads((tmp_path / "e" / "fold0" / "best.json").read_text())
    assert sidecar["recipe"]["train"]["ema"] == 0.9 and sidecar["views"] == ["full", "crop"]
    header = (tmp_path / "e" / "predictions.csv").read_text().splitlines()[0].split(",")
    assert "path_crop" in header
