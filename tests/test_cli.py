"""The command line itself: the order of ``lnzoo --help``, shell completion, a torch-free start, exit codes,
and the run log's time stamps."""
from __future__ import annotations

import io
import itertools
import os
import re
import subprocess
import sys

from typer.testing import CliRunner

from tests.conftest import REPO


def _help() -> str:
    from lnzoo.cli import app

    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def _commands(help_text: str) -> list[str]:
    """The command names of the help's Commands panel, in the order shown."""
    panel = help_text.split("Commands")[1]
    return re.findall(r"^│ ([a-z][a-z-]*)  ", panel, flags=re.MULTILINE)


def test_help_lists_run_first_then_the_workflow_and_the_listings_last():
    names = _commands(_help())
    assert names[:4] == ["run", "validate", "ingest", "synth"]
    listings = [n for n in names if n.startswith("list-")]
    assert listings and names[-len(listings):] == listings  # after every other command
    assert {"evaluate", "report", "predict", "export", "serve", "sweep", "plugins"} <= set(names)


def test_root_help_shows_no_type_placeholder_on_its_flags():
    text = _help()
    assert "--help" in text and "<bool>" not in text


def test_shell_completion_is_offered_and_completes_commands():
    from lnzoo.cli import app

    text = _help()
    assert "--show-completion" in text and "--install-completion" in text
    # what the installed completion script asks: the words that complete ``lnzoo ru``
    done = CliRunner().invoke(app, [], prog_name="lnzoo",
                              env={"_LNZOO_COMPLETE": "complete_bash", "COMP_WORDS": "lnzoo ru", "COMP_CWORD": "1"})
    assert done.exit_code == 0 and done.output.split() == ["run"]


NO_HEAVY_IMPORT = """
import sys
from lnzoo.cli import main
try:
    main(["--help"])
except SystemExit as exc:
    assert exc.code in (0, None), f"exit code {exc.code}"
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy"))
assert not heavy, f"imported by lnzoo --help: {heavy[:5]}"
"""


def test_help_imports_neither_torch_nor_numpy():
    done = subprocess.run([sys.executable, "-c", NO_HEAVY_IMPORT], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "Commands" in done.stdout  # the help was printed, not skipped


def test_synth_refusing_an_argument_is_a_usage_error(tmp_path):
    from lnzoo.cli import app

    for bad in (["--patients", "0"], ["--difficulty", "1.5"]):
        result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "phantom"), *bad])
        assert result.exit_code == 2, result.output
        assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "phantom" / "manifest.csv").exists()


def _log(events_: list, clock) -> list[str]:
    from rich.console import Console

    from lnzoo.ui import RunView

    out = io.StringIO()
    console = Console(file=out, width=80)  # a log file: no terminal, narrower than the longest line
    assert not console.is_terminal
    with RunView(console, clock=clock) as view:
        for e in events_:
            view(e)
    return [line for line in out.getvalue().splitlines() if line.strip()]


def test_run_log_lines_start_with_the_time_and_epochs_say_how_long_they_took():
    from lnzoo import events

    def epoch(fold, n):
        return events.EpochEnded(fold, 2, {"epoch": n, "train_loss": 0.5, "val_loss": 0.4, "val_auc": 0.7}, 0.7)

    ticks = itertools.chain([100.0, 112.5, 133.8, 200.0, 201.0], itertools.repeat(300.0))
    lines = _log([events.Progress("phantom", 40, 40),
                  events.Note("a warning long enough to be wrapped at eighty columns " * 3, "warning"),
                  events.Note("first line\nsecond line"),
                  events.FoldStarted(0, 2, 30, 6, 10, "best"),    # t = 100
                  epoch(0, 1),                                     # t = 112.5: 12.5 s
                  epoch(0, 2),                                     # t = 133.8: 21.3 s
                  events.FoldEnded(0, {"auc": 0.7, "accuracy": 0.6}),
                  events.FoldStarted(1, 2, 30, 6, 10, "best"),    # t = 200: the next fold starts its own clock
                  epoch(1, 1)],                                    # t = 201: 1.0 s
                 clock=lambda: next(ticks))
    assert len(lines) == 10  # nothing wrapped onto a line of its own
    for line in lines:
        assert re.match(r"\d\d:\d\d:\d\d \S", line), line
    epochs = [line for line in lines if " epoch " in line]
    assert [re.search(r"\((\d+\.\d) s\)$", line).group(1) for line in epochs] == ["12.5", "21.3", "1.0"]
