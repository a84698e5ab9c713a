"""Experiment trackers (train.track): MLflow and TensorBoard follow a run, read back with their own readers; a tracker
that fails warns once and never stops the run; an unknown name is a recipe error; --resume continues the MLflow run."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import lnzoo
from lnzoo import events
from tests.conftest import REPO, TINY, invoke_cli

RECIPE = REPO / "recipes" / "stage1_aux.toml"


def _sets(*extra: str) -> list[str]:
    return [x for s in [*TINY, *extra] for x in ("--set", s)]


@pytest.fixture(autouse=True)
def _local_mlflow(monkeypatch):
    """Every test's MLflow store is the embedded one beside its run; MLflow sends no usage data from the tests."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def _client(run: Path):
    from mlflow.tracking import MlflowClient

    kept = json.loads((run / "run.json").read_text())["tracking"]["mlflow"]
    assert kept["tracking_uri"] == f"sqlite:///{(run.parent / 'mlruns' / 'mlflow.db').resolve().as_posix()}"
    return MlflowClient(tracking_uri=kept["tracking_uri"]), kept["run_id"]


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# -- both built-ins, read back with MLflow's client and TensorBoard's reader -------------------------------------

@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, lnzoo_cache) -> Path:
    """A tiny run, folds 1 and 2 of 3, followed by both built-in trackers."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(name, raising=False)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        done = invoke_cli("run", RECIPE, "--quick",
                          *_sets("cv.run_folds=[1, 2]", "train.track=['mlflow', 'tensorboard']"),
                          "--n-boot", "20", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "warning: tracker" not in done.stderr, done.stderr
    return out


@pytest.mark.slow
def test_mlflow_holds_the_recipe_every_epoch_the_final_metrics_and_the_report(tracked_run):
    client, run_id = _client(tracked_run)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "stage1_aux"
    params = run.data.params
    assert params["train.epochs"] == "2" and params["model.backbone.model_name"] == "test_resnet"
    assert params["train.track"] == '["mlflow", "tensorboard"]' and params["cv.run_folds"] == "[1, 2]"
    for k in (1, 2):  # one value per epoch per fold, as the epochs ended
        for key in ("train_loss", "val_loss", "lr"):
            assert _steps(client, run_id, f"fold{k}/{key}") == [1, 2]
        assert f"fold{k}/held_out/auc" in run.data.metrics
    assert "fold0/train_loss" not in run.data.metrics
    evaluation = json.loads((tracked_run / "evaluation.json").read_text())
    cv = evaluation["tasks"]["malignancy"]["levels"]["image"]["parts"]["cv"]
    metrics = run.data.metrics
    assert metrics["final/malignancy/image/cv/auc"] == pytest.approx(cv["metrics"]["auc"])
    assert metrics["final/malignancy/image/cv/auc_lo"] == pytest.approx(cv["ci"]["auc"]["lo"])
    assert metrics["final/malignancy/image/cv/auc_hi"] == pytest.approx(cv["ci"]["auc"]["hi"])
    assert "final/enlargement/image/cv_mean/auc" in metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "evaluation.json", "tripod_ai.md", "recipe.toml"} <= artifacts
    assert (tracked_run.parent / "mlruns" / "artifacts").is_dir()


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_same_curves(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    client, run_id = _client(tracked_run)
    acc = EventAccumulator(str(tracked_run / "tensorboard"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for k in (1, 2):
        points = acc.Scalars(f"fold{k}/train_loss")
        assert [p.step for p in points] == [1, 2]
        history = sorted(client.get_metric_history(run_id, f"fold{k}/train_loss"), key=lambda m: m.step)
        assert [p.value for p in points] == pytest.approx([m.value for m in history], rel=1e-6)
    assert {"final/malignancy/image/cv/auc", "final/malignancy/image/cv/auc_lo"} <= scalars
    assert "recipe/toml/text_summary" in acc.Tags()["tensors"]


# -- a tracker that fails, an unknown name -----------------------------------------------------------------------

CALLS: list[tuple] = []


class _Quiet:
    def __init__(self, run_dir, recipe):
        pass

    def start(self, resume):
        pass

    def event(self, event):
        pass

    def finish(self, status):
        pass


class _Recorder:
    def __init__(self, run_dir, recipe):
        CALLS.append(("built", Path(run_dir).name, recipe.name))

    def start(self, resume):
        CALLS.append(("start", resume))

    def event(self, event):
        CALLS.append(("event", type(event).__name__))

    def finish(self, status):
        CALLS.append(("finish", status))


class _Flaky(_Quiet):
    def event(self, event):
        raise RuntimeError("the tracking server is down")


class _Sulky(_Quiet):
    def start(self, resume):
        raise ConnectionError("refused")


def _absent(run_dir, recipe):
    from lnzoo.track import missing_extra
    raise missing_extra("acme-tracking", "absent")


def _test_trackers():
    def hook(register):
        register("recorder", _Recorder, "records what it is told")
        register("flaky", _Flaky, "raises on every event")
        register("sulky", _Sulky, "raises when it starts")
        register("absent", _absent, "its package is not installed")
    mod = types.ModuleType("acme_trackers")
    mod.lnzoo_register_trackers = lnzoo.hookimpl(hook)
    return mod


@pytest.mark.slow
def test_failing_trackers_warn_once_each_and_the_run_finishes(tmp_path):
    from lnzoo.plugins import load_plugins, set_host

    set_host(load_plugins(extra=[("acme-trackers", _test_trackers())]))
    CALLS.clear()
    done = invoke_cli("run", RECIPE, "--quick",
                      *_sets("cv.run_folds=[0]", "train.epochs=1",
                             "train.track=['flaky', 'sulky', 'absent', 'recorder']"),
                      "--n-boot", "0", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    err = done.stderr.replace("\n", " ")
    assert err.count("tracker 'flaky'") == 1 and "tracker 'flaky' failed on Note (RuntimeError: the tracking server" \
        " is down); it records nothing more of this run, which goes on" in err
    assert err.count("tracker 'sulky'") == 1 and "tracker 'sulky' failed when it started (ConnectionError" in err
    assert err.count("tracker 'absent'") == 1
    assert "tracker 'absent' is off for this run: the absent tracker needs acme-tracking, which is not installed: " \
           'pip install "lnzoo[track]"' in err
    assert (tmp_path / "run" / "report.html").is_file()
    # the working one saw the whole run: built before it, started once the run was claimed, every event, finished
    kinds = [c[0] for c in CALLS]
    assert CALLS[0] == ("built", "run", "stage1_aux") and kinds.count("start") == 1 and CALLS[1][:2] == ("start", False)
    seen = [c[1] for c in CALLS if c[0] == "event"]
    assert seen[-1] == "RunEnded" and {"FoldStarted", "StepEnded", "EpochEnded", "FoldEnded"} <= set(seen)
    assert CALLS[-1] == ("finish", "finished") and kinds.count("finish") == 1


def test_unknown_tracker_is_a_recipe_error_naming_the_registered_ones(tmp_path):
    done = invoke_cli("run", RECIPE, "--quick", *_sets("train.track=['mlfow']"), "--out", tmp_path / "run")
    assert done.returncode == 2
    err = done.stderr.replace("\n", " ")
    assert "train.track: unknown tracker 'mlfow'; did you mean 'mlflow'?; registered trackers: mlflow, tensorboard" \
        in err, err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_track_problems_name_every_mistake():
    from lnzoo.track import track_problems

    known = ["mlflow", "tensorboard"]
    assert track_problems([], known) == [] and track_problems(["mlflow", "tensorboard"], known) == []
    assert track_problems("mlflow", known) == ["train.track: expected a list of tracker names, e.g. [\"mlflow\"], "
                                              "got 'mlflow'; registered trackers: mlflow, tensorboard"]
    assert track_problems(["wandb", 3, "mlflow", "mlflow"], known) == [
        "train.track: unknown tracker 'wandb'; registered trackers: mlflow, tensorboard",
        "train.track: unknown tracker 3; registered trackers: mlflow, tensorboard",
        "train.track: tracker 'mlflow' is named twice"]
    assert track_problems(["x"], []) == ["train.track: unknown tracker 'x'; registered trackers: none (install a "
                                         "tracker plugin)"]


def test_tracking_calls_each_tracker_in_order_and_drops_one_that_fails():
    from lnzoo.track import Tracking

    seen, notes = [], []

    class Good:
        def start(self, resume):
            seen.append(("start", resume))

        def event(self, e):
            seen.append(type(e).__name__)

        def finish(self, status):
            seen.append(("finish", status))

    class Bad(Good):
        def event(self, e):
            seen.append("bad")
            raise ValueError("no")

        def finish(self, status):
            raise ValueError("again")

    tracking = Tracking({"good": Good(), "bad": Bad()}, notes.append, resume=True)
    with pytest.raises(KeyError), tracking.following():
        tracking(events.Note("a"))
        tracking(events.Progress("decode", 1, 2))
        raise KeyError("the run failed")
    assert seen == [("start", True), ("start", True), "Note", "bad", "Progress", ("finish", "failed")]
    warned = [n for n in notes if isinstance(n, events.Note) and n.level == "warning"]
    assert len(warned) == 1 and "tracker 'bad' failed on Note (ValueError: no)" in warned[0].text
    assert [type(n).__name__ for n in notes] == ["Note", "Note", "Progress"]  # the caller sees every event first
    assert tracking.failed == {"bad": "ValueError: no"}

    interrupted = []
    tracking = Tracking({"good": Good()}, interrupted.append)
    with pytest.raises(KeyboardInterrupt), tracking.following():
        tracking(events.Note("b"))
        raise KeyboardInterrupt
    assert seen[-1] == ("finish", "interrupted")


def test_a_missing_extra_says_how_to_install_it(monkeypatch, tmp_path):
    from lnzoo.plugins import get_host
    from lnzoo.recipe import load_recipe
    from lnzoo.track import TrackerUnavailable, open_tracking
    from lnzoo.track.mlflow import MlflowTracker
    from lnzoo.track.tensorboard import TensorBoardTracker

    recipe = load_recipe(RECIPE, quick=True, sets=["train.track=['mlflow', 'tensorboard']"], host=get_host())
    for name in {"mlflow", "torch.utils.tensorboard", *(n for n in sys.modules if n.startswith("mlflow."))}:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    for factory in (MlflowTracker, TensorBoardTracker):
        with pytest.raises(TrackerUnavailable, match=r'pip install "lnzoo\[track\]"'):
            factory(tmp_path / "run", recipe)
    notes = []
    tracking = open_tracking(recipe, tmp_path / "run", notes.append, get_host())
    assert tracking is not None and tracking.names == []
    assert [n.text for n in notes] == [
        "tracker 'mlflow' is off for this run: the mlflow tracker needs mlflow (mlflow-skinny), which is not "
        'installed: pip install "lnzoo[track]"',
        "tracker 'tensorboard' is off for this run: the tensorboard tracker needs tensorboard, which is not installed: "
        'pip install "lnzoo[track]"']
    assert not (tmp_path / "run").exists()


def test_mlflow_tracking_uri_is_where_it_records(monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    from lnzoo.plugins import get_host
    from lnzoo.recipe import load_recipe
    from lnzoo.track.mlflow import MlflowTracker

    uri = f"sqlite:///{(tmp_path / 'shared' / 'tracking.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lymph nodes")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "r").mkdir(parents=True)
    recipe = load_recipe(RECIPE, quick=True, sets=["train.track=['mlflow']"], host=get_host())
    tracker = MlflowTracker(tmp_path / "runs" / "r", recipe)
    tracker.start(False)
    tracker.event(events.EpochEnded(0, 3, {"epoch": 1, "train_loss": 0.5, "val_loss": float("nan"), "lr": 0.1}, 0.0))
    tracker.finish("failed")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("lymph nodes")
    assert experiment.artifact_location == (tmp_path / "shared" / "artifacts").as_uri()  # beside the database
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED" and run.data.metrics == {"fold0/train_loss": 0.5, "fold0/lr": 0.1}
    assert json.loads((tmp_path / "runs" / "r" / "run.json").read_text())["tracking"]["mlflow"] == {
        "run_id": run.info.run_id, "tracking_uri": uri, "experiment": "lymph nodes"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "shared"]  # no ./mlruns where it ran
    assert not (tmp_path / "runs" / "mlruns").exists()


def test_under_torchrun_only_rank_0_tracks_and_every_rank_checks_the_names(monkeypatch, tmp_path):
    from lnzoo.errors import RecipeError
    from lnzoo.plugins import get_host
    from lnzoo.recipe import load_recipe
    from lnzoo.track import open_tracking

    recipe = load_recipe(RECIPE, quick=True, sets=["train.track=['mlflow', 'tensorboard']"], host=get_host())
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert open_tracking(recipe, tmp_path / "run", print, get_host()) is None
    recipe.set("train.track", ["wandb"])
    with pytest.raises(RecipeError, match="unknown tracker 'wandb'"):
        open_tracking(recipe, tmp_path / "run", print, get_host())
    monkeypatch.setenv("RANK", "0")
    recipe.set("train.track", ["tensorboard"])
    assert open_tracking(recipe, tmp_path / "run", print, get_host()).names == ["tensorboard"]
    assert not (tmp_path / "run").exists()  # built, not started: nothing written before the run claims its folder


def test_import_and_help_load_no_tracker_package():
    code = ("import sys, lnzoo, lnzoo.cli\n"
            "from typer.testing import CliRunner\n"
            "assert CliRunner().invoke(lnzoo.cli.app, ['--help']).exit_code == 0\n"
            "from lnzoo.plugins import get_host\n"
            "assert get_host().registry('tracker').names()[:2] == ['mlflow', 'tensorboard']\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard', 'sqlalchemy')]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr


# -- resume -------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_continues_the_same_mlflow_run(tmp_path):
    from lnzoo.pipeline import run
    from lnzoo.plugins import get_host

    class Stop(KeyboardInterrupt):
        pass

    def stop_in_epoch_2(event):  # Ctrl-C in fold 1's second epoch: fold 0 is done, fold 1's first epoch saved
        if isinstance(event, events.StepEnded) and event.fold == 1 and event.epoch == 1:
            raise Stop

    out = tmp_path / "run"
    sets = [*TINY, "cv.run_folds=[0, 1]", "train.track=['mlflow']"]
    with pytest.raises(Stop):
        run(RECIPE, out, stop_in_epoch_2, quick=True, sets=sets, host=get_host(), n_boot=0)
    client, run_id = _client(out)
    assert client.get_run(run_id).info.status == "KILLED" and _steps(client, run_id, "fold1/train_loss") == [1]
    done = invoke_cli("run", "--resume", out, "--n-boot", "0")
    assert done.returncode == 0, done.stderr
    assert "resumed after epoch" in done.stderr
    client, again = _client(out)
    assert again == run_id
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED" and "final/malignancy/image/cv/auc" in finished.data.metrics
    assert _steps(client, run_id, "fold1/train_loss") == [1, 2]
    assert _steps(client, run_id, "fold0/train_loss") == [1, 2]  # the fold done before is not sent again
    assert len(client.search_runs([finished.info.experiment_id])) == 1
    assert json.loads((out / "run.json").read_text())["tracked_folds"] == {"mlflow": [0, 1]}


def test_folds_fitted_by_sweep_jobs_reach_the_tracker_when_the_run_is_gathered(tmp_path):
    """lnzoo sweep fits each fold in a job of its own, untracked; gathering the run replays each fold's curves (from
    its history.csv), held-out figures and end to the trackers, then the final metrics, as a run in one process."""
    import csv

    from lnzoo.pipeline import fit_fold_job, prepare_run, run
    from lnzoo.plugins import get_host
    from lnzoo.recipe import load_recipe

    host = get_host()
    recipe = load_recipe(RECIPE, sets=[*TINY, "cv.run_folds=[0, 2]", "train.track=['mlflow']"], quick=True,
                         host=host)
    out = tmp_path / "run"
    folds = prepare_run(recipe, host, out)
    for k in folds:  # what each sweep job does, here in turn
        assert fit_fold_job(out, k, host)
    assert "tracking" not in json.loads((out / "run.json").read_text())  # a fold job tracks nothing
    seen = []
    run(None, out, seen.append, host=host, resume=True, n_boot=0)
    assert not [e.text for e in seen if isinstance(e, events.Note) and "tracker" in e.text]
    client, run_id = _client(out)
    for k in folds:
        rows = list(csv.DictReader((out / f"fold{k}" / "history.csv").open()))
        history = sorted(client.get_metric_history(run_id, f"fold{k}/val_loss"), key=lambda m: m.step)
        assert [m.step for m in history] == [int(r["epoch"]) for r in rows] == [1, 2]
        assert [m.value for m in history] == pytest.approx([float(r["val_loss"]) for r in rows])
        assert f"fold{k}/held_out/auc" in client.get_run(run_id).data.metrics
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED" and "final/malignancy/image/cv/auc" in finished.data.metrics
    assert json.loads((out / "run.json").read_text())["tracked_folds"] == {"mlflow": folds}


def test_a_kept_folds_replay_rebuilds_the_events_of_its_fitting(tiny_run):
    """The events a fold's fitting emitted, rebuilt from its record: the history rows, the best value so far as the
    fit picked it, and the held-out figures of its metrics.json entry."""
    from lnzoo.pipeline.fold import kept_fold_events
    from lnzoo.pipeline.folds import resumed_recipe
    from lnzoo.plugins import get_host
    from lnzoo.rundir import RunDir

    rd = RunDir(tiny_run)
    recipe = resumed_recipe(rd, get_host())
    info = next(f for f in rd.metrics()["cross_validation"]["folds"] if f["fold"] == 1)
    started, *epochs, ended = kept_fold_events(rd, 1, info, recipe)
    assert isinstance(started, events.FoldStarted) and (started.fold, started.n_train, started.n_held_out) == (
        1, info["n_train"], info["n_held_out"])
    assert [e.row["epoch"] for e in epochs] == list(range(1, info["epochs_run"] + 1))
    monitor = f"val_{recipe.config.train.monitor}"
    best_row = epochs[info["best_epoch"] - 1].row
    assert epochs[-1].best == pytest.approx(best_row[monitor], nan_ok=True)
    assert isinstance(ended, events.FoldEnded) and ended.metrics == info["metrics"]["malignancy"]
