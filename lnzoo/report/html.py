"""HTML pieces of the report: tables and sections built from an evaluation result."""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lnzoo.evaluation import fmt, fmt_ci
from lnzoo.report.plots import (
    part_label,
    plot_confusion,
    plot_decision_curve,
    plot_folds,
    plot_reliability,
    plot_roc,
)

MAX_GRADCAM = 60  # embedded images inflate the page; the rest stay in explain/
# ----------------------------------------------------------------------------------------------
# HTML

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:1.7em;margin-bottom:4px}h2{border-bottom:2px solid #1f77b4;padding-bottom:4px;margin-top:40px}
h3{margin-top:28px;color:#1f4e79}h4{margin:22px 0 8px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.9em}
th,td{border:1px solid #ddd;padding:4px 9px;text-align:right;vertical-align:top}
th{background:#f0f4f8}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fbfbfb}
.note{color:#555;font-size:0.88em;max-width:900px}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px}
.na{color:#999}.opt{color:#a05a00}img{max-width:100%;margin:6px 0}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}figcaption{font-size:0.8em;color:#555}
nav a{margin-right:12px}code{background:#f3f3f3;padding:0 3px}
"""


def e(s: Any) -> str:
    return html.escape(str(s))


def _td(v: Any) -> str:
    text = e(v)
    return f'<td class="na">{text}</td>' if text == "n/a" else f"<td>{text}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(map(_td, r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def _metric_rows(binary: bool) -> list[tuple[str, str, str | None]]:
    """(label, metric key, CI key) rows of the metrics table."""
    rows = [("AUC (patient bootstrap CI)", "auc", "auc")]
    if binary:
        rows.append(("AUC (DeLong CI)", "auc", "delong"))
    rows += [("Accuracy", "accuracy", "accuracy"), ("Balanced accuracy", "balanced_accuracy", "balanced_accuracy")]
    if binary:
        rows += [("Sensitivity (at p ≥ 0.5)", "sensitivity", "sensitivity"),
                 ("Specificity (at p ≥ 0.5)", "specificity", "specificity"),
                 ("PPV (at p ≥ 0.5)", "ppv", None), ("NPV (at p ≥ 0.5)", "npv", None), ("F1", "f1", None)]
    else:
        rows += [("Precision (macro)", "precision_macro", None), ("Recall (macro)", "recall_macro", None),
                 ("F1 (macro)", "f1_macro", None)]
    rows += [("MCC", "mcc", None), ("Cohen's kappa", "kappa", None), ("ECE (top-label, 15 bins)", "ece", None),
             ("Brier score", "brier", None), ("Log loss", "log_loss", None)]
    return rows


def _metrics_table(level: dict, classes: list[str], binary: bool) -> str:
    parts = list(level["parts"])
    mean_sd = level.get("cv_mean_sd") or {}
    n_folds = len(level.get("folds", {}))
    spec = _metric_rows(binary)

    def cell(b: dict, key: str, ci: str | None) -> str:
        if ci == "delong":
            return fmt_ci(b["auc_delong"]["auc"], b["auc_delong"])
        return fmt_ci(b["metrics"].get(key), b.get("ci", {}).get(ci) if ci else None)

    def part_cells(b: dict) -> list[str]:
        counts = ", ".join(f"{c} {n}" for c, n in b["class_counts"].items())
        return [str(b["n"]), str(b["n_patients"]), counts] + [cell(b, k, ci) for _, k, ci in spec]

    def mean_sd_cell(key: str, ci: str | None) -> str:
        if ci == "delong" or key not in mean_sd:
            return ""
        m, s = fmt(mean_sd[key]["mean"]), fmt(mean_sd[key]["sd"])
        return m if s == "n/a" else f"{m} ± {s}"

    header, columns = ["Metric"], []
    for p in parts:
        header.append(part_label(p))
        columns.append(part_cells(level["parts"][p]))
        if p == "cv" and n_folds:
            header.append(f"CV mean ± sd ({n_folds} fold{'s' if n_folds != 1 else ''})")
            columns.append(["", "", ""] + [mean_sd_cell(key, ci) for _, key, ci in spec])
    labels = ["Images (n)", "Patients", "Cases per class"] + [label for label, _, _ in spec]
    out = table(header, zip(labels, *columns))
    if not binary:
        rows = []
        for cls in classes:
            cis = [level["parts"][p]["auc_per_class_delong"][cls] for p in parts]
            rows.append([cls] + [fmt_ci(d["auc"], d) for d in cis])
        out += "<p class='note'>One-vs-rest AUC per class (95% DeLong CI):</p>"
        out += table(["Class"] + [part_label(p) for p in parts], rows)
    return out


def _operating_section(level: dict, served: bool = True) -> str:
    ops = level.get("operating_points")
    if not ops:
        return ""
    parts = ["<h4>Operating points</h4>"]
    if ops.get("note"):
        return parts[0] + f"<p class='note warn'>{e(ops['note'])}</p>"
    space = ("<p class='note'>Thresholds apply to the <b>calibrated</b> probabilities (each fold model's temperature; "
             "what lnzoo predict and lnzoo serve call on)"
             + (": the Youden row is the operating point the model is served at. " if served else
                ", here chosen on each patient's mean: the model is served at the image level's Youden point, not "
                "these. ")
             + "Beside each, the raw probability at which each fold model reaches it.</p>"
             if ops.get("space") == "calibrated" else
             "<p class='note'>Thresholds apply to the raw probabilities: this run predates lnzoo's calibrated "
             "prediction columns.</p>")
    parts.append(space)
    parts.append("<p class='note'>Each threshold is <b>chosen on the pooled cross-validation predictions</b> "
                 "(the held-out folds act as validation data) and then applied unchanged to the test and external "
                 "sets. Rows marked <span class='opt'>optimistic</span> report the threshold on the very data that "
                 "chose it. The cross-fitted CV row chooses each fold's threshold on the other folds only. "
                 "CIs (patient bootstrap) treat the threshold as fixed."
                 + (" Test and external probabilities of an lnzoo run average the fold models, whose scores may "
                    "spread differently from one fold model's held-out scores." if set(level["parts"]) - {"cv"} else "")
                 + "</p>")
    header = ["Rule", "Threshold", "Evaluated on", "n", "Sensitivity", "Specificity", "PPV", "NPV", "Accuracy",
              "TP / FN / FP / TN"]
    def rest(r: dict) -> list[str]:  # PPV, NPV, accuracy and the confusion counts
        counts = " / ".join(str(r[k]) for k in ("tp", "fn", "fp", "tn"))
        return [fmt(r["ppv"]), fmt(r["npv"]), fmt(r["accuracy"]), counts]

    rows = []
    for entry in ops["rules"].values():
        if "error" in entry:
            rows.append([entry["label"], "n/a", f"not chosen: {entry['error']}"] + [""] * 7)
            continue
        raw = entry.get("raw_equivalent") or {}
        shown = fmt(entry["threshold"], 4) + (" (raw " + ", ".join(f"{fmt(v, 3)} fold {k}" for k, v in raw.items())
                                              + ")" if raw else "")
        for name, r in entry["parts"].items():
            where = part_label(name) + (" (optimistic: chose the threshold)" if r.get("optimistic") else "")
            rows.append([entry["label"], shown, where, r["n"],
                         fmt_ci(r["sensitivity"], r["ci"]["sensitivity"]),
                         fmt_ci(r["specificity"], r["ci"]["specificity"]), *rest(r)])
        cf = entry.get("cv_cross_fitted")
        if cf:
            ts = ", ".join(f"fold {k}: {fmt(v, 4)}" for k, v in cf["thresholds_per_fold"].items())
            ci = cf.get("ci") or {}
            rows.append([entry["label"], ts, "CV, cross-fitted (honest)", cf["n"],
                         fmt_ci(cf["sensitivity"], ci["sensitivity"]) if "sensitivity" in ci else fmt(cf["sensitivity"]),
                         fmt_ci(cf["specificity"], ci["specificity"]) if "specificity" in ci else fmt(cf["specificity"]),
                         *rest(cf)])
    parts.append(table(header, rows))
    return "".join(parts)


def _folds_section(level: dict, binary: bool, title: str) -> str:
    folds = level.get("folds") or {}
    if not folds:
        return ""
    header = ["Fold", "Images", "Patients", "AUC (95% CI)", "Accuracy (95% CI)", "Balanced accuracy"]
    if binary:
        header += ["Sensitivity", "Specificity"]
    rows = []
    for k, b in folds.items():
        m, ci = b["metrics"], b.get("ci", {})
        row = [f"fold {k}", b["n"], b["n_patients"], fmt_ci(m["auc"], ci.get("auc")),
               fmt_ci(m["accuracy"], ci.get("accuracy")), fmt(m["balanced_accuracy"])]
        if binary:
            row += [fmt(m.get("sensitivity")), fmt(m.get("specificity"))]
        rows.append(row)
    return ("<h4>Per-fold results</h4>" + table(header, rows)
            + img(plot_folds(level, title), f"{title}: per-fold AUC and accuracy"))


def _centers_section(level: dict) -> str:
    centers = level.get("centers")
    if not centers:
        return ""
    rows = []
    for part, per in centers.items():
        for ctr, b in per.items():
            d = b.get("auc_delong")
            auc = fmt_ci(d["auc"], d) if d else fmt(b["metrics"]["auc"])
            rows.append([part_label(part), ctr, b["n"], b["n_patients"], auc, fmt(b["metrics"]["accuracy"]),
                         fmt(b["metrics"]["balanced_accuracy"])])
    return "<h4>Per-center results</h4>" + table(
        ["Part", "Center", "Images", "Patients", "AUC (DeLong CI)", "Accuracy", "Balanced accuracy"], rows)


def level_section(task: str, level_name: str, level: dict, entry: dict, show_level: bool) -> str:
    classes, binary = entry["classes"], entry["binary"]
    title = f"{task}" + (f", {level_name} level" if show_level else "")
    out = [f"<h3>{e(level_name.capitalize())} level</h3>"] if show_level else []
    if "error" in level:
        return "".join(out) + f"<p class='warn'>{e(level['error'])}</p>"
    if level_name == "patient":
        out.append("<p class='note'>One case per patient: the mean probability over the patient's images.</p>")
    roc_note = "" if binary else ("<p class='note'>One-vs-rest curve per class; shaded: 95% "
                                  "patient-bootstrap band of the TPR.</p>")
    calibration = [[part_label(p), *(fmt(b["metrics"][k]) for k in ("ece", "brier", "log_loss"))]
                   for p, b in level["parts"].items()]
    out += ["<h4>Metrics (95% CI)</h4>", _metrics_table(level, classes, binary),
            "<h4>ROC curves</h4>", roc_note,
            img(plot_roc(level, classes, binary, title), f"ROC curves of {title}"),
            _operating_section(level, served=level_name == "image"),
            "<h4>Confusion matrices</h4>",
            img(plot_confusion(level, classes, title), f"confusion matrices of {title}"),
            "<h4>Calibration</h4>",
            table(["Part", "ECE (top-label, 15 bins)", "Brier score", "Log loss"], calibration),
            img(plot_reliability(level, f"Reliability: {title}"), 
                f"reliability diagram of {title}"),
            _folds_section(level, binary, title), _centers_section(level),
            _decision_section(level, title), _subgroups_section(level)]
    return "".join(out)


def _decision_section(level: dict, title: str) -> str:
    curves = level.get("decision_curve")
    if not curves or not any(dc and dc.get("n") for dc in curves.values()):
        return ""
    rows = []
    for part, dc in curves.items():
        useful = dc.get("useful_range")
        at = dc.get("at_operating_point") or {}
        rows.append([part_label(part), dc["n"], fmt(dc["prevalence"]),
                     f"{useful[0]:.2f}–{useful[1]:.2f}" if useful else "none",
                     fmt(at.get("threshold")), fmt(at.get("model")), fmt(at.get("treat_all"))])
    return ("<h4 id='decision-curve'>Decision curve (clinical utility)</h4><p class='note'>Net benefit of calling "
            "a case positive when its calibrated probability reaches the threshold probability: true positives "
            "minus false positives weighted by t/(1−t), per case (Vickers &amp; Elkin 2006). The model is useful "
            "where its curve lies above both treat-all and treat-none (shaded: the widest such range).</p>"
            + img(plot_decision_curve(level, title), f"decision curve of {title}")
            + table(["Part", "Cases", "Prevalence", "Useful thresholds", "Served threshold",
                     "Net benefit (model)", "Net benefit (treat all)"], rows))


def _subgroups_section(level: dict) -> str:
    subgroups = level.get("subgroups")
    if not subgroups:
        return ""
    rows, gaps = [], []
    for part, columns in subgroups.items():
        for column, entry in columns.items():
            for value, g in entry["groups"].items():
                auc = g.get("auc")
                figures = ([fmt_ci(auc["auc"], auc), fmt(g.get("sensitivity")), fmt(g.get("specificity")),
                            fmt(g.get("calibration_slope"))] if auc else [g.get("too_few") or "n/a", "", "", ""])
                rows.append([part_label(part), column, value, g["n"], g["n_patients"], fmt(g["prevalence"]), *figures])
            gap = entry.get("largest_gap")
            if gap:
                gaps.append(f"{part_label(part)}, {column}: AUC {gap['between'][0]} vs {gap['between'][1]}, a gap "
                            f"of {gap['gap']:.3f}")
    note = ("<p class='note'>AUC with a 95% CI resampling whole patients; sensitivity and specificity at the served "
            "operating point; calibration slope of the calibrated probabilities (1 is ideal; below 1 too extreme). "
            "A subgroup with fewer than 5 cases of a class gets counts only.</p>")
    largest = ("<p><b>Largest gaps</b>: " + e("; ".join(gaps)) + ".</p>") if gaps else ""
    return ("<h4 id='subgroups'>Subgroups</h4>" + note + largest
            + table(["Part", "Column", "Value", "Images", "Patients", "Prevalence", "AUC (95% CI)", "Sensitivity",
                     "Specificity", "Calibration slope"], rows))


def gradcam_section(root: Path) -> str:
    """Grad-CAM examples: every PNG under ``root`` (a run's ``explain/``), captioned from ``explain.csv`` with
    the case's true label, the predicted label and its probability; "" when there are none."""
    import csv
    import io

    from lnzoo.integrity import read_bytes, read_text

    pngs = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".png") if root.is_dir() else []
    if not pngs:
        return ""
    index: dict[str, dict[str, str]] = {}
    if (root / "explain.csv").is_file():
        index = {r.get("png", ""): r for r in csv.DictReader(io.StringIO(read_text(root / "explain.csv"), newline=""))}
    figs = []
    for p in pngs[:MAX_GRADCAM]:
        b64 = base64.b64encode(read_bytes(p)).decode("ascii")
        r = index.get(p.name)
        if r and r.get("predicted"):
            true = f"true {r['true']}, " if r.get("true") else ""
            caption = (f"{r['task']}: {true}predicted {r['predicted']} (p={fmt(r.get('p_predicted'))}); "
                       f"map of '{r['class']}', view {r['view']}")
        else:
            caption = p.relative_to(root).as_posix()
        figs.append(f"<figure>{img(b64, caption)}<figcaption>{e(caption)}</figcaption></figure>")
    more = len(pngs) - MAX_GRADCAM
    tail = f"<p class='note'>{more} more PNG(s) in {e(root)} are not embedded.</p>" if more > 0 else ""
    return "<h2 id='grad-cam'>Grad-CAM examples</h2>" + "".join(figs) + tail


def img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'



def effects_section(effects: dict[str, Any]) -> str:
    """The inputs' named features (morphology, covariates, radiomics) between the main task's classes: Cohen's d
    per feature, a table and a bar plot per input; "" when the run has none (its ``inputs.json``)."""
    from lnzoo.report.plots import plot_effects

    if not effects:
        return ""
    out = ["<h2 id='input-features'>Input features between classes</h2>",
           "<p class='note'>Standardised mean difference (Cohen's d, pooled sd) of each named feature between the main "
           "task's classes on the cross-validation rows that have the input: |d| about 0.2 is small, 0.5 medium, 0.8 "
           "large. Descriptive: a large d says the feature differs between the classes here, not that the model uses "
           "it (per-input occlusion in <code>lnzoo explain</code> says what the model relies on).</p>"]
    for name, entry in effects.items():
        d = entry["cohens_d"]
        counts = ", ".join(f"{c}: {n}" for c, n in entry["n_per_class"].items())
        out.append(f"<h3>{e(name)} ({e(entry['kind'])}; {entry['n']} rows: {e(counts)})</h3>")
        out.append(img(plot_effects(entry["features"], d, f"{name}: the largest effects"), f"effect sizes of {name}"))
        strongest = sorted(range(len(entry["features"])), key=lambda i: -max(
            (abs(v[i]) for v in d.values() if v[i] is not None), default=-1.0))
        rows = [[entry["features"][i], *[("n/a" if d[c][i] is None else f"{d[c][i]:+.2f}") for c in d]]
                for i in strongest]
        out.append(table(["feature", *[f"d: {c} vs rest" for c in d]], rows))
    return "".join(out)
