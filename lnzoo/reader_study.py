"""``lnzoo reader-study``: a multi-reader multi-case study of the AUC, and the readers against the model.

The analysis is :mod:`lnzoo.evaluation.mrmc` (Obuchowski–Rockette with Hillis's degrees of freedom) on the reads
:mod:`lnzoo.evaluation.reads` checks. This module adds what a study with lnzoo's models needs:

- **Truth as labels.** With ``task`` (a registered task, or the model's main task), the truth column may hold the
  task's class names and their aliases (e.g. "malignant", "benign"): the positive class is diseased. 0/1 stays
  accepted. Names without a task are refused with the tasks that would read them: never guessed.
- **The model against the readers** (``model``): a run directory (its predictions.csv: the held-out cross-validation
  rows, each case scored by the fold model that did not train on it, and the test and external rows; a case
  without one is an error, never scored by a model that saw it) or a predictions CSV (lnzoo's
  ``predictions.csv``, or ``lnzoo predict``'s output) whose rows match the study's cases by id, path, file name or file stem; or a bundle or checkpoint, which predicts
  the study's images from the reads' ``path`` column (the cases must be unseen by that model: a bundle does not
  say which patients it was trained on). Its probability of the positive class gives the model's AUC, and each
  modality of the study is compared with it in an analysis of its own (:func:`_against_ai`): the readers' mean
  AUC against the model's, the readers a random sample, the model fixed. The readers' own analysis is left as
  it is.

Outputs: the analysis as a dict (``--json``), ``reader_study.json`` and a self-contained ``reader_study.html``
with the readers' ROC curves per modality and their AUCs side by side; the run's report shows the study once
``reader_study.json`` lies in the run directory.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from lnzoo.errors import UsageError

READER_STUDY_JSON, READER_STUDY_HTML = "reader_study.json", "reader_study.html"
AI_MODALITY = "AI (standalone)"


def _labels(task) -> tuple[set[str], set[str]]:
    """The truth values of a task: its positive class and aliases (diseased), the other classes (not), and 1/0."""
    positive = task.classes[task.positive_index] if task.positive_index is not None else None
    if positive is None:
        raise UsageError(f"task {task.name!r} has {len(task.classes)} classes and no positive class; a reader study "
                         "of the AUC compares diseased with non-diseased cases")
    pos = {positive, *task.aliases.get(positive, ()), "1", "1.0"}
    neg = {v for c in task.classes if c != positive for v in (c, *task.aliases.get(c, ()))} | {"0", "0.0"}
    return pos, neg


def read_study(reads_path: str | Path, task=None):
    """The study's reads, with the truth read through ``task``'s labels when given."""
    from lnzoo.evaluation.reads import read_reads

    if task is None:
        return read_reads(reads_path)
    pos, neg = _labels(task)
    return read_reads(reads_path, positive_labels=pos, negative_labels=neg)


def _check_truth_needs_no_task(reads_path: Path, host) -> None:
    """Refuse truth values other than 0/1 without a task, naming the registered tasks whose labels cover them (a
    guess among tasks could read "yes" as the wrong task's positive class)."""
    from lnzoo.data.tables import csv_reader
    from lnzoo.evaluation.reads import TRUTH_ALIASES
    from lnzoo.evaluation.sides import registered_task

    reader, _ = csv_reader(reads_path)
    column = next((c for c in reader.fieldnames or [] if c.strip().lower() in TRUTH_ALIASES), None)
    values = {(row.get(column) or "").strip() for row in reader} - {""} if column else set()
    if not values or values <= {"0", "1", "0.0", "1.0"}:
        return
    fits = []
    for name in host.registry("task").names():
        task = registered_task(name, host)
        if task is not None and task.positive_index is not None and values <= set().union(*_labels(task)):
            fits.append(f"{name} (diseased: {task.classes[task.positive_index]})")
    shown = ", ".join(sorted(values)[:6])
    raise UsageError(f"{reads_path}: the {column!r} column holds {shown}, not 0/1: pass --task TASK to read them as "
                     "a task's class names (its positive class is diseased)"
                     + (f"; tasks whose labels cover them: {', '.join(fits)}" if fits else ""))


def _case_paths(reads_path: Path) -> dict[str, str]:
    """case -> the image path of the reads' ``path`` column (relative paths against the CSV's folder); {} without."""
    from lnzoo.data.tables import csv_reader

    reader, _ = csv_reader(reads_path)
    if "path" not in (reader.fieldnames or []):
        return {}
    out = {}
    for row in reader:
        case, path = (row.get("case") or "").strip(), (row.get("path") or "").strip()
        if case and path:
            p = Path(path)
            out.setdefault(case, str(p if p.is_absolute() else (reads_path.parent / p).resolve()))
    return out


def _scores_from_predictions(model: Path, reads, task_name: str | None) -> tuple[np.ndarray, str, str]:
    """(score per case, task, how the cases matched) from a run directory's or CSV's prediction rows."""
    from lnzoo.evaluation.sides import extract, open_side

    source = open_side(model)
    task = task_name or source.main_task or (source.lnzoo_tasks[0] if source.lnzoo_tasks else None)
    side = extract(source, task)
    if side.proba is not None:
        positive = side.positive or (side.classes[1] if side.classes and len(side.classes) == 2 else None)
        if positive is None:
            raise UsageError(f"{source.file}: task {task!r} has no positive class; the reader study needs a binary "
                             "score")
        score = side.proba[:, side.classes.index(positive)]
    else:
        score = side.score
    index: dict[str, list[int]] = {}
    for i, case_id in enumerate(side.ids):
        for key in {case_id, PurePath(case_id.replace("\\", "/")).name, PurePath(case_id.replace("\\", "/")).stem}:
            index.setdefault(key, []).append(i)
    out, missing, ambiguous = np.full(len(reads.cases), np.nan), [], []
    for k, case in enumerate(reads.cases):
        name = PurePath(case.replace("\\", "/"))
        hits = index.get(case) or index.get(name.name) or index.get(name.stem) or []
        if len(set(hits)) > 1:
            ambiguous.append(case)
        elif not hits:
            missing.append(case)
        else:
            out[k] = score[hits[0]]
    if missing or ambiguous:
        what = []
        if missing:
            what.append(f"{len(missing)} case(s) with no prediction (e.g. {', '.join(missing[:5])})")
        if ambiguous:
            what.append(f"{len(ambiguous)} case(s) matching several predictions (e.g. {', '.join(ambiguous[:5])})")
        raise UsageError(f"--model {model}: {'; '.join(what)}; a case matches a prediction row by its id, path, "
                         f"file name or file stem ({source.file}, {len(side.ids)} row(s))")
    return out, task, f"{source.file} (cases matched by id, path or file name)"


def _scores_by_predicting(ens, model: Path, reads, paths: Mapping[str, str]) -> tuple[np.ndarray, str, str]:
    """(score per case, task, how) by running the model ``ens`` (its calibrated probabilities, as served) on the
    reads' images."""
    missing = [c for c in reads.cases if c not in paths]
    if missing:
        raise UsageError(f"--model {model}: the reads' path column gives no image for {len(missing)} case(s) (e.g. "
                         f"{', '.join(missing[:5])})")
    task = ens.main_task
    if task.positive_index is None:
        raise UsageError(f"--model {model}: its main task {task.name!r} has no positive class")
    _, scaled, _ = ens.predict_both([Path(paths[c]) for c in reads.cases])
    return (np.asarray(scaled[task.name][:, task.positive_index], float), task.name,
            f"{model} predicting the {len(reads.cases)} image(s) of the reads' path column")


def _against_ai(reads, score: np.ndarray, cov: str, alpha: float) -> dict[str, Any]:
    """The model's AUC and, per modality of the study, the readers' mean AUC against it.

    Each comparison is the two-modality OR analysis of that modality and the model replicated as every reader's
    reading: with the model's reader variance zero, its variance of the difference is (MS(R) + r·(Cov2 + V_AI −
    2·C_AI)) / r (MS(R) and Cov2 of the readers' modality, V_AI the model's AUC variance, C_AI the readers' mean
    AUC covariance with it), on Hillis's df: the readers a random sample, the model fixed. Each is its own analysis,
    so the model never enters the readers' own comparison (whose covariances it would distort)."""
    from lnzoo.evaluation.mrmc import or_analysis

    r = len(reads.readers)
    copies = np.repeat(score[None, :], r, axis=0)
    comparisons, ai_auc, roc = [], None, None
    for i, modality in enumerate(reads.modalities):
        pair = replace(reads, modalities=[modality, AI_MODALITY], ratings=np.stack([reads.ratings[i], copies]))
        res = or_analysis(pair, cov=cov, alpha=alpha)
        if ai_auc is None:
            ai_auc = next(a for a in res["reader_auc"] if a["modality"] == AI_MODALITY)
            roc = next(c for c in res["roc"] if c["modality"] == AI_MODALITY)
        test = res["random_readers_cases"]
        d = test["differences"][0]
        comparisons.append({"modality": modality, "readers_auc": res["modality_auc"][0]["auc"],
                            "ai_auc": ai_auc["auc"], "diff": d["diff"], "lo": d["lo"], "hi": d["hi"],
                            "df": d["df"], "p": test["p"], "f": test["f"],
                            "fixed_readers_p": res["fixed_readers"]["p"]})
    return {"auc": ai_auc["auc"], "lo": ai_auc["lo"], "hi": ai_auc["hi"], "fpr": roc["fpr"], "tpr": roc["tpr"],
            "comparisons": comparisons}


def reader_study(reads_path: str | Path, model: str | Path | None = None, task: str | None = None,
                 cov: str = "delong", alpha: float = 0.05, host=None) -> dict[str, Any]:
    """The MRMC analysis of ``reads_path``, with the model (when given) as the modality "AI (standalone)"."""
    from lnzoo.evaluation.mrmc import COV_METHODS, or_analysis
    from lnzoo.evaluation.sides import registered_task

    if cov not in COV_METHODS:
        raise UsageError(f"--cov {cov!r}: use one of {', '.join(COV_METHODS)}")
    reads_path = Path(reads_path)
    if not reads_path.is_file():
        raise UsageError(f"{reads_path}: no such reads file")
    if host is None:
        from lnzoo.plugins import get_host
        host = get_host()
    task_name, ens = task, None
    if model is not None:
        from lnzoo.zoo import resolve_source

        model = resolve_source(model)  # zoo:NAME: the zoo's bundle, pulled on first use
        if model.is_file() and model.suffix == ".safetensors" or (model / "config.json").is_file():
            from lnzoo.predict import Ensemble

            ens = Ensemble([model], host)  # a bundle or checkpoint: it predicts the reads' images
            task_name = task_name or ens.main_task.name
        elif task_name is None and model.is_dir():
            from lnzoo.rundir import RunDir
            if RunDir(model).is_run():
                task_name = RunDir(model).read_json(RunDir.METRICS).get("main_task")
    if not task_name:
        _check_truth_needs_no_task(reads_path, host)
    registered = registered_task(task_name, host) if task_name else None
    if task is not None and registered is None:
        raise UsageError(f"--task {task!r} is not a registered task (lnzoo list-tasks)")
    reads = read_study(reads_path, registered)
    ai = score = None
    if model is not None:
        if ens is not None:
            score, task_name, how = _scores_by_predicting(ens, model, reads, _case_paths(reads_path))
        else:  # a run directory (its held-out predictions) or a predictions CSV
            score, task_name, how = _scores_from_predictions(model, reads, task_name)
        ai = {"model": str(model), "task": task_name, "from": how}
    result = or_analysis(reads, cov=cov, alpha=alpha)
    result["task"] = task_name
    if ai is not None:
        result["ai"] = {**ai, **_against_ai(reads, score, cov, alpha)}
    return result


# -- writing --------------------------------------------------------------------------------------------------------
def format_ai(result: Mapping[str, Any]) -> str:
    """The readers against the model, as plain text ("" without a model)."""
    from lnzoo.evaluation import fmt, fmt_p

    ai = result.get("ai")
    if not ai:
        return ""
    pct = f"{100 * (1 - result['alpha']):g}%"
    lines = [f"The readers against the model ({ai['model']}, task {ai['task']}): model AUC {fmt(ai['auc'])} "
             f"({fmt(ai['lo'])}–{fmt(ai['hi'])}); readers random, model fixed:",
             f"  {'modality':<20}{'readers':>9}{'model':>9}  {'difference (' + pct + ' CI)':<30}{'df':>8}{'p':>9}"]
    for c in ai["comparisons"]:
        lines.append(f"  {c['modality']:<20}{fmt(c['readers_auc']):>9}{fmt(c['ai_auc']):>9}  "
                     f"{fmt(c['diff'], 4) + ' (' + fmt(c['lo'], 4) + ', ' + fmt(c['hi'], 4) + ')':<30}"
                     f"{fmt(c['df'], 2):>8}{fmt_p(c['p']):>9}")
    return "\n".join(lines)


def reader_study_section(result: Mapping[str, Any]) -> str:
    """The study as an HTML section (reader_study.html and the run's report)."""
    from lnzoo.evaluation import fmt, fmt_p
    from lnzoo.report.html import e, img, table
    from lnzoo.report.plots import plot_reader_aucs, plot_reader_rocs

    pct = f"{100 * (1 - result['alpha']):g}%"
    modalities = [m["modality"] for m in result["modality_auc"]]
    auc_rows = [[m["modality"], f"{fmt(m['auc'])} ({fmt(m['lo'])}–{fmt(m['hi'])})", fmt(m.get("df"), 1)]
                for m in result["modality_auc"]]
    readers = {r: {} for r in result["readers"]}
    for entry in result["reader_auc"]:
        readers[entry["reader"]][entry["modality"]] = fmt(entry["auc"])
    reader_rows = [[r, *(v.get(m, "n/a") for m in modalities)] for r, v in readers.items()]
    tests = []
    for key, title in (("random_readers_cases", "random readers, random cases"),
                       ("fixed_readers", "fixed readers, random cases"),
                       ("fixed_cases", "random readers, fixed cases")):
        test = result.get(key)
        if not test:
            continue
        stat = (f"χ² = {fmt(test['chi2'])} ({test['df']} df)" if key == "fixed_readers"
                else f"F = {fmt(test['f'])} on ({fmt(test['df1'], 0)}, {fmt(test['df2'], 2)}) df")
        for d in test["differences"]:
            tests.append([title, f"{d['modality_a']} − {d['modality_b']}", fmt(d["diff"], 4),
                          f"({fmt(d['lo'], 4)}, {fmt(d['hi'], 4)})", stat, fmt_p(test["p"])])
    comp = result["variance_components"]
    ai = result.get("ai")
    who = ""
    if ai:
        rows = [[c["modality"], fmt(c["readers_auc"]), fmt(c["ai_auc"]), fmt(c["diff"], 4),
                 f"({fmt(c['lo'], 4)}, {fmt(c['hi'], 4)})", fmt(c["df"], 2), fmt_p(c["p"])] for c in ai["comparisons"]]
        who = (f"<h4>The readers against the model</h4><p class='note'>The model ({e(ai['model'])}, task "
               f"{e(ai['task'])}; scores from {e(ai['from'])}) has AUC {fmt(ai['auc'])} ({fmt(ai['lo'])}–"
               f"{fmt(ai['hi'])}). Each modality's readers' mean AUC against it: the readers a random sample, the "
               "model fixed (a two-modality OR analysis of its own).</p>"
               + table(["Modality", "Readers' mean AUC", "Model AUC", "Difference", f"{pct} CI", "df", "p"], rows))
    return (f"<h2 id='reader-study'>Reader study</h2><p class='note'>Obuchowski–Rockette analysis with Hillis's "
            f"degrees of freedom of {e(result['source'])}: {len(result['readers'])} readers, "
            f"{len(modalities)} modalities, {result['n_cases']} cases ({result['n_diseased']} diseased)"
            + (f", {result['n_patients']} patients (the sampling unit)" if result.get("n_patients") else "")
            + f"; covariance of the reader AUCs by {e(result['cov_method'])}; {pct} CIs.</p>"
            + "<h4>AUC per modality (mean over readers)</h4>"
            + table(["Modality", f"AUC ({pct} CI, random readers and cases)", "df"], auc_rows)
            + "<h4>Each reader's AUC</h4>" + table(["Reader", *modalities], reader_rows)
            + img(plot_reader_aucs(result), "each reader's AUC per modality")
            + img(plot_reader_rocs(result), "each reader's ROC curve per modality")
            + "<h4>Modality differences</h4>"
            + table(["Analysis", "Difference", "AUC difference", f"{pct} CI", "Test", "p"], tests)
            + "<h4>Variance components</h4>"
            + table(["Var", "Cov1", "Cov2", "Cov3", "MS(T)", "MS(T:R)"],
                    [[f"{comp[k]:.7g}" for k in ("var", "cov1", "cov2", "cov3", "ms_t", "ms_tr")]]) + who)


def write_reader_study(result: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    """reader_study.json and a self-contained reader_study.html into ``out``."""
    from html import escape as e

    from lnzoo.evaluation import jsonable
    from lnzoo.files import write_atomic
    from lnzoo.report.html import CSS

    out.mkdir(parents=True, exist_ok=True)
    json_path = write_atomic(out / READER_STUDY_JSON, json.dumps(jsonable(result), indent=2) + "\n")
    html = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>lnzoo reader study</title>"
            f"<style>{CSS}</style></head><body><main><h1>lnzoo reader study: {e(result['source'])}</h1>"
            f"{reader_study_section(result)}</main></body></html>")
    return json_path, write_atomic(out / READER_STUDY_HTML, html)
