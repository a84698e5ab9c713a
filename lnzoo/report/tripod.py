"""A TRIPOD+AI (2024) checklist drafted from a finished run, with the CLAIM (2024) items that overlap.

Each item's status: ``filled`` (the run answers it, and says where: report.html#anchor, evaluation.json key,
MODEL_CARD.md), ``partly`` (what the run knows, and what the authors must add) or ``authors`` (only they can: funding,
ethics...). Figures are read from the run and the report's evaluation, never re-estimated. A draft for the authors.
"""
from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lnzoo.errors import UsageError
from lnzoo.evaluation import fmt, fmt_ci
from lnzoo.report.html import e, slug, table
from lnzoo.report.plots import part_label
from lnzoo.rundir import Columns, RunDir

__all__ = ["tripod_items", "tripod_checklist", "tripod_section", "TRIPOD_ITEMS", "STATUSES", "TRIPOD_MD"]

TRIPOD_MD = "tripod_ai.md"  # written beside report.html by lnzoo report

TRIPOD_CITATION = ("Collins GS, Moons KGM, Dhiman P, et al. TRIPOD+AI statement: updated guidance for reporting "
                   "clinical prediction models that use regression or machine learning methods. BMJ 2024;385:e078378. "
                   "doi:10.1136/bmj-2023-078378")
CLAIM_CITATION = ("Tejani AS, Klontzas ME, Gatti AA, et al. Checklist for Artificial Intelligence in Medical Imaging "
                  "(CLAIM): 2024 Update. Radiol Artif Intell 2024;6(4):e240300. doi:10.1148/ryai.240300")
FILLED, PARTLY, AUTHORS = "filled", "partly", "authors"
STATUSES = (FILLED, PARTLY, AUTHORS)
NOT_COMPUTED = "not computed"
INGEST_LOG = "ingest_log.csv"  # what lnzoo ingest leaves beside its manifest (lnzoo.ingest.dataset.LOG)

# TRIPOD+AI's 27 items with their sub-items, in the statement's order; the topics are our own short paraphrases
TRIPOD_ITEMS: tuple[tuple[str, str], ...] = (
    ("1", "Title: a prediction model study, population, outcome"), ("2", "Abstract (TRIPOD+AI for Abstracts)"),
    ("3a", "Background: clinical context and rationale"), ("3b", "Target population, intended use and users"),
    ("3c", "Known health inequalities between groups"), ("4", "Objectives: development, evaluation or both"),
    ("5a", "Data sources; rationale, representativeness"), ("5b", "Dates of data collection and follow-up"),
    ("6a", "Setting; number and location of centres"), ("6b", "Eligibility criteria"),
    ("6c", "Treatments received and their handling"), ("7", "Data preparation and quality checks"),
    ("8a", "Outcome: definition, how and when assessed"), ("8b", "Outcome assessors and their qualifications"),
    ("8c", "Blinding of outcome assessment"), ("9a", "Choice and pre-selection of predictors"),
    ("9b", "Predictors: definition, how and when measured"), ("9c", "Predictor assessors and their qualifications"),
    ("10", "Sample size and why it suffices"), ("11", "Missing data and their handling"),
    ("12a", "Use of the data: development and evaluation parts"), ("12b", "Handling of predictors (scaling etc.)"),
    ("12c", "Model type, building, tuning, internal validation"), ("12d", "Heterogeneity across centres"),
    ("12e", "Performance measures: discrimination, calibration, utility"), ("12f", "Model updating (recalibration)"),
    ("12g", "How predictions were computed for evaluation"), ("13", "Class imbalance: methods and recalibration"),
    ("14", "Fairness: approaches used"), ("15", "Model output; thresholds and how chosen"),
    ("16", "Development vs evaluation data: differences"), ("17", "Ethics approval and consent"),
    ("18a", "Funding"), ("18b", "Conflicts of interest"), ("18c", "Protocol"), ("18d", "Registration"),
    ("18e", "Data availability"), ("18f", "Code availability"), ("19", "Patient and public involvement"),
    ("20a", "Participant flow, with and without the outcome"), ("20b", "Characteristics per data source"),
    ("20c", "Evaluation data compared with development data"), ("21", "Participants and events per analysis"),
    ("22", "Full model specification and access"), ("23a", "Performance with CIs, including subgroups"),
    ("23b", "Heterogeneity of performance across centres"), ("24", "Results of model updating"),
    ("25", "Interpretation, including fairness"), ("26", "Limitations"),
    ("27a", "In practice: poor-quality or missing inputs"), ("27b", "In practice: user interaction, expertise"),
    ("27c", "Next steps for research"),
)


class _Run:
    """What the checklist is drafted from: the run's files, read once, and the evaluation the report computed."""

    def __init__(self, rd: RunDir, evaluation: Mapping[str, Any]):
        from lnzoo.report import _run_summary

        self.rd, self.ev, self.s = rd, evaluation, _run_summary(rd)
        self.recipe, self.run = rd.read_recipe(), rd.read_json(rd.RUN)
        self.data, self.train = self.recipe.get("data") or {}, self.recipe.get("train") or {}
        self.folds: dict[str, int] = {}
        with contextlib.suppress(UsageError):  # lenient, as the report's run summary is
            self.folds = rd.read_folds()
        _, self.rows = rd.read_predictions()
        self.records = {}
        for k in rd.folds():
            with contextlib.suppress(UsageError):  # an unreadable sidecar costs its temperatures, not the checklist
                self.records[k] = rd.record(k)
        self.main = self.s.get("main_task")
        self.tasks = sorted(evaluation.get("tasks", {}), key=lambda t: t != self.main)
        self.defs = next(iter(self.records.values())).tasks if self.records else {}
        self.fold_info = (rd.read_json(rd.METRICS).get("cross_validation") or {}).get("folds") or []
        parts = dict.fromkeys(p for t in self.tasks for p in self.level(t).get("parts", {}))
        self.others = [p for p in parts if p != "cv"]  # test, external: evaluated apart from the cross-validation
        self.phantom = "phantom" in str(self.s.get("data") or "").lower()
        self.views = list(self.data.get("views", ["full"]))  # [] for a model without images
        # from predictions.csv: task -> part -> class -> patients with an image of it; images (missing a view) per part
        seen: dict[str, dict[str, dict[str, set[str]]]] = {t: {} for t in self.tasks}
        # (read as the evaluation reads them: a row without a part is "all", without a patient its own patient)
        part = [r.get("part") or "all" for r in self.rows]
        for i, r in enumerate(self.rows):
            for t in (t for t in self.tasks if r.get(Columns.true(t))):
                seen[t].setdefault(part[i], {}).setdefault(r[Columns.true(t)], set()).add(r.get("patient") or f"row{i}")
        self.patients = {t: {p: {c: len(x) for c, x in by.items()} for p, by in ps.items()} for t, ps in seen.items()}
        self.images = Counter(part)
        self.no_view = Counter(p for p, r in zip(part, self.rows)
                               if len((r.get("views_used") or "").split("+")) < len(self.views))

    def level(self, task: str) -> dict[str, Any]:
        return (self.ev["tasks"][task].get("levels") or {}).get("image") or {}

    def binary(self, task: str) -> bool:
        return bool(self.ev["tasks"][task].get("binary"))

    def sources(self) -> tuple[str, list[str]]:
        """(the recipe's data sources as text, those that came through lnzoo ingest: its log beside the manifest)."""
        text, ingested = [], []
        for part in ("train", "test", "external"):
            given = self.data.get(part)
            paths = [Path(i.get("path", "") if isinstance(i, dict) else str(i))
                     for i in (given if isinstance(given, list) else [given] if given else [])]
            text += [f"{part}: {', '.join(map(str, paths))}"] if paths else []
            ingested += [str(p) for p in paths if (p / INGEST_LOG).is_file() or (p.parent / INGEST_LOG).is_file()]
        return "; ".join(text), ingested


# -- figures as text ------------------------------------------------------------------------------------------------
def _kv(counts: Mapping[str, Any] | None, label=str) -> str:
    """"a 3, b 4" (``label`` names each key)."""
    return ", ".join(f"{label(k)} {v}" for k, v in (counts or {}).items())


def _counts(b: Mapping[str, Any]) -> str:
    return f"{b.get('n')} images of {b.get('n_patients')} patients ({_kv(b.get('class_counts'))})"


def _auc(b: Mapping[str, Any]) -> str:
    boot, d = (b.get("ci") or {}).get("auc") or {}, b.get("auc_delong")
    if d:
        return (f"AUC {fmt(d.get('auc'))} (95% CI DeLong {fmt(d.get('lo'))}–{fmt(d.get('hi'))}"
                + (f", patient bootstrap {fmt(boot.get('lo'))}–{fmt(boot.get('hi'))})" if boot else ")"))
    return f"macro one-vs-rest AUC {fmt_ci((b.get('metrics') or {}).get('auc'), boot)} (patient bootstrap 95% CI)"


def _operating(level: Mapping[str, Any]) -> str:
    ops = level.get("operating_points") or {}
    rule = (ops.get("rules") or {}).get("youden")
    if ops.get("note") or not rule or "error" in rule:
        return "operating point: not chosen (" + str(ops.get("note") or (rule or {}).get("error") or "n/a") + ")"
    cf = rule.get("cv_cross_fitted")  # the honest CV estimate: each fold's threshold chosen on the other folds
    shown = ([("CV cross-fitted", cf)] if cf else []) + [
        (part_label(p) + (" (optimistic: it chose the threshold)" if r.get("optimistic") else ""), r)
        for p, r in (rule.get("parts") or {}).items() if p != "cv" or not cf]
    return "; ".join([f"at the served operating point (Youden threshold {fmt(rule['threshold'], 4)} on the "
                      f"{ops.get('space', 'raw')} probabilities, chosen on the pooled CV)"] + [
        f"{name}: sensitivity {fmt_ci(r.get('sensitivity'), (r.get('ci') or {}).get('sensitivity'))}, specificity "
        f"{fmt_ci(r.get('specificity'), (r.get('ci') or {}).get('specificity'))}" for name, r in shown])


def _decision_curve(run: _Run, task: str) -> str:
    dc = run.level(task).get("decision_curve")
    if not dc:
        return f"decision curve {NOT_COMPUTED}" + ("" if run.binary(task) else " (binary tasks only)")
    out = []
    for part, d in dc.items():
        at, useful = d.get("at_operating_point"), d.get("useful_range")
        out.append(f"{part_label(part)} (n {d.get('n')}, prevalence {fmt(d.get('prevalence'))}, {d.get('space')} "
                   "probabilities): " + (f"net benefit at the operating threshold {fmt(at['threshold'])}: model "
                                         f"{fmt(at['model'])}, treat-all {fmt(at['treat_all'])}, treat-none 0"
                                         if at else "no operating threshold")
                   + (f"; model above treat-all and treat-none for thresholds {fmt(useful[0], 2)}–{fmt(useful[1], 2)}"
                      if useful else "; model above treat-all and treat-none at no threshold"))
    return f"decision curve (evaluation.json tasks.{task}.levels.image.decision_curve): " + "; ".join(out)


def _group(value: str, g: Mapping[str, Any]) -> str:
    auc = g.get("auc") or {}
    return (f"{value} (n {g.get('n')}, {g.get('n_patients')} patients, prevalence {fmt(g.get('prevalence'))}" + (
        f": {g['too_few']})" if g.get("too_few") else f", AUC {fmt_ci(auc.get('auc'), auc)}, sensitivity "
        f"{fmt(g.get('sensitivity'))}, specificity {fmt(g.get('specificity'))}, calibration slope "
        f"{fmt(g.get('calibration_slope'), 2)})"))


def _subgroups(run: _Run, task: str) -> str:
    sg = run.level(task).get("subgroups")
    if not sg:
        return f"subgroups {NOT_COMPUTED}" + ("" if run.data.get("subgroups") else " (no data.subgroups named)")
    # either {column: entry} or {part: {column: entry}}
    flat = all(isinstance(v, Mapping) and "groups" in v for v in sg.values())
    out = []
    for part, cols in ({None: sg} if flat else sg).items():
        for col, entry in cols.items():
            gap = entry.get("largest_gap")
            out.append((f"{part_label(part)}, " if part else "") + f"{col}: "
                       + "; ".join(_group(v, g) for v, g in (entry.get("groups") or {}).items())
                       + (f"; largest AUC gap {fmt(gap.get('gap'))} between {' and '.join(map(str, gap['between']))}"
                          if gap else ""))
    return f"subgroups (evaluation.json tasks.{task}.levels.image.subgroups): " + " / ".join(out)


# -- the items --------------------------------------------------------------------------------------------------------
def _tripod(r: _Run) -> dict[str, tuple[str, str]]:
    """Item -> (status, text) for the items the run can say something about; the others are the authors' alone."""
    from lnzoo.report import what_ran

    s, d, main, cv, ev_set = r.s, r.data, r.main, r.recipe.get("cv") or {}, r.ev.get("settings") or {}
    where = ", ".join(f"report.html#task-{slug(t)}" for t in r.tasks)
    data_txt = (f"Data: {s.get('data') or 'n/a'}; sources: {r.sources()[0] or 'the built-in phantom (data.phantom)'}"
                f"; data digest {r.run.get('data_sha256', 'n/a')}." + (" Synthetic, not clinical." if r.phantom else ""))
    tasks_txt = "; ".join(f"{t}: classes {', '.join(r.ev['tasks'][t]['classes'])}, positive "
                          f"{r.ev['tasks'][t]['positive'] or 'none (multi-class)'}, label column "
                          f"{(d.get('label_columns') or {}).get(t, t)}" + (f" ({r.defs[t].description})" if t in r.defs
                                                                         and r.defs[t].description else "")
                          for t in r.tasks)
    n_folds, run_folds = s.get("folds_total") or cv.get("folds"), s.get("folds_run") or []
    pool = sum(int((r.fold_info or [{}])[0].get(k) or 0) for k in ("n_train", "n_validation", "n_held_out"))
    only_train = sum(1 for v in r.folds.values() if v < 0)
    sample = (f"{len(r.folds)} patients in the cross-validation pool (folds.csv)"
              + (f", {only_train} of them training-only" if only_train else "") + (f", {pool} images" if pool else "")
              + f"; patients per fold: {_kv(s.get('patients_per_fold'), lambda k: f'fold {k}:') or 'n/a'}.")
    events = "Events: " + " / ".join(f"{t}, {part_label(p)}: {_counts(b)}; patients per class "
                                     f"{_kv(r.patients[t].get(p)) or 'n/a'}" for t in r.tasks
                                     for p, b in r.level(t).get("parts", {}).items()) + "."
    fold_txt = [f"fold {f.get('fold')}: train {f.get('n_train')}, inner validation {f.get('n_validation')}, held-out "
                f"{f.get('n_held_out')} images, best epoch {f.get('best_epoch')}" for f in r.fold_info]
    fold_txt += [f"{t}, fold {k}: {_counts(b)}" for t in r.tasks for k, b in (r.level(t).get("folds") or {}).items()]
    perf, calib, dca, subs, cen, centres = [], [], [], [], [], {}
    for t in r.tasks:
        lv = r.level(t)
        for p, per in (lv.get("centers") or {}).items():
            centres[p] = list(dict.fromkeys([*centres.get(p, []), *per]))
        for p, b in lv.get("parts", {}).items():
            m = b.get("metrics") or {}
            perf.append(f"{t}, {part_label(p)}: {_auc(b)}; balanced accuracy "
                        f"{fmt_ci(m.get('balanced_accuracy'), (b.get('ci') or {}).get('balanced_accuracy'))}")
            calib.append(f"{t}, {part_label(p)}: ECE {fmt(m.get('ece'))} raw, {fmt(m.get('ece_calibrated'))} "
                         f"temperature-scaled; Brier {fmt(m.get('brier'))}")
        perf += [f"{t} {_operating(lv)}"] if r.binary(t) else []
        dca.append(f"{t}: {_decision_curve(r, t)}")
        subs.append(f"{t}: {_subgroups(r, t)}")
        cen += [f"{t}, {part_label(p)}, centre {c}: {_auc(b)}, {b.get('n')} images"
                for p, per in (lv.get("centers") or {}).items() for c, b in per.items()]
    multi = max((len(v) for v in centres.values()), default=0) > 1
    centre_txt = "; ".join(f"{part_label(p)}: {', '.join(v)}" for p, v in centres.items()) or "no centre column"
    centre_res = ("; ".join(cen) + f" ({where}, Per-center results; evaluation.json tasks.T.levels.image.centers)"
                  if multi else f"Not examined: one centre or none recorded ({centre_txt}). Authors: the centres.")
    inputs = [f"{n} ({(spec or {}).get('name')})" for n, spec in (d.get("inputs") or {}).items()]
    covs = list(d.get("covariates") or [])
    predictors = f"Image views: {', '.join(r.views) or 'none'}; other inputs: {', '.join(inputs + covs) or 'none'}."
    prep = (f"Images resized to {d.get('image_size')} px ({d.get('resize')}), {d.get('normalize')} normalisation"
            + (f"; the 'roi' view is cut by {d.get('bbox_column')}/{d.get('mask_column')} with margin "
               f"{d.get('roi_margin')}, empty ROI: {d.get('empty_roi')}" if "roi" in r.views else "")
            + ("; burned-in calipers and text masked (data.mask_marks)" if d.get("mask_marks") else "")
            + (". Covariates: numeric standardised on the training part, categorical one-hot, each with a missing "
               "indicator" if covs else "") + ".")
    checks = ("Checks passed before training (as lnzoo validate): every row and image file, duplicates, identical "
              f"images under two patients (data.identical_images: {d.get('identical_images')}), no patient in two "
              "parts, every main-task class in every fold; " + (
                  "bad rows left out (data.skip_bad_rows; the run's log lists them)." if d.get("skip_bad_rows")
                  else "none left out (data.skip_bad_rows = false)."))
    unl = "; ".join(f"{t}: {_kv(u, part_label)}" for t in r.tasks if (u := {  # all images of a part minus labelled
        p: r.images[p] - b["n"] for p, b in r.level(t).get("parts", {}).items() if r.images[p] > b["n"]}))
    missing = (f"Images without a task's label, masked out of that task's loss (missing values: "
               f"{', '.join(map(str, d.get('missing_labels') or [])) or 'empty cells'}): {unl or 'none'}. Images "
               f"missing a view: {_kv(r.no_view, part_label) or 'none'} (view dropout "
               f"{r.train.get('view_dropout', 0.0)})."
               + (" A missing covariate (empty, NaN, data.missing_covariates) gets a missing indicator; nothing is "
                  "imputed." if covs else ""))
    model = r.recipe.get("model") or {}
    init = (f"backbone weights from {model['init_from']}" if model.get("init_from") else
            f"pretrained = {model['backbone']['pretrained']}" if "pretrained" in (model.get("backbone") or {})
            else "the backbone's default initialisation")
    comps = ", ".join(f"{c.get('kind')} {c.get('name')} ({c.get('distribution')} {c.get('version')})"
                      for c in r.run.get("components") or [] if c.get("kind") != "task") or "n/a"
    temps = "; ".join(f"fold {k}: " + ", ".join(f"{t} {fmt(v)}" for t, v in rec.temperature.items() if v)
                      for k, rec in r.records.items() if any(rec.temperature.values()))
    git = r.run.get("git_commit") or r.run.get("git") or (s.get("versions") or {}).get("git")
    git = (git.get("commit") if isinstance(git, dict) else git) if git else None
    versions = ", ".join(f"{k} {v}" for k, v in (s.get("versions") or {}).items()) or "n/a"
    limits = [*(s.get("warnings") or []), *(["a --quick run (smoke-test settings)"] if s.get("quick") else []),
              *(["synthetic phantom data"] if r.phantom else []),
              *([f"only {len(run_folds)} of {n_folds} folds were run"] if n_folds and len(run_folds) < n_folds else [])]
    partition = (f"Patient-grouped {n_folds}-fold cross-validation stratified on the main task {main}, seed "
                 f"{r.recipe.get('seed')}" + (f", folds fixed by {cv['folds_file']}" if cv.get("folds_file") else "")
                 + f"; folds run: {', '.join(map(str, run_folds)) or 'n/a'}; each fold's training patients lose "
                 f"{fmt(float(r.train.get('val_fraction', 0.15)), 2)} to an inner validation part (epoch, temperature). "
                 + (f"{', '.join(map(part_label, r.others))}: the mean of the fold models' probabilities."
                    if r.others else "No test or external set: internal validation only.")
                 + " Where: report.html#run-summary, folds.csv.")
    compare = events if r.others else "No separate evaluation data: internal cross-validation only."
    return {
        "3b": (PARTLY, (f"Recipe description: {s['description']}. " if s.get("description") else "")
               + "MODEL_CARD.md (lnzoo export) states research use only. Authors: population, place in care, users."),
        "4": (PARTLY, "Development with internal validation by cross-validation" + (
            f", evaluated on {', '.join(map(part_label, r.others))} data" if r.others else "") + ". Authors: objectives."),
        "5a": (PARTLY, f"{data_txt} Authors: study design, rationale, representativeness."),
        "6a": (PARTLY, f"Centres in the predictions: {centre_txt}. Authors: setting and location of each centre."),
        "6b": (PARTLY, f"{checks} Authors: the clinical inclusion and exclusion criteria."),
        "7": (PARTLY, f"{prep} {checks} Authors: whether preparation was the same across groups."),
        "8a": (PARTLY, f"Tasks: {tasks_txt}. Authors: reference standard, when and how it was assessed."),
        "9a": (PARTLY, f"{predictors} The network learns from every pixel of each view; lnzoo pre-selects no "
                       f"predictor. Authors: why these inputs."),
        "9b": (PARTLY, f"{predictors} {prep} Authors: scanners, acquisition protocol, who acquired the images and when."),
        "10": (PARTLY, f"{sample} {events} Authors: how the size was arrived at and why it suffices (lnzoo does no "
                       "sample size calculation)."),
        "11": (PARTLY, f"{missing} Authors: why data are missing."),
        "12a": (FILLED, partition),
        "12b": (FILLED, f"{prep} Augmentation and training: {s.get('settings')}."),
        "12c": (PARTLY, f"What ran: {what_ran(s.get('ran') or {})}. Components: {comps}; {init}. Training: "
                        f"{s.get('settings')}. No hyperparameter search inside the run; internal validation: item "
                        f"12a. Authors: rationale for the model."),
        "12d": (FILLED if multi else PARTLY, centre_res),
        "12e": (FILLED, f"Discrimination: AUC with DeLong and patient-bootstrap 95% CIs ({ev_set.get('n_boot')} "
                        "resamples of whole patients), ROC curves; accuracy, balanced accuracy, sensitivity, "
                        "specificity, PPV, NPV; calibration: ECE, Brier, log loss, reliability diagram; confusion "
                        f"matrices; clinical utility: {'; '.join(dca)}. Where: {where}; evaluation.json."),
        "12f": (FILLED, "Temperature scaling of each fold model on its inner validation part: "
                        f"{temps or 'none fitted, the raw probabilities are served'}. No other updating."),
        "12g": (FILLED, "Each fold model predicts only its held-out patients (predictions.csv); test/external: the "
                        "mean of the fold models; lnzoo predict and serve do the same from the checkpoints."),
        "13": (FILLED, f"Main-task class balance in training (data.sampling): {d.get('sampling')}; loss class weighting: "
                       + (", ".join(f"{t} {r.defs[t].class_weighting}" for t in r.tasks if t in r.defs) or "n/a")
                       + "; then temperature scaling (item 12f); thresholds: item 15."),
        "14": (PARTLY, f"{'; '.join(subs)}. Confounder balancing (data.balance_by): {d.get('balance_by') or 'none'}."
                       + (" Shortcut audit: report.html#audit." if (r.rd / "audit.json").is_file() else "")
                       + " Authors: fairness approach and rationale."),
        "15": (FILLED, "Class probabilities of each fold model, raw (p_*) and temperature-scaled (cal_*, what calls "
                       f"are made on), in predictions.csv. Thresholds ({', '.join(ev_set.get('threshold_rules') or [])}"
                       ") chosen on the pooled CV, applied unchanged to test/external, also cross-fitted on the CV "
                       f"({where}, Operating points; evaluation.json tasks.T.levels.image.operating_points)."),
        "16": (PARTLY, f"{compare} Authors: differences in setting, eligibility, outcome, predictors."),
        "18f": (PARTLY, f"Trained with {versions}" + (f"; git commit {git}" if git else "; no git commit in run.json")
                        + f". Reproduce: {' or '.join(s.get('reproduce') or [])}. Authors: where the code is available."),
        "20a": (PARTLY, f"{sample} {events} Authors: a flow diagram with the exclusions made before lnzoo."),
        "20b": (PARTLY, f"{events} {missing} Authors: demographics, key dates, per-source characteristics."),
        "20c": (PARTLY if r.others else AUTHORS, f"{compare} Authors: distributions of predictors and demographics."),
        "21": (FILLED, "; ".join(fold_txt) + " (metrics.json cross_validation.folds; evaluation.json "
                                             "tasks.T.levels.image.folds)."),
        "22": (PARTLY, "fold*/best.safetensors + JSON sidecar (recipe, preprocessing, temperatures); `lnzoo export RUN "
                       "--out DIR` writes a bundle with config.json and MODEL_CARD.md. Authors: access and licence."),
        "23a": (FILLED, " / ".join(perf + subs + dca) + f". Where: {where}; evaluation.json."),
        "23b": (FILLED if multi else PARTLY, centre_res),
        "24": (FILLED, "Calibration before/after temperature scaling: " + "; ".join(calib)
                       + f" (reliability diagrams: {where}; evaluation.json tasks.T.levels.image.reliability)."),
        "26": (PARTLY, f"Known to lnzoo: {'; '.join(limits) or 'nothing flagged'}. Authors: the study's limitations."),
        "27a": (PARTLY, f"Inputs: {', '.join(r.views + inputs + covs)}, prepared as stored with the model"
                        + ("; trained with view dropout" if r.train.get("view_dropout") else "")
                        + ". Authors: how missing or poor inputs are handled in practice."),
    }


def _claim(r: _Run, t: Mapping[str, tuple[str, str]]) -> list[tuple[str, str, str, str]]:
    """(CLAIM topic, status, text, related TRIPOD+AI items)."""
    where = ", ".join(f"report.html#task-{slug(x)}" for x in r.tasks)
    ing = r.sources()[1]
    deid = ((PARTLY, f"Through lnzoo ingest ({', '.join(ing)}): pseudonymised identifiers and allow-listed header "
                     "facts only (lnzoo.ingest.deid), ingest_log.csv beside the manifest. Authors: any earlier steps.")
            if ing else (FILLED, "Synthetic phantom: no patient data.") if r.phantom else
            (AUTHORS, "The data did not come through lnzoo ingest: the authors describe de-identification."))
    index = r.rd / r.rd.EXPLAIN / "explain.csv"
    shown = max(0, len(index.read_text(encoding="utf-8").splitlines()) - 1) if index.is_file() else 0
    flagged = (r.rd.read_json("audit.json").get("flagged") or []) if (r.rd / "audit.json").is_file() else None
    fail = (f"Grad-CAM: {shown} examples ({len(list(index.parent.glob('wrong_*.png')))} misclassified) in explain/ "
            "(report.html#grad-cam)" if shown else "Grad-CAM: no examples (lnzoo explain adds them)") + "; shortcut " + (
        f"audit: {len(flagged)} check(s) flagged {', '.join(flagged)} (report.html#audit)" if flagged is not None
        else "audit: not run (lnzoo audit RUN)") + "; confusion matrices: " + where + "."
    ext = [f"{x}: {_auc(r.level(x)['parts']['external'])}" for x in r.tasks if "external" in r.level(x).get("parts", {})]
    settings = r.ev.get("settings") or {}
    return [
        ("Data sources", *t["5a"], "5a"), ("De-identification", *deid, "-"), ("Data preprocessing", *t["7"], "7"),
        ("Missing data", *t["11"], "11"),
        ("Reference standard: definition, annotators, tools, variability", PARTLY,
         f"{t['8a'][1]} Authors: annotators, annotation tools, inter-rater variability.", "8a, 8b"),
        ("Data partitions: assignment, proportions, level of disjointness", FILLED,
         "Disjoint at the patient level (a patient in two parts, or identical images under two patients, is refused "
         f"or grouped). {t['12a'][1]}", "12a"),
        ("Model, software, initialisation, training, final model selection, ensembling", t["12c"][0],
         f"{t['12c'][1]} One model per fold kept; test/external predictions average them.", "12c"),
        ("Performance metrics", *t["12e"], "12e"),
        ("Statistical measures of uncertainty and tests", FILLED,
         f"95% CIs: {settings.get('ci_method')}; AUC also {settings.get('auc_ci_method')}. Two runs on the same "
         "cases: lnzoo compare (paired DeLong, bootstrap, McNemar).", "12e, 23a"),
        ("Robustness and subgroup analysis", *t["14"], "14, 23a"),
        ("Failure analysis and explainability", FILLED if shown else PARTLY, fail, "-"),
        ("External testing", FILLED if ext else AUTHORS,
         "External set: " + "; ".join(ext) if ext else "No external set in this run.", "16, 23a"),
    ]


def tripod_items(rd: RunDir | str | Path, evaluation: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
    """Every TRIPOD+AI item (guide "TRIPOD+AI"), then the CLAIM topics that overlap (guide "CLAIM"): dicts of guide,
    item, topic, status, text. ``evaluation``: what evaluate_predictions returned (default: the run's evaluation.json)."""
    rd = rd if isinstance(rd, RunDir) else RunDir(rd)
    run = _Run(rd, evaluation if evaluation is not None else rd.read_json(rd.EVALUATION))
    known = _tripod(run)
    items = [{"guide": "TRIPOD+AI", "item": i, "topic": topic, "status": known.get(i, (AUTHORS, ""))[0],
              "text": known.get(i, (AUTHORS, ""))[1] or "Only the authors can supply this."} for i, topic in TRIPOD_ITEMS]
    return items + [{"guide": "CLAIM", "item": rel, "topic": topic, "status": status, "text": text}
                    for topic, status, text, rel in _claim(run, known)]


# -- Markdown and HTML ------------------------------------------------------------------------------------------------
def _md(text: Any) -> str:
    """One table cell: on one line, its pipes escaped, no raw HTML."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def tripod_checklist(rd: RunDir | str | Path, evaluation: Mapping[str, Any] | None = None) -> str:
    """The Markdown of ``tripod_ai.md``: the citations, the draft warning, the TRIPOD+AI and the CLAIM tables."""
    from lnzoo import __version__

    rd = rd if isinstance(rd, RunDir) else RunDir(rd)
    items = tripod_items(rd, evaluation)
    n = {s: sum(i["guide"] == "TRIPOD+AI" and i["status"] == s for i in items) for s in STATUSES}
    head = ["| Item | Topic | Status | What lnzoo reports, and where |", "|---|---|---|---|"]
    claim_head = ["| TRIPOD+AI item | CLAIM topic | Status | What lnzoo reports, and where |", head[1]]
    rows = {g: [f"| {_md(i['item'])} | {_md(i['topic'])} | {i['status']} | {_md(i['text'])} |" for i in items
                if i["guide"] == g] for g in ("TRIPOD+AI", "CLAIM")}
    out = [f"# TRIPOD+AI checklist (DRAFT) for the run {_md(rd.path.name)}", "",
           f"> **DRAFT filled by software** (lnzoo {__version__}, from `{_md(rd)}`). The authors must check, correct "
           "and complete every item before it is used.", "",
           f"- TRIPOD+AI: {TRIPOD_CITATION}", f"- CLAIM 2024: {CLAIM_CITATION}", "",
           "Status: **filled**: the run answers it and says where; **partly**: what the run knows, and what the authors "
           "must add; **authors**: only the authors can supply it. Topics are short paraphrases of the statements. "
           f"TRIPOD+AI items: {n[FILLED]} filled, {n[PARTLY]} partly, {n[AUTHORS]} for the authors.", "",
           "## TRIPOD+AI (2024)", "", *head, *rows["TRIPOD+AI"], "", "## CLAIM (2024) items that overlap", "",
           "CLAIM topics in our words (check them against the published 2024 checklist), with the TRIPOD+AI items "
           "they share.", "", *claim_head, *rows["CLAIM"]]
    return "\n".join(out) + "\n"


def _parse(markdown: str) -> list[dict[str, str]]:
    """The items back from :func:`tripod_checklist`'s Markdown."""
    items, guide = [], None
    for line in markdown.splitlines():
        if line.startswith("## "):
            guide = "CLAIM" if "CLAIM" in line else "TRIPOD+AI"
        elif guide and line.startswith("| "):
            c = [x.strip().replace("\\|", "|").replace("&lt;", "<").replace("&gt;", ">")
                 for x in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if len(c) == 4 and c[2] != "Status":  # not the header
                items.append({"guide": guide, **dict(zip(("item", "topic", "status", "text"), c))})
    return items


def tripod_section(markdown_or_items: str | Sequence[Mapping[str, str]]) -> str:
    """The checklist as the report's HTML section (id ``tripod``), from tripod_checklist's Markdown or from
    tripod_items; every text is escaped."""
    items = _parse(markdown_or_items) if isinstance(markdown_or_items, str) else list(markdown_or_items)
    head = ["Item", "Topic", "Status", "What lnzoo reports, and where"]

    def rows(guide: str) -> list[list[str]]:
        return [[i["item"], i["topic"], i["status"], i["text"]] for i in items if i["guide"] == guide]

    return ("<h2 id='tripod'>Reporting checklist: TRIPOD+AI and CLAIM (draft)</h2>"
            "<p class='warn'><b>Draft filled by software.</b> The authors must check, correct and complete every "
            "item; those marked <i>authors</i> only they can supply. The same checklist is in tripod_ai.md.</p>"
            f"<p class='note'>{e(TRIPOD_CITATION)}<br>{e(CLAIM_CITATION)}</p><h3>TRIPOD+AI (2024)</h3>"
            + table(head, rows("TRIPOD+AI")) + "<h3>CLAIM (2024) items that overlap</h3>"
            + table(["TRIPOD+AI item", *head[1:]], rows("CLAIM")))
