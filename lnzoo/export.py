"""``lnzoo export``: a run directory's models as a portable bundle (see :mod:`lnzoo.bundle` for the layout),
with a model card written from the run, and optionally each model as ONNX."""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lnzoo import __version__
from lnzoo.bundle import BUNDLE_FORMAT, CARD, CONFIG, MODELS, model_info
from lnzoo.errors import UsageError
from lnzoo.files import OutputError, write_atomic
from lnzoo.rundir import RunDir


def export_bundle(run_dir: str | Path, out: str | Path, folds: Sequence[int] | None = None, onnx: bool = False,
                  licence: str | None = None, host=None, say: Callable[[str], None] | None = None) -> Path:
    """Write the bundle of ``run_dir`` (every fold model, or ``folds``) into the new or empty folder ``out``."""
    if host is None:
        from lnzoo.plugins import get_host
        host = get_host()
    say = say or (lambda text: None)
    rd, out = RunDir(run_dir), Path(out)
    available = rd.folds()
    chosen = list(folds) if folds else available
    unknown = [k for k in chosen if k not in available]
    if unknown:
        raise UsageError(f"--fold {unknown}: {rd} holds the folds {available}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} is not an empty folder; a bundle goes into a new or empty one")
    work = out.with_name(f".{out.name}.partial")  # renamed to ``out`` when complete: never half a bundle
    shutil.rmtree(work, ignore_errors=True)
    try:
        _write_bundle(rd, work, chosen, onnx, licence, host, say)
        if out.exists():
            out.rmdir()
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def _write_bundle(rd: RunDir, out: Path, chosen: Sequence[int], onnx: bool, licence: str | None, host,
                  say: Callable[[str], None]) -> None:
    info = model_info(rd.path)
    info["folds"] = chosen
    info["temperatures"] = {str(k): info["temperatures"].get(str(k), {}) for k in chosen}
    for th in info["thresholds"].values():  # the same point in raw probability, for the models it holds
        if th.get("raw_equivalent"):
            th["raw_equivalent"] = {k: v for k, v in th["raw_equivalent"].items() if int(k) in chosen}
    from lnzoo.integrity import LOCK, modified, modified_note, read_bytes, start, verify_tree
    from lnzoo.record import ModelRecord

    start(out)  # every file written below is bound to the bundle's integrity.json
    models = []
    for k in chosen:
        # byte for byte, as read and checked (weights against the sidecar, both against the run's manifest)
        record, blob = ModelRecord.read_verified(rd.checkpoint(k))
        write_atomic(out / MODELS / f"fold{k}.safetensors", blob, record.meta.get("weights_sha256"))
        write_atomic(out / MODELS / f"fold{k}.json", read_bytes(rd.checkpoint(k).with_suffix(".json")))
        ModelRecord.read_verified(out / MODELS / f"fold{k}.safetensors")  # the copy, as a reader will see it
        entry = {"fold": k, "weights": f"fold{k}.safetensors", "sidecar": f"fold{k}.json"}
        if onnx:
            from lnzoo.onnx_engine import export_onnx, onnx_interface
            diff = export_onnx(out / MODELS / f"fold{k}.safetensors", out / MODELS / f"fold{k}.onnx", host)
            entry.update(onnx=f"fold{k}.onnx", onnx_max_abs_diff=diff,
                         onnx_interface=onnx_interface(out / MODELS / f"fold{k}.safetensors", host))
            say(f"fold {k}: model.onnx checked against torch, max |p_onnx - p_torch| = {diff:.2e}")
        models.append(entry)
    config = {"format": "lnzoo-bundle", "format_version": BUNDLE_FORMAT, **info, "models": models,
              "plugins": plugins_needed([rd.record(k) for k in chosen]),
              "licence": licence or "unspecified (set it with lnzoo export --licence)",
              "exported": {"from": str(rd.path.resolve()), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "lnzoo": __version__}}
    card = model_card(config, rd)
    note = modified_note()  # exported under --allow-modified from files that are not as lnzoo wrote them
    if note:
        config["modified"] = modified()
        card = f"> **{note}**\n\n{card}"
    write_atomic(out / CONFIG, json.dumps(config, indent=1, ensure_ascii=False))
    write_atomic(out / CARD, card)
    (out / LOCK).unlink(missing_ok=True)  # a bundle has one writer, done now
    problems = verify_tree(out)  # what was written is what a reader will find
    if problems:
        raise OutputError(f"the bundle written to {out} does not read back as written: {'; '.join(problems)}")


def plugins_needed(records: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """The distributions other than lnzoo that provided a component of the models, as their records say (never
    what happens to be installed on the machine exporting them)."""
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        for c in record.components:
            if c.get("distribution") not in (None, "lnzoo"):
                entry = out.setdefault(c["distribution"], {"version": c["version"], "provides": []})
                what = f"{c['kind']} {c['name']!r}"
                if what not in entry["provides"]:
                    entry["provides"].append(what)
    return out


def _fmt(value: Any, ci: Sequence[Any] | None = None) -> str:
    if not isinstance(value, (int, float)) or value != value:
        return "n/a"
    text = f"{value:.3f}"
    if ci and all(isinstance(c, (int, float)) and c == c for c in ci):
        text += f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})"
    return text


def served_evaluation(rd: RunDir, config: Mapping[str, Any]) -> dict[str, Any]:
    """The run's evaluation (evaluation.json) as the served model is called: its report's, when that chose the very
    operating thresholds config.json stores (same rows, same rule); otherwise computed here from the run's rows."""
    from lnzoo.evaluation.evaluate import evaluate_predictions

    stored = rd.read_json(rd.EVALUATION)

    def agrees(evaluation: Mapping[str, Any]) -> bool:
        for task, th in (config.get("thresholds") or {}).items():
            if th.get("value") is None:
                continue
            ops = (evaluation.get("tasks", {}).get(task, {}).get("levels", {}).get("image", {})
                   .get("operating_points", {}))
            rule = ops.get("rules", {}).get(th.get("rule"), {})
            if ops.get("space") != th.get("space") or rule.get("threshold") is None \
                    or abs(rule["threshold"] - th["value"]) > 1e-6:
                return False
        return bool(evaluation.get("tasks"))

    if stored and agrees(stored):
        return stored
    tasks_meta = {t: {"classes": d["classes"], "positive": d.get("positive")} for t, d in config["tasks"].items()}
    return evaluate_predictions(rd / rd.PREDICTIONS, tasks_meta)


def _operating_rows(config: Mapping[str, Any], evaluation: Mapping[str, Any], all_folds: bool) -> list[str]:
    """The card's main table: each binary task's calls at its served operating point, per data part, with CIs.
    The run's test and external predictions average all its fold models: shown only when the bundle holds them
    all."""
    from lnzoo.decision import OperatingPoint
    from lnzoo.report.plots import part_label

    lines = ["| task | data | n | sensitivity | specificity | PPV | NPV |", "|---|---|---|---|---|---|---|"]
    notes = []
    for task, definition in config["tasks"].items():
        op = OperatingPoint.from_dict(definition["classes"], definition.get("positive"),
                                      (config.get("thresholds") or {}).get(task))
        if not op.thresholded:
            continue
        level = evaluation.get("tasks", {}).get(task, {}).get("levels", {}).get("image", {})
        entry = level.get("operating_points", {}).get("rules", {}).get(op.rule, {})
        notes.append(f"- **{task}**: called {op.positive} when {op.text()}"
                     + (f"; the same point in raw probability: {op.raw_text()}" if op.raw_text() else ""))
        shown = []
        if entry.get("cv_cross_fitted"):
            shown.append(("cross-validation, each fold's threshold chosen on the other folds (honest)",
                          entry["cv_cross_fitted"]))
        for part, r in (entry.get("parts") or {}).items():
            if part != "cv" and not all_folds:
                continue
            label = part_label(part) + (" at the served threshold (optimistic: the threshold was chosen on these)"
                                        if r.get("optimistic") else " at the served threshold")
            shown.append((label, r))
        for label, r in shown:
            ci = r.get("ci") or {}
            span = {k: [ci[k].get("lo"), ci[k].get("hi")] for k in ("sensitivity", "specificity") if k in ci}
            lines.append(f"| {task} | {label} | {r.get('n', 'n/a')} | {_fmt(r.get('sensitivity'), span.get('sensitivity'))}"
                         f" | {_fmt(r.get('specificity'), span.get('specificity'))} | {_fmt(r.get('ppv'))} | "
                         f"{_fmt(r.get('npv'))} |")
    return [*notes, "", *lines] if notes else []


def model_card(config: Mapping[str, Any], rd: RunDir) -> str:
    """MODEL_CARD.md: what the model is for, what it was trained on, how well it did at the operating point it is
    served at, its known limits."""
    from lnzoo.decision import OperatingPoint
    from lnzoo.report import what_ran

    run = rd.read_json(rd.RUN)
    ran = run.get("ran") or {}
    metrics = config.get("metrics") or {}
    cv = metrics.get("cross_validation") or {}
    evaluation = served_evaluation(rd, config)
    changed = ran.get("quick") or run.get("overrides")
    lines = [f"# Model card: {config.get('name')}", "",
             f"**What was trained:** {what_ran(ran)}.", ""]
    if config.get("description"):
        lines += [f"The recipe's description (of its own settings{', which this run changed' if changed else ''}): "
                  f"{config['description']}", ""]
    lines += ["## Intended use", "",
              "Research on cervical lymph node ultrasound: the tasks below, on images acquired and prepared like the "
              "training data. It is not a medical device and has not been validated for clinical decisions; a "
              "clinician's judgement comes first.", "",
              "## Tasks", ""]
    for name, task in config["tasks"].items():
        th = (config.get("thresholds") or {}).get(name) or {}
        op = OperatingPoint.from_dict(task["classes"], task.get("positive"), th)
        call = (f"{op.text()}, chosen on {th.get('chosen_on', 'cross-validation')}" if op.thresholded
                else th.get("note", "the most probable class"))
        lines.append(f"- **{name}**{' (main)' if name == config.get('main_task') else ''}: "
                     f"{', '.join(task['classes'])}; call: {call}")
    lines += ["", "## Inputs", "",
              f"- Views: {', '.join(config['views'])}; images resized to {config['preprocessing'].get('image_size')} "
              f"px ({config['preprocessing'].get('resize')}), normalised {config['preprocessing'].get('normalize')}",
              f"- ROI margin {config['preprocessing'].get('roi_margin')}, empty ROI: "
              f"{config['preprocessing'].get('empty_roi')}; test-time augmentation: {config.get('tta')}",
              "- Inputs besides the images: " + ("; ".join(
                  f"{i['name']} ({i['kind']}" + (f": {', '.join(i['options']['columns'])}" if i["options"].get("columns")
                                                 else f", column {i['options']['column']}" if i["options"].get("column")
                                                 else "") + ")" for i in config.get("inputs") or []) or "none"),
              "", "## Training data", "",
              f"- {metrics.get('data') or 'as the recipe describes it'}",
              f"- Bundle models: folds {config.get('folds')} (their calibrated probabilities are averaged)", ""]
    all_folds = sorted(config.get("folds") or []) == sorted(rd.folds())
    served = _operating_rows(config, evaluation, all_folds)
    if served and not all_folds:
        served += ["", f"This bundle holds folds {config.get('folds')} of the run's {rd.folds()}: the run's test and "
                   "external predictions average all of them, so they are not shown for this bundle."]
    if served:
        lines += ["## Performance at the operating point served", "",
                  "What a user of this model gets: the calls lnzoo predict and lnzoo serve make. 95% CIs resample "
                  "whole patients.", "", *served, ""]
    lines += ["## Cross-validated performance at the most probable class (p ≥ 0.5)", "",
              "Pooled held-out folds. Sensitivity and specificity here are at the most probable class, **not** at "
              "the operating point served" + (" (see the table above)" if served else "") + "; the AUC does not "
              "depend on a threshold. ECE is shown for the model's own and for the served (temperature-scaled) "
              "probabilities.", "",
              "| task | n | AUC | balanced accuracy | sensitivity | specificity | ECE | ECE after temperature |",
              "|---|---|---|---|---|---|---|---|"]
    for task, m in cv.items():
        ci = m.get("ci95") or {}
        lines.append(f"| {task} | {m.get('n', 'n/a')} | {_fmt(m.get('auc'), ci.get('auc'))} | "
                     f"{_fmt(m.get('balanced_accuracy'), ci.get('balanced_accuracy'))} | "
                     f"{_fmt(m.get('sensitivity'), ci.get('sensitivity'))} | "
                     f"{_fmt(m.get('specificity'), ci.get('specificity'))} | {_fmt(m.get('ece'))} | "
                     f"{_fmt(m.get('ece_calibrated'))} |")
    if not any((m.get("ci95") or {}) for m in cv.values()):
        lines += ["", "95% CIs of this table come from the run's report (lnzoo report RUN_DIR); this run had none."]
    if all_folds:
        lines += evidence_lines(evaluation)
    temps = {k: {t: T for t, T in v.items() if T} for k, v in (config.get("temperatures") or {}).items()}
    temps = {k: v for k, v in temps.items() if v}
    lines += ["", "## Calibration", "",
              "Probabilities served are temperature-scaled per fold model (temperatures fitted on each fold's inner "
              "validation part): " + ("; ".join(f"fold {k}: " + ", ".join(f"{t} {v}" for t, v in d.items())
                                                for k, d in temps.items()) or "none was fitted (too little "
                                                "validation data): the model's own probabilities are served") + ".",
              "", "## Known limits", ""]
    limits = ["Validated only by patient-grouped cross-validation on the training data unless a test or external "
              "set is reported above; performance on other machines, operators and populations is unknown."]
    if "phantom" in str(metrics.get("data", "")).lower():
        limits.insert(0, "**Trained on the synthetic phantom, not clinical data: for demonstration only.**")
    limits += [f"fold {f.get('fold')}: {f['validation_warning']}" for f in
               rd.metrics().get("cross_validation", {}).get("folds", []) if f.get("validation_warning")]
    lines += [f"- {text}" for text in limits]
    versions = config.get("versions") or {}
    lines += ["", "## Provenance", "",
              f"- Exported {config['exported']['at']} from {config['exported']['from']} with lnzoo "
              f"{config['exported']['lnzoo']}",
              "- Trained with " + ", ".join(f"{k} {v}" for k, v in versions.items()),
              "- Plugins needed: " + (", ".join(f"{d} {i['version']} ({', '.join(i['provides'])})"
                                                for d, i in config["plugins"].items()) or "none"),
              f"- Licence: {config['licence']}", ""]
    return "\n".join(lines)


def evidence_lines(evaluation: Mapping[str, Any]) -> list[str]:
    """The card's clinical utility (decision curve summary) and subgroup tables, from the run's evaluation."""
    from lnzoo.evaluation import fmt, fmt_ci
    from lnzoo.report.plots import part_label

    utility, groups = [], []
    for task, entry in (evaluation.get("tasks") or {}).items():
        level = (entry.get("levels") or {}).get("image") or {}
        for part, dc in (level.get("decision_curve") or {}).items():
            if not dc or not dc.get("n"):
                continue
            useful, at = dc.get("useful_range"), dc.get("at_operating_point") or {}
            utility.append(f"| {task} | {part_label(part)} | {dc['n']} | {fmt(dc['prevalence'])} | "
                           + (f"{useful[0]:.2f}–{useful[1]:.2f}" if useful else "none") + f" | "
                           f"{fmt(at.get('threshold'))} | {fmt(at.get('model'))} | {fmt(at.get('treat_all'))} |")
        for part, columns in (level.get("subgroups") or {}).items():
            for column, sub in columns.items():
                for value, g in sub["groups"].items():
                    auc = g.get("auc")
                    figures = (f"{fmt_ci(auc['auc'], auc)} | {fmt(g.get('sensitivity'))} | "
                               f"{fmt(g.get('specificity'))} | {fmt(g.get('calibration_slope'))}" if auc
                               else f"{g.get('too_few') or 'n/a'} | | |")
                    groups.append(f"| {task} | {part_label(part)} | {column} | {value} | {g['n']} | "
                                  f"{fmt(g['prevalence'])} | {figures} |")
                gap = sub.get("largest_gap")
                if gap:
                    groups.append(f"| {task} | {part_label(part)} | {column} | largest AUC gap: {gap['between'][0]} "
                                  f"vs {gap['between'][1]} | | | {gap['gap']:.3f} | | | |")
    lines: list[str] = []
    if utility:
        lines += ["", "## Clinical utility (decision curve)", "",
                  "Net benefit of acting on the calibrated probability at a threshold probability t (true positives "
                  "minus false positives weighted by t/(1−t), per case), against treating every case; the model is "
                  "useful where it beats both treat-all and treat-none.", "",
                  "| task | part | n | prevalence | useful thresholds | served threshold | net benefit | treat all |",
                  "|---|---|---|---|---|---|---|---|", *utility]
    if groups:
        lines += ["", "## Subgroups", "",
                  "AUC with a 95% CI resampling whole patients; sensitivity and specificity at the served operating "
                  "point; calibration slope (1 is ideal). Fewer than 5 cases of a class: counts only.", "",
                  "| task | part | column | value | n | prevalence | AUC | sensitivity | specificity | calibration "
                  "slope |", "|---|---|---|---|---|---|---|---|---|---|", *groups]
    return lines
