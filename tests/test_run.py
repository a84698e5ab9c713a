"""End to end on a small phantom: run directory, determinism, evaluate, plugin head, no pickles."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from lnzoo.errors import UsageError
from lnzoo.plugins import load_plugins
from lnzoo.recipe import load_recipe
from lnzoo.pipeline import fit_folds
from tests.conftest import REPO, TINY as TINY_BASE, invoke_cli

TINY = [*TINY_BASE, "cv.run_folds=[0]"]


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
    out = invoke_cli("run", str(REPO / "recipes" / "stage1_aux.toml"), "--quick", "--set",
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


def test_off_a_terminal_a_run_prints_one_line_per_epoch_whole_tables_and_says_what_ran(tiny_run):
    stderr = (tiny_run.parent / "stderr.txt").read_text(encoding="utf-8")
    stdout = (tiny_run.parent / "stdout.txt").read_text(encoding="utf-8")
    for k in (1, 2):
        assert f"fold {k}: train" in stderr
        for epoch in (1, 2):
            # each plain line stamped with the time; each epoch with its seconds
            assert re.search(rf"^\d\d:\d\d:\d\d fold {k} epoch {epoch}/2 loss \d\.\d{{3}} val_loss .*\(\d+\.\d s\)$",
                             stderr, re.M), stderr
    assert "━" not in stderr and "\r" not in stderr  # no progress bars in a log file
    assert "…" not in stdout and "malignancy" in stdout and "enlargement" in stdout  # the table is whole
    ran = json.loads((tiny_run / "run.json").read_text())["ran"]
    assert ran == {"backbone": "timm test_resnet", "image_size": 48, "views": ["full"], "epochs": 2,
                   "epochs_run": {"1": 2, "2": 2}, "folds": 3, "folds_run": [1, 2], "quick": True}
    page = (tiny_run / "report.html").read_text(encoding="utf-8")
    assert "timm test_resnet, 48 px, 2 epoch(s), 2 of 3 fold(s) (1, 2); QUICK run" in page
    assert "this quick run trained what the next row says" in page
    # Grad-CAM captions say what the case is and what the model called it, not a file name
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", page)
    assert captions and all(re.match(r"malignancy: true (benign|malignant), predicted (benign|malignant) \(p=0\.\d{3}\)",
                                      c) for c in captions), captions


def test_a_run_without_fold_0_works_with_every_command(tiny_run, tmp_path):
    from lnzoo.data.run_data import recipe_tasks
    from lnzoo.evaluate import evaluate_run
    from lnzoo.evaluation.compare import compare
    from lnzoo.explain import explain
    from lnzoo.model import build_model, init_from_checkpoint
    from lnzoo.predict import predict_rows
    from lnzoo.report import write_report

    host = load_plugins()
    out = invoke_cli("evaluate", str(tiny_run))
    assert out.returncode == 0 and "reproduced" in out.stdout, out.stderr
    stored, fresh = evaluate_run(tiny_run, host)
    assert fresh["folds_run"] == [1, 2] and fresh["cross_validation"]["pooled"]["malignancy"]["n"] > 0
    image = Path(next(csv.DictReader((tiny_run / "predictions.csv").open()))["path"])
    served = predict_rows([tiny_run], [image], host)[0]
    assert served["members"] == 2 and served["malignancy_pred"] in ("benign", "malignant")
    assert explain(tiny_run, [image], tmp_path / "cams", host=host)
    assert compare(tiny_run, tiny_run, n_boot=20)["delong"]["p_value"] == 1.0
    assert write_report(tiny_run, tmp_path / "r" / "report.html", n_boot=20).is_file()
    # model.init_from takes the run directory: its first fold is fold 1
    recipe = load_recipe(REPO / "recipes" / "stage1_aux.toml", sets=TINY, host=host)
    model = build_model(recipe, host, recipe_tasks(recipe, host))
    report = init_from_checkpoint(model, str(tiny_run))
    assert report["source"].endswith("fold1/best.safetensors") and report["backbone_loaded"] > 0
    with pytest.raises(UsageError, match="model.init_from: .*no fold"):
        init_from_checkpoint(model, str(tmp_path))
