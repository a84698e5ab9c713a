"""A recipe's data: its tasks, the checked samples of every part (or the phantom), and the patient folds."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnzoo.config import plain
from lnzoo.data.samples import MISSING, Sample, load_source
from lnzoo.data.tables import csv_reader
from lnzoo.errors import DataError, UsageError, ValidationError
from lnzoo.tasks import Task

PHANTOM_PATIENT_REGEX = r"^(P\d+)_"


@dataclass
class RunData:
    """The samples of a run: the cross-validation pool, the separate test sets, what was skipped."""

    pool: list[Sample]
    test: list[Sample]
    external: list[Sample]
    description: str
    skipped: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)  # input name -> (kind, table), checked on all rows
    delimiters: dict[str, str] = field(default_factory=dict)  # each CSV file read -> the delimiter detected


@dataclass
class DataCheck:
    """Everything :func:`check_run_data` found, by kind: what a run would refuse, and the rows it would use."""

    data: RunData               # the good rows of every part
    rows: list[str]             # bad rows and images: left out under data.skip_bad_rows
    fatal: list[str]            # data problems no skipping hides (a file not read, a covariate no row has)
    leaks: list[str]            # a patient or the same image on both sides of a boundary: never skipped
    skip: bool                  # data.skip_bad_rows
    inputs_checked: bool = True  # every input kind checked the rows, so their state can be fitted

    @property
    def stages(self) -> dict[str, list[str]]:
        """The problems a run refuses, by stage: data (bad rows, unless skipped, and the rest) and leakage."""
        return {"data": [*self.fatal, *([] if self.skip else self.rows)], "leakage": list(self.leaks)}

    @property
    def notes(self) -> dict[str, str]:
        return {"data": "data.skip_bad_rows = true leaves bad rows out"} if self.rows and not self.skip else {}

    def result(self) -> RunData:
        """The data, or a ValidationError listing every data and leakage problem at once."""
        if any(self.stages.values()):
            raise ValidationError(self.stages, self.notes)
        return self.data


def recipe_tasks(recipe, host) -> dict[str, Task]:
    tasks = {}
    from lnzoo.tasks import Task

    defined = recipe.config.tasks.define
    for name in recipe.tasks:
        task = Task.from_dict({"name": name, **defined[name]}) if name in defined else host.get("task", name).build()
        options = {k: v for k, v in recipe.config.tasks.options.get(name, {}).items() if v is not None}
        tasks[name] = task.with_options(**options) if options else task
    return tasks


def _phantom_sources(recipe, tasks, on_phantom) -> tuple[Any, str | None, str]:
    from lnzoo.data.phantom import ensure_phantom
    from lnzoo.data.phantom_shortcuts import describe_shortcuts, parse_shortcuts

    ph = recipe.config.data.phantom
    try:
        shortcuts = parse_shortcuts(plain(ph.shortcut))
    except ValueError as exc:
        raise UsageError(f"data.phantom.shortcut: {exc}") from None
    manifest = ensure_phantom(patients=ph.patients, seed=ph.seed, difficulty=ph.difficulty, progress=on_phantom,
                              shortcuts=shortcuts or None)
    description = f"synthetic phantom ({ph.patients} patients, seed {ph.seed}; not clinical data)"
    if shortcuts:
        description += f"; planted shortcuts: {describe_shortcuts(shortcuts)}"
    if ph.source != "stage1_lists":
        return str(manifest), None, description
    lists = manifest.parent / "lists"
    train = [{"path": str(lists / "stage1_main.txt"), "task": "malignancy"},
             {"path": str(lists / "stage1_aux.txt"), "task": "enlargement"}]
    train = [t for t in train if t["task"] in tasks]
    if not train:
        raise UsageError("data.phantom.source = \"stage1_lists\" labels malignancy and enlargement; "
                         f"this recipe's tasks are {list(tasks)}: use source = \"manifest\"")
    return train, PHANTOM_PATIENT_REGEX, description


def load_run_data(recipe, tasks: Mapping[str, Task], host, on_phantom: Callable[[int, int], None] | None = None,
                  check_files_too: bool = True) -> RunData:
    """Read and check the recipe's data (or the built-in phantom when it names none).

    Every problem is collected (:func:`check_run_data`) and raised at once, by stage (a ValidationError, a
    DataError): bad rows, missing/empty/corrupt images, duplicate rows, identical image content under two
    patients, a patient in two parts. With ``data.skip_bad_rows`` bad rows and images are left out and listed
    in ``RunData.skipped``; leakage is never skipped.
    """
    return check_run_data(recipe, tasks, host, on_phantom, check_files_too).result()


def check_run_data(recipe, tasks: Mapping[str, Task], host, on_phantom: Callable[[int, int], None] | None = None,
                   check_files_too: bool = True) -> DataCheck:
    """Read and check the recipe's data without raising for what it finds: every source, every row (each row's
    every problem: a row left out for its label still has its image and covariates checked), every image, every
    input, identical images and patients across parts, all reported together in a :class:`DataCheck`.

    Only what leaves nothing to check raises (the phantom cannot be made, an input kind cannot be built).
    """
    from lnzoo.data.checks import check_files, identical_content_across_patients
    from lnzoo.data.images import set_max_pixels
    from lnzoo.data.splits import leakage_problems
    from lnzoo.inputs import build_kinds, check_rows, data_notes

    d = recipe.config.data
    data_cfg = {**plain(d), "main_task": recipe.config.tasks.main}  # the settings the data layer's readers take
    set_max_pixels(d.max_image_pixels)
    train, regex, description = d.train, None, "your data"
    sources = {"test": d.test, "external": d.external}
    second_phantom = not train and d.phantom.external and not d.external
    if not train:
        train, regex, description = _phantom_sources(recipe, tasks, on_phantom)
        if second_phantom:
            from lnzoo.data.phantom import ensure_phantom
            ph = d.phantom
            sources["external"] = str(ensure_phantom(patients=max(8, ph.patients // 2), seed=ph.seed + 7919,
                                                     difficulty=ph.difficulty))
            description += "; external set: a second phantom (seed + 7919), like another centre"
    problems: list[str] = []
    fatal: list[str] = []
    rejected: list[Sample] = []  # rows left out for a label or patient: their images and inputs are checked too
    delimiters: dict[str, str] = {}
    reading = {"fatal": fatal, "rejected": rejected, "delimiters": delimiters}
    parts = {"cross-validation": load_source(plain(train), tasks, data_cfg, regex, problems, **reading)}
    for part, source in sources.items():
        parts[part] = load_source(plain(source), tasks, data_cfg, None, problems, **reading) if source else []
    digests: dict[str, str] = {}
    unreadable: list[Sample] = []  # rows whose image is missing or corrupt: their cells are still checked
    if check_files_too:
        for part, samples in parts.items():
            bad = check_files(samples, problems, digests)
            unreadable += [s for i, s in enumerate(samples)
                           if i in bad and any(v != MISSING for v in s.labels.values())]
            parts[part] = [s for i, s in enumerate(samples) if i not in bad]
        bad = check_files(rejected, problems, {})
        unreadable += [s for i, s in enumerate(rejected) if i in bad]
        rejected = [s for i, s in enumerate(rejected) if i not in bad]
    kinds = build_kinds(data_cfg, recipe.config.model, host)
    inputs_checked = True
    if kinds:  # every input checks every row once, on all parts (a covariate's type is never decided per fold)
        # the rows that will train or be scored (a row labelling none of the tasks is left out below anyway),
        # then the rows left out for a label, a patient or an image: their cells are named too, and count for a
        # column's type; an input that reads files (a mask) reads none of a row whose image was not readable
        every = [s for samples in parts.values() for s in samples if any(v != MISSING for v in s.labels.values())]
        bad = set()
        for name, entry in kinds.items():  # one input's mistake does not hide another's
            cells_only = getattr(entry[0], "reads", "file") == "text"
            try:
                bad |= check_rows({name: entry}, [*every, *rejected, *(unreadable if cells_only else [])], problems)
            except DataError as exc:  # a recipe-level mistake (a column no row has): never skipped
                fatal += exc.problems
                inputs_checked = False
        bad = {i for i in bad if i < len(every)}
        if not d.views and inputs_checked:  # a model of other inputs only: a row giving none has nothing to show
            from lnzoo.inputs import rows_without_input
            bad |= rows_without_input(kinds, every, bad, problems)
        drop = {id(every[i]) for i in bad}
        parts = {part: [s for s in samples if id(s) not in drop] for part, samples in parts.items()}
        if inputs_checked:
            for note in data_notes(kinds):
                description += f"; {note}"
    grouped: list[str] = []
    if d.identical_images == "group":
        from lnzoo.data.checks import group_identical_patients
        grouped = group_identical_patients(parts["cross-validation"], digests)
    leaks = identical_content_across_patients(parts, digests)
    from lnzoo.pretrain.images import pretraining_leaks  # a self-supervised pretraining that saw evaluation images
    model_cfg = recipe.config.model
    leaks += pretraining_leaks([("model.init_from", model_cfg.init_from),
                                ("model.backbone.pretrained_file", model_cfg.backbone.get("pretrained_file"))],
                               parts, digests)
    if second_phantom:
        for smp in parts["external"]:  # the second phantom's patients are other people than the first's
            smp.patient = f"centre2-{smp.patient}"
            smp.center = "phantom-centre-2"
    for part, samples in parts.items():  # rows that label none of this recipe's tasks teach nothing
        parts[part] = [s for s in samples if any(v != MISSING for v in s.labels.values())]
    main = recipe.config.tasks.main
    by = getattr(d, "balance_by", None)
    if by and not any(by in s.cells for s in parts["cross-validation"]):  # a recipe-level mistake
        fatal.append(f"data.balance_by = {by!r}: no training row has a column {by!r} to balance")
    bands = getattr(d, "subgroup_bands", None) or {}
    for name in getattr(d, "subgroups", None) or []:  # a subgroup column no row has: a typo, said before training
        column = bands[name]["column"] if isinstance(bands.get(name), dict) else name
        if column not in ("center", "centre") and not any(column in s.cells for part in parts.values() for s in part):
            fatal.append(f"data.subgroups: {name!r}" + (f" (data.subgroup_bands.{name}.column)" if column != name
                                                        else "") + f": no row has a column {column!r}")
    if (not problems or d.skip_bad_rows) and not fatal and \
            not any(s.labels.get(main, MISSING) != MISSING for s in parts["cross-validation"]):
        fatal.append(f"no training row has a label for the main task {main!r}")
    if grouped:
        description += f"; {len(grouped)} group(s) of patients with identical images kept together"
    policy = d.empty_roi
    if policy != "error" and "roi" in d.views:
        every = [s for part in parts.values() for s in part]
        n = sum(1 for s in every if "roi" in s.views and (s.views["roi"] is None if policy == "missing"
                                                          else "roi" not in s.rois))
        if n:
            description += (f"; {n} image(s) with an empty mask: their 'roi' view "
                            f"{'is the whole image' if policy == 'whole_image' else 'is missing'} (data.empty_roi)")
    leaks += leakage_problems(parts)  # a patient in the CV data and a test set: refused by validate as by run
    data = RunData(parts["cross-validation"], parts["test"], parts["external"], description, problems, kinds,
                   delimiters)
    return DataCheck(data, problems, fatal, leaks, bool(d.skip_bad_rows), inputs_checked)


def plan_folds(pool: Sequence[Sample], recipe, tasks: Mapping[str, Task]) -> dict[str, int]:
    """Patient -> fold, refusing folds that miss a class of the main task."""
    from lnzoo.data.checks import fold_class_coverage
    from lnzoo.data.splits import patient_folds

    main = recipe.config.tasks.main
    if recipe.config.cv.folds_file:
        assignment = read_folds_file(Path(recipe.config.cv.folds_file), pool, recipe.config.cv.folds, main)
    else:
        assignment = patient_folds(pool, recipe.config.cv.folds, main, recipe.config.seed)
    problems = fold_class_coverage(pool, assignment, main, tasks[main].classes)
    if problems:
        raise DataError(problems, "problem(s) with the folds")
    return assignment


def read_folds_file(path: Path, pool: Sequence[Sample], folds: int, main: str) -> dict[str, int]:
    """Patient -> fold from a CSV with columns patient,fold (a previous run's folds.csv, a published split).

    Patients merged into one split group (``data.identical_images = "group"``, named "a+b") take
    their members' fold, which must agree. A patient without a main-task label that the file does
    not list is training-only (in the training part of every fold); a labelled one is an error.
    """
    if not path.is_file():
        raise UsageError(f"cv.folds_file: {path} not found")
    given: dict[str, int] = {}
    problems: list[str] = []
    reader, _ = csv_reader(path)
    if not reader.fieldnames or not {"patient", "fold"} <= set(reader.fieldnames):
        raise DataError([f"{path}:1: needs the columns 'patient' and 'fold', found {reader.fieldnames}"])
    for row in reader:
        line = reader.line_num
        p, f = (row["patient"] or "").strip(), (row["fold"] or "").strip()
        try:
            k = int(f)
        except ValueError:
            problems.append(f"{path}:{line}: fold {f!r} is not an integer")
            continue
        if not 0 <= k < folds:
            problems.append(f"{path}:{line}: fold {k} is outside 0..{folds - 1} (cv.folds = {folds})")
        elif p in given and given[p] != k:
            problems.append(f"{path}:{line}: patient {p!r} is listed in folds {given[p]} and {k}")
        given[p] = k
    assignment: dict[str, int] = {}
    labelled = {s.patient for s in pool if s.labels.get(main, MISSING) != MISSING}
    for patient in sorted({s.patient for s in pool}):
        members = [patient] if patient in given else [m for m in patient.split("+") if m in given]
        ks = {given[m] for m in members}
        if len(ks) > 1:
            problems.append(f"{path}: patients {', '.join(members)} share identical images (one split group) "
                            f"but are listed in folds {sorted(ks)}")
        elif ks:
            assignment[patient] = ks.pop()
        elif patient in labelled:
            problems.append(f"{path}: patient {patient!r} has {main!r} labels but no fold in the file")
        else:
            assignment[patient] = -1  # unlabelled for the main task: training-only, never held out
    if problems:
        raise DataError(problems, "problem(s) with cv.folds_file")
    return assignment


def data_digest(data) -> str:
    """A fingerprint of the run's rows: images, patients, labels, parts and the cells the inputs read (covariates,
    reports, mask paths) (``--resume`` checks it; an edit to a column no input reads changes nothing)."""
    import hashlib

    read = sorted({c for kind, _ in data.inputs.values() for c in (getattr(kind, "columns", None) or [kind.column])})
    h = hashlib.sha256()
    for part, samples in (("cv", data.pool), ("test", data.test), ("external", data.external)):
        for s in samples:
            cells = [(c, s.cells.get(c)) for c in read]
            h.update(f"{part}|{s.key}|{s.patient}|{sorted(s.labels.items())}|{cells}\n".encode())
    return h.hexdigest()
