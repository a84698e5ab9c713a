"""The ``lnzoo`` command line (typer + rich): it parses, calls the library and renders.

Heavy modules (torch, numpy) are imported inside commands only, so ``lnzoo --help`` stays fast. The shared
pieces live in :mod:`lnzoo.cli._common`; each module below registers its commands on :data:`app`.
"""
from __future__ import annotations

import os
import sys

from rich.markup import escape

from lnzoo.cli import audit, ingest, listing, models, reader_study, results, run, sweep, zoo  # noqa: F401 - each registers its commands on ``app``
from lnzoo.cli._common import app, err, guarded
from lnzoo.errors import LnzooError

__all__ = ["app", "guarded", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: load plugins (warning about broken ones), then dispatch ``argv`` (default sys.argv)."""
    args = sys.argv[1:] if argv is None else list(argv)
    completing = "_LNZOO_COMPLETE" in os.environ  # the shell asks for completions: print nothing else
    if args[:1] != ["--version"] and not completing:
        from lnzoo.plugins import STRICT_ENV, get_host
        try:
            for p in get_host().failures:
                err.print("[yellow]warning:[/] " + escape(f"plugin {p.name!r} from {p.distribution} {p.version} was "
                          f"skipped: {p.error}. Set {STRICT_ENV}=1 to make this fatal."), highlight=False, soft_wrap=True)
        except LnzooError as exc:  # strict mode
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
    app(args=args)
