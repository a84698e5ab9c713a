"""The audit's control model (``lnzoo audit --retrain-control``): the run's recipe trained again on its images with
the lesion blanked, on the run's own folds.

Every labelled image of the run's patients that has an ROI is written with its lesion box (grown by 10% a side)
replaced by the mirror image of the tissue beside it, exactly as the "outside the lesion" check blanks it
(:func:`lnzoo.audit.blank_lesion`); a manifest lists them with the rows' other cells (patient, centre, labels,
covariates, scanner...). The recipe, unchanged but for its data (this manifest; no test or external set) and its
folds (``cv.folds_file`` = the run's folds.csv, the same folds trained), is run into ``audit-control/run`` beside
audit.json. Its pooled held-out AUC is the control figure: a model that never saw a lesion should score near 0.5;
one that scores well found the label outside the node. Flagged when the AUC's 95% CI lies wholly above 0.6.

The control is opt-in because it costs one training of the recipe. A finished control run is reused by the next
audit (its manifest is rewritten and compared; a changed one starts it again); an interrupted one is resumed.
"""
from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CONTROL_DIR = "audit-control"


def _not_run(why: str) -> dict[str, Any]:
    from lnzoo.audit import _check

    return _check("control", "Control model (lesion blanked)", "not run", f"Not run: {why}")


def _unsupported(config) -> str | None:
    """Why this recipe cannot have a control model, or None."""
    views = list(config.data.views)
    if any("crop" in v or v == "roi" for v in views):
        return (f"the recipe's views {views} include the lesion's crop, which shows the lesion whatever the full "
                "image's blanking does.")
    if config.data.inputs:
        return (f"the recipe reads inputs beside the images ({', '.join(sorted(config.data.inputs))}), which "
                "describe the lesion without its pixels.")
    return None


def control(host, out: str | Path | None, say: Callable[[str], None],
            on_event: Callable[[Any], None] | None = None) -> Callable[[Any, Any], dict[str, Any]]:
    """The control model as one of :func:`lnzoo.audit.audit_run`'s further checks: trained into ``out`` (default:
    the run directory) / audit-control; ``on_event`` receives its training events."""
    def check(rd, held) -> dict[str, Any]:
        return control_check(rd, held.pool, held.tasks, host, Path(out) if out else rd.path, say, on_event)
    return check


def control_check(rd, pool: Sequence[tuple[Any, int, int]], tasks: Mapping[str, Any], host, out: Path,
                  say: Callable[[str], None], on_event: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Train the control model into ``out / audit-control`` and return the audit's "control" check. ``pool``: the
    run's labelled images (sample, fold, label); ``tasks``: the run's tasks, the main one first."""
    from lnzoo.audit import FLAG_AUC, _beyond, _check, _fmt
    from lnzoo.recipe import resolve
    from lnzoo.rundir import RunDir

    info = rd.read_json(rd.RUN)
    raw = rd.read_recipe()
    recipe = resolve(raw, host=host, source=info.get("recipe_source") or rd / rd.RECIPE)
    why = _unsupported(recipe.config)
    if why:
        return _not_run(why)
    folder = (Path(out) / CONTROL_DIR).resolve()
    manifest, written, skipped = _blanked_manifest(pool, recipe.config, tasks, folder, say)
    if written == 0:
        return _not_run("no image of the run has an ROI (a bbox or mask column, or the recipe's ROI), so there is "
                        "no lesion to blank.")
    data = {k: v for k, v in raw.get("data", {}).items() if k not in ("test", "external")}
    control_raw = {**raw, "name": f"{recipe.name}-control",
                   "data": {**data, "train": str(manifest)},
                   "cv": {**raw.get("cv", {}), "folds_file": str((rd / "folds.csv").resolve()),
                          "run_folds": sorted(rd.folds())}}
    control = resolve(control_raw, host=host, source=folder / "recipe.toml")
    control.quick = bool(info.get("quick"))
    run_dir = folder / "run"
    _train(control, run_dir, hashlib.sha256(manifest.read_bytes()).hexdigest(), host, say, on_event)
    auc = _held_out_auc(RunDir(run_dir), tasks)
    flag = _beyond(auc) and auc["auc"] is not None and auc["auc"] > 0.5
    sentence = (f"The recipe retrained on {written} image(s) with the lesion blanked"
                + (f" ({skipped} without an ROI left out)" if skipped else "")
                + f" scores a held-out AUC of {_fmt(auc)} on the run's folds.")
    sentence += (" The label can be learnt without ever seeing the lesion: something outside the node carries it."
                 if flag else f" Near chance (its CI reaches below {FLAG_AUC}): nothing outside the node was found "
                              "to carry the label.")
    return _check("control", "Control model (lesion blanked)", "flag" if flag else "ok", sentence,
                  control_auc=auc, images=written, left_out=skipped, run=str(run_dir))


def _blanked_manifest(pool, config, tasks, folder: Path, say) -> tuple[Path, int, int]:
    """The lesion-blanked copies of the ``pool`` images (sample, fold, label) and their manifest; (path, written,
    left out for having no ROI). Images already written by an earlier audit are kept."""
    from lnzoo.audit import _variants
    from lnzoo.data.samples import VIEW_COLUMN
    from lnzoo.files import csv_text, write_atomic
    from lnzoo.tasks import MISSING

    data = config.data
    view_cols = {v: VIEW_COLUMN.get(v, v) for v in data.views}
    label_cols = {t: (data.label_columns or {}).get(t, t) for t in tasks}
    patient_col = data.patient_column
    # the row's own image, ROI and label cells are replaced; every other cell (scanner, covariates...) travels
    replaced = {*view_cols.values(), *label_cols.values(), data.bbox_column, data.mask_column, patient_col,
                "center", "split"}
    images = folder / "images"
    rows, header, skipped = [], [*dict.fromkeys([*view_cols.values(), patient_col, "center", *label_cols.values()])], 0
    for i, (sample, _fold, _y) in enumerate(pool):
        target = images / f"{i:05d}"
        if target.is_dir():  # an earlier audit's copy of the same pool
            shutil.rmtree(target)
        variants = _variants(sample, target, kinds=("blanked",))
        if variants is None:
            skipped += 1
            continue
        blanked = variants[0]
        row = {c: v for c, v in sample.cells.items() if c not in replaced}
        header += [c for c in row if c not in header]
        row.update({col: str(blanked.views[view]) if blanked.views.get(view) else "" for view, col in view_cols.items()})
        row[patient_col], row["center"] = sample.patient, sample.center or ""
        for t, col in label_cols.items():
            idx = sample.labels.get(t, MISSING)
            row[col] = tasks[t].classes[idx] if idx != MISSING else ""
        rows.append(row)
        if (i + 1) % 50 == 0:
            say(f"control: {i + 1}/{len(pool)} image(s) blanked")
    manifest = folder / "manifest.csv"
    write_atomic(manifest, csv_text(header, rows))
    return manifest, len(rows), skipped


def _train(recipe, run_dir: Path, digest: str, host, say, on_event) -> None:
    """Train ``recipe`` into ``run_dir``: reuse a finished control run of the same manifest, resume an interrupted
    one, else start afresh. ``digest``: the manifest's sha256."""
    from lnzoo import events
    from lnzoo.pipeline import run
    from lnzoo.rundir import RunDir

    def tell(event) -> None:
        if isinstance(event, events.FoldStarted):
            say(f"control: fold {event.fold} training ({event.n_train} images)")
        elif isinstance(event, events.FoldEnded):
            auc = event.metrics.get("auc")
            say(f"control: fold {event.fold} done" + (f", held-out AUC {auc:.3f}" if isinstance(auc, float) else ""))
        if on_event:
            on_event(event)

    rd = RunDir(run_dir)
    stamp = run_dir.parent / "trained_on.txt"  # what the finished control run was trained on
    wanted = f"{digest}\n{recipe.to_toml()}"
    if rd.is_run():
        status = rd.status()
        if status == "finished" and stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted:
            say(f"control: reusing the finished control run {run_dir}")
            return
        if status == "interrupted":
            say(f"control: resuming the interrupted control run {run_dir}")
            run(recipe, run_dir, tell, host=host, report=False, resume=True)
            stamp.write_text(wanted, encoding="utf-8")
            return
        shutil.rmtree(run_dir)
    stamp.unlink(missing_ok=True)
    run(recipe, run_dir, tell, host=host, report=False)
    stamp.write_text(wanted, encoding="utf-8")


def _held_out_auc(rd, tasks: Mapping[str, Any]) -> dict[str, Any]:
    """The control run's pooled cross-validation AUC of the main task's positive class, with its DeLong CI."""
    from lnzoo.audit import auc_ci
    from lnzoo.evaluation.cases import task_cases

    main = next(iter(tasks.values()))  # the main task comes first
    _, rows = rd.read_predictions()
    cases = task_cases(rows, main.name, list(main.classes))
    if cases is None:
        return {"auc": None, "ci": None, "n": 0}
    cv = cases.part == "cv"
    pos = main.positive_index
    return auc_ci((cases.y[cv] == pos).astype(int).tolist(), np.asarray(cases.p[cv][:, pos], float).tolist())
