"""Every long command stops on SIGINT (Ctrl-C) and SIGTERM (``kill``, a batch scheduler) the same way
(:func:`lnzoo.cli._common.guarded`): one 'interrupted (SIG...)' line saying what is left, exit 128 + the signal
(130, 143), no traceback, no process and no temporary file left behind.

Each command is started as ``python -m lnzoo ...`` and signalled once it is busy, which each case makes sure of
without a clock: it blocks reading a named pipe the test holds open, works on something it cannot finish (a
bootstrap of 10^9 resamples, a phantom of 10^5 patients, a fold of 1000 epochs), or, where neither exists, a
function on its way is replaced by one that says so and waits (``BLOCK``).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses named pipes")

RECIPE = REPO / "recipes" / "stage1_aux.toml"
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
FOREVER = str(10**9)  # bootstrap resamples: more than any test waits for

# ``python -c BLOCK TARGET MARKER ARGS...``: lnzoo's entry point with the function TARGET replaced by one that writes
# MARKER and waits there, as the command's own work would (for commands without an unbounded input)
BLOCK = """
import pathlib, sys, time
from importlib import import_module
target, marker, *argv = sys.argv[1:]
module, name = target.rsplit(".", 1)

def busy(*args, **kwargs):
    pathlib.Path(marker).write_text("busy")
    while True:
        time.sleep(0.05)

setattr(import_module(module), name, busy)
from lnzoo.cli import main
main(argv)
"""


# -- starting, waiting, stopping ------------------------------------------------------------------------------------
class Started:
    """An lnzoo command running in a subprocess, its stderr in a file (read while it runs, never a full pipe)."""

    def __init__(self, tmp_path: Path, args: list[str], block: str | None = None, session: bool = False):
        self.tmp = tmp_path / "tmp"  # the command's TMPDIR: what it leaves there is checked
        self.tmp.mkdir(exist_ok=True)
        self.stderr_file, self.marker = tmp_path / "stderr.txt", tmp_path / "busy.marker"
        cmd = [sys.executable, "-m", "lnzoo", *map(str, args)] if block is None else \
            [sys.executable, "-c", BLOCK, block, str(self.marker), *map(str, args)]
        env = {**os.environ, "TMPDIR": str(self.tmp), "COLUMNS": "250"}
        with self.stderr_file.open("w") as err, (tmp_path / "stdout.txt").open("w") as out:
            # SIGINT as at a terminal: a suite started in the background has it ignored, and a child inherits that
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=session,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.stdout_file = tmp_path / "stdout.txt"

    @property
    def stderr(self) -> str:
        return self.stderr_file.read_text(encoding="utf-8", errors="replace")

    def wait_until(self, ready: Callable[[], object], what: str, limit: float = 300) -> object:
        """Poll ``ready()`` until it gives something; the command must not end meanwhile (the limit only stops a
        broken test from hanging)."""
        end = time.monotonic() + limit
        while True:
            got = ready()
            if got:
                return got
            assert self.proc.poll() is None, f"ended (rc {self.proc.returncode}) before {what}:\n{self.stderr}"
            assert time.monotonic() < end, f"never {what}:\n{self.stderr}"
            time.sleep(0.05)

    def interrupt(self, sig: int, group: bool = False) -> str:
        """Send ``sig`` (to the process group with ``group``, as a terminal's Ctrl-C) and check the stop: exit
        128 + sig, one 'interrupted' line, no traceback, every descendant gone, nothing left in TMPDIR."""
        family = descendants(self.proc.pid)
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=300)
        stderr, stdout = self.stderr, self.stdout_file.read_text(encoding="utf-8", errors="replace")
        name = signal.Signals(sig).name
        assert self.proc.returncode == 128 + sig, stderr
        said = [line for line in stderr.splitlines() if line.startswith("interrupted (")]
        assert len(said) == 1 and said[0].startswith(f"interrupted ({name}): "), stderr
        assert "Traceback" not in stderr + stdout and "KeyboardInterrupt" not in stderr + stdout, stderr
        assert [pid for pid in family if running(pid)] == [], f"left running: {family}"
        # (torch keeps its compile cache there by design: not a file of the command's)
        assert [p for p in self.tmp.iterdir() if not p.name.startswith("torchinductor_")] == []
        return stderr


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def catches(pid: int, sig: int) -> bool:
    """The process has a handler for ``sig``: for SIGTERM, lnzoo's guard is in place (Python installs none)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


class Pipe:
    """A named pipe standing in for an input file: the command blocks reading it until the test lets go."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None
        os.mkfifo(path)

    def opened(self) -> bool:
        """Whether the command has opened it (and now waits for its content)."""
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            return False
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def leftovers(folder: Path) -> list[str]:
    """Temporary files of lnzoo's writers: write_atomic's '.NAME.PID.tmp', export's '.NAME.partial'."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or ".partial" in p.name)


def _sets(*extra: str) -> list[str]:
    return [x for s in [*TINY, *extra] for x in ("--set", s)]


def _reader_csvs(tmp_path: Path) -> tuple[Path, Path]:
    """A model's probabilities and a reader's 2-5 rating of 40 cases."""
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id,label,prob\n" + "".join(f"c{i},{i % 2},{(i % 7) / 7:.3f}\n" for i in range(40)))
    b.write_text("id,label,score\n" + "".join(f"c{i},{i % 2},{2 + (i * 3) % 4}\n" for i in range(40)))
    return a, b


# -- commands that need no trained model ----------------------------------------------------------------------------
@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("command", ["validate", "run", "sweep"])
def test_a_command_reading_its_recipe_stops(tmp_path, command, sig):
    if command == "sweep":
        pytest.importorskip("submitit")
    recipe = Pipe(tmp_path / "recipe.toml")
    out = tmp_path / "out"
    args = [command, recipe.path] + ([] if command == "validate" else ["--out", out])
    try:
        started = Started(tmp_path, args)
        started.wait_until(recipe.opened, "reading the recipe")
        stderr = started.interrupt(sig)
    finally:
        recipe.close()
    assert not out.exists()  # nothing begun, nothing left
    said = {"validate": "nothing was written", "run": "lnzoo run stopped before it finished",
            "sweep": f"nothing was submitted and nothing of the sweep is left in {out}"}[command]
    assert said in stderr.replace("\n", "")


@pytest.mark.parametrize("sig", SIGNALS)
def test_synth_stops_and_says_the_phantom_is_incomplete(tmp_path, sig):
    out = tmp_path / "phantom"
    started = Started(tmp_path, ["synth", "--out", out, "--patients", "100000"])
    started.wait_until(lambda: next((out / "images").rglob("*.png"), None), "writing images")
    stderr = started.interrupt(sig)
    assert not (out / "manifest.csv").exists() and leftovers(out) == []
    assert f"the phantom in {out} is incomplete" in stderr.replace("\n", "")


@pytest.mark.parametrize("sig", SIGNALS)
def test_compare_stops_in_its_bootstrap(tmp_path, sig):
    a, b = _reader_csvs(tmp_path)
    started = Started(tmp_path, ["compare", a, b, "--n-boot", FOREVER])
    started.wait_until(lambda: catches(started.proc.pid, signal.SIGTERM), "guarded")
    assert "nothing was written" in started.interrupt(sig)


def test_sweep_stopped_while_preparing_its_runs_leaves_no_folder(tmp_path):
    """The second recipe's data is a pipe: the first run directory is prepared, then the signal comes. A sweep
    without sweep.json could neither resume nor start again in its folder, so what it made goes."""
    pytest.importorskip("submitit")
    manifest = Pipe(tmp_path / "nodes.csv")
    second = tmp_path / "second.toml"
    second.write_text(f'extends = "{RECIPE.as_posix()}"\nname = "second"\n\n[data]\ntrain = "{manifest.path}"\n')
    out = tmp_path / "sweep"
    try:
        started = Started(tmp_path, ["sweep", RECIPE, second, "--quick", *_sets(), "--out", out])
        started.wait_until(manifest.opened, "preparing the second run")
        assert (out / "stage1_aux-quick-seed0" / "run.json").is_file()  # the first run was prepared
        stderr = started.interrupt(signal.SIGTERM)
    finally:
        manifest.close()
    assert not out.exists(), sorted(out.rglob("*"))
    assert "nothing was submitted" in stderr


def test_every_command_goes_through_the_one_guard():
    """A command added without @guarded would stop on a signal with a traceback: each one is checked."""
    from lnzoo.cli import app

    callbacks = {c.name or c.callback.__name__: c.callback for c in app.registered_commands}
    assert {"run", "sweep", "serve", "export", "report", "predict", "explain", "evaluate", "select", "compare",
            "validate", "synth"} <= set(callbacks)
    assert [name for name, fn in callbacks.items() if not getattr(fn, "lnzoo_guarded", False)] == []


def test_a_signal_the_process_ignores_stays_ignored():
    """A job started in the background (``cmd &``) has SIGINT ignored: the guard does not take it back."""
    from lnzoo.cli._common import signals_interrupt

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals_interrupt():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


# -- commands that use a trained model (the shared tiny run) --------------------------------------------------------
def _two_candidates(tiny_run: Path, tmp_path: Path) -> list[Path]:
    """Two copies of the tiny run with inner-validation scores to choose by (its own inner parts are too small)."""
    from lnzoo.files import write_atomic

    copies = [tmp_path / "a", tmp_path / "b"]
    for score, c in zip((0.6, 0.7), copies):
        shutil.copytree(tiny_run, c)
        for best in c.glob("fold*/best.json"):
            write_atomic(best, json.dumps({**json.loads(best.read_text()), "monitor": {"auc": score}}))
    return copies


MODEL_CASES = {
    # command: (how it is made busy, args given the run and the test folder, what the line says)
    "predict": ("pipe", lambda run, t: ["predict", "--model", run, "--manifest", t / "rows.csv", "--out",
                                        t / "out" / "p.csv"], "p.csv was not written"),
    "explain": ("pipe", lambda run, t: ["explain", run, "--manifest", t / "rows.csv", "--out", t / "out"],
                "explain.csv"),
    "report": ("guard", lambda run, t: ["report", run, "--n-boot", FOREVER, "--out", t / "out" / "report.html"],
               "report.html and evaluation.json are each whole"),
    "evaluate": ("lnzoo.evaluation.evaluate.run_metrics", lambda run, t: ["evaluate", run], "nothing was written"),
    "export": ("lnzoo.export.model_card", lambda run, t: ["export", run, "--out", t / "out" / "bundle"],
               "no bundle was written"),
    "select": ("lnzoo.select._write_chosen", lambda run, t: ["select", *_two_candidates(run, t), "--out",
                                                             t / "out" / "chosen"], "is marked interrupted"),
}


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("command", list(MODEL_CASES))
def test_a_command_using_a_model_stops(tiny_run, tmp_path, command, sig):
    busy, make_args, said = MODEL_CASES[command]
    (tmp_path / "out").mkdir()
    pipe = Pipe(tmp_path / "rows.csv") if busy == "pipe" else None
    try:
        started = Started(tmp_path, make_args(tiny_run, tmp_path), block=busy if "." in busy else None)
        if pipe is not None:
            started.wait_until(pipe.opened, "reading its rows")
        elif busy == "guard":
            started.wait_until(lambda: catches(started.proc.pid, signal.SIGTERM), "guarded")
        else:
            started.wait_until(started.marker.exists, "at its work")
        stderr = started.interrupt(sig)
    finally:
        if pipe is not None:
            pipe.close()
    assert said in stderr.replace("\n", "")
    assert leftovers(tmp_path / "out") == []
    if command == "select":  # a run directory that did not finish says so; readers refuse it
        assert json.loads((tmp_path / "out" / "chosen" / "run.json").read_text())["status"] == "interrupted"
    else:  # nothing written, or nothing at all (export's partial bundle is removed)
        assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", SIGNALS)
def test_serve_stops_and_a_client_gone_mid_upload_is_one_line(tiny_run, tmp_path, sig):
    pytest.importorskip("uvicorn")
    port = _free_port()
    started = Started(tmp_path, ["serve", tiny_run, "--port", str(port)])
    started.wait_until(lambda: "Application startup complete" in started.stderr, "serving")
    # a client that sends part of an upload and goes: the body is 200 kB by its header, 5 kB of it arrive
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                       b"Content-Length: 200000\r\n\r\n--B\r\nContent-Disposition: form-data; name=\"full\"; "
                       b"filename=\"n.png\"\r\nContent-Type: image/png\r\n\r\n" + b"\x89PNG" + bytes(5000))
    started.wait_until(lambda: "client disconnected" in started.stderr, "noting the disconnect")
    with socket.create_connection(("127.0.0.1", port)) as client:  # and the server still answers
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b"".join(iter(lambda: client.recv(4096), b""))
        assert b" 200 " in answer and b'"status":"ok"' in answer
    stderr = started.interrupt(sig)
    assert "the server stopped" in stderr and "Shutting down" in stderr


# -- commands with child processes and resumable state ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig, group", [pytest.param(signal.SIGINT, True, id="Ctrl-C at a terminal"),
                                        pytest.param(signal.SIGTERM, False, id="SIGTERM to lnzoo sweep")])
def test_sweep_stops_and_waits_for_its_local_jobs_leaving_them_resumable(tmp_path, sig, group):
    """Ctrl-C reaches lnzoo sweep, submitit's controller and the fold's process at once; SIGTERM only lnzoo
    sweep. Either way the fold unwinds to its last finished epoch, every process of the job is gone, the job is
    pending (interrupted) and the line says how to resume."""
    pytest.importorskip("submitit")
    from lnzoo.sweep import job_states

    out = tmp_path / "sweep"
    started = Started(tmp_path, ["sweep", RECIPE, "--quick", *_sets("cv.run_folds=[0]", "train.epochs=1000"),
                                 "--out", out], session=True)
    run = out / "stage1_aux-quick-seed0"
    state = out / "jobs" / "state" / "stage1_aux-quick-seed0-fold0.json"

    def fitting():
        try:
            st = json.loads(state.read_text())
        except (OSError, ValueError):
            return None
        return st if st["state"] == "running" and (run / "fold0" / "resume.json").is_file() else None

    job = started.wait_until(fitting, "fitting fold 0")
    controller = int(json.loads((out / "sweep.json").read_text())["submitted"]["stage1_aux-quick-seed0/fold0"]
                     ["job_id"])
    assert {controller, job["pid"]} <= descendants(started.proc.pid)
    stderr = started.interrupt(sig, group=group)
    assert f"`lnzoo sweep --resume {out}` continues" in stderr.replace("\n", "")
    assert not running(controller) and not running(job["pid"])
    assert json.loads(state.read_text())["state"] == "interrupted"
    assert [(s.state, "interrupted" in s.detail) for s in job_states(out)] == [("pending", True)]
    assert (run / "fold0" / "resume.safetensors").is_file() and leftovers(out) == []


@pytest.mark.slow
def test_run_stopped_by_sigterm_is_resumable_and_exits_143(tmp_path):
    """A batch scheduler's SIGTERM ends lnzoo run as Ctrl-C does (tests/test_safety.py), with its own code."""
    out = tmp_path / "r"
    started = Started(tmp_path, ["run", RECIPE, "--quick", *_sets("train.epochs=1000", "cv.run_folds=[0]"),
                                 "--n-boot", "20", "--out", out])
    started.wait_until(lambda: (out / "fold0" / "resume.json").is_file(), "one epoch in")
    stderr = started.interrupt(signal.SIGTERM)
    assert f"`lnzoo run --resume {out}` continues" in stderr.replace("\n", "")
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted" and leftovers(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig, group", [pytest.param(signal.SIGINT, True, id="Ctrl-C at a terminal"),
                                        pytest.param(signal.SIGTERM, False, id="SIGTERM to lnzoo run")])
def test_run_on_two_processes_stops_as_one_command(tmp_path, sig, group):
    """``lnzoo run --nproc 2``: the signal reaches torchrun's agent and both training processes; rank 0 alone
    says what is left, torchrun prints no traceback, and no process of the run is left running."""
    out = tmp_path / "r"
    started = Started(tmp_path, ["run", RECIPE, "--quick", "--nproc", "2",
                                 *_sets("train.epochs=1000", "cv.run_folds=[0]", "train.threads=1",
                                        "data.phantom.external=false"), "--n-boot", "20", "--out", out], session=group)
    started.wait_until(lambda: (out / "fold0" / "resume.json").is_file(), "one epoch in")
    assert len(descendants(started.proc.pid)) >= 3  # the agent and its two processes
    stderr = started.interrupt(sig, group=group)
    assert f"`lnzoo run --resume {out}` continues" in stderr.replace("\n", "")
    assert "SignalException" not in stderr and "FAILED" not in stderr, stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted" and leftovers(out) == []
