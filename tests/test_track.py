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
    given = json.loads((out / "run.json").read_text())["given_to_trackers"]
    assert given == {"mlflow": {"epochs": {"0": 2, "1": 2}, "whole": [0, 1]}}


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
    given = json.loads((out / "run.json").read_text())["given_to_trackers"]
    assert given == {"mlflow": {"epochs": {str(k): 2 for k in folds}, "whole": folds}}
    assert finished.data.params["train.epochs"] == "2"  # started as a new run (not resumed): the recipe is there


def test_a_kept_folds_replay_rebuilds_the_events_of_its_fitting(tiny_run):
    """The events trackers take of a fold's fitting, rebuilt from its record: its start, its history.csv rows, and
    the held-out figures of its metrics.json entry."""
    import csv

    from lnzoo.pipeline.fold import kept_fold_events
    from lnzoo.pipeline.folds import resumed_recipe
    from lnzoo.plugins import get_host
    from lnzoo.rundir import RunDir
    from lnzoo.train.loop import best_so_far

    rd = RunDir(tiny_run)
    recipe = resumed_recipe(rd, get_host())
    info = next(f for f in rd.metrics()["cross_validation"]["folds"] if f["fold"] == 1)
    started, *epochs, ended = kept_fold_events(rd, 1, info, recipe)
    assert isinstance(started, events.FoldStarted) and (started.fold, started.n_folds, started.n_train,
                                                        started.n_validation, started.n_held_out) == (
        1, 3, info["n_train"], info["n_validation"], info["n_held_out"])
    rows = list(csv.DictReader((tiny_run / "fold1" / "history.csv").open()))
    assert len(epochs) == len(rows) == info["epochs_run"]
    for event, row in zip(epochs, rows):
        assert (event.fold, event.epochs) == (1, recipe.config.train.epochs)
        assert event.row == pytest.approx({k: int(v) if k == "epoch" else float(v) for k, v in row.items()},
                                          nan_ok=True)
    assert [e.best for e in epochs] == pytest.approx(best_so_far([e.row for e in epochs],
                                                                 recipe.config.train.monitor), nan_ok=True)
    assert isinstance(ended, events.FoldEnded) and ended.fold == 1 and ended.metrics == info["metrics"]["malignancy"]


NAN = float("nan")


@pytest.mark.parametrize("monitor, rows, best", [
    ("auc", [(0.6, 1.0), (0.7, 0.9), (0.65, 0.8)], [0.6, 0.7, 0.7]),
    ("auc", [(0.7, 1.0), (0.7 + 1e-12, 0.9)], [0.7, 0.7]),  # a tie does not move the best epoch
    ("auc", [(NAN, 1.0), (NAN, 0.8), (0.55, 0.9)], [NAN, NAN, 0.55]),  # undefined: minus the loss picks
    ("auc", [(NAN, 0.5), (0.6, 1.0)], [NAN, 0.6]),  # -0.5 for the undefined epoch, beaten by an AUC of 0.6
    ("auc", [(0.6, 1.0), (NAN, 0.5)], [0.6, 0.6]),  # and never beats a defined AUC
    ("loss", [(1.0, 1.0), (0.8, 0.8), (0.9, 0.9)], [1.0, 0.8, 0.8]),
])
def test_the_best_so_far_is_what_the_fit_picks(monitor, rows, best):
    """EpochEnded.best of a replayed fold: the monitored value at the best epoch so far, by the fit's own rule."""
    from lnzoo.train.loop import best_so_far

    history = [{"epoch": i + 1, "train_loss": 1.0, "val_loss": loss, f"val_{monitor}": value}
               for i, (value, loss) in enumerate(rows)]
    assert best_so_far(history, monitor) == pytest.approx(best, nan_ok=True)


# -- what each tracker was given, across processes ----------------------------------------------------------------

class _Fake:
    """A tracker that keeps, in memory, what it was given: ("start", resume), (fold, epoch) per epoch, ("end", fold)."""

    def __init__(self, fail_on_epoch=None):
        self.seen, self.fail_on_epoch = [], fail_on_epoch

    def start(self, resume):
        self.seen.append(("start", resume))

    def event(self, event):
        if isinstance(event, events.EpochEnded):
            if (event.fold, event.row["epoch"]) == self.fail_on_epoch:
                raise RuntimeError("store unreachable")
            self.seen.append((event.fold, event.row["epoch"]))
        elif isinstance(event, events.FoldStarted):
            self.seen.append(("fold", event.fold))
        elif isinstance(event, events.FoldEnded):
            self.seen.append(("end", event.fold))

    def finish(self, status):
        self.seen.append(("finish", status))


def _fold_events(fold, epochs):
    return [events.FoldStarted(fold, 3, 10, 2, 4, "best"),
            *(events.EpochEnded(fold, 3, {"epoch": e, "val_loss": 1.0 / e}, 1.0) for e in epochs),
            events.FoldEnded(fold, {"auc": 0.7})]


def _kept(fold, epochs=(1, 2, 3)):
    return events.FoldKept(fold, lambda: tuple(_fold_events(fold, epochs)))


def test_each_tracker_is_replayed_only_what_it_lacks_of_each_kept_fold(tmp_path):
    """A process that stopped in fold 1's second epoch; then a resumed one with a second tracker added: the first
    tracker is sent fold 1's third epoch and end only, the new one everything; a gather retried sends nothing."""
    from lnzoo.rundir import RunDir
    from lnzoo.track import Tracking

    notes = []
    with RunDir(tmp_path, writer=True).writing(done="interrupted") as rd:
        rd.write_recipe("name = 'kept'\n")
        first = _Fake()
        tracking = Tracking({"a": first}, notes.append, run_dir=tmp_path)
        for event in [*_fold_events(0, (1, 2, 3)), *_fold_events(1, (1, 2))[:-1]]:
            tracking(event)
        tracking.close("interrupted")
    assert json.loads((tmp_path / "run.json").read_text())["given_to_trackers"] == {
        "a": {"epochs": {"0": 3, "1": 2}, "whole": [0]}}

    with RunDir(tmp_path, writer=True).writing(resume=True, done="interrupted"):
        again, new, broken = _Fake(), _Fake(), _Fake(fail_on_epoch=(0, 2))
        tracking = Tracking({"a": again, "new": new, "broken": broken}, notes.append, resume=True, run_dir=tmp_path)
        for event in (events.Note("resuming"), _kept(0), _kept(1), *_fold_events(2, (1,))):
            tracking(event)
        tracking.close("finished")
    assert again.seen == [("start", True), (1, 3), ("end", 1), ("fold", 2), (2, 1), ("end", 2), ("finish", "finished")]
    assert new.seen == [("start", False), ("fold", 0), (0, 1), (0, 2), (0, 3), ("end", 0), ("fold", 1), (1, 1),
                        (1, 2), (1, 3), ("end", 1), ("fold", 2), (2, 1), ("end", 2), ("finish", "finished")]
    assert broken.seen == [("start", False), ("fold", 0), (0, 1), ("finish", "finished")]  # stopped at its failure
    warnings = [n.text for n in notes if isinstance(n, events.Note) and n.level == "warning"]
    assert len(warnings) == 1 and "tracker 'broken' failed on EpochEnded" in warnings[0]

    with RunDir(tmp_path, writer=True).writing(resume=True):  # lnzoo sweep --resume gathers once more
        last = _Fake()
        tracking = Tracking({"a": last}, notes.append, resume=True, run_dir=tmp_path)
        for event in (_kept(0), _kept(1), _kept(2, (1,))):
            tracking(event)
        tracking.close("finished")
    assert last.seen == [("start", True), ("finish", "finished")]


def test_a_kept_fold_whose_record_cannot_be_read_is_a_warning_not_a_stop(tmp_path):
    from lnzoo.rundir import RunDir
    from lnzoo.track import Tracking

    def unreadable():
        raise ValueError("fold0/history.csv: not valid UTF-8")

    notes, tracker = [], _Fake()
    with RunDir(tmp_path, writer=True).writing():
        tracking = Tracking({"a": tracker}, notes.append, run_dir=tmp_path)
        for event in (events.FoldKept(0, unreadable), _kept(1, (1,))):
            tracking(event)
        tracking.close("finished")
    assert tracker.seen == [("start", False), ("fold", 1), (1, 1), ("end", 1), ("finish", "finished")]
    assert [n.text for n in notes if isinstance(n, events.Note)] == [
        "fold 0 could not be replayed to the trackers (ValueError: fold0/history.csv: not valid UTF-8); they lack "
        "its curves and held-out figures"]


def test_a_sweep_says_the_warnings_of_gathering_a_run():
    from lnzoo.sweep import _warnings_to

    said = []
    on_event = _warnings_to(said.append, "stage1-seed0")
    for event in (events.Note("fold 0: already fitted"), events.Note("tracker 'mlflow' failed", "warning"),
                  events.EpochEnded(0, 2, {"epoch": 1}, 0.5)):
        on_event(event)
    assert said == ["stage1-seed0: warning: tracker 'mlflow' failed"]
