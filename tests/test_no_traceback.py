"""No traceback, anywhere: every command against a table of broken inputs (missing, empty, truncated, wrong type,
wrong encoding, a folder for a file and the reverse), and the artefacts lnzoo reads back (a sidecar, a bundle's
config.json, predictions.csv, a reader CSV) mutated at random. Each ends in a named error and a documented exit
code, or in an answer; never in an exception escaping the command (``invoke_cli`` re-raises one)."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO, invoke_cli

RECIPE = REPO / "recipes" / "stage1_aux.toml"
EXIT_CODES = {0, 1, 2}  # success, runtime error, usage/data error (docs: Command line)


def _broken(tmp: Path) -> dict[str, Path]:
    """One path of each kind of broken input."""
    text = RECIPE.read_text(encoding="utf-8")
    tmp.mkdir(parents=True, exist_ok=True)
    png = tmp / "image.png"
    from PIL import Image
    Image.new("L", (16, 16)).save(png)
    made = {
        "missing": tmp / "nothing-here",
        "empty file": tmp / "empty.toml",
        "truncated": tmp / "truncated.toml",
        "binary": tmp / "binary.toml",
        "an image": png,
        "gbk text": tmp / "gbk.csv",
        "utf-16 text": tmp / "utf16.csv",
        "a folder": tmp / "folder",
        "an empty run": tmp / "empty-run",
        "a run.json alone": tmp / "run-json-only",
        "a garbage run.json": tmp / "garbage-run",
    }
    made["empty file"].write_bytes(b"")
    made["truncated"].write_text(text[: len(text) // 2], encoding="utf-8")
    made["binary"].write_bytes(bytes(range(256)) * 4)
    made["gbk text"].write_bytes("path,malignancy\n图像.png,良性\n".encode("gbk"))
    made["utf-16 text"].write_bytes("path,malignancy\nx.png,benign\n".encode("utf-16"))
    made["a folder"].mkdir()
    (made["a folder"] / "x.txt").write_text("x")
    made["an empty run"].mkdir()
    made["a run.json alone"].mkdir()
    (made["a run.json alone"] / "run.json").write_text(json.dumps({"status": "finished"}))
    made["a garbage run.json"].mkdir()
    (made["a garbage run.json"] / "run.json").write_bytes(b"\xff\xfe{{")
    (made["a garbage run.json"] / "predictions.csv").write_text("a,b\n1,2\n")
    return made


COMMANDS = {
    "validate": lambda p, out: ["validate", p],
    "run": lambda p, out: ["run", p, "--out", out / "run"],
    "sweep": lambda p, out: ["sweep", p, "--out", out / "sweep"],
    "evaluate": lambda p, out: ["evaluate", p],
    "report": lambda p, out: ["report", p, "--n-boot", "0"],
    "select": lambda p, out: ["select", p, p],
    "export": lambda p, out: ["export", p, "--out", out / "bundle"],
    "predict --model": lambda p, out: ["predict", "--model", p, RECIPE, "--out", out / "p.csv"],
    "predict IMAGE": lambda p, out: ["predict", "--model", out / "nothing", p, "--out", out / "p.csv"],
    "explain": lambda p, out: ["explain", p, RECIPE, "--out", out / "cams"],
    "compare": lambda p, out: ["compare", p, p],
    "synth --out": lambda p, out: ["synth", "--out", p, "--patients", "4"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_names_what_is_wrong_with_every_kind_of_broken_input(command, tmp_path):
    broken = _broken(tmp_path / "in")
    for kind, path in broken.items():
        if command == "synth --out" and (kind == "missing" or path.is_dir()):
            continue  # a new or existing folder is a valid place to write the phantom
        out = tmp_path / "out" / kind.replace(" ", "-")
        done = invoke_cli(*COMMANDS[command](path, out))
        assert done.returncode in EXIT_CODES - {0}, (command, kind, done.stdout[-500:])
        assert "error:" in done.stderr and "Traceback" not in done.stderr, (command, kind, done.stderr)
        assert not (out / "p.csv").exists() and not (out / "bundle").exists(), (command, kind)


# -- the artefacts lnzoo reads back, mutated at random (read with --allow-modified, so every layer is reached) ------
JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=True) | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)


@st.composite
def mutated(draw, document):
    """The document with one value somewhere inside it replaced by any JSON value (or a key dropped)."""
    doc = json.loads(json.dumps(document))
    node, path = doc, []
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    if not path:
        return draw(JSON)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        parent.pop(path[-1])
    else:
        parent[path[-1]] = draw(JSON)
    return doc


def _first_image(run: Path) -> str:
    with (run / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        return next(csv.DictReader(fh))["path"]


@pytest.fixture(scope="module")
def work(tiny_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mutants")
    run = root / "run"
    shutil.copytree(tiny_run, run)
    bundle = root / "bundle"
    assert invoke_cli("export", tiny_run, "--out", bundle).returncode == 0
    return {"run": run, "bundle": bundle, "root": root, "image": Path(_first_image(tiny_run))}


def _ends_cleanly(done) -> None:
    assert done.returncode in EXIT_CODES, done.stderr
    assert "Traceback" not in done.stderr
    if done.returncode:  # lnzoo's message, or click's for a bad option value ("Usage: ... Error")
        assert "error:" in done.stderr or "Usage:" in done.stderr, done.stderr


ARTEFACT = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@ARTEFACT
@given(data=st.data())
def test_a_mutated_sidecar_is_named_or_served_never_a_traceback(work, data):
    side = work["run"] / "fold1" / "best.json"
    original = json.loads(side.read_text())
    meta = data.draw(mutated(original))
    copy = work["root"] / "sidecar"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(work["run"], copy)
    (copy / "fold1" / "best.json").write_text(json.dumps(meta), encoding="utf-8")
    _ends_cleanly(invoke_cli("predict", "--model", copy / "fold1" / "best.safetensors", work["image"],
                             "--out", work["root"] / "s.csv", "--allow-modified"))


@ARTEFACT
@given(data=st.data())
def test_a_mutated_bundle_config_is_named_or_served_never_a_traceback(work, data):
    original = json.loads((work["bundle"] / "config.json").read_text())
    config = data.draw(mutated(original))
    copy = work["root"] / "config"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(work["bundle"], copy)
    (copy / "config.json").write_text(json.dumps(config), encoding="utf-8")
    _ends_cleanly(invoke_cli("predict", "--model", copy, work["image"], "--out", work["root"] / "c.csv",
                             "--allow-modified"))


CELL = st.one_of(st.text(max_size=8), st.sampled_from(["", "nan", "-1", "2", "1e400", "benign", "malignant", "0.5"]))


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_predictions_are_named_or_reported_never_a_traceback(work, data):
    text = (work["run"] / "predictions.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(rows) - 1))
        j = data.draw(st.integers(0, len(rows[i]) - 1))
        rows[i][j] = data.draw(CELL)
    if data.draw(st.booleans()):
        drop = data.draw(st.integers(0, len(rows[0]) - 1))
        rows = [r[:drop] + r[drop + 1:] for r in rows]
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    copy = work["root"] / "preds"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(work["run"], copy)
    (copy / "predictions.csv").write_text(buf.getvalue(), encoding="utf-8")
    _ends_cleanly(invoke_cli("report", copy, "--n-boot", "0", "--allow-modified"))
    _ends_cleanly(invoke_cli("compare", copy, copy, "--n-boot", "0", "--allow-modified"))


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(header=st.lists(st.sampled_from(["path", "patient", "malignancy_true", "malignancy", "score", "rating",
                                        "p", "reader", "x"]), min_size=0, max_size=5),
       cells=st.lists(st.lists(CELL, max_size=6), max_size=6))
def test_any_reader_csv_is_compared_or_named_never_a_traceback(work, header, cells):
    reader = work["root"] / "reader.csv"
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *cells])
    reader.write_text(buf.getvalue(), encoding="utf-8")
    _ends_cleanly(invoke_cli("compare", work["run"], reader, "--n-boot", "0"))
