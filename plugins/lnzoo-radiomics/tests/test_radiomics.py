"""The lnzoo-radiomics plugin: the input kind ``radiomics``.

The plugin is loaded from this folder's ``src`` whether it is pip-installed or not (lnzoo.testing.plugin_host
hands its module to lnzoo exactly as its entry point would), beside lnzoo's built-in inputs.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lnzoo.testing as kit
from lnzoo.errors import DataError, UsageError

PROJECT = Path(__file__).resolve().parents[1]
DIST = "lnzoo-radiomics"
HOST = kit.plugin_host(PROJECT)  # lnzoo's built-ins and this plugin (its own entry point left out if installed)
FEATURES = ["original_shape_MajorAxisLength", "original_shape_Elongation", "original_glcm_Contrast"]


@pytest.fixture
def host():
    return HOST


def _write(path: Path, rows, header: str = "feature,value") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{name},{value}\n" for name, value in rows)
    path.write_text(f"{header}\n{body}" if header is not None else body, encoding="utf-8")
    return path


def _sample(tmp_path: Path, line: int, cell: str | None, column: str = "radiomics"):
    """Manifest line ``line`` naming a radiomics file (relative to tmp_path), or an empty cell."""
    return kit.make_row({column: cell, "patient": f"P{line}"}, line=line, base=tmp_path)


def _rows(tmp_path: Path, n: int = 8, empty: tuple[int, ...] = (3, 6), features=FEATURES) -> list:
    """n rows (manifest lines 2..n+1); those in ``empty`` have an empty cell; files under feats/."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        if i in empty:
            out.append(_sample(tmp_path, i + 2, ""))
            continue
        _write(tmp_path / "feats" / f"P{i}.csv", [(f, f"{rng.normal(10 * (j + 1), j + 1):.6g}")
                                                   for j, f in enumerate(features)])
        out.append(_sample(tmp_path, i + 2, f"feats/P{i}.csv"))
    return out


def _kind(host, **options):
    """The kind as a recipe's ``data.inputs.radiomics = {name = "radiomics", **options}`` builds it."""
    return kit.input_kind("radiomics", host=host, **options).build()


def _kit_rows(folder: Path) -> list:
    """Rows for the conformance kit: six with a file, two with an empty cell, one naming a file that is not there."""
    return [*_rows(folder), _sample(folder, 10, "feats/gone.csv")]


# --- lnzoo's conformance kit: one test item per check ---------------------------------------------

@kit.parametrize_with_checks([kit.input_kind("radiomics", _kit_rows, host=HOST),
                              kit.input_kind("radiomics", _kit_rows, host=HOST, features=FEATURES[::-1][:2], hidden=8)])
def test_conforms(component, check):
    check(component)


# --- the plugin as lnzoo sees it -----------------------------------------------------------------

def test_plugin_module_imports_without_torch():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import lnzoo_radiomics.plugin, lnzoo_radiomics.kind; "
            "assert 'torch' not in sys.modules, 'the plugin imported torch'")
    done = subprocess.run([sys.executable, "-c", code, str(PROJECT / "src")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_listed_beside_the_builtin_inputs(host):
    info = next(p for p in host.plugins if p.distribution == DIST)
    assert info.error is None and info.registered == {"input": ["radiomics"]}
    registry = host.registry("input")
    assert {"radiomics", "covariates", "text", "morphology"} <= set(registry.names())
    entry = host.get("input", "radiomics")
    assert entry.provenance.distribution == DIST and entry.overrides is None
    assert entry.target == "lnzoo_radiomics.kind:RadiomicsInput"  # lazy: imported on first build
    assert entry.description and "\n" not in entry.description
    params = entry.parameters()
    assert list(params) == ["column", "features", "hidden"]
    assert params["column"].default is params["column"].empty and params["hidden"].default == 64


def test_column_defaults_to_the_input_name_and_options_are_checked(host):
    assert _kind(host).column == "radiomics"
    assert _kind(host, column="rad").column == "rad"
    for bad in ({"features": "original_glcm_Contrast"}, {"features": []}, {"features": ["a", "a"]},
                {"features": [1]}, {"hidden": 0}, {"hidden": True}):
        with pytest.raises(UsageError, match="data.inputs.radiomics"):
            _kind(host, **bad)


def test_fit_encode_standardise_and_json_state(host, tmp_path):
    samples = _rows(tmp_path)
    kind = _kind(host)
    assert kind.check(samples, problems := []) == set() and problems == []
    state = kind.fit(samples)
    assert json.loads(json.dumps(state)) == state
    assert kind.feature_names(state) == FEATURES and kind.shape(state) == (3,) and state["n"] == 6
    given = [s for s in samples if s.cells["radiomics"]]
    z = np.stack([kind.encode(s, state) for s in given])
    assert z.dtype == np.float32 and z.shape == (6, 3)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-5)
    raw = np.array([[float(r["value"]) for r in csv.DictReader((tmp_path / s.cells["radiomics"]).open())]
                    for s in given])
    np.testing.assert_allclose(z, (raw - raw.mean(0)) / raw.std(0), rtol=1e-5, atol=1e-5)
    assert kind.encode(samples[3], state) is None  # an empty cell: a missing input
    assert kind.encode(_sample(tmp_path, 99, None, column="other"), state) is None  # a row without the column
    note = kind.data_note()
    assert note.startswith("6 radiomics file(s), 3 feature(s); 2 row(s) without one"), note


def test_features_option_chooses_and_orders(host, tmp_path):
    samples = _rows(tmp_path)
    kind = _kind(host, features=[FEATURES[2], FEATURES[0]])
    kind.check(samples, [])
    state = kind.fit(samples)
    assert state["features"] == [FEATURES[2], FEATURES[0]]
    full = _kind(host)
    full.check(samples, [])
    whole = full.fit(samples)
    np.testing.assert_allclose(kind.encode(samples[0], state), full.encode(samples[0], whole)[[2, 0]], rtol=1e-6)


def test_constant_feature_gets_sd_one(host, tmp_path):
    samples = []
    for i in range(3):
        _write(tmp_path / f"c{i}.csv", [("const", "5"), ("x", str(i))])
        samples.append(_sample(tmp_path, i + 2, f"c{i}.csv"))
    kind = _kind(host)
    kind.check(samples, [])
    state = kind.fit(samples)
    assert state["sd"][0] == 1.0 and state["mean"][0] == 5.0
    assert kind.encode(samples[0], state)[0] == 0.0


def test_features_only_some_files_have_are_left_out(host, tmp_path):
    samples = _rows(tmp_path, n=4, empty=())
    _write(tmp_path / "feats" / "P1.csv", [(f, "1.5") for f in FEATURES] + [("wavelet_extra", "2")])
    _write(tmp_path / "feats" / "P2.csv", [(f, "2.5") for f in FEATURES[:2]])  # lacks glcm_Contrast
    kind = _kind(host)
    assert kind.check(samples, []) == set()
    # fitted on rows 0 and 1 only, which both have every feature; row 2 (another fold) lacks one of them:
    # the features every file of the run has are used, so no held-out row fails to encode
    state = kind.fit(samples[:2])
    assert state["features"] == FEATURES[:2]
    assert kind.encode(samples[2], state).shape == (2,)
    assert "2 feature(s) only some files have are left out (fewest: feats/P2.csv, 2)" in kind.data_note()
    fresh = _kind(host)  # no check first: the training rows' common features
    assert fresh.fit(samples[:2])["features"] == FEATURES
    with pytest.raises(DataError, match=r"m\.csv:4: radiomics file feats/P2\.csv: no feature "
                                        r"'original_glcm_Contrast'.*fitted with"):
        fresh.encode(samples[2], fresh.fit(samples[:2]))


def test_explicit_feature_no_file_has_is_a_recipe_mistake(host, tmp_path):
    samples = _rows(tmp_path)
    with pytest.raises(DataError, match="original_glcm_Contrst.*did you mean 'original_glcm_Contrast'"):
        _kind(host, features=["original_glcm_Contrst"]).check(samples, [])


def test_explicit_feature_some_file_lacks_is_a_bad_row(host, tmp_path):
    samples = _rows(tmp_path, n=4, empty=())
    _write(tmp_path / "feats" / "P1.csv", [(FEATURES[0], "3")])
    problems: list[str] = []
    assert _kind(host, features=FEATURES[1:]).check(samples, problems) == {1}
    assert problems == ["m.csv:3: radiomics file feats/P1.csv: no feature 'original_shape_Elongation' (and 1 more "
                        "of them), which the input's features name"]


def test_no_row_has_the_column(host, tmp_path):
    samples = _rows(tmp_path)
    with pytest.raises(DataError, match="no row of the data has a column 'rad'"):
        _kind(host, column="rad").check(samples, [])
    empty = [_sample(tmp_path, i, "") for i in range(2, 5)]
    with pytest.raises(DataError, match="empty in every row"):
        _kind(host).check(empty, [])
    with pytest.raises(DataError, match="training part has no row with a radiomics file"):
        _kind(host).fit(empty)


def test_the_host_names_the_input_in_recipe_level_errors(host, tmp_path):
    from lnzoo.inputs import build_kinds, check_rows

    kinds = build_kinds({"inputs": {"rad": {"name": "radiomics"}}}, None, host)
    with pytest.raises(DataError, match=r"data\.inputs\.rad: no row of the data has a column 'rad'"):
        check_rows(kinds, _rows(tmp_path), [])


# --- bad files: named with the manifest row and the file's own line --------------------------------

def _bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "feats" / "P3.csv"
    good = [(f"f{i}", str(i)) for i in range(10)]  # header on line 1, f0..f9 on lines 2..11: line 12 is next
    if kind == "missing":
        return path
    if kind == "not_utf8":
        _write(path, good)
        with path.open("ab") as fh:
            fh.write("glcm_Contrast,1.5 \u00b5\n".encode("latin-1"))
        return path
    if kind == "header":
        return _write(path, good, header="name,val")
    bad_line = {"not_a_number": ("glcm_Contrast", "abc"), "nan": ("glcm_Contrast", "nan"),
                "inf": ("glcm_Contrast", "-inf"), "duplicate": ("f4", "1.0"),
                "fields": ("glcm_Contrast", "1.0,2.0"), "no_name": ("", "1.0")}[kind]
    return _write(path, [*good, bad_line, ("f99", "1")])


@pytest.mark.parametrize("kind,expected", [
    ("missing", "radiomics file feats/P3.csv: not found ("),
    ("not_utf8", "radiomics file feats/P3.csv:12: not UTF-8 text"),
    ("header", "radiomics file feats/P3.csv:1: header 'name,val', expected 'feature,value'"),
    ("not_a_number", "radiomics file feats/P3.csv:12: value 'abc' of feature 'glcm_Contrast' is not a number"),
    ("nan", "radiomics file feats/P3.csv:12: value 'nan' of feature 'glcm_Contrast' is not finite"),
    ("inf", "radiomics file feats/P3.csv:12: value '-inf' of feature 'glcm_Contrast' is not finite"),
    ("duplicate", "radiomics file feats/P3.csv:12: feature 'f4' again (first on line 6)"),
    ("fields", "radiomics file feats/P3.csv:12: 3 fields 'glcm_Contrast,1.0,2.0', expected 'feature,value'"),
    ("no_name", "radiomics file feats/P3.csv:12: no feature name"),
])
def test_bad_file_names_row_file_and_line(host, tmp_path, kind, expected):
    for i in (0, 1):
        _write(tmp_path / "feats" / f"P{i}.csv", [(f"f{j}", str(i + j)) for j in range(10)])
    _bad_file(tmp_path, kind)
    samples = [_sample(tmp_path, 5, "feats/P0.csv"), _sample(tmp_path, 6, ""), _sample(tmp_path, 7, "feats/P3.csv"),
               _sample(tmp_path, 8, "feats/P1.csv")]
    radiomics = _kind(host)
    problems: list[str] = []
    assert radiomics.check(samples, problems) == {2}
    assert len(problems) == 1 and problems[0].startswith(f"m.csv:7: {expected}"), problems
    with pytest.raises(DataError, match="m.csv:7: radiomics file feats/P3.csv"):  # never encoded as if fine
        radiomics.encode(samples[2], radiomics.fit([samples[0], samples[3]]))


def test_many_bad_lines_are_capped_and_a_bom_and_crlf_are_fine(host, tmp_path):
    path = tmp_path / "many.csv"
    path.write_text("feature,value\n" + "".join(f"f{i},x{i}\n" for i in range(9)), encoding="utf-8")
    problems: list[str] = []
    assert _kind(host).check([_sample(tmp_path, 2, "many.csv")], problems) == {0}
    assert len(problems) == 6 and problems[-1] == "m.csv:2: radiomics file many.csv: and 4 more bad line(s)"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfFeature , Value\r\na,1\r\n\r\nb, 2e3 \r\n")
    kind = _kind(host)
    sample = _sample(tmp_path, 2, "bom.csv")
    assert kind.check([sample], []) == set()
    assert kind.fit([sample])["mean"] == [1.0, 2000.0]


def test_each_file_is_read_once_and_again_when_it_changes(host, tmp_path, monkeypatch):
    import lnzoo_radiomics.kind as mod

    samples = _rows(tmp_path, n=3, empty=())
    calls: list[str] = []
    real = mod.parse_file
    monkeypatch.setattr(mod, "parse_file", lambda path, layouts=None: calls.append(str(path)) or real(path, layouts))
    kind = _kind(host)
    kind.check(samples, [])
    state = kind.fit(samples)
    for s in samples:
        kind.encode(s, state)
    assert len(calls) == 3
    _write(tmp_path / "feats" / "P0.csv", [(f, "100") for f in FEATURES + ["more"]])  # another size: re-read
    kind.encode(samples[0], state)
    assert len(calls) == 4


def test_a_recipe_takes_the_options_and_checks_them(host, tmp_path):
    from lnzoo.errors import RecipeError
    from lnzoo.recipe import resolve

    base = {"tasks": {"main": "malignancy", "task_weights": {"malignancy": 1.0}},
            "model": {"backbone": {"name": "timm", "model_name": "test_resnet"}}}
    ok = resolve({**base, "data": {"inputs": {"radiomics": {"name": "radiomics", "features": FEATURES,
                                                            "hidden": 16}}}}, host=host)
    assert ok["data.inputs"]["radiomics"]["features"] == FEATURES
    with pytest.raises(RecipeError, match=r"data\.inputs\.radiomics\.hiden: .*did you mean 'hidden'"):
        resolve({**base, "data": {"inputs": {"radiomics": {"name": "radiomics", "hiden": 16}}}}, host=host)
    with pytest.raises(RecipeError, match=r"data\.inputs\.radiomics\.hidden: expected int"):
        resolve({**base, "data": {"inputs": {"radiomics": {"name": "radiomics", "hidden": "wide"}}}}, host=host)


# --- end to end: a run on the phantom with radiomics files, then the checkpoint ---------------------

def _radiomics_phantom(root: Path) -> Path:
    """The phantom's manifest plus a ``radiomics`` column: per row a file derived from the node's measurements."""
    from lnzoo.data.phantom import generate_phantom

    manifest = generate_phantom(root, patients=40, seed=0, frame_size=64)
    rows = list(csv.DictReader(manifest.open(encoding="utf-8")))
    rng = np.random.default_rng(0)
    for k, row in enumerate(rows):
        if k % 9 == 4:  # some rows have no radiomics file: a missing input
            row["radiomics"] = ""
            continue
        long_mm, short_mm = float(row["long_axis_mm"]), float(row["short_axis_mm"])
        ratio, elasto = float(row["axis_ratio"]), float(row["elasto_score"])
        feats = [("original_shape_MajorAxisLength", long_mm + rng.normal(0, 0.5)),
                 ("original_shape_MinorAxisLength", short_mm + rng.normal(0, 0.5)),
                 ("original_shape_Elongation", 1 / ratio + rng.normal(0, 0.02)),
                 ("original_glcm_Contrast", 10 * elasto + rng.normal(0, 2)),
                 ("original_firstorder_Energy", 1e6 * short_mm ** 2 * (1 + rng.normal(0, 0.05)))]
        if k % 5 == 0:
            feats.append(("wavelet-LLH_glcm_Idm", rng.random()))  # only some files: left out
        rel = f"radiomics/{Path(row['path']).stem}.csv"
        _write(root / rel, [(n, f"{v:.6g}") for n, v in feats])
        row["radiomics"] = rel
    out = root / "manifest_radiomics.csv"
    with out.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0].keys()], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.mark.slow  # trains
@pytest.mark.parametrize("views", [["full"], []], ids=["image+radiomics", "radiomics-only"])
def test_end_to_end_run_and_checkpoint(host, tmp_path, monkeypatch, views):
    from lnzoo.data.samples import read_manifest
    from lnzoo.events import Note
    from lnzoo.inference import load
    from lnzoo.pipeline import run
    from lnzoo.recipe import load_recipe

    monkeypatch.setenv("LNZOO_CACHE", str(tmp_path / "cache"))  # run(host=...) builds the inputs from this host
    manifest = _radiomics_phantom(tmp_path / "ph")
    recipe_path = tmp_path / "radiomics.toml"
    recipe_path.write_text(f"""
name = "radiomics_e2e"
seed = 0
[tasks]
main = "malignancy"
task_weights = {{ malignancy = 1.0 }}
[data]
train = "{manifest.as_posix()}"
views = {json.dumps(views)}
image_size = 32
batch_size = 16
inputs.radiomics = {{ name = "radiomics", hidden = 16 }}
skip_bad_rows = {"true" if not views else "false"}  # radiomics only: a row without a radiomics file gives nothing
[model]
backbone = {{ name = "timm", model_name = "test_resnet" }}
[train]
epochs = 2
threads = 2
device = "cpu"
[cv]
folds = 3
run_folds = [0]
""", encoding="utf-8")
    recipe = load_recipe(recipe_path, host=host)
    events: list = []
    result = run(recipe, out=tmp_path / "run", on_event=events.append, host=host, report=True, n_boot=50)
    assert result.metrics["folds_run"] == [0]
    skipped = [e.text for e in events if isinstance(e, Note) and "skipped" in e.text]
    assert bool(skipped) == (not views)  # the rows with an empty radiomics cell are named and left out
    assert result.report is not None and "radiomics file(s)" in result.report.read_text(encoding="utf-8")
    assert "radiomics: " in result.metrics["data"] and " radiomics file(s), 5 feature(s); " in result.metrics["data"]
    side = json.loads((result.out / "fold0" / "best.json").read_text(encoding="utf-8"))
    (entry,) = side["inputs"]
    assert entry["name"] == "radiomics" and entry["table"]["name"] == "radiomics"
    assert entry["state"]["features"] == ["original_shape_MajorAxisLength", "original_shape_MinorAxisLength",
                                          "original_shape_Elongation", "original_glcm_Contrast",
                                          "original_firstorder_Energy"]
    predictor = load(result.out / "fold0" / "best.safetensors", host)
    assert predictor.model.members == [*views, "radiomics"]
    assert predictor.inputs.names == ["radiomics"]
    samples = read_manifest(manifest, predictor.tasks, predictor.views, problems := [])[:12]
    assert not problems and any(not s.cells["radiomics"] for s in samples)
    preds = predictor.predict(samples)
    proba = preds.proba["malignancy"]
    assert proba.shape == (12, 2) and np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    failed = [e.text for e in events if isinstance(e, Note) and "Grad-CAM" in e.text]
    assert not failed
