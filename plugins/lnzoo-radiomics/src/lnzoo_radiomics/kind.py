"""The input kind ``radiomics``: one radiomics feature vector per manifest row, read from a CSV file.

A manifest column (``column``, by default the input's name) holds, per row, the path of a CSV file (relative
to the manifest's folder) with the header ``feature,value`` and one row per feature::

    feature,value
    original_shape_Elongation,0.7412
    original_glcm_Contrast,12.09

Each file is read once per run and kept in memory, keyed by its resolved path (re-read only if it changes).
``check`` names every bad file with the manifest row and the file's own line; ``fit`` picks the features and
their mean and sd on a fold's training part; ``encode`` standardises a row's values with them (clipped at
+-``CLIP`` sd). An empty cell is a missing input for that row, handled like a missing image view.

Imports no torch: only :meth:`RadiomicsInput.encoder` does.
"""
from __future__ import annotations

import codecs
import csv
import difflib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lnzoo.errors import DataError

HEADER = ("feature", "value")
CLIP = 8.0  # standardised values beyond +-8 sd of the training part are clipped (radiomics is heavy-tailed)
STATE_VERSION = 1  # the layout of the fitted state the checkpoint sidecar stores
MAX_PROBLEMS_PER_FILE = 5  # a broken file is named with its first few bad lines, then a count
CACHE_ENTRIES = 200_000  # parsed files kept in memory (a run's files; a long serving process stays bounded)


@dataclass(frozen=True)
class RadiomicsFile:
    """One parsed radiomics file: its feature names (file order), their values, and what is wrong with it.

    ``problems`` holds (line or None, reason); a file with any problem has no usable values.
    """

    names: tuple[str, ...]
    index: Mapping[str, int]
    values: np.ndarray  # float64, (len(names),)
    problems: tuple[tuple[int | None, str], ...] = ()

    def get(self, name: str) -> float | None:
        i = self.index.get(name)
        return None if i is None else float(self.values[i])


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _broken(*problems: tuple[int | None, str]) -> RadiomicsFile:
    return RadiomicsFile((), {}, np.zeros(0), tuple(problems))


def parse_file(path: str | Path, _layouts: dict | None = None) -> RadiomicsFile:
    """Read one ``feature,value`` file. Never raises for a bad file: what is wrong is in ``problems``.

    ``_layouts`` (optional) shares the names and index of files with the same feature list (memory).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _broken((None, f"not found ({path})"))
    except IsADirectoryError:
        return _broken((None, f"is a folder, not a file ({path})"))
    except (OSError, ValueError) as exc:
        return _broken((None, f"cannot be read ({getattr(exc, 'strerror', None) or exc})"))
    if raw.startswith(codecs.BOM_UTF8):  # spreadsheet programs write one; offsets below count after it
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return _broken((line, f"not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"))
    reader = csv.reader(text.splitlines())
    problems: list[tuple[int | None, str]] = []
    names: list[str] = []
    values: list[float] = []
    first_line: dict[str, int] = {}
    try:
        header = next(reader, None)
        if header is None:
            return _broken((1, "empty file; expected the header 'feature,value'"))
        if [c.strip().lower() for c in header] != list(HEADER):
            return _broken((1, f"header {_short(','.join(header))!r}, expected 'feature,value'"))
        for row in reader:
            line = reader.line_num
            if not any(c.strip() for c in row):
                continue  # a blank line
            if len(row) != 2:
                problems.append((line, f"{len(row)} fields {_short(','.join(row))!r}, expected 'feature,value'"))
                continue
            name, value = row[0].strip(), row[1].strip()
            if not name:
                problems.append((line, f"no feature name before the value {_short(value)!r}"))
                continue
            if name in first_line:
                problems.append((line, f"feature {_short(name, 80)!r} again (first on line {first_line[name]})"))
                continue
            first_line[name] = line
            try:
                number = float(value)
            except ValueError:
                problems.append((line, f"value {_short(value)!r} of feature {_short(name, 80)!r} is not a number"))
                continue
            if not math.isfinite(number):
                problems.append((line, f"value {_short(value)!r} of feature {_short(name, 80)!r} is not finite"))
                continue
            names.append(name)
            values.append(number)
    except csv.Error as exc:
        problems.append((reader.line_num, f"not CSV ({exc})"))
    if problems:
        return _broken(*problems)
    if not names:
        return _broken((None, "no feature after the header 'feature,value'"))
    key = tuple(names)
    if _layouts is not None:
        key, index = _layouts.setdefault(key, (key, {n: i for i, n in enumerate(key)}))
    else:
        index = {n: i for i, n in enumerate(key)}
    return RadiomicsFile(key, index, np.asarray(values, dtype=np.float64))


class RadiomicsInput:
    """A radiomics CSV file per row (``feature,value``) -> its standardised features (len(features),).

    ``column``: the manifest column naming each row's file (default: the input's name). ``features``: the
    features to use, in that order; None: the features every training row's file has (in the order of the
    first such file), less any some row of the run lacks. ``hidden``: the width of the encoder's hidden layer.
    """

    dtype = "float32"

    def __init__(self, column: str, features: list[str] | None = None, hidden: int = 64):
        if not isinstance(column, str) or not column.strip():
            raise ValueError(f"column = {column!r}: the manifest column that names each row's radiomics file")
        if features is not None:
            if isinstance(features, str) or not isinstance(features, (list, tuple)) or \
                    not all(isinstance(f, str) and f.strip() for f in features):
                raise ValueError(f"features = {features!r}: a list of feature names, e.g. "
                                 "[\"original_shape_Elongation\", \"original_glcm_Contrast\"]; leave it out to use "
                                 "every feature all the files have")
            features = [f.strip() for f in features]
            if not features:
                raise ValueError("features = []: name at least one feature, or leave it out to use every feature "
                                 "all the files have")
            twice = sorted({f for f in features if features.count(f) > 1})
            if twice:
                raise ValueError(f"features: {twice} named more than once")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden = {hidden!r}: the width of the encoder's hidden layer, an int >= 1")
        self.column, self.features, self.hidden = column, features, hidden
        self._files: dict[str, tuple[tuple[int, int] | None, RadiomicsFile]] = {}
        self._layouts: dict[tuple[str, ...], tuple[tuple[str, ...], dict[str, int]]] = {}
        self._common: set[str] | None = None  # the features every file of the run has (None: check not run)
        self._seen: dict[str, Any] | None = None  # what check saw, for data_note

    # --- reading ----------------------------------------------------------------------------------

    def _shown(self, sample) -> str:
        """The file as the manifest names it (what a user finds in their data)."""
        return (sample.cells.get(self.column) or "").strip()

    def read(self, path: Path) -> RadiomicsFile:
        """The parsed file at ``path``, read once (again only if its size or modification time changed)."""
        key = str(path)
        try:
            st = os.stat(path)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except (OSError, ValueError):
            stamp = None
        hit = self._files.get(key)
        if hit is not None and hit[0] == stamp and stamp is not None:
            return hit[1]
        parsed = parse_file(path, self._layouts)
        if len(self._files) >= CACHE_ENTRIES:
            self._files.pop(next(iter(self._files)))
        self._files[key] = (stamp, parsed)
        return parsed

    def _describe(self, sample, parsed: RadiomicsFile) -> list[str]:
        shown = self._shown(sample)
        out = [f"{sample.origin}: radiomics file {shown}{'' if line is None else f':{line}'}: {reason}"
               for line, reason in parsed.problems[:MAX_PROBLEMS_PER_FILE]]
        if len(parsed.problems) > MAX_PROBLEMS_PER_FILE:
            out.append(f"{sample.origin}: radiomics file {shown}: and {len(parsed.problems) - MAX_PROBLEMS_PER_FILE} "
                       "more bad line(s)")
        return out

    def _lacks(self, sample, parsed: RadiomicsFile, wanted: Sequence[str], why: str) -> str | None:
        lacking = [f for f in wanted if f not in parsed.index]
        if not lacking:
            return None
        more = f" (and {len(lacking) - 1} more of them)" if len(lacking) > 1 else ""
        return f"{sample.origin}: radiomics file {self._shown(sample)}: no feature {lacking[0]!r}{more}, {why}"

    def _parsed(self, sample) -> RadiomicsFile | None:
        """A row's good file, None for an empty cell; a bad file raises DataError naming row, file and line."""
        path = sample.cell_path(self.column)
        if path is None:
            return None
        parsed = self.read(path)
        if parsed.problems:
            raise DataError(self._describe(sample, parsed), "problem(s) with radiomics files")
        return parsed

    # --- the InputKind contract -------------------------------------------------------------------

    def check(self, samples: Sequence[Any], problems: list[str]) -> set[int]:
        if samples and not any(self.column in s.cells for s in samples):
            raise DataError([f"no row of the data has a column {self.column!r} (the path of each row's radiomics "
                             "file); set the input's column"])
        bad: set[int] = set()
        good: list[tuple[int, Any, RadiomicsFile]] = []
        given = empty = 0
        for i, s in enumerate(samples):
            path = s.cell_path(self.column)
            if path is None:
                empty += 1
                continue
            given += 1
            parsed = self.read(path)
            if parsed.problems:
                problems += self._describe(s, parsed)
                bad.add(i)
            else:
                good.append((i, s, parsed))
        if samples and not given:
            raise DataError([f"the column {self.column!r} is empty in every row: no row names a radiomics file"])
        union: set[str] = set()
        common: set[str] | None = None
        for _, _, parsed in good:
            union.update(parsed.names)
            common = set(parsed.names) if common is None else common.intersection(parsed.names)
        if self.features is not None and good:
            unknown = [f for f in self.features if f not in union]
            if unknown:
                close = difflib.get_close_matches(unknown[0], sorted(union), n=3, cutoff=0.6)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise DataError([f"features: no radiomics file in column {self.column!r} has the feature(s) "
                                 f"{unknown}{hint}"])
            for i, s, parsed in good:
                problem = self._lacks(s, parsed, self.features, "which the input's features name")
                if problem:
                    problems.append(problem)
                    bad.add(i)
        self._common = common
        fewest = min(good, key=lambda g: len(g[2].names)) if good else None
        self._seen = {"files": len(good), "bad": len(bad), "empty": empty, "union": len(union),
                      "common": len(common or ()),
                      "fewest": (self._shown(fewest[1]), len(fewest[2].names)) if fewest else None}
        return bad

    def data_note(self) -> str | None:
        if self._seen is None:
            return None
        seen = self._seen
        n_features = len(self.features) if self.features is not None else seen["common"]
        note = f"{seen['files']} radiomics file(s), {n_features} feature(s); {seen['empty']} row(s) without one"
        if self.features is None and seen["union"] > seen["common"] and seen["fewest"]:
            shown, count = seen["fewest"]
            note += (f"; {seen['union'] - seen['common']} feature(s) only some files have are left out "
                     f"(fewest: {shown}, {count})")
        return note

    def fit(self, samples: Sequence[Any]) -> dict[str, Any]:
        rows = [(s, p) for s in samples if (p := self._parsed(s)) is not None]
        if not rows:
            raise DataError([f"the training part has no row with a radiomics file in column {self.column!r}"])
        if self.features is not None:
            names = list(self.features)
            lacking = [m for s, p in rows if (m := self._lacks(s, p, names, "which the input's features name"))]
            if lacking:
                raise DataError(lacking, "problem(s) with radiomics files")
        else:
            first = rows[0][1]
            names = [f for f in first.names if all(f in p.index for _, p in rows[1:])
                     and (self._common is None or f in self._common)]
            if not names:
                raise DataError([f"the radiomics files of the training part (column {self.column!r}) have no "
                                 "feature in common; name the features to use with the input's features"])
        arr = np.stack([p.values[[p.index[f] for f in names]] for _, p in rows])
        with np.errstate(over="ignore", invalid="ignore"):
            mean, sd = arr.mean(0), arr.std(0)
        if not (np.isfinite(mean).all() and np.isfinite(sd).all()):
            worst = names[int(np.argmin(np.isfinite(mean) & np.isfinite(sd)))]
            raise DataError([f"feature {worst!r}: its values are too large to standardise (rescale them)"])
        sd = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mean)), sd, 1.0)  # a constant feature: sd 1
        return {"version": STATE_VERSION, "features": names, "mean": mean.tolist(), "sd": sd.tolist(),
                "n": len(rows), "hidden": self.hidden}  # the encoder's width, so a reload rebuilds it as trained

    def shape(self, state: Mapping[str, Any]) -> tuple[int, ...]:
        return (len(state["features"]),)

    def encode(self, sample: Any, state: Mapping[str, Any]) -> np.ndarray | None:
        if state.get("version", STATE_VERSION) != STATE_VERSION:
            raise DataError([f"the model's radiomics state is version {state.get('version')}, this lnzoo-radiomics "
                             f"reads version {STATE_VERSION}: retrain, or use the version that trained it"])
        parsed = self._parsed(sample)
        if parsed is None:
            return None
        names = state["features"]
        problem = self._lacks(sample, parsed, names, "which the model was fitted with")
        if problem:
            raise DataError([problem], "problem(s) with radiomics files")
        x = parsed.values[[parsed.index[f] for f in names]]
        with np.errstate(over="ignore", invalid="ignore"):
            z = (x - np.asarray(state["mean"], dtype=np.float64)) / np.asarray(state["sd"], dtype=np.float64)
        return np.clip(np.nan_to_num(z, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP).astype(np.float32)

    def encoder(self, state: Mapping[str, Any], out_features: int):
        from lnzoo.nn.inputs import FeatureMLP

        return FeatureMLP(self.shape(state)[0], int(state.get("hidden", self.hidden)), out_features)

    def feature_names(self, state: Mapping[str, Any]) -> list[str]:
        return list(state["features"])
