"""``lnzoo sweep``: a study's runs as one job per (recipe, seed, fold) on submitit, gathered into ordinary runs.

::

    SWEEP_DIR/
      sweep.json              the plan: recipes, seeds, --set lines, executor settings, runs and their folds
      <recipe>-seed<s>/       one ordinary run directory per (recipe, seed): what ``lnzoo run`` writes
      jobs/                   submitit's folder (its job pickles and logs: job transport, never a checkpoint)
      jobs/state/<run>-fold<k>.json   what each job says about itself: running (pid, host), done, failed

Each run directory is prepared here (:func:`lnzoo.pipeline.prepare_run`: recipe, data digest, folds); each job
fits one fold into it (:func:`lnzoo.pipeline.fit_fold_job`); when a run's folds all have their results it is
finished here exactly as ``lnzoo run --resume`` finishes a run (predictions, metrics, Grad-CAM, report). A job
that fails is resubmitted (``retries``) and named in the summary; one pre-empted or timed out on Slurm is
requeued by submitit (:class:`FoldJob` is checkpointable) and continues after its last saved epoch.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lnzoo.errors import UsageError
from lnzoo.rundir import RunDir, write_atomic

try:
    import submitit
except ImportError:  # the cluster extra is optional: the command says what to install
    submitit = None

SWEEP_FILE, JOBS = "sweep.json", "jobs"
EXECUTORS = ("local", "slurm")


def require_submitit() -> None:
    if submitit is None:
        raise UsageError('lnzoo sweep needs submitit: pip install "lnzoo[cluster]"')


def state_file(sweep_dir: Path, run: str, fold: int) -> Path:
    return Path(sweep_dir) / JOBS / "state" / f"{run}-fold{fold}.json"


def _write_state(path: Path, **fields: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({**fields, "pid": os.getpid(), "host": socket.gethostname(),
                                   "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))


class FoldJob(submitit.helpers.Checkpointable if submitit else object):
    """One fold of one run, as a submitit job. On pre-emption or time-out submitit requeues the same call
    (the checkpointable default), and the fold continues from its resume state."""

    def __call__(self, run_dir: str, fold: int, state: str) -> bool:
        from lnzoo.pipeline import FoldBusy, fit_fold_job

        if RunDir(run_dir).read_fold_result(fold) is not None:
            return False
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, _interrupt_once) if main else None  # also if started ignoring it
        try:
            _write_state(Path(state), state="running")
            fitted = fit_fold_job(Path(run_dir), fold)
        except FoldBusy:
            return False  # a duplicate: the job holding the fold writes its state
        except Exception as exc:
            _write_state(Path(state), state="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        except BaseException:  # pre-empted, timed out (submitit requeues it) or stopped: not a failure
            _write_state(Path(state), state="interrupted")
            raise
        finally:
            if main and previous is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signal.SIGINT, previous)
        _write_state(Path(state), state="done")
        return fitted


def _interrupt_once(signum: int, frame: Any) -> None:
    """A fold job's SIGINT: the fold unwinds as on Ctrl-C (its last finished epoch is saved); the next SIGINTs
    (a terminal's Ctrl-C reaches the job, submitit's controller and lnzoo sweep, and both forward theirs) must not
    cut that short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


# -- the plan -------------------------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {text!r}: give whole numbers separated by commas, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r}: give one or more distinct seeds, e.g. 0,1,2")
    return seeds


def plan_sweep(recipes: Sequence[Path], seeds: Sequence[int], out: Path, executor: dict[str, Any],
               sets: Sequence[str] = (), quick: bool = False, host=None, emit=None) -> dict[str, Any]:
    """Check every recipe first, then prepare one run directory per (recipe, seed) in ``out`` (new or empty)
    and write sweep.json."""
    from lnzoo.pipeline import prepare_run
    from lnzoo.recipe import load_recipe

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} is not empty; a sweep goes into a new or empty folder "
                         f"(`lnzoo sweep --resume {out}` continues one)")
    loaded = [(path, seed, load_recipe(Path(path), sets=[*sets, f"seed={seed}"], quick=quick, host=host))
              for path in recipes for seed in seeds]  # every recipe error before anything is written
    names = [f"{r.name}{'-quick' if quick else ''}-seed{seed}" for _, seed, r in loaded]
    if len(set(names)) != len(names):
        raise UsageError(f"two recipes share the name {next(n for n in names if names.count(n) > 1)!r}; give "
                         "each its own `name`")
    runs: list[dict[str, Any]] = []
    made_out = not out.exists()
    try:
        for (path, seed, recipe), name in zip(loaded, names):
            runs.append({"name": name, "recipe": str(path), "seed": seed})  # named before its folder is begun
            runs[-1]["folds"] = prepare_run(recipe, host, out / name, emit, sweep=str(out))
        plan = {"format": "lnzoo-sweep", "recipes": [str(r) for r in recipes], "seeds": list(seeds),
                "sets": list(sets), "quick": quick, "executor": executor, "runs": runs, "submitted": {},
                "gathered": []}
        write_plan(out, plan)
    except BaseException:  # stopped or failed while preparing: a sweep without sweep.json cannot be resumed, and
        # its folder would refuse a new start (not empty), so what this call made goes; out was new or empty
        for run in runs:
            shutil.rmtree(out / run["name"], ignore_errors=True)
        if made_out:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return plan


def read_plan(sweep_dir: Path) -> dict[str, Any]:
    file = Path(sweep_dir) / SWEEP_FILE
    try:
        plan = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{file}: not a readable sweep ({exc}); lnzoo sweep writes it") from None
    if plan.get("format") != "lnzoo-sweep":
        raise UsageError(f"{file}: not an lnzoo sweep file")
    return plan


def write_plan(sweep_dir: Path, plan: dict[str, Any]) -> None:
    write_atomic(Path(sweep_dir) / SWEEP_FILE, json.dumps(plan, indent=1))


def make_executor(sweep_dir: Path, settings: dict[str, Any]):
    """The submitit executor the sweep's settings name: Slurm (partition, GPUs, time limit) or local processes."""
    require_submitit()
    kind = settings["kind"]
    if kind not in EXECUTORS:
        raise UsageError(f"--executor {kind!r}: choose {' or '.join(EXECUTORS)}")
    executor = submitit.AutoExecutor(folder=Path(sweep_dir) / JOBS / "%j", cluster=kind)
    params: dict[str, Any] = {"name": "lnzoo-sweep", "timeout_min": settings["timeout_min"]}
    if kind == "slurm":
        params.update(gpus_per_node=settings["gpus_per_job"], tasks_per_node=1)
        if settings.get("partition"):
            params["slurm_partition"] = settings["partition"]
    executor.update_parameters(**params)
    return executor


# -- where each job stands -------------------------------------------------------------------------------------------
@dataclass
class JobState:
    run: str
    fold: int
    state: str           # pending | running | done | failed
    attempts: int
    job_id: str | None
    detail: str = ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_states(sweep_dir: Path, plan: dict[str, Any] | None = None) -> list[JobState]:
    """Every (run, fold) job: done once its fold result exists; running or failed as its state file says
    (a 'running' job whose process is gone from this host is failed: lost); pending otherwise."""
    sweep_dir = Path(sweep_dir)
    plan = plan or read_plan(sweep_dir)
    out = []
    for run in plan["runs"]:
        rd = RunDir(sweep_dir / run["name"])
        for k in run["folds"]:
            key = f"{run['name']}/fold{k}"
            sub = plan["submitted"].get(key) or {}
            attempts, job_id = int(sub.get("attempts", 0)), sub.get("job_id")
            if rd.read_fold_result(k) is not None:
                out.append(JobState(run["name"], k, "done", attempts, job_id))
                continue
            try:
                st = json.loads(state_file(sweep_dir, run["name"], k).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                st = {}
            state, detail = "pending", "" if attempts else "not submitted"
            if st.get("state") == "failed":
                state, detail = "failed", st.get("error", "")
            elif st.get("state") == "interrupted":
                detail = f"interrupted at {st.get('at')} (pre-empted, timed out or stopped); continues when rerun"
            elif st.get("state") == "running":
                if st.get("host") == socket.gethostname() and not _alive(int(st.get("pid", 0))):
                    state, detail = "failed", f"lost: its process {st.get('pid')} is gone"
                else:
                    state, detail = "running", f"pid {st.get('pid')} on {st.get('host')} since {st.get('at')}"
            out.append(JobState(run["name"], k, state, attempts, job_id, detail))
    return out


# -- running it ------------------------------------------------------------------------------------------------------
def run_sweep(sweep_dir: Path, retries: int = 1, max_parallel: int = 0, host=None,
              say: Callable[[str], None] = print, poll_seconds: float = 2.0) -> dict[str, Any]:
    """Submit every fold job that has no result yet, resubmit failed ones (up to ``retries`` more times),
    finish each run whose folds are all done, and return the summary. ``max_parallel`` > 0 caps the jobs
    in flight (a laptop with the local executor); Slurm queues them all."""
    from lnzoo.pipeline import run as run_pipeline

    sweep_dir = Path(sweep_dir)
    plan = read_plan(sweep_dir)
    executor = make_executor(sweep_dir, plan["executor"])
    runs = {r["name"]: r for r in plan["runs"]}
    held: dict[str, Any] = {}                 # key -> submitit job this process submitted (or re-attached)
    if plan["executor"]["kind"] == "slurm":  # --resume: follow the jobs Slurm still holds instead of doubling them
        from submitit.slurm.slurm import SlurmJob
        for st in job_states(sweep_dir, plan):
            sub = plan["submitted"].get(f"{st.run}/fold{st.fold}") or {}
            if st.state in ("pending", "running") and sub.get("job_id"):
                held[f"{st.run}/fold{st.fold}"] = SlurmJob(folder=sweep_dir / JOBS / "%j", job_id=sub["job_id"])
    resubmitted: dict[str, list[str]] = {}    # key -> the errors that made it resubmit
    failed: dict[str, str] = {}

    def submit(st: JobState) -> None:
        key = f"{st.run}/fold{st.fold}"
        state = state_file(sweep_dir, st.run, st.fold)
        state.unlink(missing_ok=True)
        with _controller_started() if plan["executor"]["kind"] == "local" else contextlib.nullcontext():
            job = executor.submit(FoldJob(), str(sweep_dir / st.run), st.fold, str(state))
        held[key] = job
        plan["submitted"][key] = {"job_id": str(job.job_id), "attempts": st.attempts + 1,
                                  "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_plan(sweep_dir, plan)
        say(f"submitted {key} (job {job.job_id}, attempt {st.attempts + 1})")

    try:
        while True:
            for st in job_states(sweep_dir, plan):
                key = f"{st.run}/fold{st.fold}"
                job = held.get(key)
                if st.state == "done" or key in failed:
                    held.pop(key, None)
                    continue
                if job is not None:
                    if not job.done():
                        continue
                    held.pop(key)
                    if RunDir(sweep_dir / st.run).read_fold_result(st.fold) is not None:
                        continue  # it wrote its result just now
                    st.state, st.detail = "failed", st.detail if st.state == "failed" else _job_error(job)
                elif st.state == "running":
                    continue  # submitted by an earlier lnzoo sweep, still at it
                if st.state == "failed":
                    if len(resubmitted.get(key, [])) < retries:
                        resubmitted.setdefault(key, []).append(st.detail)
                        say(f"{key} failed ({st.detail}); resubmitting")
                        submit(st)
                    else:
                        failed[key] = st.detail
                        say(f"{key} failed ({st.detail}); not resubmitted (--retries {retries})")
                elif not max_parallel or len(held) < max_parallel:  # pending
                    submit(st)
            states = job_states(sweep_dir, plan)
            for name in runs:
                mine = [s for s in states if s.run == name]
                if name not in plan["gathered"] and f"{name}/gather" not in failed and all(s.state == "done"
                                                                                           for s in mine):
                    if RunDir(sweep_dir / name).status() != "finished":
                        say(f"{name}: every fold fitted; writing its predictions, metrics and report")
                        try:
                            run_pipeline(None, sweep_dir / name, _warnings_to(say, name), host=host, resume=True)
                        except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the others
                            failed[f"{name}/gather"] = f"{type(exc).__name__}: {exc}"
                            say(f"{name}: gathering failed ({type(exc).__name__}: {exc}); its folds are kept, "
                                f"`lnzoo sweep --resume {sweep_dir}` tries again")
                            continue
                    plan["gathered"].append(name)
                    write_plan(sweep_dir, plan)
            open_jobs = [s for s in states if s.state in ("pending", "running")
                         and f"{s.run}/fold{s.fold}" not in failed]
            if not open_jobs and all(n in plan["gathered"] or any(f.startswith(f"{n}/") for f in failed)
                                     for n in runs):
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: local jobs are stopped and waited for; Slurm's keep running
        if plan["executor"]["kind"] == "local" and held:
            with contextlib.suppress(KeyboardInterrupt):  # a second signal must not leave the jobs running
                say(f"stopping {len(held)} local job(s): each keeps its last finished epoch (a second Ctrl-C "
                    "stops them at once)")
            stop_local_jobs(sweep_dir, held)
        raise
    return summary(sweep_dir, plan, resubmitted, failed)


def _warnings_to(say: Callable[[str], None], run: str) -> Callable[[Any], None]:
    """``on_event`` for gathering a run: its warnings (a tracker that failed or is off, say) are said, named by run."""
    from lnzoo import events

    def on_event(event: Any) -> None:
        if isinstance(event, events.Note) and event.level == "warning":
            say(f"{run}: warning: {event.text}")
    return on_event


STOP_GRACE_S = 60.0  # how long a stopped local job may take to leave its fold at the last finished epoch


def stop_local_jobs(sweep_dir: Path, held: dict[str, Any], grace: float = STOP_GRACE_S) -> None:
    """Stop the local fold jobs of this sweep and wait for every process of theirs.

    Each fold's process gets SIGINT and unwinds as on Ctrl-C: its last finished epoch stays saved and its state
    file says 'interrupted'; a job still starting (no state yet, nothing to save) is stopped through its submitit
    controller. What still lives after ``grace`` seconds, or at once after a second signal, is killed. A job left
    'running' in its state file is then marked 'interrupted': pending for ``lnzoo sweep --resume``, never lost,
    and no process of it is left. (The controllers were started with SIGINT ignored, :func:`_controller_started`:
    they end by themselves once their fold's process has.)"""
    sweep_dir = Path(sweep_dir)
    jobs = {key: job._process for key, job in held.items() if getattr(job, "_process", None) is not None}
    where = {key: key.rsplit("/fold", 1) for key in jobs}
    deadline, forced, told = time.monotonic() + grace, False, set()
    while any(proc.poll() is None for proc in jobs.values()):
        try:
            for key, proc in jobs.items():
                if proc.poll() is not None:
                    continue
                task = _fold_process(sweep_dir, where[key][0], int(where[key][1]))
                if forced:  # the fold's process, and whatever the controller still runs
                    for pid in {task, *_children(proc.pid)} - {None}:
                        _signal(pid, signal.SIGKILL)
                elif (key, task) not in told:
                    told.add((key, task))
                    if task is not None:
                        _signal(task, signal.SIGINT)
                    else:  # still starting: the controller's SIGTERM reaches it (submitit ignores it once begun)
                        _signal(proc.pid, signal.SIGTERM)
            if time.monotonic() > deadline:
                if forced:
                    for proc in jobs.values():
                        if proc.poll() is None:
                            proc.kill()
                else:
                    forced, deadline = True, time.monotonic() + 10.0
            alive = next((proc for proc in jobs.values() if proc.poll() is None), None)
            if alive is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    alive.wait(timeout=0.2)
        except KeyboardInterrupt:  # a second signal: stop them now, but still wait for them
            forced, deadline = True, time.monotonic() + 10.0
    for run, fold in where.values():
        path = state_file(sweep_dir, run, int(fold))
        try:
            st = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # never begun: pending anyway
        if st.get("state") == "running":  # killed before it could say so itself
            write_atomic(path, json.dumps({**st, "state": "interrupted", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                          indent=1))


@contextlib.contextmanager
def _controller_started():
    """Around submitting a local job: the submitit controller it starts inherits SIGINT ignored. A Ctrl-C at the
    terminal reaches every process of the terminal's group; the controller would die of it with a traceback on
    lnzoo sweep's terminal and kill its fold a second later, before the fold has unwound. lnzoo sweep stops the
    folds itself (:func:`stop_local_jobs`). A Ctrl-C in the few milliseconds of the start itself is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def _fold_process(sweep_dir: Path, run: str, fold: int) -> int | None:
    """The id of the process fitting this fold on this host, as its state file says (None: not begun)."""
    try:
        st = json.loads(state_file(sweep_dir, run, fold).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = int(st.get("pid") or 0)
    if st.get("state") != "running" or st.get("host") != socket.gethostname() or not pid or not _alive(pid):
        return None
    return pid


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (Linux: /proc; elsewhere none are found)."""
    found = set()
    for entry in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(entry.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.parent.name))
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _job_error(job) -> str:
    try:
        exc = job.exception()
    except Exception as err:  # noqa: BLE001 - submitit reports a lost job by raising
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
    if exc is None:
        return "the job ended without its fold result"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''}"


def summary(sweep_dir: Path, plan: dict[str, Any], resubmitted: dict[str, list[str]], failed: dict[str, str]
            ) -> dict[str, Any]:
    """Per run: its directory, status, folds, the main task's pooled AUC; the resubmitted and failed jobs."""
    rows = []
    for run in plan["runs"]:
        rd = RunDir(Path(sweep_dir) / run["name"])
        auc = None
        if rd.status() == "finished":
            metrics = rd.metrics()
            auc = metrics.get("cross_validation", {}).get("pooled", {}).get(metrics.get("main_task"), {}).get("auc")
        rows.append({"run": run["name"], "recipe": run["recipe"], "seed": run["seed"], "status": rd.status(),
                     "folds": run["folds"], "auc": auc, "dir": str(rd.path)})
    return {"runs": rows, "resubmitted": resubmitted, "failed": failed}


def check_options(executor: str, gpus_per_job: int, timeout_min: int, retries: int, max_parallel: int) -> None:
    problems = []
    if executor not in EXECUTORS:
        problems.append(f"--executor {executor!r}: choose {' or '.join(EXECUTORS)}")
    if gpus_per_job < 0:
        problems.append(f"--gpus-per-job {gpus_per_job}: 0 or more")
    if timeout_min < 1:
        problems.append(f"--timeout-min {timeout_min}: at least 1")
    if retries < 0 or max_parallel < 0:
        problems.append("--retries and --max-parallel are 0 or more")
    if problems:
        raise UsageError("; ".join(problems))


__all__ = ["FoldJob", "JobState", "job_states", "plan_sweep", "read_plan", "run_sweep", "stop_local_jobs",
           "summary", "parse_seeds", "make_executor", "check_options"]
