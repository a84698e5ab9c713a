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

import json
import os
import socket
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
        _write_state(Path(state), state="done")
        return fitted


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
    runs = []
    for (path, seed, recipe), name in zip(loaded, names):
        folds = prepare_run(recipe, host, out / name, emit, sweep=str(out))
        runs.append({"name": name, "recipe": str(path), "seed": seed, "folds": folds})
    plan = {"format": "lnzoo-sweep", "recipes": [str(r) for r in recipes], "seeds": list(seeds), "sets": list(sets),
            "quick": quick, "executor": executor, "runs": runs, "submitted": {}, "gathered": []}
    write_plan(out, plan)
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
                            run_pipeline(None, sweep_dir / name, host=host, resume=True)
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
    except KeyboardInterrupt:
        if plan["executor"]["kind"] == "local":
            for job in held.values():
                job.cancel(check=False)
        raise
    return summary(sweep_dir, plan, resubmitted, failed)


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


__all__ = ["FoldJob", "JobState", "job_states", "plan_sweep", "read_plan", "run_sweep",
           "summary", "parse_seeds", "make_executor", "check_options"]
