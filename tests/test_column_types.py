"""A covariate column's type follows one rule a user can read (lnzoo.data.covariates.column_type), never a vote;
a CSV file's delimiter is detected by one rule too (lnzoo.data.tables.detect_delimiter). Issue 26, class 3."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lnzoo.data.covariates import (
    CovariateEncoder,
    column_type,
    covariate_types,
    parse_number,
)
from lnzoo.data.samples import Sample, load_source, read_manifest
from lnzoo.data.tables import detect_delimiter
from lnzoo.errors import DataError
from lnzoo.plugins import load_plugins
from tests.conftest import REPO, invoke_cli, phantom_rows

TASKS = {"malignancy": load_plugins().get("task", "malignancy").build()}
RECIPE = str(REPO / "recipes" / "stage1_aux.toml")
ALL_DELIMITERS = [",", ";", "\t"]


def _cells(values, delimiter=",", start=2):
    return [(f"m.csv:{start + i}", v, delimiter) for i, v in enumerate(values)]


# -- the rule, case by case ---------------------------------------------------------------------------------------
# (cells, delimiter of their file, declared type, expected kind, decimal mark, lines named as errors, text in them)
RULE = [
    (["61", "70", "55"], ",", None, "numeric", ".", [], ""),
    (["61.5", "-70", "+5.25", "1e3", "2.5E-2"], ",", None, "numeric", ".", [], ""),
    (["61,5", "70", "55,25"], ";", None, "numeric", ",", [], ""),
    (["61,5", "70"], "\t", None, "numeric", ",", [], ""),
    (["M", "F", "M"], ",", None, "categorical", ".", [], ""),
    (["present", "absent", "", "NaN"], ",", None, "categorical", ".", [], ""),
    (["", "nan", "NA"], ",", None, "categorical", ".", [], ""),          # nothing known: no number to read
    (["61", "", "NA", "nan", "70"], ",", None, "numeric", ".", [], ""),  # NA listed as missing below
    # a decimal comma where the delimiter is a comma (a quoted cell): never read as a number, never a category
    (["61,5", "70,25"], ",", None, None, None, [2, 3], "decimal comma"),
    (["61,5", "70"], ",", None, None, None, [2], "decimal comma"),
    # both decimal marks in one column: the rarer one's lines are named
    (["61,5", "70.5", "3,25", "8,5"], ";", None, None, None, [3], "decimal point where 3 other cell(s)"),
    (["61.5", "70,5", "3.25"], "\t", None, None, None, [3], "decimal comma where 2 other cell(s)"),
    # units on the values, in a column of numbers or throughout it
    (["12 mm", "15", "9"], ",", None, None, None, [2], "'mm' after one"),
    (["3.4cm", "12", "15"], ",", None, None, None, [2], "'cm' after one"),
    (["12 mm", "15 mm", "9 mm"], ",", None, None, None, [2, 3, 4], "'mm' after one"),
    (["45%", "50%"], ",", None, None, None, [2, 3], "'%' after one"),
    (["12,5 mm", "15"], ";", None, None, None, [2], "'mm' after one"),
    # a typo, a word, a thousands separator or 'inf' among numbers
    (["4O", "61", "70"], ",", None, None, None, [2], "'4O' is not a number"),
    (["61", "sixty", "70"], ",", None, None, None, [3], "'sixty' is not a number"),
    (["1,234.5", "12"], ",", None, None, None, [2], "not a number"),
    (["1.234,5", "12"], ";", None, None, None, [2], "not a number"),
    (["inf", "12"], ",", None, None, None, [2], "'inf' is not a number"),
    (["12.", "13"], ",", None, None, None, [2], "'12.' is not a number"),
    # starts like a number but none is one (TI-RADS 4a/4b): declare it
    (["4a", "4b", "5"], ",", None, None, None, [2, 3], "not a number"),
    # words with a stray number: the number is named
    (["none", "peripheral", "central", "mixed", "0"], ",", None, None, None, [6], "a number among words"),
    # declared: the declaration wins; a declared numeric column's other cells are bad rows, not errors
    (["12 mm", "3", "x"], ",", "categorical", "categorical", ".", [], ""),
    (["61", "sixty", "70"], ",", "numeric", "numeric", ".", [], ""),
    (["61,5", "sixty"], ";", "numeric", "numeric", ",", [], ""),
]


@pytest.mark.parametrize("values, delimiter, declared, kind, decimal, lines, text", RULE)
def test_a_column_is_typed_by_the_rule(values, delimiter, declared, kind, decimal, lines, text):
    ct = column_type("x", _cells(values, delimiter), declared, ["na"])
    if lines:  # an error naming each such line (file:line), its value and what to do
        assert ct.errors, ct
        named = [e for e in ct.errors if e.startswith("m.csv:")]
        assert sorted(int(e.split(":")[1]) for e in named) == lines
        assert all(text in e for e in named), named
        for e in named:
            line = int(e.split(":")[1])
            assert repr(values[line - 2]) in e
        if len(ct.errors) > len(named):  # the column's summary says how to decide it
            assert 'data.covariate_types.x = "categorical"' in ct.errors[0]
    else:
        assert not ct.errors, ct.errors
        assert (ct.kind, ct.decimal) == (kind, decimal)


def test_a_declared_numeric_column_names_its_other_cells_as_bad_rows():
    ct = column_type("age", _cells(["61", "sixty", "12 mm", ""]), "numeric")
    assert ct.kind == "numeric" and ct.bad == {1, 2} and not ct.errors
    assert ct.problems[0].startswith("m.csv:3: covariate 'age': 'sixty' is not a number")
    assert ct.problems[1].startswith("m.csv:4: covariate 'age': '12 mm' is not a number: it has 'mm'")


def test_a_decimal_comma_needs_every_row_of_the_column_from_a_non_comma_file():
    cells = _cells(["61,5", "70"], ";") + _cells(["40,5"], ",", start=9)  # the test set saved with commas
    ct = column_type("age", cells)
    assert ct.errors and any(e.startswith("m.csv:9:") and "decimal comma" in e for e in ct.errors)
    rows = [(where, text, None) for where, text, _ in _cells(["3,5", "4"])]  # not from a CSV file at all
    assert column_type("age", rows).errors


def test_a_column_is_never_typed_by_a_vote():
    # one word among a hundred numbers, and one number among a hundred words: both are errors naming that line
    many = [str(i) for i in range(100)]
    assert [e for e in column_type("x", _cells([*many, "n/a"])).errors if e.startswith("m.csv:102:")]
    words = ["present"] * 100
    assert [e for e in column_type("x", _cells([*words, "1"])).errors if e.startswith("m.csv:102:")]


@pytest.mark.parametrize("text, decimal, value", [
    ("12", ".", 12.0), ("-3.5", ".", -3.5), ("1e-3", ".", 1e-3), (".5", ".", 0.5), ("3,5", ",", 3.5),
    ("12", ",", 12.0), ("3,5", ".", None), ("3.5", ",", None), ("12 mm", ".", None), ("1_000", ".", None),
    ("inf", ".", None), ("nan", ".", None), ("1e999", ".", None), ("١٢", ".", None), ("", ".", None),
])
def test_parse_number_reads_a_plain_number_only(text, decimal, value):
    assert parse_number(text, decimal) == value


# -- the delimiter ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lines, expected", [
    (["path,patient,malignancy", "a.png,P1,benign"], ","),
    (["path;patient;malignancy", "a.png;P1;benign"], ";"),
    (["path\tpatient\tmalignancy", "a.png\tP1\tbenign"], "\t"),
    (["", "path;patient;malignancy", "a.png;P1;benign"], ";"),                # blank lines before the header
    (['"path;x",patient,malignancy', "a.png,P1,benign"], ","),                # a quoted ';' in a column name
    (["path;patient;malignancy", 'a,b.png;P1;benign'], ";"),                  # a comma inside a cell
    (["path", "a.png"], ","),                                                 # one column
    (["path,patient,malignancy;note", "a.png,P1,benign;x", "b.png,P2,malignant"], ","),  # only ',' splits evenly
    (["path;patient;malignancy,x", "a.png;P1;benign,1", "b.png;P2;benign"], ";"),       # only ';' does
])
def test_the_delimiter_is_detected_by_the_header(lines, expected):
    assert detect_delimiter(lines, "m.csv") == expected


def test_a_header_that_cannot_tell_its_delimiter_is_refused_not_guessed():
    with pytest.raises(DataError, match=r"m.csv:1: the header holds ',' \(comma\) and ';' \(semicolon\)"):
        detect_delimiter(["path,patient;malignancy", "a.png,P1;benign", "b.png;P2,malignant"], "m.csv")


def test_a_semicolon_manifest_is_read_column_by_column(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path;patient;malignancy;age\na.png;P1;恶性;61,5\nb.png;P2;benign;40\n", encoding="utf-8")
    delimiters: dict[str, str] = {}
    rows = read_manifest(m, TASKS, ["full"], problems := [], delimiters=delimiters)
    assert not problems and delimiters == {str(m): ";"}
    assert [(s.patient, s.labels["malignancy"], s.cells["age"], s.delimiter) for s in rows] == \
        [("P1", 1, "61,5", ";"), ("P2", 0, "40", ";")]


def test_a_missing_column_names_the_delimiter_the_file_was_read_with(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path;case;malignancy\na.png;P1;benign\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no 'patient' column.*header has \['path', 'case', 'malignancy'\] "
                                        r"\(read with the delimiter ';' \(semicolon\)\)"):
        load_source(str(m), TASKS, {"views": ["full"], "crop_suffix": "-crop"})


def test_a_list_file_with_semicolons_is_told_so_once(tmp_path):
    lst = tmp_path / "main.txt"
    lst.write_text("img/a.png;良性\nimg/b.png;恶性\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"main.txt:1: this list file separates path and label with ';'") as exc:
        load_source(str(lst), TASKS, {"views": ["full"], "crop_suffix": "-crop"})
    assert len(exc.value.problems) == 1


# -- properties ---------------------------------------------------------------------------------------------------
def _manifest(tmp_path: Path, cells: list[str], delimiter: str) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter)
    w.writerow(["path", "patient", "malignancy", "x"])
    w.writerows([f"i{k}.png", f"P{k}", "benign", c] for k, c in enumerate(cells))
    path = tmp_path / "m.csv"
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    return path


def _read_types(path: Path, declared=None):
    samples = read_manifest(path, TASKS, ["full"], problems := [])
    assert not problems
    return samples, covariate_types(samples, ["x"], declared or {}, [], [])


FLOATS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(FLOATS, min_size=1, max_size=12), delimiter=st.sampled_from(ALL_DELIMITERS),
       comma=st.booleans())
def test_any_numeric_column_reads_back_its_numbers(tmp_path, values, delimiter, comma):
    """Written with a decimal point, or a decimal comma in a ';' or tab file, with any delimiter: numeric, and
    the values read are the values written."""
    comma = comma and delimiter != ","
    text = [repr(v).replace(".", ",") if comma else repr(v) for v in values]
    samples, (types, bad) = _read_types(_manifest(tmp_path, text, delimiter))
    ct = types["x"]
    assert ct.kind == "numeric" and not bad
    assert ct.decimal == ("," if comma and any("," in t for t in text) else ".")
    read = [parse_number(s.cells["x"], ct.decimal) for s in samples]
    assert read == values
    encoder = CovariateEncoder.fit(samples, ["x"], {"x": "numeric"}, decimals={"x": ct.decimal})
    assert math.isclose(encoder.spec[0]["mean"], sum(values) / len(values), rel_tol=1e-9, abs_tol=1e-6)


def _as_read(text: str) -> str:
    """A cell as a text file gives it back: every line end a LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


NOT_A_NUMBER = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8).filter(
    lambda t: t.strip() and t.strip().casefold() != "nan" and parse_number(t.strip(), ".") is None
    and parse_number(t.strip(), ",") is None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(FLOATS, min_size=1, max_size=10), word=NOT_A_NUMBER, at=st.integers(0, 10),
       delimiter=st.sampled_from(ALL_DELIMITERS))
def test_one_cell_that_is_not_a_number_among_numbers_is_named(tmp_path, values, word, at, delimiter):
    """Never a silent category: the column is refused, naming the line and the value of that cell."""
    at = min(at, len(values))
    cells = [repr(v) for v in values]
    cells.insert(at, word)
    path = _manifest(tmp_path, cells, delimiter)
    with pytest.raises(DataError) as exc:
        _read_types(path)
    named = [p for p in exc.value.problems if p.startswith(f"{path}:{at + 2}: ")]
    assert len(named) == 1 and repr(_as_read(word).strip()) in named[0], exc.value.problems


NAMES = st.lists(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6), min_size=2, max_size=5, unique=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=NAMES, data=st.data(), delimiter=st.sampled_from(ALL_DELIMITERS))
def test_any_csv_reads_back_its_cells_with_its_own_delimiter(tmp_path, names, data, delimiter):
    """Whatever the delimiter and whatever the cells hold (other delimiters, quotes, line ends, U+2028), the rows
    read are the rows written, each named by the line it starts on."""
    from lnzoo.data.samples import data_rows
    from lnzoo.data.tables import csv_reader

    cell = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
    rows = data.draw(st.lists(st.lists(cell, min_size=len(names), max_size=len(names)), max_size=6))
    rows = [r for r in rows if any(c.strip() for c in r)]  # a row of blanks is no row
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter)  # as a spreadsheet writes: CRLF, a cell with a line end quoted
    w.writerow(names)
    w.writerows(rows)
    path = tmp_path / "m.csv"
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    reader, found = csv_reader(path)
    read = list(data_rows(reader, path, problems := []))
    assert found == delimiter and reader.fieldnames == names and not problems
    assert [[row[n] for n in names] for _, row in read] == [[_as_read(c) for c in r] for r in rows]
    starts, line = [], 2
    for r in rows:
        starts.append(line)
        line += 1 + sum(_as_read(c).count("\n") for c in r)
    assert [where for where, _ in read] == [f"{path}:{n}" for n in starts]


# -- end to end ---------------------------------------------------------------------------------------------------
def _phantom_rows(tmp_path: Path, patients: int = 24) -> list[dict[str, str]]:
    return phantom_rows(patients)


def _write(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def _validate(path: Path, *sets: str):
    return invoke_cli("validate", RECIPE, "--quick", "--set", f"data.train='{path.as_posix()}'",
                      "--set", "data.covariates=['age', 'sex', 'long_axis_mm']",
                      *[a for s in sets for a in ("--set", s)])


def test_validate_reads_a_european_spreadsheet_and_prints_what_it_detected(tmp_path):
    rows = [{**r, "long_axis_mm": r["long_axis_mm"].replace(".", ",")} for r in _phantom_rows(tmp_path)]
    out = _validate(_write(tmp_path / "nodes.csv", rows, ";"))
    assert out.returncode == 0, out.stderr
    assert f"{tmp_path / 'nodes.csv'}: delimiter ';' (semicolon)" in out.stdout
    assert "covariates: age numeric, sex categorical, long_axis_mm numeric (decimal comma)" in out.stdout


@pytest.mark.parametrize("edit, delimiter, message", [
    (lambda v: v.replace(".", ","), ",", "has a decimal comma"),   # the same cells, quoted in a comma file
    (lambda v: v + " mm", ",", "'mm' after one"),                  # units on every value
    (lambda v: v + "mm", ";", "'mm' after one"),
])
def test_validate_never_makes_a_numeric_column_a_category(tmp_path, edit, delimiter, message):
    rows = [{**r, "long_axis_mm": edit(r["long_axis_mm"])} for r in _phantom_rows(tmp_path)]
    path = _write(tmp_path / "nodes.csv", rows, delimiter)
    out = _validate(path)
    assert out.returncode == 2, out.stdout
    assert f"{path}:2: covariate 'long_axis_mm': {rows[0]['long_axis_mm']!r}" in out.stderr and message in out.stderr
    assert 'data.covariate_types.long_axis_mm = "categorical"' in out.stderr


def test_a_unit_on_one_value_is_named_with_its_line(tmp_path):
    rows = _phantom_rows(tmp_path)
    rows[6]["long_axis_mm"] = "3.4cm"
    path = _write(tmp_path / "nodes.csv", rows)
    out = _validate(path)
    assert out.returncode == 2
    assert f"{path}:8: covariate 'long_axis_mm': '3.4cm' is not a number: it has 'cm' after one" in out.stderr


def test_a_model_trained_with_a_decimal_comma_reads_one_when_serving():
    rows = [Sample({}, f"P{i}", {}, f"m.csv:{i + 2}", cells={"age": a}, delimiter=";")
            for i, a in enumerate(["61,5", "40", "55,25"])]
    types, _ = covariate_types(rows, ["age"], {}, [], [])
    enc = CovariateEncoder.fit(rows, ["age"], {"age": "numeric"}, decimals={"age": types["age"].decimal})
    served = CovariateEncoder.from_dict(enc.as_dict())  # as the checkpoint sidecar stores it
    assert served.spec[0]["decimal"] == ","
    z = served.transform(Sample({}, "Q", {}, "form", cells={"age": "61,5"}))
    assert z[0] == pytest.approx((61.5 - enc.spec[0]["mean"]) / enc.spec[0]["sd"])
    with pytest.raises(DataError, match=r"form: covariate 'age' is '61.5'.*decimal comma"):
        served.transform(Sample({}, "Q", {}, "form", cells={"age": "61.5"}))
    dot = CovariateEncoder.from_dict({"covariates": [{"name": "age", "kind": "numeric", "mean": 50.0, "sd": 10.0}]})
    with pytest.raises(DataError, match=r"'61,5'.*decimal point"):  # a model stored before decimal marks
        dot.transform(Sample({}, "Q", {}, "form", cells={"age": "61,5"}))
