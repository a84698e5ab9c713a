"""Property-based tests of every parser a user's files reach: each input ends in success or a named lnzoo
error (file, line, reason), never a traceback."""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from lnzoo.errors import LnzooError
from lnzoo.plugins import load_plugins

HOST = load_plugins()
TASK = HOST.get("task", "malignancy").build()
TASKS = {"malignancy": TASK, "enlargement": HOST.get("task", "enlargement").build()}
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# text that looks like what users write, broken in the ways files break: odd cells, quotes, separators,
# Chinese labels, control characters, very long or huge values
CELL = st.one_of(st.sampled_from(["", "良性", "恶性", "benign", "malignant", "P001", "img/P001_1.png", "0", "1",
                                  "-1", "1e309", "nan", "\"", "\"a,b\"", ",", ";", "\t", "\x00", "9" * 400]),
                 st.text(max_size=12))
ROW = st.lists(CELL, min_size=0, max_size=6).map(",".join)
DOC = st.lists(ROW, max_size=8).map("\n".join)
ENCODED = st.one_of(DOC.map(lambda t: t.encode("utf-8")), DOC.map(lambda t: t.encode("gb18030")),
                    st.binary(max_size=300))


def _file(data: bytes, name: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="lnzoo-fuzz-"))
    path = folder / name
    path.write_bytes(data)
    return path


def _named_or_fine(call) -> None:
    try:
        call()
    except LnzooError as exc:
        assert str(exc).strip(), "an lnzoo error must say what is wrong"


@FUZZ
@given(ENCODED)
def test_list_files(data):
    from lnzoo.data.samples import read_list_file

    path = _file(data, "main.txt")
    problems: list[str] = []
    _named_or_fine(lambda: read_list_file(path, TASK, ["full"], "-crop", r"^(P\d+)_", problems))
    assert all(str(path) in p or "patient_regex" in p for p in problems), problems


@FUZZ
@given(st.one_of(st.just(b""), st.tuples(st.sampled_from(["path,patient,malignancy,enlargement,age",
                                                            "path,malignancy", "patient,path", ""]), DOC)
                 .map(lambda hd: f"{hd[0]}\n{hd[1]}".encode("utf-8")), ENCODED))
def test_manifests(data):
    from lnzoo.data.samples import read_manifest

    path = _file(data, "nodes.csv")
    problems: list[str] = []
    _named_or_fine(lambda: read_manifest(path, TASKS, ["full"], problems, None,
                                         {"patient_column": "patient", "missing_labels": ["NA"]}))
    assert all(str(path) in p for p in problems), problems


@FUZZ
@given(st.one_of(st.tuples(st.just("patient,fold"), DOC).map(lambda hd: f"{hd[0]}\n{hd[1]}".encode("utf-8")),
                 ENCODED))
def test_folds_files(data):
    from lnzoo.data.run_data import read_folds_file
    from lnzoo.data.samples import Sample

    path = _file(data, "folds.csv")
    pool = [Sample({"full": Path(f"{p}.png")}, p, {"malignancy": 0}, f"m.csv:{i}") for i, p in enumerate(["P001", "0"])]
    _named_or_fine(lambda: read_folds_file(path, pool, 3, "malignancy"))


TOML_PIECES = st.sampled_from([
    'name = "x"', 'extends = "base.toml"', 'extends = 3', "[train]", "epochs = 3", "epochs = -1", 'epochs = "3"',
    "lr = 1e400", "lr = 0", "[data]", 'views = ["full", "full"]', "views = []", 'train = ["lists/a.txt"]',
    "image_size = 99999999999999999999", "[tasks]", "task_weights = {malignancy = 1.0}", 'main = "nope"',
    "[tasks.task_weights]", "malignancy = 1.0", "[model.backbone]", 'name = "timm"', 'model_name = "test_resnet"',
    "[model]", 'head = {name = "linaer"}', "x = [", "= 1", "[[train]]", 'patient_regex = "(["', "[cv]",
    'run_folds = [7]', "folds = 1"])


@FUZZ
@given(st.lists(TOML_PIECES, max_size=10).map("\n".join))
def test_recipes(text):
    from lnzoo.recipe import load_recipe

    folder = Path(tempfile.mkdtemp(prefix="lnzoo-fuzz-"))
    (folder / "base.toml").write_text("[train]\nepochs = 2\n", encoding="utf-8")
    path = folder / "r.toml"
    path.write_text(text, encoding="utf-8")
    _named_or_fine(lambda: load_recipe(path, host=HOST))


SET_KEYS = st.sampled_from(["train.epochs", "train.lr", "data.views", "data.image_size", "model.backbone",
                            "tasks.task_weights", "nope.key", "", "train", "data.phantom.patients", "cv.run_folds"])
SET_VALUES = st.one_of(st.sampled_from(["3", "0", "-1", "1e400", "'x'", "[", "[1, 2]", "{name='timm'}",
                                        "true", "", "\"unterminated", "inf", "nan"]), st.text(max_size=10))


@FUZZ
@given(st.lists(st.one_of(st.tuples(SET_KEYS, SET_VALUES).map("=".join), st.text(max_size=15)), max_size=4))
def test_set_overrides(sets):
    from lnzoo.recipe import load_recipe

    repo = Path(__file__).resolve().parent.parent
    _named_or_fine(lambda: load_recipe(repo / "recipes" / "stage1_aux.toml", sets=sets, host=HOST))


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (90, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()  # a valid image the decoder fuzz cuts short and flips bytes of


@FUZZ
@given(st.one_of(st.binary(max_size=400), st.integers(0, len(PNG)).map(lambda n: PNG[:n]),
                 st.tuples(st.integers(8, len(PNG) - 1), st.integers(0, 255))
                 .map(lambda iv: PNG[:iv[0]] + bytes([iv[1]]) + PNG[iv[0] + 1:])),
       st.sampled_from([".png", ".jpg", ".bmp", ".dcm", ".tif"]))
def test_image_decoder(data, suffix):
    from lnzoo.data.images import Preprocessing, load_image

    path = _file(data, f"node{suffix}")
    _named_or_fine(lambda: load_image(path, Preprocessing(32, "squash", "imagenet", 0.1), "m.csv:2"))


def test_the_decoder_reads_the_fuzzers_seed_image():
    from lnzoo.data.images import Preprocessing, load_image

    assert load_image(_file(PNG, "ok.png"), Preprocessing(32, "squash", "imagenet", 0.1)).shape == (32, 32, 3)

