"""The unlabelled images a self-supervised pretraining reads, and the leakage rule that guards its use.

**Sources** (``pretrain.data``, else ``data.train``; labels are never read): a folder gives every image below it,
unless it holds a ``manifest.csv`` (an ``lnzoo synth`` or ``lnzoo ingest`` folder), which gives that manifest's
images; a ``.csv`` manifest gives its ``path`` column (paths relative to the manifest); a list file (``.txt``) gives
the first field of each line. With neither, the recipe's phantom is the source.

**Leakage rule.** A pretraining run lists the content digest of every image it read (``pretrain_images.csv``). A run whose
``model.init_from`` is that pretraining is refused, naming the images, when the pretraining saw an image it will
be evaluated on (every image of its cross-validation pool, test and external sets), unless the pretraining was
declared transductive (``pretrain.transductive = true``): self-supervised features fitted on the very images they
are evaluated on flatter the result.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lnzoo.errors import DataError, UsageError

IMAGES_CSV = "pretrain_images.csv"  # path, content digest of every image a pretraining read
RESULT = "backbone.safetensors"     # the pretrained backbone, with backbone.json beside it


def _manifest_paths(path: Path, problems: list[str]) -> list[Path]:
    from lnzoo.data.tables import csv_reader

    reader, _ = csv_reader(path)
    if "path" not in (reader.fieldnames or []):
        problems.append(f"{path}:1: no 'path' column (columns: {', '.join(reader.fieldnames or [])})")
        return []
    out = []
    for row in reader:
        cell = (row.get("path") or "").strip()
        if cell:
            out.append(Path(cell) if Path(cell).is_absolute() else (path.parent / cell).resolve())
    return out


def _list_paths(path: Path) -> list[Path]:
    """A list file's images: lnzoo's ``path,label`` lines (the label ignored), or one path per line."""
    from lnzoo.data.tables import read_lines

    out = []
    for line in read_lines(path):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rel = (line.rsplit(",", 1)[0] if "," in line else line).strip()
        out.append(Path(rel) if Path(rel).is_absolute() else (path.parent / rel).resolve())
    return out


def source_images(spec: Any) -> list[Path]:
    """Every image path of one or several sources (see the module docstring), in order, without duplicates."""
    from lnzoo.data.samples import IMAGE_SUFFIXES

    items = spec if isinstance(spec, list) else [spec]
    problems: list[str] = []
    paths: list[Path] = []
    for item in items:
        p = Path(item["path"] if isinstance(item, Mapping) else item)
        if p.is_dir():
            paths += (_manifest_paths(p / "manifest.csv", problems) if (p / "manifest.csv").is_file()
                      else sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.suffix.lower() == ".csv" and p.is_file():
            paths += _manifest_paths(p, problems)
        elif p.is_file():
            paths += _list_paths(p)
        else:
            problems.append(f"pretrain.data: {p} not found")
    missing = [q for q in paths if not q.is_file()]
    problems += [f"pretrain.data: {q}: file not found" for q in missing[:10]]
    if len(missing) > 10:
        problems.append(f"pretrain.data: ... and {len(missing) - 10} more missing image(s)")
    if problems:
        raise DataError(problems, "problem(s) with the pretraining images")
    return list(dict.fromkeys(paths))


def digest(path: Path) -> str:
    """An image's content digest, as the data checks take it (identical images, leakage between parts)."""
    from lnzoo.data.checks import file_digest

    return file_digest(Path(path))


def write_image_list(rd, paths: Sequence[Path], digests: Sequence[str]) -> None:
    from lnzoo.files import write_atomic

    write_atomic(rd / IMAGES_CSV, image_listing(paths, digests))


def image_listing(paths: Sequence[Path], digests: Sequence[str]) -> str:
    from lnzoo.files import csv_text

    return csv_text(["path", "digest"], [{"path": str(p), "digest": d} for p, d in zip(paths, digests)],
                    line_end="\n")


def pretraining_of(init_from: str | Path) -> Path | None:
    """The pretraining run directory a ``model.init_from`` names (the folder, or its backbone file), or None."""
    p = Path(init_from)
    folder = p if p.is_dir() else p.parent
    return folder if (folder / IMAGES_CSV).is_file() and (folder / RESULT).is_file() else None


def pretraining_leaks(init_from: str | Path | None, evaluated: Mapping[str, Iterable[Any]],
                     digests: Mapping[Any, str]) -> list[str]:
    """The leakage rule: problems when the pretraining ``init_from`` names read images of ``evaluated`` (part ->
    samples; ``digests``: a sample's image path -> sha256, as the data checks computed them)."""
    if not init_from:
        return []
    folder = pretraining_of(init_from)
    if folder is None:
        return []
    import json

    info = json.loads((folder / "backbone.json").read_text(encoding="utf-8"))
    if info.get("transductive"):  # declared: the overlap is the point; the pretraining's report says so
        return []
    with open(folder / IMAGES_CSV, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "digest" not in (reader.fieldnames or []):
            raise UsageError(f"model.init_from = {init_from}: {folder / IMAGES_CSV} has no 'digest' column (columns: "
                             f"{reader.fieldnames}); it is not the image list lnzoo's pretraining writes")
        seen = {row["digest"] for row in reader}
    hits: dict[str, list[str]] = {}
    for part, samples in evaluated.items():
        for s in samples:
            for path in (p for p in s.views.values() if p is not None):
                d = digests.get(path) or digests.get(str(path))
                if d is None and Path(path).is_file():
                    d = digest(Path(path))
                if d in seen:
                    hits.setdefault(part, []).append(str(path))
    if not hits:
        return []
    said = "; ".join(f"{len(v)} of the {part} images (e.g. {v[0]})" for part, v in hits.items())
    return [f"model.init_from = {init_from}: its self-supervised pretraining ({folder}) read {said}, which this run "
            "evaluates on. Pretrain without them (pretrain.data), or declare the pretraining transductive "
            "(pretrain.transductive = true) and report it as such"]


def check_usable(paths: Sequence[Path], batch_size: int) -> None:
    if len(paths) < 2:
        raise UsageError(f"pretraining needs at least 2 images, found {len(paths)}")
    if len(paths) < batch_size:
        raise UsageError(f"pretraining on {len(paths)} image(s) with data.batch_size = {batch_size}: every batch "
                         "would be one partial batch; lower data.batch_size or add images")
