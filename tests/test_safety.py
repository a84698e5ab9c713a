"""Nothing lost, nothing silently wrong: safe run directories, checked checkpoints, guards, resume."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lnzoo.rundir import RunDir
from lnzoo.files import write_atomic
from tests.conftest import REPO, TINY, invoke_cli, phantom_rows, run_cli

RECIPE = str(REPO / "recipes" / "stage1_aux.toml")


def _sets(*extra: str) -> list[str]:
    return [x for s in [*TINY, *extra] for x in ("--set", s)]


def _copy(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def _first_image(run: Path) -> str:
    with (run / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        return next(csv.DictReader(fh))["path"]


def _as_older_checkpoint(weights: Path) -> None:
    """Make a checkpoint look written before checksums existed: no sha256s in the sidecar, no definition in
    the weights' header."""
    from safetensors.torch import load_file, save_file

    sidecar = weights.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta.pop("weights_sha256"), meta.pop("definition_sha256")
    sidecar.write_text(json.dumps(meta))
    save_file(load_file(weights), weights)


# -- checked checkpoints ---------------------------------------------------------------------------------------
def test_a_sidecar_with_swapped_class_names_is_refused_instead_of_served(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    sidecar = run / "fold1" / "best.json"
    meta = json.loads(sidecar.read_text())
    meta["tasks"]["malignancy"]["classes"].reverse()
    meta["class_maps"]["malignancy"] = {"0": "malignant", "1": "benign"}
    sidecar.write_text(json.dumps(meta))
    out = invoke_cli("predict", "--model", str(run / "fold1" / "best.safetensors"), _first_image(run),
                     "--out", str(tmp_path / "calls.csv"))
    assert out.returncode == 2, out.stdout
    assert "best.json differs from the file lnzoo wrote" in out.stderr  # the run's manifest sees the edit
    out = invoke_cli("predict", "--model", str(run / "fold1" / "best.safetensors"), _first_image(run),
                     "--out", str(tmp_path / "calls.csv"), "--allow-modified")  # and so do the weights themselves
    assert out.returncode == 2, out.stdout
    assert "best.json" in out.stderr and "tasks.malignancy" in out.stderr and "edited" in out.stderr
    assert not (tmp_path / "calls.csv").exists()


def test_replaced_or_truncated_weights_are_refused_naming_the_file(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    weights = run / "fold1" / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    out = invoke_cli("predict", "--model", str(weights), _first_image(run), "--out", str(tmp_path / "c.csv"))
    assert out.returncode == 2 and str(weights) in out.stderr and "sha256" in out.stderr
    # a checkpoint from before the checksums: the damage is still named, not a traceback
    _as_older_checkpoint(run / "fold2" / "best.safetensors")
    older = run / "fold2" / "best.safetensors"
    older.write_bytes(older.read_bytes()[:5000])
    out = invoke_cli("predict", "--model", str(older), _first_image(run), "--out", str(tmp_path / "c.csv"),
                     "--allow-modified")
    assert out.returncode == 2 and str(older) in out.stderr and "truncated or corrupt" in out.stderr


def test_a_class_count_that_disagrees_with_the_weights_names_the_task(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    weights = run / "fold1" / "best.safetensors"
    _as_older_checkpoint(weights)
    sidecar = weights.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["tasks"]["malignancy"]["classes"].append("uncertain")
    sidecar.write_text(json.dumps(meta))
    out = invoke_cli("predict", "--model", str(weights), _first_image(run), "--out", str(tmp_path / "c.csv"),
                     "--allow-modified")
    assert out.returncode == 2
    assert "heads.malignancy" in out.stderr and "3 classes" in out.stderr and "uncertain" in out.stderr


# -- safe run directories --------------------------------------------------------------------------------------
def test_predict_never_writes_into_a_run_directory(tiny_run, tmp_path, monkeypatch):
    run = _copy(tiny_run, tmp_path)
    before = (run / "predictions.csv").read_bytes()
    monkeypatch.chdir(run)
    out = invoke_cli("predict", "--model", ".", _first_image(run))  # the default --out is ./predictions.csv
    assert out.returncode == 2 and "is a run directory" in out.stderr
    assert (run / "predictions.csv").read_bytes() == before
    assert invoke_cli("report", ".", "--n-boot", "0").returncode == 0  # the run is intact


def test_readers_refuse_a_run_that_did_not_finish_unless_allowed(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    info = json.loads((run / "run.json").read_text())
    write_atomic(run / "run.json", json.dumps({**info, "status": "failed", "error": "OSError: disk full"}))
    image = _first_image(run)
    for args in (["predict", "--model", str(run), image, "--out", str(tmp_path / "c.csv")], ["evaluate", str(run)],
                 ["report", str(run)], ["compare", str(run), str(run)]):
        out = invoke_cli(*args)
        assert out.returncode == 2 and "not a finished run" in out.stderr and "disk full" in out.stderr, args
    out = invoke_cli("predict", "--model", str(run), image, "--out", str(tmp_path / "c.csv"), "--allow-partial")
    assert out.returncode == 0, out.stderr
    # killed outright, a run cannot record it: "running" with its lock free reads as interrupted
    write_atomic(run / "run.json", json.dumps({**info, "status": "running", "pid": 1}))
    out = invoke_cli("evaluate", str(run))
    assert out.returncode == 2 and "interrupted" in out.stderr and "--resume" in out.stderr


def test_a_second_run_into_a_folder_being_written_is_refused_naming_the_holder(tmp_path):
    holder = RunDir(tmp_path / "out", writer=True)
    holder.claim()
    try:
        out = invoke_cli("run", RECIPE, "--quick", *_sets(), "--out", str(tmp_path / "out"))
        assert out.returncode == 2 and f"pid {os.getpid()}" in out.stderr and "another run" in out.stderr
        assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "running"
    finally:
        holder.release("finished")


def test_a_run_never_writes_over_a_folder_it_did_not_start(tiny_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text('{"auc": 0.91}')
    out = invoke_cli("run", RECIPE, "--quick", *_sets(), "--out", str(mine))
    assert out.returncode == 2 and "not empty" in out.stderr and "metrics.json" in out.stderr
    assert (mine / "metrics.json").read_text() == '{"auc": 0.91}' and sorted(p.name for p in mine.iterdir()) == [
        "metrics.json"]
    out = invoke_cli("run", RECIPE, "--quick", *_sets(), "--out", str(tiny_run))
    assert out.returncode == 2 and "finished run" in out.stderr


def test_an_output_folder_that_cannot_be_written_is_a_named_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = invoke_cli("run", RECIPE, "--quick", *_sets(), "--out", str(blocker / "run"))
    assert out.returncode == 1 and "cannot write the run directory" in out.stderr and str(blocker) in out.stderr
    assert "Traceback" not in out.stderr


# -- guards ------------------------------------------------------------------------------------------------------
def test_a_zero_learning_rate_is_a_recipe_error():
    out = invoke_cli("validate", RECIPE, "--quick", "--set", "train.lr=0")
    assert out.returncode == 2 and "train.lr" in out.stderr and "trains nothing" in out.stderr


def test_a_diverging_loss_stops_the_fold_with_a_named_error_and_a_failed_status(tmp_path):
    out = invoke_cli("run", RECIPE, "--quick", *_sets("train.lr=1e6", "cv.run_folds=[0]"), "--out",
                     str(tmp_path / "r"))
    assert out.returncode == 1 and "not finite" in out.stderr and "fold 0" in out.stderr and "train.lr" in out.stderr
    assert "Traceback" not in out.stderr
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["status"] == "failed" and "not finite" in info["error"]


def test_the_loss_as_monitor_trains_and_reports_each_epoch(tmp_path):
    out = invoke_cli("run", RECIPE, "--quick", *_sets("train.monitor='loss'", "cv.run_folds=[0]"), "--n-boot", "0",
                     "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert "epoch 2/2" in out.stderr and "val_loss" in out.stderr
    side = json.loads((tmp_path / "r" / "fold0" / "best.json").read_text())
    history = list(csv.DictReader((tmp_path / "r" / "fold0" / "history.csv").open()))
    assert side["monitor"]["loss"] == pytest.approx(min(float(h["val_loss"]) for h in history), rel=1e-5)


def test_a_small_inner_validation_part_is_warned_about(tiny_run):
    log = (tiny_run.parent / "stderr.txt").read_text()
    assert "inner validation part has" in log and "mostly noise" in log
    folds = json.loads((tiny_run / "metrics.json").read_text())["cross_validation"]["folds"]
    assert all("validation_warning" in f for f in folds)


# -- covariates --------------------------------------------------------------------------------------------------
def _manifest_with(tmp_path: Path, edits: dict[int, dict[str, str]]) -> Path:
    """The phantom's manifest with absolute image paths and some cells changed (row index -> column -> text)."""
    rows = phantom_rows(24)
    for i, cells in edits.items():
        rows[i].update(cells)
    out = tmp_path / "nodes.csv"
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def test_a_typo_in_a_numeric_covariate_is_named_and_nan_is_missing(tmp_path):
    sets = ["--set", "data.covariates=['age', 'sex']"]
    typo = _manifest_with(tmp_path, {2: {"age": "4O"}, 5: {"age": "NaN"}})
    out = invoke_cli("validate", RECIPE, "--quick", *sets, "--set", f"data.train='{typo.as_posix()}'")
    assert out.returncode == 2
    assert f"{typo}:4" in out.stderr and "'4O'" in out.stderr and "not a number" in out.stderr
    assert ":7" not in out.stderr  # NaN is a missing value, not a problem
    listed = invoke_cli("validate", RECIPE, "--quick", *sets, "--set", "data.missing_covariates=['4O']",
                        "--set", f"data.train='{typo.as_posix()}'")
    assert listed.returncode == 0, listed.stderr


def test_covariate_kinds_are_decided_on_the_whole_manifest_not_the_fold():
    from lnzoo.data.covariates import CovariateEncoder, covariate_kinds
    from lnzoo.data.samples import Sample
    from lnzoo.errors import DataError

    rows = [Sample({"full": Path(f"{i}.png")}, f"P{i}", {}, f"m.csv:{i + 2}", cells={"age": a})
            for i, a in enumerate(["", "", "61", "70", "unknown"])]
    kinds, bad = covariate_kinds(rows, ["age"], {}, ["unknown"], problems := [])
    assert kinds == {"age": "numeric"} and not bad and not problems
    fold = CovariateEncoder.fit(rows[:2], ["age"], kinds)  # a training part that has no age at all
    assert fold.spec[0]["kind"] == "numeric"
    with pytest.raises(DataError, match="m.csv:9.*'sixty'"):  # serving: a word where a number belongs
        fold.transform(Sample({"full": Path("x.png")}, "Q", {}, "m.csv:9", cells={"age": "sixty"}))


# -- plugins -----------------------------------------------------------------------------------------------------
def test_a_plugin_that_exits_at_import_is_reported_and_skipped(fake_dist):
    site = fake_dist("exiting-plugin", "0.1", {"bye": "bye_mod"}, {"bye_mod": "import sys\nsys.exit(3)\n"})
    for args in (["--help"], ["list-heads"]):
        out = run_cli(*args, pythonpath=[site])
        assert out.returncode == 0 and "exiting-plugin" in out.stderr and "sys.exit(3)" in out.stderr, out.stderr


def test_overriding_another_distributions_component_is_a_warning(fake_dist):
    code = ("import lnzoo, torch\n\n@lnzoo.hookimpl\ndef lnzoo_register_heads(register):\n"
            "    register('linear', lambda in_features, num_classes: torch.nn.Linear(in_features, num_classes),\n"
            "             'a replacement', override=True)\n")
    site = fake_dist("acme-override", "1.2", {"acme": "acme_mod"}, {"acme_mod": code})
    out = run_cli("plugins", pythonpath=[site])
    assert out.returncode == 0
    assert "head 'linear' from acme-override 1.2 replaces the one from lnzoo" in out.stderr


# -- resume ------------------------------------------------------------------------------------------------------
RESUMABLE = _sets("train.epochs=3", "data.batch_size=8", "cv.run_folds=[0, 1]")


def _start(out: Path, env) -> subprocess.Popen:
    # SIGINT as at a terminal: a suite started in the background (`cmd &` in a script) has it ignored, and a
    # child inherits that (Python then installs no KeyboardInterrupt handler), which a Ctrl-C test must not
    return subprocess.Popen([sys.executable, "-m", "lnzoo", "run", RECIPE, "--quick", *RESUMABLE, "--n-boot", "20",
                             "--out", str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_kill_9_mid_fold_then_resume_gives_the_uninterrupted_run_exactly(tmp_path, lnzoo_cache):
    env = {**os.environ, "LNZOO_CACHE": str(lnzoo_cache)}
    whole = _start(tmp_path / "whole", env)
    assert whole.wait() == 0, whole.communicate()
    killed = _start(tmp_path / "killed", env)
    _wait_for(tmp_path / "killed" / "fold1" / "resume.json", killed)  # fold 0 done, fold 1 one epoch in
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert RunDir(tmp_path / "killed").status() == "interrupted"
    assert not (tmp_path / "killed" / "fold1" / "best.json").exists()
    rerun = invoke_cli("run", RECIPE, "--quick", *RESUMABLE, "--out", str(tmp_path / "killed"))  # not --resume
    assert rerun.returncode == 2 and "unfinished run" in rerun.stderr and "--resume" in rerun.stderr
    resumed = run_cli("run", "--resume", str(tmp_path / "killed"), "--n-boot", "20", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "fold 0: already fitted (fold0/result.json)" in resumed.stderr and "fold 1: resumed after epoch" in \
        resumed.stderr
    for name in ("metrics.json", "predictions.csv", "fold1/history.csv"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert RunDir(tmp_path / "killed").status() == "finished"
    assert not list((tmp_path / "killed").glob("fold*/resume.*"))  # the resumable state goes once a fold ends
    again = run_cli("run", "--resume", str(tmp_path / "killed"), env=env)
    assert again.returncode == 2 and "already finished" in again.stderr


def test_ctrl_c_saves_says_how_to_resume_and_marks_the_run_interrupted(tmp_path, lnzoo_cache):
    env = {**os.environ, "LNZOO_CACHE": str(lnzoo_cache)}
    proc = _start(tmp_path / "r", env)
    _wait_for(tmp_path / "r" / "fold0" / "resume.json", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"lnzoo run --resume {tmp_path / 'r'}" in stderr.replace("\n", "") and "Traceback" not in stderr
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "interrupted"
    assert (tmp_path / "r" / "fold0" / "resume.safetensors").is_file()


# -- validate finds what run refuses -------------------------------------------------------------------------------
def _validate(*sets: str):
    return invoke_cli("validate", RECIPE, "--quick", *[x for s in sets for x in ("--set", s)])


def test_validate_refuses_a_patient_in_both_the_cv_data_and_the_test_set(tmp_path):
    train = _manifest_with(tmp_path, {})
    lines = train.read_text(encoding="utf-8").splitlines()
    train.write_text("\n".join(lines[:-2]) + "\n", encoding="utf-8")
    rows = list(csv.DictReader(lines))
    first_patient = rows[0]["patient"]
    test = tmp_path / "test.csv"  # other images, but one of the training patients
    with test.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "patient": first_patient} for r in rows[-2:])
    out = _validate(f"data.train='{train.as_posix()}'", f"data.test='{test.as_posix()}'")
    assert out.returncode == 2 and f"patient {first_patient!r} is in both 'cross-validation' and 'test'" in out.stderr


def test_validate_decodes_every_image_and_applies_the_pixel_limit(tmp_path):
    train = _manifest_with(tmp_path, {})
    with train.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(rows[3]["path"]).read_bytes()[:400])  # a PNG cut off mid-stream
    text = train.read_text(encoding="utf-8").replace(rows[3]["path"], str(broken))
    train.write_text(text, encoding="utf-8")
    out = _validate(f"data.train='{train.as_posix()}'")
    assert out.returncode == 2 and f"{train}:5: {broken}: unreadable or corrupt image" in out.stderr
    out = _validate(f"data.train='{_manifest_with(tmp_path, {}).as_posix()}'", "data.max_image_pixels=1000")
    assert out.returncode == 2 and "over data.max_image_pixels (1,000)" in out.stderr


def test_a_decompression_bomb_is_refused_by_name_without_decoding_it(tmp_path):
    import warnings

    from PIL import Image

    from lnzoo.data.images import Preprocessing, load_image
    from lnzoo.errors import DataError

    bomb = tmp_path / "bomb.png"
    Image.new("1", (14_000, 14_000)).save(bomb)  # 196 Mpx, a few hundred kB on disk
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not leak either
        with pytest.raises(DataError, match=r"bomb.png: 14000x14000 = 196,000,000 pixels, over data.max_image_pixels"):
            load_image(bomb, Preprocessing(32), "m.csv:2")


def test_validate_builds_the_model_and_names_a_missing_column_or_encoding(tmp_path):
    out = _validate("model.backbone={name='timm', model_name='resnet5O'}")
    assert out.returncode == 2 and "did you mean 'resnet50'" in out.stderr
    out = _validate("data.covariates=['agee']")
    assert out.returncode == 2 and "no row of the data has a column 'agee'" in out.stderr
    rows = _manifest_with(tmp_path, {}).read_text(encoding="utf-8").splitlines()
    header = rows[0].split(",")
    nopatient = tmp_path / "nopatient.csv"
    keep = [i for i, c in enumerate(header) if c != "patient"]
    nopatient.write_text("\n".join(",".join(r.split(",")[i] for i in keep) for r in rows) + "\n", encoding="utf-8")
    out = _validate(f"data.train='{nopatient.as_posix()}'")
    assert out.returncode == 2 and "no 'patient' column" in out.stderr
    gbk = tmp_path / "main.txt"
    gbk.write_bytes("\n".join(f"{r.split(',')[0]},良性" for r in rows[1:4]).encode("gbk"))
    out = _validate(f"data.train=['{gbk.as_posix()}']", "data.patient_regex='^(P\\d+)_'")
    assert out.returncode == 2 and f"{gbk}:1: not UTF-8" in out.stderr and "iconv -f GB18030" in out.stderr
    out = _validate("data.patient_regex='(['")
    assert out.returncode == 2 and "not a valid regular expression" in out.stderr


def test_a_model_with_nothing_trainable_is_refused_before_training():
    from lnzoo.errors import UsageError
    from lnzoo.model import build_model
    from lnzoo.plugins import load_plugins
    from lnzoo.recipe import load_recipe
    from lnzoo.data.run_data import recipe_tasks
    from lnzoo.train import make_optimizer

    host = load_plugins()
    recipe = load_recipe(RECIPE, sets=TINY, host=host)
    model = build_model(recipe, host, recipe_tasks(recipe, host))
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(UsageError, match="no trainable parameter"):
        make_optimizer(model, recipe.data["train"])


def test_covariate_mistakes_in_the_recipe_are_not_skipped_as_bad_rows():
    out = _validate("data.covariates=['agee']", "data.skip_bad_rows=true")
    assert out.returncode == 2 and "no row of the data has a column 'agee'" in out.stderr


def test_a_run_stopped_before_its_folds_were_planned_resumes_from_the_start(tmp_path):
    out = tmp_path / "r"
    first = invoke_cli("run", RECIPE, "--quick", *_sets("cv.run_folds=[0]", "train.epochs=1"), "--n-boot", "0",
                       "--out", str(out))
    assert first.returncode == 0, first.stderr
    info = json.loads((out / "run.json").read_text())  # as if it had failed while loading its data
    for name in ("metrics.json", "predictions.csv", "folds.csv"):
        (out / name).unlink()
    shutil.rmtree(out / "fold0")
    write_atomic(out / "run.json", json.dumps({k: v for k, v in info.items() if k not in ("data_sha256",)}
                                              | {"status": "failed", "error": "DataError: ..."}))
    resumed = invoke_cli("run", "--resume", str(out), "--n-boot", "0")
    assert resumed.returncode == 0, resumed.stderr
    assert RunDir(out).status() == "finished" and (out / "fold0" / "best.safetensors").is_file()


def test_predict_refuses_any_path_inside_a_run_directory(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    out = invoke_cli("predict", "--model", str(run), _first_image(run), "--out", str(run / "fold1" / "x.csv"))
    assert out.returncode == 2 and "is a run directory" in out.stderr
