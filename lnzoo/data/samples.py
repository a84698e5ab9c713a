"""Data sources -> samples: the seed's list files and CSV manifests.

A :class:`Sample` is one image (or one set of views of a node) with its patient id, one label
index per task (``-1`` = no label for that task) and the ``file:line`` it came from, so every
error can point at the row that caused it.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lnzoo.data.tables import _list_delimiter_problem, csv_reader, delimiter_name, read_lines
from lnzoo.errors import DataError, UsageError
from lnzoo.tasks import MISSING, Task

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm"}
# a manifest's view columns: "full" is the column "path", "roi" is the full image cropped on the fly
# to its box or mask; any other view is its own column
VIEW_COLUMN = {"full": "path", "2d": "path", "roi": "path"}


@dataclass
class Sample:
    views: dict[str, Path | None]
    patient: str
    labels: dict[str, int]
    origin: str                      # "file:line" of the row (first row, when merged)
    center: str | None = None
    split: str | None = None
    cells: dict[str, str] = field(default_factory=dict)  # the row's cells: covariates, report text, mask paths
    rois: dict[str, tuple[float, float, float, float] | Path] = field(default_factory=dict)  # view -> box or mask
    base: Path | None = None  # the folder relative paths in ``cells`` resolve against (the manifest's)
    delimiter: str | None = None  # the delimiter of the CSV file the row came from (None: not a CSV row)

    @property
    def key(self) -> str:
        """Identity for merging rows: the image, plus its ROI (one frame may show two nodes); a row with
        no image (a text- or morphology-only model) is its own identity."""
        image = next((str(p) for p in self.views.values() if p is not None), None)
        if image is None:
            return f"row {self.origin}"
        return f"{image}|{sorted(self.rois.items())}" if self.rois else image

    def cell_path(self, column: str) -> Path | None:
        """The file a cell names (relative to the manifest's folder), or None for an empty cell."""
        text = (self.cells.get(column) or "").strip()
        if not text:
            return None
        path = Path(text)
        return path if path.is_absolute() or self.base is None else (self.base / path).resolve()


def _crop_path(path: Path, suffix: str) -> Path:
    """The seed's rule: the ROI crop sits in a mirror folder whose name gets a suffix."""
    return path.parent.parent / f"{path.parent.name}{suffix}" / path.name


def _patient_of(path: Path, regex: re.Pattern[str] | None) -> str | None:
    if regex is None:
        return None
    m = regex.search(path.name)
    return m.group(1) if m and m.groups() else (m.group(0) if m else None)


def infer_list_task(path: Path, tasks: Mapping[str, Task]) -> str:
    """Which of the recipe's tasks a list file labels: the one that knows most of its labels.

    Rows whose label that task does not know are then reported one by one, with their line.
    """
    lines = read_lines(path)
    told = _list_delimiter_problem(path, lines)
    if told:
        raise DataError([told], "problem(s) with the data sources")
    labels = [line.rsplit(",", 1)[1].strip() for line in lines if line.strip() and "," in line]
    known = {name: sum(task.try_index(lb) is not None for lb in labels) for name, task in tasks.items()}
    best = max(known.values(), default=0)
    fits = [name for name, n in known.items() if n == best and n > 0]
    if len(fits) == 1:
        return fits[0]
    hint = f"name the task: {{path = \"{path.name}\", task = \"...\"}}"
    if not fits:
        raise DataError([(f"{path}: its labels {sorted(set(labels))[:8]} fit none of the recipe's tasks "
                          f"{list(tasks)}; {hint}")], "problem(s) with the data sources")
    raise DataError([f"{path}: its labels fit several tasks {fits}; {hint}"], "problem(s) with the data sources")


def read_list_file(path: Path, task: Task, views: Sequence[str], crop_suffix: str,
                   patient_regex: str | None, problems: list[str], rejected: list[Sample] | None = None,
                   fatal: list[str] | None = None) -> list[Sample]:
    """``path,<label>`` lines (the seed's format); relative paths resolve against the list's folder.

    Every problem of a line is named (a repeated path with an unknown label is both). A line left out for
    its label or patient, but whose image is known, goes to ``rejected`` when given, so that the image
    checks can name that image's problems too. A problem of the whole file goes to ``fatal`` when given."""
    regex = re.compile(patient_regex) if patient_regex else None
    lines = read_lines(path)
    file_level = fatal if fatal is not None else problems
    told = _list_delimiter_problem(path, lines)
    if told:
        file_level.append(told)
        return []
    other = [v for v in views if v not in ("full", "crop")]
    if other:
        file_level.append(f"{path}: list files give views 'full' and 'crop' only, not {other}; use a CSV manifest "
                        f"with a column per view")
        return []
    samples = []
    first_seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{lineno}"
        if "," not in line:
            problems.append(f"{where}: expected 'path,label', got {line.strip()!r}")
            continue
        rel, label = (s.strip() for s in line.rsplit(",", 1))
        reasons: list[str] = []
        repeated = rel in first_seen
        if repeated:
            reasons.append(f"{where}: duplicate row, {rel!r} is already on line {first_seen[rel]}")
        else:
            first_seen[rel] = lineno
        idx = task.try_index(label)
        if idx is None:
            try:
                task.index_of(label)
            except UsageError as exc:
                reasons.append(f"{where}: {exc}")
        image = user_path(rel, path.parent, where, reasons)
        patient = _patient_of(image, regex) if image is not None else None
        if image is not None and regex is not None and patient is None:
            reasons.append(f"{where}: data.patient_regex {regex.pattern!r} does not match {image.name!r}")
        view_paths: dict[str, Path | None] = {}
        if image is not None:
            view_paths = {v: image if v == "full" else _crop_path(image, crop_suffix) for v in views}
        if reasons:
            problems += reasons
            if rejected is not None and image is not None and not repeated:  # a repeat's image is its first's
                rejected.append(Sample(view_paths, patient or image.stem, {}, where))
            continue
        samples.append(Sample(view_paths, patient or image.stem, {task.name: idx}, where))
    return samples


def user_path(rel: str, base: Path, where: str, problems: list[str]) -> Path | None:
    """A path from a user's file, relative ones against ``base``; None (with a problem) if it cannot be one."""
    if "\x00" in rel:
        problems.append(f"{where}: the path {rel!r} holds a NUL character")
        return None
    return (base / rel).resolve() if not Path(rel).is_absolute() else Path(rel)


def row_views(row: Mapping[str, str], columns: Mapping[str, str], base: Path, cfg: Mapping[str, Any],
               where: str, problems: list[str]):
    """A manifest row's {view: path or None} and its ROI ({} or {'roi': box/mask}); None if the row is bad
    (every reason appended to ``problems``)."""
    view_paths: dict[str, Path | None] = {}
    unusable = False
    for view, col in columns.items():
        rel = (row.get(col) or "").strip()
        view_paths[view] = user_path(rel, base, where, problems) if rel else None
        unusable |= bool(rel) and view_paths[view] is None
    if unusable:
        return None
    if columns and all(p is None for p in view_paths.values()):  # (a model without image views reads none)
        problems.append(f"{where}: no image path in any view column {sorted(set(columns.values()))}")
        return None
    if "roi" in view_paths and view_paths["roi"] is not None:
        roi = parse_roi(row, base, cfg, where, problems)
        if roi is None:
            return None
        return apply_empty_roi(view_paths, roi, cfg.get("empty_roi", "error"), where, problems)
    return view_paths, {}


def apply_empty_roi(view_paths: Mapping[str, Path | None], roi, policy: str, where: str, problems: list[str]):
    """A 'roi' view's (view paths, rois) under ``data.empty_roi`` when its mask marks nothing: kept
    as it is for "error" (loading says so), the uncropped image for "whole_image", an absent view
    for "missing". None (with a problem) if that leaves the row no view."""
    view_paths = dict(view_paths)
    if policy == "error" or not isinstance(roi, Path) or not _mask_is_empty(roi):
        return view_paths, {"roi": roi}
    if policy == "missing":  # the view is absent, like a missing CDFI image; other views predict
        view_paths["roi"] = None
        if all(p is None for p in view_paths.values()):
            problems.append(f"{where}: mask {roi} is empty and 'roi' is this row's only view; "
                            "data.empty_roi = \"whole_image\" uses the uncropped image instead")
            return None
    return view_paths, {}  # whole_image: no box, so the 'roi' view is the uncropped image


def _mask_is_empty(mask: Path) -> bool:
    """True for a readable mask that marks nothing; unreadable or missing masks are the checks' to report."""
    try:
        with Image.open(mask) as m:
            return not (np.asarray(m.convert("L")) > 0).any()
    except (OSError, ValueError, UnidentifiedImageError):
        return False


def parse_roi(row: Mapping[str, str], base: Path, cfg: Mapping[str, Any], where: str, problems: list[str]):
    """A row's ROI: its ``bbox`` (x0 y0 x1 y1) or the path of its ``mask`` (column names from ``cfg``); None, with
    the problem said, when it has neither or a box that is not one."""
    box_text = (row.get(cfg.get("bbox_column", "bbox")) or "").strip()
    if box_text:
        try:
            box = tuple(float(v) for v in box_text.replace(",", " ").split())
        except ValueError:
            box = ()
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            problems.append(f"{where}: bbox {box_text!r} is not 'x0 y0 x1 y1' with x0 < x1 and y0 < y1")
            return None
        return box
    mask_text = (row.get(cfg.get("mask_column", "mask")) or "").strip()
    if mask_text:
        return (base / mask_text).resolve() if not Path(mask_text).is_absolute() else Path(mask_text)
    problems.append(f"{where}: the 'roi' view needs a {cfg.get('bbox_column', 'bbox')!r} box or a "
                    f"{cfg.get('mask_column', 'mask')!r} mask file")
    return None


def data_rows(reader, path: Path, problems: list[str]):
    """(file:line, row) of each data row of a CSV; a row with more fields than the header is reported instead.

    The line is the row's first, counted by the reader itself, so blank lines skipped and quoted cells spanning
    lines are counted."""
    for row in reader:
        breaks = sum(v.count("\n") for v in row.values() if isinstance(v, str))
        breaks += sum(v.count("\n") for v in row.get(None) or [])  # the cells beyond the header
        where = f"{path}:{reader.line_num - breaks}"
        if None in row:
            problems.append(f"{where}: more fields than the header has ({len(reader.fieldnames or [])}; the file's "
                            f"delimiter is {delimiter_name(reader.reader.dialect.delimiter)})")
        else:
            yield where, row


def read_manifest(path: Path, tasks: Mapping[str, Task], views: Sequence[str], problems: list[str],
                  label_columns: Mapping[str, str] | None = None, cfg: Mapping[str, Any] | None = None,
                  rejected: list[Sample] | None = None, delimiters: dict[str, str] | None = None,
                  fatal: list[str] | None = None) -> list[Sample]:
    """A CSV manifest: view columns, ``patient``, optional ``split``/``center``, one column per task.

    A task's column is named after the task unless ``label_columns`` maps it to another column. The delimiter
    is :func:`detect_delimiter`'s (recorded in ``delimiters`` when given, and on each row). Every problem of a
    row is named; a row left out for its labels or patient whose images are known goes to ``rejected`` when
    given, so that the image and input checks can name its other problems too. A problem of the whole file (a
    missing column) goes to ``fatal`` when given, else to ``problems``.
    """
    label_col = {t: (label_columns or {}).get(t, t) for t in tasks}
    reader, delimiter = csv_reader(path)
    if delimiters is not None:
        delimiters[str(path)] = delimiter
    header = reader.fieldnames or []
    columns = {v: VIEW_COLUMN.get(v, v) for v in views}
    patient_col = (cfg or {}).get("patient_column", "patient")
    missing_cols = [c for c in columns.values() if c not in header]
    said = f"header has {header} (read with the delimiter {delimiter_name(delimiter)})"
    file_level = fatal if fatal is not None else problems
    if missing_cols:
        file_level.append(f"{path}:1: missing view column(s) {missing_cols}; {said}")
    if patient_col not in header:
        file_level.append(f"{path}:1: no {patient_col!r} column (data.patient_column): patient-level splits need "
                          f"one; {said}")
    if not any(label_col[t] in header for t in tasks):
        file_level.append(f"{path}:1: no column for any of the recipe's tasks {list(label_col.values())}; "
                          f"map one with data.label_columns; {said}")
    if missing_cols or patient_col not in header or not any(label_col[t] in header for t in tasks):
        return []
    missing_values = {str(v).strip().casefold() for v in (cfg or {}).get("missing_labels", [])}
    samples = []
    for where, row in data_rows(reader, path, problems):
        reasons: list[str] = []
        labels = {}
        for t in tasks:
            value = (row.get(label_col[t]) or "").strip()
            idx = None if not value or value.casefold() in missing_values else tasks[t].try_index(value)
            if value and value.casefold() not in missing_values and idx is None:
                try:
                    tasks[t].index_of(value)
                except UsageError as exc:
                    reasons.append(f"{where}: column {label_col[t]!r}: {exc}")
            labels[t] = MISSING if idx is None else idx
        patient = (row.get(patient_col) or "").strip()
        if not patient:
            reasons.append(f"{where}: empty patient id")
        parsed = row_views(row, columns, path.parent, cfg or {}, where, reasons)
        sample = None
        if parsed is not None:
            view_paths, rois = parsed
            sample = Sample(view_paths, patient, labels, where, center=(row.get("center") or None),
                            split=(row.get("split") or None), cells={k: v for k, v in row.items() if v is not None},
                            rois=rois, base=path.parent, delimiter=delimiter)
        if reasons:
            problems += reasons
            if rejected is not None and sample is not None:
                rejected.append(sample)
            continue
        samples.append(sample)
    return samples


def merge_by_image(samples: list[Sample], task_names: Sequence[str], problems: list[str]) -> list[Sample]:
    """Merge rows naming the same image (the seed's main and auxiliary lists) into one sample."""
    merged: dict[str, Sample] = {}
    for s in samples:
        key = s.key
        if key not in merged:
            merged[key] = Sample(dict(s.views), s.patient, {t: MISSING for t in task_names}, s.origin,
                                 s.center, s.split, dict(s.cells), dict(s.rois), s.base, s.delimiter)
        target = merged[key]
        for task, idx in s.labels.items():
            if idx == MISSING:
                continue
            old = target.labels.get(task, MISSING)
            if old != MISSING and old != idx:
                problems.append(f"{s.origin}: image {key} already has another {task} label at {target.origin}")
            target.labels[task] = idx
    return list(merged.values())


def read_class_folders(root: Path, task: Task, patient_regex: str | None, problems: list[str]) -> list[Sample]:
    """One folder per class (folder names are class names or aliases), images anywhere below them."""
    regex = re.compile(patient_regex) if patient_regex else None
    samples = []
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        problems.append(f"{root}: no class folders inside")
    for folder in folders:
        idx = task.try_index(folder.name)
        if idx is None:
            try:
                task.index_of(folder.name)
            except UsageError as exc:
                problems.append(f"{folder}: folder name is not a class: {exc}")
            continue
        for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            patient = _patient_of(image, regex)
            if regex is not None and patient is None:
                problems.append(f"{image}: data.patient_regex {regex.pattern!r} does not match {image.name!r}")
                continue
            samples.append(Sample({"full": image}, patient or image.stem, {task.name: idx}, str(image)))
    return samples


NPZ_SPLITS = ("train", "val", "test")


def read_npz(spec: str, task: Task, problems: list[str]) -> list[Sample]:
    """MedMNIST-style arrays: ``<split>_images`` and ``<split>_labels``; ``file.npz#test`` picks a split.

    Without ``#split`` the train and val splits are read (for cross-validation). The arrays hold no
    patient ids, so every image is its own patient.
    """
    from lnzoo.data.images import npz_arrays

    path_text, _, split = spec.partition("#")
    path = Path(path_text)
    splits = [split] if split else ["train", "val"]
    try:
        arrays = npz_arrays(path)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported, with the file
        problems.append(f"{path}: cannot read as .npz ({exc})")
        return []
    samples = []
    for sp in splits:
        if sp not in NPZ_SPLITS or f"{sp}_images" not in arrays or f"{sp}_labels" not in arrays:
            problems.append(f"{path}: no '{sp}_images'/'{sp}_labels' arrays (has {sorted(arrays)})")
            continue
        labels = np.asarray(arrays[f"{sp}_labels"]).reshape(len(arrays[f"{sp}_images"]), -1)[:, 0]
        for i, y in enumerate(labels):
            if not 0 <= int(y) < task.num_classes:
                problems.append(f"{path}#{sp}[{i}]: label {int(y)} is not a class index of {task.name!r}")
                continue
            samples.append(Sample({"full": Path(f"{path}#{sp}[{i}]")}, f"{path.stem}-{sp}-{i}",
                                  {task.name: int(y)}, f"{path}#{sp}[{i}]", split=sp))
    return samples


def load_source(spec: Any, tasks: Mapping[str, Task], data_cfg: Mapping[str, Any],
                patient_regex: str | None = None, problems: list[str] | None = None, *,
                fatal: list[str] | None = None, rejected: list[Sample] | None = None,
                delimiters: dict[str, str] | None = None) -> list[Sample]:
    """Read one ``data.train`` / ``data.test`` / ``data.external`` value into samples.

    Every bad row is reported at once: raised as a DataError, or appended to ``problems`` when
    the caller passes a list (and then skipped). With ``fatal`` given, what no skipping may hide (a file
    that cannot be read, a missing column, no usable row at all) is appended there instead of raised, and
    the other files are still read; ``rejected`` and ``delimiters`` are as :func:`read_manifest`'s.
    """
    items = spec if isinstance(spec, list) else [spec]
    collect = problems is not None
    problems = problems if problems is not None else []
    file_level = fatal if fatal is not None else problems
    n_fatal = len(fatal) if fatal is not None else 0
    samples: list[Sample] = []
    views = data_cfg["views"]
    regex = patient_regex if patient_regex is not None else data_cfg.get("patient_regex")
    for item in items:
        task_name = None
        if isinstance(item, dict):
            task_name, item = item.get("task"), item.get("path")
        if not isinstance(item, str) or not item:
            file_level.append(f"data source {item!r}: expected a path, or {{path = ..., task = ...}}")
            continue
        path = Path(item)
        try:
            if path.is_dir() or ".npz" in path.name:
                name = task_name or data_cfg.get("main_task") or next(iter(tasks))
                if name not in tasks:
                    file_level.append(f"{path}: task {name!r} is not one of the recipe's tasks {list(tasks)}")
                elif path.is_dir():
                    samples += read_class_folders(path, tasks[name], regex, problems)
                else:
                    samples += read_npz(item, tasks[name], problems)
            elif path.suffix.lower() == ".csv":
                if task_name is not None and task_name not in tasks:
                    file_level.append(f"{path}: task {task_name!r} is not one of the recipe's tasks {list(tasks)}")
                    continue
                # {path, task}: this manifest labels that task only (one dataset of a multi-dataset recipe)
                only = {task_name: tasks[task_name]} if task_name else tasks
                samples += read_manifest(path, only, views, problems, data_cfg.get("label_columns"), data_cfg,
                                         rejected=rejected, delimiters=delimiters, fatal=fatal)
            elif path.is_file():
                name = task_name or infer_list_task(path, tasks)
                if name not in tasks:
                    file_level.append(f"{path}: task {name!r} is not one of the recipe's tasks {list(tasks)}")
                    continue
                samples += read_list_file(path, tasks[name], views, data_cfg["crop_suffix"], regex, problems,
                                          rejected=rejected, fatal=fatal)
            else:
                file_level.append(f"{path}: file not found")
        except DataError as exc:  # the file cannot be read at all (not UTF-8, an ambiguous delimiter)
            if fatal is None:
                raise
            fatal += exc.problems
    merged = merge_by_image(samples, list(tasks), problems)
    if problems and not collect:
        raise DataError(problems, "problem(s) in the data")
    if not merged:  # say why: the collected problems (a missing column, say) come first
        if fatal is not None:
            if len(fatal) == n_fatal:  # nothing said yet why this source gave nothing
                fatal.append(f"{', '.join(map(str, items))}: no usable rows")
            return []
        raise DataError([*problems, f"{', '.join(map(str, items))}: no usable rows"], "problem(s) in the data")
    return merged


def views_of_item(item: Any, views: Sequence[str], crop_suffix: str) -> dict[str, Path | None]:
    """One sample as given by the user -> {view: path or None (absent)} in the model's view order."""
    if not views:
        raise UsageError("this model reads no image (no view: its inputs are report text, morphology or covariates); "
                         "give its rows as a CSV manifest with those columns: --manifest rows.csv")
    if "roi" in views:  # the crop box or mask is not part of a bare image path: refuse rather than guess
        raise UsageError("this model has a 'roi' view (cropped to a box or mask at training time); predicting "
                         "or explaining from bare image paths would feed it uncropped images. Give the crop "
                         "as an image of its own (a 'crop' view), or predict from a CSV manifest that names "
                         "each image's box or mask: lnzoo predict --model RUN --manifest rows.csv")
    if isinstance(item, (str, Path)):
        path = Path(item)
        if len(views) == 1:
            return {views[0]: path}
        if list(views) == ["full", "crop"]:
            return {"full": path, "crop": _crop_path(path, crop_suffix)}
        raise UsageError(f"{path}: this model takes the views {list(views)}; give one path per view in that "
                         f"order (None for a view not acquired). Only a ['full', 'crop'] model derives "
                         f"its crop from the '{crop_suffix}' mirror folder.")
    paths = list(item)
    if len(paths) != len(views):
        raise UsageError(f"{[str(p) for p in paths]}: {len(paths)} path(s) for a model with the views "
                         f"{list(views)}; give one path per view in that order (None for a view not acquired)")
    if all(p is None for p in paths):
        raise UsageError(f"a sample needs at least one image for the views {list(views)}")
    return {view: None if p is None else Path(p) for view, p in zip(views, paths)}
