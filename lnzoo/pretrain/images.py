"""The unlabelled images a self-supervised pretraining reads, and the leakage rule that guards its use.

**Sources** (``pretrain.data``, else ``data.train``; labels are never read): a folder gives every image below it,
unless it holds a ``manifest.csv`` (an ``lnzoo synth`` or ``lnzoo ingest`` folder), which gives that manifest's
images; a ``.csv`` manifest gives its ``path`` column (paths relative to the manifest); a list file (``.txt``) gives
the first field of each line. With neither, the recipe's phantom is the source.

**Leakage rule.** A pretraining run lists the content digest of every image it read (``pretrain_images.csv``), and
its backbone file carries them in its own header, so a copy of the file anywhere still says what it read. A run
that starts from such a backbone (``model.init_from``, or ``model.backbone.pretrained_file``) is refused, naming the
images, when the pretraining saw an image it will be evaluated on (every image of its cross-validation pool, test
and external sets), unless the pretraining was declared transductive (``pretrain.transductive = true``):
self-supervised features fitted on the very images they are evaluated on flatter the result.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lnzoo.errors import DataError, UsageError

IMAGES_CSV = "pretrain_images.csv"  # path, content digest of every image a pretraining read
RESULT = "backbone.safetensors"     # the pretrained backbone, with backbone.json beside it
FORMAT = "lnzoo-pretrained-backbone"  # the backbone file's header: format, and what follows
READ_KEY, TRANSDUCTIVE_KEY = "lnzoo_pretraining_images", "lnzoo_transductive"
DIGEST_CHARS = 16  # of each image's digest in the header: 64 bits, no accidental match among millions of images


def result_metadata(digests: Sequence[str], transductive: bool) -> dict[str, str]:
    """The header a pretrained backbone file is saved with: what it is, the images it read, whether declared
    transductive."""
    return {"format": FORMAT, READ_KEY: ",".join(sorted({d[:DIGEST_CHARS] for d in digests})),
            TRANSDUCTIVE_KEY: "true" if transductive else "false"}


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


def pretraining_read(source: str | Path) -> tuple[set[str], bool, Path] | None:
    """What a weight file that lnzoo's pretraining wrote says it read, wherever the file now is (a pretraining run
    directory means its backbone file): (the images' digest prefixes, declared transductive, the file). None for
    weights of any other kind (a checkpoint, a bundle, a hub file, ``zoo:NAME``)."""
    p = Path(source).expanduser()
    weights = p / RESULT if p.is_dir() else p
    if weights.suffix != ".safetensors" or not weights.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:  # the header only
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - not a readable safetensors file: the loader that reads it names that
        return None
    if meta.get("format") != FORMAT:
        return None
    if READ_KEY in meta:
        return {d for d in meta[READ_KEY].split(",") if d}, meta.get(TRANSDUCTIVE_KEY) == "true", weights
    folder = weights.parent  # written before the header said it: the image list beside the file
    if not (folder / IMAGES_CSV).is_file():
        raise UsageError(f"{weights}: a pretrained backbone whose images are listed neither in its header (an lnzoo "
                         f"before 0.2 wrote it) nor in a {IMAGES_CSV} beside it, so whether it read this run's "
                         f"evaluation images cannot be checked; put the pretraining run's {IMAGES_CSV} beside it, "
                         "or pretrain again")
    import json

    with open(folder / IMAGES_CSV, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "digest" not in (reader.fieldnames or []):
            raise UsageError(f"{folder / IMAGES_CSV} has no 'digest' column (columns: {reader.fieldnames}); it is not "
                             "the image list lnzoo's pretraining writes")
        seen = {row["digest"][:DIGEST_CHARS] for row in reader}
    info = folder / "backbone.json"
    transductive = info.is_file() and bool(json.loads(info.read_text(encoding="utf-8")).get("transductive"))
    return seen, transductive, weights


def pretraining_leaks(sources: Iterable[tuple[str, Any]], evaluated: Mapping[str, Iterable[Any]],
                      digests: Mapping[Any, str]) -> list[str]:
    """The leakage rule: problems when a weight source a run starts from (``sources``: (recipe key, value), e.g.
    model.init_from, model.backbone.pretrained_file) is a self-supervised pretraining that read images of
    ``evaluated`` (part -> samples; ``digests``: a sample's image path -> digest, as the data checks computed them)."""
    problems = []
    for key, source in sources:
        read = pretraining_read(source) if source else None
        if read is None or read[1]:  # not a pretraining; or declared transductive: its report says so
            continue
        seen, _, weights = read
        hits: dict[str, list[str]] = {}
        for part, samples in evaluated.items():
            for s in samples:
                for path in (q for q in s.views.values() if q is not None):
                    d = digests.get(path) or digests.get(str(path))
                    if d is None and Path(path).is_file():
                        d = digest(Path(path))
                    if d is not None and d[:DIGEST_CHARS] in seen:
                        hits.setdefault(part, []).append(str(path))
        if hits:
            said = "; ".join(f"{len(v)} of the {part} images (e.g. {v[0]})" for part, v in hits.items())
            problems.append(f"{key} = {source}: its self-supervised pretraining ({weights}) read {said}, which this "
                            "run evaluates on. Pretrain without them (pretrain.data), or declare the pretraining "
                            "transductive (pretrain.transductive = true) and report it as such")
    return problems


def check_usable(paths: Sequence[Path], batch_size: int) -> None:
    if len(paths) < 2:
        raise UsageError(f"pretraining needs at least 2 images, found {len(paths)}")
    if len(paths) < batch_size:
        raise UsageError(f"pretraining on {len(paths)} image(s) with data.batch_size = {batch_size}: every batch "
                         "would be one partial batch; lower data.batch_size or add images")
