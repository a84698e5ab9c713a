"""``lnzoo report``: a self-contained HTML report (plots embedded) and ``evaluation.json`` for a run."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from lnzoo.audit import AUDIT_JSON, audit_section
from lnzoo.reader_study import READER_STUDY_JSON, reader_study_section
from lnzoo.report.tripod import TRIPOD_MD, tripod_checklist, tripod_section
from lnzoo.errors import UsageError
from lnzoo.evaluation import N_BOOT
from lnzoo.integrity import modified, modified_note
from lnzoo.report.html import (
    CSS,
    e,
    effects_section,
    gradcam_section,
    img,
    level_section,
    slug,
    table,
)
from lnzoo.report.plots import part_label, plot_training
from lnzoo.rundir import RunDir, write_atomic

__all__ = ["write_report"]


def _run_summary(rd: RunDir) -> dict[str, Any]:
    metrics, run, recipe = rd.read_json(rd.METRICS), rd.read_json(rd.RUN), rd.read_recipe()
    try:
        folds = Counter(rd.read_folds().values())  # fold -> patients
    except UsageError:
        folds = Counter()
    best_epochs = {}
    for k in rd.folds():
        try:
            record = rd.record(k)
        except UsageError:  # an unreadable sidecar costs this row of the summary, not the report
            continue
        if record.best_epoch is not None:
            best_epochs[k] = record.best_epoch
    return {
        "run_dir": str(rd), "recipe": metrics.get("recipe") or recipe.get("name") or rd.path.name,
        "description": recipe.get("description", ""), "data": metrics.get("data", ""),
        "main_task": metrics.get("main_task"), "folds_total": len([k for k in folds if k >= 0]) or None,
        "patients_per_fold": {str(k): v for k, v in sorted(folds.items()) if k >= 0},
        "folds_run": metrics.get("folds_run"), "device": run.get("device"), "wall_seconds": run.get("wall_seconds"),
        "quick": run.get("quick"), "ran": run.get("ran") or {}, "overrides": run.get("overrides") or [],
        "settings": training_settings(recipe), "reproduce": reproduce_commands(rd, run),
        "versions": run.get("versions") or {}, "test_note": metrics.get("test_note") or metrics.get("external_note"),
        "best_epochs": {str(k): v for k, v in sorted(best_epochs.items())}, "status": rd.status(),
        "warnings": [f"fold {f.get('fold')}: {f['validation_warning']}"
                     for f in metrics.get("cross_validation", {}).get("folds", []) if f.get("validation_warning")]
        + [f"plugin override: {line}" for line in run.get("plugin_overrides") or []],
    }


def training_settings(recipe: dict[str, Any]) -> str:
    """The settings a methods section needs, from the resolved recipe the run stored: optimiser, learning rate
    and schedule, epochs, batch, loss weights, class balancing, image size and augmentation."""
    if not recipe:
        return "n/a"
    train, data, tasks = recipe.get("train", {}), recipe.get("data", {}), recipe.get("tasks", {})
    if train.get("method") == "linear_probe":
        opt = "linear probe (logistic regression on frozen features)"
    else:
        opt = (f"{train.get('optimizer')} lr {train.get('lr')} (min {train.get('min_lr')}), weight decay "
               f"{train.get('weight_decay')}, {train.get('scheduler')} schedule with {train.get('warmup_epochs')} "
               f"warm-up epoch(s), {train.get('epochs')} epoch(s), gradient clip {train.get('grad_clip')}")
    aug = {k: v for k, v in (data.get("augment") or {}).items() if v not in (0, 0.0, None, False)}
    extras = []
    if (train.get("mean_teacher") or {}).get("weight"):
        mt = train["mean_teacher"]
        extras.append(f"mean teacher (weight {mt['weight']}, EMA {mt['ema']}, pseudo-label confidence "
                      f"≥ {mt['threshold']})")
    if train.get("ema"):
        extras.append(f"weight EMA {train['ema']}")
    return "; ".join([opt, f"batch {data.get('batch_size')}",
                      "loss weights " + ", ".join(f"{t} {w}" for t, w in (tasks.get("task_weights") or {}).items()),
                      f"class balance: {data.get('sampling')}",
                      f"images {data.get('image_size')} px ({data.get('resize')}, {data.get('normalize')} "
                      "normalisation)",
                      "augmentation " + (", ".join(f"{k} {v}" for k, v in aug.items()) or "none"),
                      f"epoch kept: {train.get('keep')} by inner-validation {train.get('monitor')}",
                      f"seed {recipe.get('seed')}", *extras])


def reproduce_commands(rd: RunDir, run: dict[str, Any]) -> list[str]:
    """Commands that train this run again: from the recipe file as given, and from the resolved recipe it stored."""
    import shlex

    out = []
    if run.get("recipe_source"):
        cmd = ["lnzoo", "run", str(run["recipe_source"])] + (["--quick"] if run.get("quick") else [])
        for s in run.get("overrides") or []:
            cmd += ["--set", s]
        out.append(shlex.join([*cmd, "--out", "NEW_RUN_DIR"]))
    out.append(shlex.join(["lnzoo", "run", str(rd / rd.RECIPE), "--out", "NEW_RUN_DIR"]))
    return out


def what_ran(ran: dict[str, Any]) -> str:
    """One line saying what was trained: backbone, image size, epochs, folds, and whether it was a quick run."""
    if not ran:
        return "n/a"
    folds = ran.get("folds_run") or []
    epochs = ran.get("epochs", "?")
    text = (f"{ran.get('backbone', '?')}, {ran.get('image_size', '?')} px, "
            f"{epochs if isinstance(epochs, str) else f'{epochs} epoch(s)'}, "
            f"{len(folds)} of {ran.get('folds', '?')} fold(s) ({', '.join(map(str, folds))})")
    return text + ("; QUICK run (lnzoo run --quick: the smoke-test profile, not the recipe's own settings)" if ran.get("quick") else "")


def _summary_section(s: dict, evaluation: dict) -> str:
    def dur(x):
        if x is None:
            return "n/a"
        x = float(x)
        return f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min"

    parts_n = {}
    for entry in evaluation["tasks"].values():
        lvl = entry["levels"].get("image", {})
        for p, b in lvl.get("parts", {}).items():
            parts_n[p] = max(parts_n.get(p, 0), b["n"])
    folds = s["folds_total"]
    folds_txt = "n/a" if folds is None else f"{folds}-fold patient-grouped CV"
    if s.get("folds_run") is not None:
        folds_txt += f"; folds run: {', '.join(map(str, s['folds_run']))}"
    described = s["description"] or "n/a"
    if s["quick"] and s["description"]:
        described += " (the recipe as published; this quick run trained what the next row says)"
    rows = [["Recipe", s["recipe"]], ["Description", described], ["What ran", what_ran(s["ran"])],
            ["Training settings", s["settings"]],
            ["Reproduce with", " or ".join(s["reproduce"]) + " (the same data, folds and seed; the second runs the "
                                                          "resolved recipe the run stored, --quick and --set included)"],
            ["Data", s["data"] or "n/a"],
            ["Main task", s["main_task"] or "n/a"], ["Folds", folds_txt],
            ["Patients per fold", ", ".join(f"fold {k}: {v}" for k, v in s["patients_per_fold"].items()) or "n/a"],
            ["Best epoch per fold", ", ".join(f"fold {k}: {v}" for k, v in s["best_epochs"].items()) or "n/a"],
            ["Labelled images per part (max over tasks)",
             ", ".join(f"{part_label(p)}: {n}" for p, n in parts_n.items()) or "n/a"],
            ["Device", s["device"] or "n/a"], ["Wall time", dur(s["wall_seconds"])],
            ["Quick profile", {True: "yes", False: "no"}.get(s["quick"], "n/a")],
            ["Overrides", "; ".join(s["overrides"]) or "none"],
            ["Versions", ", ".join(f"{k} {v}" for k, v in s["versions"].items()) or "n/a"],
            ["Bootstrap", f"{evaluation['settings']['n_boot']} patient-cluster resamples, seed "
                          f"{evaluation['settings']['seed']}"]]
    out = "<h2 id='run-summary'>Run summary</h2>" + table(["", ""], rows)
    if s.get("status") not in (None, "finished"):
        out += (f"<p class='warn'>This run did not finish (status: {e(s['status'])}); the report shows what it "
                "holds.</p>")
    out += "".join(f"<p class='warn'>Warning: {e(w)}</p>" for w in s.get("warnings", []))
    if "phantom" in (s["data"] or "").lower():
        out += "<p class='warn'>These results come from the synthetic phantom, not clinical data.</p>"
    note = s.get("test_note")
    out += ("<p class='note'><b>How to read this report.</b> Pooled CV: every held-out fold's predictions together; "
            "each fold model predicts only patients it never trained on. 95% CIs: percentile bootstrap that resamples "
            "whole patients (all of a patient's images together); AUC also with DeLong's CI. Sensitivity and "
            "specificity in the metrics tables are at p ≥ 0.5 (argmax); chosen operating points are in their own "
            "tables. "
            + (f"Test/external predictions: {e(note)}. " if note else "") + "</p>")
    return out


def _training_section(rd: RunDir, summary: dict) -> str:
    histories = rd.read_histories()
    if not histories:
        return ""
    best = {int(k): int(v) for k, v in summary["best_epochs"].items() if v is not None}
    return ("<h2 id='training-curves'>Training curves</h2>"
            "<p class='note'>Loss on the training and inner-validation data, and the validation metric of the main "
            "task, per epoch and fold. The star marks the epoch whose weights were kept.</p>"
            + img(plot_training(histories, best), "training curves"))


def _render(rd: RunDir, summary: dict, evaluation: dict) -> str:
    tasks = list(evaluation["tasks"])
    main = summary.get("main_task")
    if main in tasks:
        tasks.remove(main)
        tasks.insert(0, main)
    nav = "".join(f"<a href='#task-{slug(t)}'>{e(t)}</a>" for t in tasks)
    body = [f"<h1>Evaluation report: {e(summary['recipe'])}</h1>",
            f"<p class='note'>{e(summary['run_dir'])} · generated {e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
            f"<nav>Tasks: {nav} <a href='#training-curves'>Training curves</a></nav>",
            _summary_section(summary, evaluation)]
    show_level = len(evaluation["settings"]["levels"]) > 1
    for t in tasks:
        entry = evaluation["tasks"][t]
        kind = f"binary, positive class: {entry['positive']}" if entry["binary"] else f"{len(entry['classes'])} classes"
        body.append(f"<h2 id='task-{slug(t)}'>Task: {e(t)}</h2>")
        body.append(f"<p class='note'>Classes: {e(', '.join(entry['classes']))} ({e(kind)}).</p>")
        for level_name, level in entry["levels"].items():
            body.append(level_section(t, level_name, level, entry, show_level))
    body.append(_training_section(rd, summary))
    body.append(effects_section(rd.read_json(rd.INPUTS) if (rd / rd.INPUTS).is_file() else {}))
    body.append(gradcam_section(rd / rd.EXPLAIN))
    if (rd / AUDIT_JSON).is_file():  # lnzoo audit ran on this run: its verdicts, as audit.html shows them
        body.append(audit_section(rd.read_json(AUDIT_JSON)))
    if (rd / READER_STUDY_JSON).is_file():  # lnzoo reader-study --model this run: the study, as its html shows it
        body.append(reader_study_section(rd.read_json(READER_STUDY_JSON)))
    title = e(f"lnzoo report: {summary['recipe']}")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{title}</title>"
            f"<style>{CSS}</style></head><body><main>{''.join(body)}</main></body></html>")


def write_report(run_dir, out_html=None, n_boot: int = N_BOOT, *, aggregate: str | None = None, seed: int = 0,
                 sensitivity_target: float = 0.95) -> Path:
    """Write a self-contained ``report.html`` (default: in the run dir) and ``evaluation.json`` beside it; return its path."""
    from lnzoo.evaluation.evaluate import evaluate_predictions

    rd = RunDir(run_dir)
    from lnzoo.pretrain import pretrain_summary
    pretrained = pretrain_summary(rd)
    if pretrained is not None:  # a self-supervised pretraining: its curves, no predictions to evaluate
        from lnzoo.pretrain.report import rewrite_pretrain_report
        return rewrite_pretrain_report(rd, pretrained)
    _, rows = rd.read_predictions()
    evaluation = evaluate_predictions(rows, rd.tasks_meta(), aggregate=aggregate, n_boot=n_boot, seed=seed,
                                      sensitivity_target=sensitivity_target)
    _raw_equivalents(rd, evaluation)
    summary = _run_summary(rd)
    out = Path(out_html) if out_html else rd / rd.REPORT
    page = _render(rd, summary, evaluation)
    checklist = tripod_checklist(rd, evaluation)  # TRIPOD+AI and CLAIM, filled from what the run knows
    page = page.replace("</main>", tripod_section(checklist) + "</main>", 1)
    note = modified_note()  # read under --allow-modified from files that are not as lnzoo wrote them
    if note:
        page = page.replace("<main>", f"<main><p class='warn'><b>{e(note)}</b></p>", 1)
        summary = {**summary, "modified": modified()}
    RunDir(out.parent).write_json(RunDir.EVALUATION, {"run": summary, **evaluation})
    write_atomic(out.parent / TRIPOD_MD, checklist)
    write_atomic(out, page)
    return out


def _raw_equivalents(rd: RunDir, evaluation: dict) -> None:
    """Beside each operating threshold chosen on calibrated probabilities, the raw probability of each fold model
    at which it is reached (lnzoo.decision.raw_equivalent): the same point, in the other space."""
    from lnzoo.decision import raw_equivalents

    temperatures: dict[str, dict[str, Any]] = {}
    for k in rd.folds():
        try:
            temperatures[str(k)] = dict(rd.record(k).temperature)
        except UsageError:
            continue
    for task, entry in evaluation.get("tasks", {}).items():
        for level in entry.get("levels", {}).values():
            ops = level.get("operating_points") or {}
            if ops.get("space") != "calibrated":
                continue
            for rule in ops.get("rules", {}).values():
                if rule.get("threshold") is not None:
                    rule["raw_equivalent"] = raw_equivalents(rule["threshold"],
                                                             {k: t.get(task) for k, t in temperatures.items()})
