"""``lnzoo audit``: shortcut checks on a finished run (:mod:`lnzoo.audit`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lnzoo.cli._common import Command, ModifiedOpt, PartialOpt, app, console, err, guarded, plugin_host


@app.command(cls=Command)
@guarded
def audit(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run directory.")],
          data: Annotated[Optional[Path], typer.Option("--data", metavar="MANIFEST", help="Audit on this manifest "
                                                       "(e.g. an lnzoo ingest manifest with its marks columns) "
                                                       "instead of the run's own data; the run's patients and "
                                                       "folds must be in it.")] = None,
          out: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Folder for audit.json and "
                                                      "audit.html (default: the run directory, where the report "
                                                      "shows it).")] = None,
          retrain_control: Annotated[bool, typer.Option("--retrain-control", help="Also train the recipe again on "
                                                        "the images with the lesion blanked, on the run's folds (costs "
                                                        "one training; kept in OUT/audit-control and reused): its "
                                                        "held-out AUC should be near 0.5.")] = False,
          allow_partial: PartialOpt = False, allow_modified: ModifiedOpt = False) -> None:
    """Is the model looking at the node? Burned-in marks against the labels, the metadata alone, the model without the lesion.

    Each check prints its figure with a 95% CI and a verdict (flag / ok / not run, with why); audit.json and audit.html are written, and the run's report shows the audit once `lnzoo report` runs again.

    Example: lnzoo audit runs/stage1 --data dataset/manifest.csv --retrain-control
    """
    from lnzoo.audit import audit_run, write_audit

    say = lambda text: err.print(escape(text), highlight=False)  # noqa: E731
    host = plugin_host()
    more = []
    if retrain_control:
        from lnzoo.audit.control import control
        more.append(control(host, out, say))
    result = audit_run(run_dir, host, data, say=say, more=more)
    table = Table(title=f"lnzoo audit {escape(str(run_dir))}: main task {escape(result['task'])}", title_justify="left",
                  show_lines=True)
    table.add_column("check", style="bold")
    table.add_column("verdict")
    table.add_column("what it found")
    style = {"flag": "bold red", "ok": "green", "not run": "dim"}
    for check in result["checks"]:
        table.add_row(check["title"], f"[{style[check['verdict']]}]{check['verdict']}[/]", escape(check["sentence"]))
    console.print(table)
    json_path, html_path = write_audit(result, Path(out) if out else Path(run_dir))
    console.print(f"audit: {escape(str(json_path))}, {escape(str(html_path))}", highlight=False)
