"""``lnzoo sweep`` on submitit's local executor: one job per fold, gathered into the run ``lnzoo run`` writes."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("submitit", reason='lnzoo sweep needs submitit: pip install -e ".[cluster]"')

from tests.conftest import REPO, TINY, run_cli  # noqa: E402

RECIPE = str(REPO / "recipes" / "stage1_aux.toml")
SETS = [x for s in [*TINY, "cv.run_folds=[1, 2]"] for x in ("--set", s)]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def swept(tmp_path_factory, lnzoo_cache) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "s"
    done = run_cli("sweep", RECIPE, "--quick", *SETS, "--executor", "local", "--max-parallel", "2", "--out", str(out),
                   env={"LNZOO_CACHE": str(lnzoo_cache)})
    assert done.returncode == 0, done.stderr
    (out.parent / "stderr.txt").write_text(done.stderr)
    (out.parent / "stdout.txt").write_text(done.stdout)
    return out


def test_a_sweep_gathers_its_fold_jobs_into_the_run_lnzoo_run_writes(swept, tiny_run):
    from safetensors.torch import load_file

    run = swept / "stage1_aux-quick-seed0"
    assert _files(run) == _files(tiny_run)  # the same layout: nothing missing, nothing extra
    for name in ("metrics.json", "predictions.csv", "folds.csv", "recipe.toml", "fold1/history.csv",
                 "fold2/history.csv", "fold1/result.json", "fold2/result.json"):
        assert (run / name).read_bytes() == (tiny_run / name).read_bytes(), name
    for k in (1, 2):
        mine, theirs = load_file(str(run / f"fold{k}/best.safetensors")), load_file(str(tiny_run / f"fold{k}/best.safetensors"))
        assert mine.keys() == theirs.keys() and all((mine[t] == theirs[t]).all() for t in mine)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["sweep"] == str(swept)
    printed = (swept.parent / "stdout.txt").read_text()
    assert "stage1_aux-quick-seed0" in printed and "finished" in printed


def test_status_shows_each_job_and_a_lost_one_as_failed(swept, tmp_path):
    done = run_cli("sweep", "--status", str(swept))
    assert done.returncode == 0, done.stderr
    assert "2 done, 0 running, 0 pending, 0 failed" in done.stdout
    copy = tmp_path / "s"
    shutil.copytree(swept, copy)
    (copy / "stage1_aux-quick-seed0" / "fold2" / "result.json").unlink()
    state = copy / "jobs" / "state" / "stage1_aux-quick-seed0-fold2.json"
    gone = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 10_000  # no such process
    state.write_text(json.dumps({"state": "running", "pid": gone, "host": os.uname().nodename}))
    from lnzoo.sweep import job_states
    got = {s.fold: s for s in job_states(copy)}
    assert got[1].state == "done" and got[2].state == "failed" and f"process {gone} is gone" in got[2].detail


FLAKY = """
import os, pathlib, torch, lnzoo

class Flaky(torch.nn.Linear):
    '''A linear head whose first construction fails, as a node that loses its GPU would.'''
    def __init__(self, in_features, num_classes):
        marker = pathlib.Path(os.environ["FLAKY_MARKER"])
        if not marker.exists():
            marker.write_text("failed once")
            raise RuntimeError("simulated node failure")
        super().__init__(in_features, num_classes)

@lnzoo.hookimpl
def lnzoo_register_heads(register):
    register("flaky", Flaky)
"""


def test_a_failed_fold_job_is_resubmitted_and_named(fake_dist, tmp_path, lnzoo_cache):
    site = fake_dist("flaky-heads", entry_points={"flaky": "flaky_heads"}, modules={"flaky_heads": FLAKY})
    out = tmp_path / "s"
    env = {"LNZOO_CACHE": str(lnzoo_cache), "FLAKY_MARKER": str(tmp_path / "marker"),
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = run_cli("sweep", RECIPE, "--quick", *SETS, "--set", "cv.run_folds=[0]", "--set", "train.epochs=1",
                   "--set", "model.heads.malignancy={name='flaky'}", "--out", str(out), pythonpath=[site], env=env)
    assert done.returncode == 0, done.stderr
    assert "fold0 failed (RuntimeError: simulated node failure); resubmitting" in done.stderr
    assert "resubmitted stage1_aux-quick-seed0/fold0 after: RuntimeError: simulated node failure" in done.stderr
    assert json.loads((out / "stage1_aux-quick-seed0" / "run.json").read_text())["status"] == "finished"
    plan = json.loads((out / "sweep.json").read_text())
    assert plan["submitted"]["stage1_aux-quick-seed0/fold0"]["attempts"] == 2


def test_bad_sweep_options_are_named_before_anything_is_written(tmp_path):
    cases = [([], "give RECIPE"),
             ([RECIPE, "--seeds", "0,a"], "--seeds '0,a'"),
             ([RECIPE, "--executor", "pbs"], "--executor 'pbs'"),
             ([RECIPE, "--set", "train.epoch=2"], "train.epoch"),
             (["--status", str(tmp_path / "nope")], "not a readable sweep")]
    for args, message in cases:
        done = run_cli("sweep", *args, "--out", str(tmp_path / "out")) if args and args[0] == RECIPE else \
            run_cli("sweep", *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert not (tmp_path / "out").exists()


def test_an_interrupted_job_is_pending_and_lnzoo_run_resume_refuses_a_run_a_sweep_is_fitting(swept, tmp_path):
    from lnzoo.rundir import RunDir
    from lnzoo.sweep import job_states

    copy = tmp_path / "s"
    shutil.copytree(swept, copy)
    run = copy / "stage1_aux-quick-seed0"
    (run / "fold1" / "result.json").unlink()
    state = copy / "jobs" / "state" / "stage1_aux-quick-seed0-fold1.json"
    state.write_text(json.dumps({"state": "interrupted", "at": "then"}))
    got = {s.fold: s for s in job_states(copy)}
    assert got[1].state == "pending" and "interrupted" in got[1].detail  # requeued, not a failure
    RunDir(run, writer=True).update_run(status="sweeping")
    done = run_cli("run", "--resume", str(run))
    assert done.returncode == 2 and "lnzoo sweep --resume" in done.stderr
