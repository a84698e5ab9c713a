"""The audit's files: audit.json, a self-contained audit.html, and the audit as a section of the run's report."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lnzoo.audit import AUDIT_HTML, AUDIT_JSON


def audit_section(audit: Mapping[str, Any]) -> str:
    """The audit as an HTML section (audit.html and the run's report)."""
    from html import escape as e

    colour = {"flag": "#b3261e", "ok": "#1b6e3a", "not run": "#666"}
    left = "text-align:left"
    rows = "".join(f"<tr><td style='{left}'>{e(c['title'])}</td><td style='{left};color:{colour[c['verdict']]};"
                   f"font-weight:600'>{e(c['verdict'])}</td><td style='{left}'>{e(c['sentence'])}</td></tr>"
                   for c in audit["checks"])
    shown = ""
    for c in audit["checks"]:  # the images where the least of the evidence lies in the lesion
        if c.get("overlays_png_base64"):
            shown += ("<h3>Where the least of the evidence lies in the lesion</h3><div>" + "".join(
                f"<img alt='Grad-CAM overlay' style='max-width:32%;margin:4px' src='data:image/png;base64,{b}'>"
                for b in c["overlays_png_base64"]) + "</div>")
    flagged = audit.get("flagged") or []
    head = (f"<p><b>{len(flagged)} check(s) flagged</b>: {e(', '.join(flagged))}.</p>" if flagged else
            "<p>No check flagged a shortcut.</p>")
    return (f"<h2 id='audit'>Shortcut audit</h2><p class='note'>Main task {e(audit['task'])} (positive: "
            f"{e(audit['positive'])}); {audit['images']} held-out image(s) of {audit['patients']} patient(s). "
            "What each check does and when it flags: the docs, Audit your model.</p>"
            f"{head}<table><tr><th style='{left}'>check</th><th style='{left}'>verdict</th><th style='{left}'>what it "
            f"found</th></tr>{rows}</table>{shown}")


def write_audit(audit: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    """audit.json and a self-contained audit.html into ``out``."""
    import json
    from html import escape as e

    from lnzoo.files import write_atomic
    from lnzoo.report.html import CSS

    out.mkdir(parents=True, exist_ok=True)
    json_path = write_atomic(out / AUDIT_JSON, json.dumps(audit, indent=2) + "\n")
    html = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>lnzoo audit</title>"
            f"<style>{CSS}</style></head><body><main><h1>lnzoo audit: {e(audit['run'])}</h1>"
            f"{audit_section(audit)}</main></body></html>")
    return json_path, write_atomic(out / AUDIT_HTML, html)
