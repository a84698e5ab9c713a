"""A user's text and CSV files as lnzoo reads them: UTF-8 (another encoding named, with the re-encoding command),
line ends only at line ends, and the delimiter of a CSV file decided by one rule for every reader."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from lnzoo.errors import DataError


def read_lines(path: Path) -> list[str]:
    """The lines of a text file the user gave, split at line ends only (a form feed or U+2028 inside a cell
    is text, not a new row); a missing or non-UTF-8 file is a named DataError."""
    lines = read_text(path).split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_text(path: Path) -> str:
    """A text file the user gave, with ``\n`` line ends; a missing or non-UTF-8 file is a named DataError."""
    try:
        return path.read_text(encoding="utf-8-sig")  # tolerates a BOM; CRLF and CR read as LF
    except FileNotFoundError:
        raise DataError([f"{path}: file not found"], "problem(s) with the data sources") from None
    except UnicodeDecodeError as exc:
        raw = path.read_bytes()
        line = raw[:exc.start].count(b"\n") + 1
        guess = next((enc for enc in ("gb18030", "big5", "shift_jis", "cp1252") if _decodes(raw, enc)), None)
        hint = (f"; it reads as {guess.upper()}: re-encode it, e.g. iconv -f {guess.upper()} -t UTF-8 "
                f"{path.name} > {path.stem}-utf8{path.suffix}" if guess else "; save it as UTF-8")
        raise DataError([f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start}){hint}"],
                        "problem(s) with the data sources") from None


# the delimiters a user's CSV file may use, and how messages name them
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}


def delimiter_name(delimiter: str) -> str:
    return f"{delimiter!r} ({DELIMITERS.get(delimiter, 'other')})"


def _outside_quotes(line: str) -> str:
    """The characters of a CSV line that are not inside double quotes."""
    out, quoted = [], False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            out.append(ch)
    return "".join(out)


def detect_delimiter(lines: Sequence[str], path: Path | str) -> str:
    """The delimiter of a user's CSV file (manifest, serving manifest, folds file), by one rule for every reader.

    The header (the first non-blank line) decides: the one of comma, semicolon and tab that it holds outside
    quotes; a header holding none of them is a one-column file (comma). A header holding several is decided by
    the rows: the one delimiter that splits the header and every row into the same number of fields. When none
    or several do, the file is refused (a DataError naming it and the candidates), never read with a guess: a
    ``;`` file read with ``,`` would be one column whose name holds every other, and each row one cell.
    """
    header = next((line for line in lines if line.strip()), "")
    found = [d for d in DELIMITERS if d in _outside_quotes(header)]
    if len(found) <= 1:
        return found[0] if found else ","
    text = "\n".join(lines)  # parsed as a whole: a quoted cell may span lines

    def widths(d: str) -> set[int]:
        return {len(r) for r in csv.reader(io.StringIO(text, newline=""), delimiter=d) if r}
    fits = [d for d in found if len(widths(d)) == 1]
    if len(fits) == 1:
        return fits[0]
    names = " and ".join(delimiter_name(d) for d in found)
    why = "every row splits evenly with each" if fits else "no one of them splits every row into the header's fields"
    raise DataError([(f"{path}:1: the header holds {names} and {why}, so the delimiter is ambiguous; save the "
                      "file with one delimiter (a comma, or a semicolon for a decimal-comma spreadsheet) and quote "
                      "cells that contain it")], "problem(s) with the data sources")


def csv_reader(path: Path) -> tuple[csv.DictReader, str]:
    """A DictReader over a user's CSV file, with the delimiter :func:`detect_delimiter` finds, and that delimiter."""
    text = read_text(path)
    delimiter = detect_delimiter(text.split("\n"), path)
    return csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter), delimiter


def _list_delimiter_problem(path: Path, lines: Sequence[str]) -> str | None:
    """A list file is ``path,label`` lines (split at the last comma, so a path may hold commas): one whose lines
    hold no comma but a semicolon or tab is told so, once, instead of one 'expected path,label' per line."""
    rows = [(n, line) for n, line in enumerate(lines, start=1) if line.strip() and not line.lstrip().startswith("#")]
    if not rows or any("," in line for _, line in rows):
        return None
    for n, line in rows:
        other = next((d for d in DELIMITERS if d != "," and d in line), None)
        if other is not None:
            return (f"{path}:{n}: this list file separates path and label with {delimiter_name(other)} "
                    f"({line.strip()!r}); list files are 'path,label' lines: write a comma there, or give the "
                    "images as a CSV manifest (whose delimiter is detected)")
    return None


def _decodes(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True
