"""Data checks run before any training: files, images, identical content across patients, fold coverage."""
from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lnzoo.data.images import read_pixels, roi_box
from lnzoo.data.samples import MISSING, Sample
from lnzoo.errors import DataError


def file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_files(samples: Sequence[Sample], problems: list[str], digests: dict[str, str]) -> set[int]:
    """Every view file exists, is non-empty and decodes; returns indices of bad samples, fills ``digests``."""
    bad: set[int] = set()
    for i, s in enumerate(samples):
        for view, path in s.views.items():
            if path is None:
                continue
            where = f"{s.origin}: {path}"
            if "#" in path.name and ".npz" in str(path):
                continue  # an array inside an .npz: checked when the file is read
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                problems.append(f"{where}: file not found" + (f" (the {view!r} view)" if view != "full" else ""))
                bad.add(i)
                continue
            if size == 0:
                problems.append(f"{where}: empty file")
                bad.add(i)
                continue
            try:
                read_pixels(path).close()  # decoded whole: a truncated file fails here, not in training
            except DataError as exc:  # it names the file and why; the row that gave it goes first
                problems += [f"{s.origin}: {p}" for p in exc.problems]
                bad.add(i)
                continue
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                problems.append(f"{where}: unreadable or corrupt image ({exc})")
                bad.add(i)
                continue
            digests[str(path)] = file_digest(path)
        for view, roi in s.rois.items():  # a 'roi' view's mask must exist and mark something
            path = s.views.get(view)
            if i in bad or path is None:
                continue
            if isinstance(roi, Path) and not roi.is_file():
                problems.append(f"{s.origin}: mask {roi} not found (the {view!r} view)")
                bad.add(i)
                continue
            try:
                with Image.open(path) as img:
                    size = img.size
                roi_box(roi, size, 0.0, s.origin)
            except DataError as exc:
                problems += exc.problems
                bad.add(i)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                pass  # the image itself was reported above
    return bad


def identical_content_across_patients(parts: Mapping[str, Sequence[Sample]], digests: Mapping[str, str]) -> list[str]:
    """The same image bytes under two patients (or two parts) would leak across a train/test boundary."""
    owners: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for part, samples in parts.items():
        for s in samples:
            for path in s.views.values():
                if path is not None and str(path) in digests:
                    owners[digests[str(path)]].add((part, s.patient, str(path)))
    problems = []
    for entries in owners.values():
        keys = {(part, patient) for part, patient, _ in entries}
        if len(keys) > 1:
            shown = "; ".join(f"{path} (patient {patient}, {part})" for part, patient, path in sorted(entries)[:4])
            problems.append(f"identical image content under different patients or parts: {shown}")
    return problems


def fold_class_coverage(samples: Sequence[Sample], assignment: Mapping[str, int], task: str,
                        classes: Sequence[str]) -> list[str]:
    """A class missing from a held-out fold leaves that fold's AUC undefined; say which."""
    present: dict[int, set[int]] = defaultdict(set)
    for s in samples:
        y = s.labels.get(task, MISSING)
        if y != MISSING:
            present[assignment[s.patient]].add(y)
    problems = []
    for fold in sorted(k for k in set(assignment.values()) if k >= 0):  # -1: training-only patients
        missing = [classes[c] for c in range(len(classes)) if c not in present[fold]]
        if missing:
            problems.append(f"fold {fold} has no {task} label of class(es) {missing}; "
                            f"lower cv.folds or add data")
    return problems


def group_identical_patients(samples: Sequence[Sample], digests: Mapping[str, str]) -> list[str]:
    """Merge patients that share identical image bytes into one split group (renaming them in place).

    Returns one line per merged group. Keeping them together keeps the copies on one side of every
    train/test boundary, which is the point of a patient-level split.
    """
    parent: dict[str, str] = {}

    def find(p: str) -> str:
        while parent.setdefault(p, p) != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    first_owner: dict[str, str] = {}
    for s in samples:
        for path in s.views.values():
            digest = digests.get(str(path)) if path is not None else None
            if digest is None:
                continue
            owner = first_owner.setdefault(digest, s.patient)
            a, b = find(owner), find(s.patient)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        groups[find(s.patient)].add(s.patient)
    names = {root: "+".join(sorted(members)) for root, members in groups.items() if len(members) > 1}
    for s in samples:
        root = find(s.patient)
        if root in names:
            s.patient = names[root]
    return [f"patients {name.replace('+', ', ')} share identical images: split as one group" for name in names.values()]
