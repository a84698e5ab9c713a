"""``lnzoo run --nproc N``: the same command under torchrun's agent, N processes on this machine, stopped as one.

:func:`start` (the ``lnzoo run`` process) starts ``python -m lnzoo.train.launch N ARGS...`` in a session of its own,
waits for it and, on SIGINT or SIGTERM, passes that signal to it once. This module is torchrun's agent: it forwards
the signal to the processes it started (each stops as ``lnzoo run`` does; only rank 0 prints the 'interrupted'
line) and exits with 128 + the signal, silently, as it does with the first failed process's code when one fails
(rank 0 has said why): torchrun's own tracebacks and failure tables are not printed to the user. Whatever is left
in the session when the agent is gone is killed, so no process outlives the command.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile

GRACE_S = 60.0  # after the signal, how long the processes get to save and unwind before they are killed


def start(nproc: int, args: list[str]) -> int:
    """Run ``lnzoo ARGS`` on ``nproc`` processes; the exit code of the whole (128 + a signal that stopped it)."""
    proc = subprocess.Popen([sys.executable, "-m", "lnzoo.train.launch", str(nproc), *args], start_new_session=True)
    forwarded = False
    try:
        while True:
            try:
                return proc.wait(timeout=GRACE_S if forwarded else None)
            except subprocess.TimeoutExpired:
                return _kill(proc)
            except KeyboardInterrupt as exc:  # lnzoo.cli._common.Interrupted, or Ctrl-C
                if forwarded:  # a second signal: stop now
                    return _kill(proc)
                forwarded = True
                proc.send_signal(getattr(exc, "signum", signal.SIGINT))
    finally:
        _kill_session(proc.pid)


def _kill(proc: subprocess.Popen) -> int:
    _kill_session(proc.pid)
    return proc.wait()


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in ("torch.distributed.elastic", "torch.distributed.run"):  # rank 0 says what went wrong
        logging.getLogger(name).setLevel(logging.CRITICAL)
    nproc, *rest = argv
    try:
        with tempfile.TemporaryDirectory(prefix="lnzoo-torchrun-") as logs:  # the agent's scratch, removed
            run(parse_args(["--standalone", f"--nproc_per_node={nproc}", f"--log-dir={logs}", "-m", "lnzoo", *rest]))
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # killed by signal s: -s
        if rank != 0:  # only rank 0 prints lnzoo's errors: say which process stopped the run
            print(f"error: training process {rank} of {nproc} stopped first (exit code {code}); run it with "
                  "--nproc 1 to see why", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
