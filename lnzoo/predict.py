"""Inference: a checkpoint, a run (its fold models averaged), an ensemble of runs, and the stage cascade.

An ensemble averages class probabilities over its members (CV folds of one run, or several runs
with other backbones); every member reads the images with its own stored preprocessing.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lnzoo.data.samples import VIEW_COLUMN, Sample, apply_empty_roi, data_rows, row_views
from lnzoo.data.tables import csv_reader, delimiter_name
from lnzoo.errors import DataError, UsageError
from lnzoo.rundir import Columns


class Engine(Protocol):
    """One loaded model, whichever engine runs it (:class:`lnzoo.inference.Predictor`: torch;
    :class:`lnzoo.onnx_engine.OnnxPredictor`: ONNX Runtime): its record, and probabilities per task for samples
    encoded by :mod:`lnzoo.data.encode`. Ensembles, the cascade and the server see only this."""

    source: Path | None

    @property
    def record(self) -> Any: ...                  # lnzoo.record.ModelRecord

    @property
    def tasks(self) -> Mapping[str, Any]: ...     # name -> lnzoo.tasks.Task

    @property
    def views(self) -> list[str]: ...

    @property
    def main(self) -> str: ...

    @property
    def temperature(self) -> Mapping[str, float | None]: ...

    @property
    def inputs(self) -> Any: ...                  # lnzoo.inputs.Inputs, or None

    def predict(self, samples: Sequence[Sample], batch_size: int = 32) -> Any: ...  # .proba: {task: (n, K)}


class Ensemble:
    """Averages the calibrated (and the raw) probabilities of several models per task: each an :class:`Engine`."""

    def __init__(self, sources: Sequence[str | Path], host=None, engine: str = "torch"):
        """``host``: the plugins the models' components come from (default: those installed). A source is a run
        directory, a bundle, a checkpoint or ``zoo:NAME`` (the zoo's bundle, pulled on first use)."""
        from lnzoo.bundle import checkpoints_of
        from lnzoo.plugins import get_host
        from lnzoo.zoo import resolve_source

        host = host if host is not None else get_host()
        sources = [resolve_source(s) for s in sources]  # the one place --model sources are opened
        if engine == "onnx":  # ONNX Runtime runs the models: torch is not imported for them
            from lnzoo.onnx_engine import OnnxPredictor
            self.members = [OnnxPredictor.load(c, host) for s in sources for c in checkpoints_of(s)]
        elif engine == "torch":
            from lnzoo.inference import load
            self.members = [load(c, host) for s in sources for c in checkpoints_of(s)]
        else:
            raise UsageError(f"--engine {engine!r}: choose torch or onnx")
        self._settle(sources)

    @classmethod
    def of(cls, members: Sequence[Any], sources: Sequence[str | Path]) -> "Ensemble":
        """An ensemble of models already loaded (a server's, or one Predictor): nothing is loaded again."""
        ens = cls.__new__(cls)
        ens.members = list(members)
        ens._settle(sources)
        return ens

    def _settle(self, sources: Sequence[str | Path]) -> None:
        if not self.members:
            raise UsageError("an ensemble needs at least one checkpoint")
        self.sources = [Path(s) for s in sources]
        self.tasks: dict[str, list[str]] = {}
        for m in self.members:
            for name, task in m.tasks.items():
                classes = list(task.classes)
                if self.tasks.setdefault(name, classes) != classes:
                    raise UsageError(f"{m.source}: task {name!r} has classes {classes}, another member "
                                     f"{self.tasks[name]}; they cannot be averaged")
        self.main = self.members[0].main
        self.main_task = self.members[0].tasks[self.main]
        self.views = list(self.members[0].views)

    @functools.cached_property
    def info(self) -> dict[str, Any]:
        """What the model says about itself (:func:`lnzoo.bundle.served_info`): classes, thresholds, metrics."""
        from lnzoo.bundle import served_info
        return served_info(self.sources)

    def operating_point(self, task: str):
        """How this model calls ``task`` (:class:`lnzoo.decision.OperatingPoint`): its stored threshold."""
        from lnzoo.decision import OperatingPoint

        definition = (self.info.get("tasks") or {}).get(task) or {}
        return OperatingPoint.from_dict(self.tasks[task], definition.get("positive"),
                                        (self.info.get("thresholds") or {}).get(task))

    def calls(self, raw: Mapping[str, np.ndarray], calibrated: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
        """Per task, each case's call at the stored operating point: the one rule ``lnzoo predict``, the cascade,
        ``lnzoo serve``, ``lnzoo explain`` and the model card decide by."""
        return {t: self.operating_point(t).calls(raw[t], calibrated[t]) for t in calibrated}

    def predict(self, items: Sequence[Any], calibrated: bool = False
                ) -> tuple[dict[str, np.ndarray], list[dict[str, Path | None]]]:
        """Probabilities per task (members averaged) for each item (a path, or one path per view); with
        ``calibrated``, each member's probabilities are temperature-scaled (its fitted temperature) first."""
        raw, scaled, resolved = self.predict_both(items)
        return (scaled if calibrated else raw), resolved

    def predict_both(self, items: Sequence[Any]
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[dict[str, Path | None]]]:
        """(raw, calibrated) probabilities per task from one pass of every member, and the views used."""
        from lnzoo.decision import calibrate as scale

        raw: dict[str, np.ndarray] = {}
        scaled: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        resolved: list[dict[str, Path | None]] = []
        for m in self.members:
            per_view, samples = self._member_samples(m, items)
            if not resolved:
                resolved = per_view
            for task, p in m.predict(samples, batch_size=32).proba.items():  # served as it was evaluated
                raw[task] = raw.get(task, 0) + p
                scaled[task] = scaled.get(task, 0) + scale(p, (m.temperature or {}).get(task))
                counts[task] = counts.get(task, 0) + 1  # members may differ in their auxiliary tasks
        return ({t: v / counts[t] for t, v in raw.items()}, {t: v / counts[t] for t, v in scaled.items()},
                resolved)

    @staticmethod
    def _member_samples(m, items: Sequence[Any]) -> tuple[list[dict[str, Path | None]], list[Sample]]:
        """The items as one member reads them: its views, its ROI policy, its crop folder."""
        from lnzoo.data.samples import views_of_item

        views = m.views
        if not (items and isinstance(items[0], Sample)):
            per_view = [views_of_item(item, views, m.record.data.get("crop_suffix", "-crop")) for item in items]
            return per_view, [Sample(dict(v), "", {}, str(next(p for p in v.values() if p is not None)))
                              for v in per_view]
        policy = m.record.data.get("empty_roi", "error")  # manifest rows: views, ROI boxes/masks, covariates
        per_view, samples = [], []
        for item in items:  # each member applies its own data.empty_roi to an empty mask
            pv, rois = {v: item.views.get(v) for v in views}, {}
            if "roi" in item.rois and pv.get("roi") is not None:
                problems: list[str] = []
                got = apply_empty_roi(pv, item.rois["roi"], policy, item.origin, problems)
                if got is None:
                    raise UsageError(f"{problems[0]} (data.empty_roi of {m.source})")
                pv, rois = got
            if views and all(p is None for p in pv.values()):
                raise UsageError(f"{item.origin}: no image for any of the views {views} of {m.source}")
            if not views and m.inputs and not any(m.inputs.encode(item)[1]):  # nothing to predict from
                raise UsageError(f"{item.origin}: none of the inputs of {m.source} ({', '.join(m.inputs.names)}) is "
                                 "given in this row (an empty report, an empty mask, no covariate)")
            per_view.append(pv)
            samples.append(Sample(dict(pv), item.patient, {}, item.origin, cells=dict(item.cells),
                                  rois=rois, base=item.base))
        return per_view, samples


def _passes_on(task, host) -> str | None:
    """The checkpoint's task definition's passing class; a sidecar written before lnzoo stored it takes the
    registered task of that name, when its classes are the same."""
    if task.passes_on is not None:
        return task.passes_on
    registry = host.registry("task")
    if task.name in registry:
        registered = registry.get(task.name).build()
        if registered.classes == task.classes:
            return registered.passes_on
    return None


class Cascade:
    """Stage models in order, loaded once: every node goes through stage I, and on while a stage calls it
    that stage's passing class (its main task's ``passes_on``, or one given per stage)."""

    def __init__(self, stages: Sequence[str | Path], host=None, passes_on: Sequence[str | None] | None = None,
                 engine: str = "torch"):
        if len(stages) < 2:
            raise UsageError("--cascade takes two or more models, in stage order")
        from lnzoo.plugins import get_host

        host = host if host is not None else get_host()
        self.sources = [Path(s) for s in stages]
        self.stages = [Ensemble([s], host, engine) for s in stages]
        given = list(passes_on or [None] * (len(stages) - 1))
        if len(given) != len(stages) - 1:
            raise UsageError(f"{len(stages)} stages need {len(stages) - 1} passing class(es), got {len(given)}")
        self.passing: list[str] = []
        for e, src, cls in zip(self.stages, stages, given):
            cls = _passes_on(e.main_task, host) if cls in (None, "", "-") else cls  # "-": the task definition's
            if cls is None:
                raise UsageError(f"{src}: its main task {e.main!r} names no class that passes on to the next stage "
                                 f"(passes_on in its task definition); give one with --passes-on")
            if cls not in e.tasks[e.main]:
                raise UsageError(f"{src}: {cls!r} is not a class of its main task {e.main!r} ({e.tasks[e.main]})")
            self.passing.append(cls)

    def calls(self, k: int, raw: Mapping[str, np.ndarray], calibrated: Mapping[str, np.ndarray]) -> list[str]:
        """Stage k's call per node: its main task's call at the stage model's stored operating threshold."""
        e = self.stages[k]
        return e.calls({e.main: raw[e.main]}, {e.main: calibrated[e.main]})[e.main]

    def goes_on(self, k: int, call: str) -> bool:
        return k < len(self.passing) and call == self.passing[k]

    def walk(self, items: Sequence[Any]) -> Iterator[tuple[int, list[int], dict, dict, list, list[str]]]:
        """Stage by stage, the items still on their way: (stage k, their indices, raw and calibrated
        probabilities, the views each used, stage k's calls). An item goes on while a stage calls it that
        stage's passing class. ``run`` and the server both walk the stages through here."""
        todo = list(range(len(items)))
        for k, e in enumerate(self.stages):
            if not todo:
                return
            raw, calibrated, resolved = e.predict_both([items[i] for i in todo])
            calls = self.calls(k, raw, calibrated)
            yield k, todo, raw, calibrated, resolved, calls
            todo = [i for i, c in zip(todo, calls) if self.goes_on(k, c)]

    def run(self, items: Sequence[Any]) -> list[dict[str, Any]]:
        """One row per item (a path, or a Sample): the path taken through the stages and every probability."""
        rows: list[dict[str, Any]] = [{"image": str(next((p for p in i.views.values() if p is not None), i.origin))
                                       if isinstance(i, Sample) else str(i), "path": ""} for i in items]
        for k, todo, proba, scaled, _, calls in self.walk(items):
            e = self.stages[k]
            classes = e.tasks[e.main]
            for j, i in enumerate(todo):
                for c, v in zip(classes, proba[e.main][j]):
                    rows[i][Columns.raw(e.main, c)] = round(float(v), 6)
                for c, v in zip(classes, scaled[e.main][j]):  # what the stage's call was made on
                    rows[i][Columns.calibrated(e.main, c)] = round(float(v), 6)
                rows[i][f"{e.main}_threshold"] = e.operating_point(e.main).text()
                rows[i][f"stage{k + 1}"] = calls[j]
                rows[i]["path"] = (rows[i]["path"] + " > " if rows[i]["path"] else "") + f"{e.main}:{calls[j]}"
        return rows


def run_cascade(stages: Sequence[str | Path], images: Sequence[Any], host=None,
                passes_on: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
    """Every image through stage I; the images a stage calls its passing class go on to the next stage.

    Which class passes on is the stage main task's ``passes_on`` (its task definition: malignant for
    stage I, metastatic for stage II) unless ``passes_on`` names one per stage. Returns one row per
    image: the path taken through the stages and every probability computed.
    """
    return Cascade(stages, host, passes_on).run(images)


def check_out(out: Path) -> None:
    """Predictions never go into a run directory: they would replace or sit among the run's own files."""
    from lnzoo.rundir import RunDir

    for parent in Path(out).resolve().parents:  # RUN/fold0/x.csv is inside the run too
        folder = RunDir(parent)
        if folder.is_run():
            raise UsageError(f"--out {out}: {folder} is a run directory; lnzoo predict does not write into one "
                             "(its predictions.csv is the run's own). Give --out a path outside it")


def write_rows(rows: list[dict[str, Any]], out: Path) -> Path:
    from lnzoo.files import csv_text, write_atomic
    from lnzoo.integrity import modified_note

    check_out(out)
    note = modified_note()
    if note:  # the calls were made from files that are not as lnzoo wrote them: every row says so
        rows = [{**r, "warning": note} for r in rows]
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    return write_atomic(out, csv_text(columns, rows))


def manifest_samples(models: Sequence[str | Path] | Ensemble, manifest: Path, host=None) -> list[Any]:
    """Read a CSV of rows to predict on with the views of all the models given (paths, or an Ensemble already
    loaded) and the ROI columns of those with a 'roi' view. Empty masks are kept as read: each member applies
    its own ``data.empty_roi`` when it predicts."""

    ens = models if isinstance(models, Ensemble) else Ensemble(models, host)
    views = sorted({v for m in ens.members for v in m.views})
    with_roi = [m for m in ens.members if "roi" in m.views] or ens.members[:1]
    cfg = dict(with_roi[0].record.data)
    for m in with_roi[1:]:
        other = m.record.data
        for key in ("mask_column", "bbox_column"):
            if other.get(key) != cfg.get(key):
                raise UsageError(f"{m.source} reads its ROI from data.{key} = {other.get(key)!r}, "
                                 f"{with_roi[0].source} from {cfg.get(key)!r}; one manifest cannot serve both")
    columns = sorted({c for m in ens.members for c in (m.inputs.columns if m.inputs else [])})
    return read_serving_manifest(manifest, views, {**cfg, "empty_roi": "error"}, columns)


def predict_rows(models: Sequence[str | Path], images: Sequence[Any], host=None, engine: str = "torch"
                 ) -> list[dict[str, Any]]:
    """One row per image (a path, or a manifest row): which views were used and the ensemble's
    probability of every class of every task."""
    ens = Ensemble(models, host, engine)
    proba, scaled, resolved = ens.predict_both(list(images))
    called = ens.calls(proba, scaled)
    extra = next((m.inputs for m in ens.members if m.inputs), None)  # report, morphology, covariates...
    rows = []
    for i, image in enumerate(images):
        if isinstance(image, Sample):
            row0: dict[str, Any] = {"image": str(next((p for p in image.views.values() if p is not None), "")),
                                    "row": image.origin}
        else:
            row0 = {"image": str(image)}
        row: dict[str, Any] = {**row0,
                               "views_used": "+".join(v for v, p in resolved[i].items() if p is not None),
                               "members": len(ens.members)}
        if extra is not None:  # which of the other inputs this row gave (a missing report is predicted without)
            row["inputs_used"] = "+".join(extra.given(image) if isinstance(image, Sample) else [])
        for task, p in proba.items():
            classes = ens.tasks[task]
            row[f"{task}_pred"] = called[task][i]
            for c, v in zip(classes, p[i]):
                row[Columns.raw(task, c)] = round(float(v), 6)
            for c, v in zip(classes, scaled[task][i]):
                row[Columns.calibrated(task, c)] = round(float(v), 6)
            row[f"{task}_threshold"] = ens.operating_point(task).text()
        rows.append(row)
    return rows


def read_serving_manifest(path: Path, views: Sequence[str], cfg: Mapping[str, Any],
                          input_columns: Sequence[str] = ()) -> list[Sample]:
    """Rows to predict on (no labels, no patient needed): the model's view columns, the box or mask
    of a 'roi' view, and the columns its other inputs read (covariates, report text, masks), which must be in the
    header (an empty cell is a missing input; an absent column would silently be one for every row).
    The delimiter is :func:`detect_delimiter`'s. Every bad row is reported at once (DataError)."""
    path = Path(path)
    reader, delimiter = csv_reader(path)
    header = reader.fieldnames or []
    columns = {v: VIEW_COLUMN.get(v, v) for v in views}
    problems: list[str] = []
    said = f"header has {header} (read with the delimiter {delimiter_name(delimiter)})"
    missing_cols = sorted({c for c in columns.values() if c not in header})
    if missing_cols:
        problems.append(f"{path}:1: missing view column(s) {missing_cols} that the model's views {list(views)} "
                        f"need; {said}")
    missing_inputs = [c for c in input_columns if c not in header]
    if missing_inputs:
        problems.append(f"{path}:1: missing column(s) {missing_inputs} that the model's inputs read (leave a cell "
                        f"empty where a row lacks it); {said}")
    if problems:
        raise DataError(problems, "problem(s) with the manifest")
    samples = []
    for where, row in data_rows(reader, path, problems):
        parsed = row_views(row, columns, path.parent, cfg, where, problems)
        if parsed is None:
            continue
        view_paths, rois = parsed
        # served rows are not run through the training checks: say here what is missing
        missing = [f"image not found: {p}" for p in view_paths.values() if p is not None and not p.is_file()]
        missing += [f"mask not found: {m}" for m in rois.values() if isinstance(m, Path) and not m.is_file()]
        if missing:
            problems.append(f"{where}: {'; '.join(missing)}")
            continue
        samples.append(Sample(view_paths, (row.get("patient") or "").strip(), {}, where,
                              cells={k: v for k, v in row.items() if v is not None}, rois=rois, base=path.parent,
                              delimiter=delimiter))
    if problems:
        raise DataError(problems, "problem(s) with the manifest")
    if not samples:
        raise DataError([f"{path}: no rows"], "problem(s) with the manifest")
    return samples
