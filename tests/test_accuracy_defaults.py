"""The accuracy defaults a recipe can switch on: test-time flip averaging (evaluated and served the
same way) and a fixed split from a folds file (same folds as another run or a published split)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from lnzoo.data.samples import Sample
from lnzoo.errors import DataError
from lnzoo.plugins import load_plugins
from lnzoo.predict import Ensemble
from lnzoo.recipe import load_recipe
from lnzoo.data.run_data import read_folds_file
from lnzoo.pipeline import fit_folds
from tests.conftest import REPO
from tests.test_run import TINY


def _recipe(sets, host):
    return load_recipe(REPO / "recipes" / "stage1_aux.toml", sets=[*TINY, *sets], host=host)


def test_hflip_tta_averages_image_and_mirror_and_is_served_as_it_was_evaluated(tmp_path):
    from lnzoo.model import build_model, predict_probabilities
    from lnzoo.data.run_data import recipe_tasks

    host = load_plugins()
    recipe = _recipe(["train.tta='hflip'"], host)
    torch.manual_seed(0)
    model = build_model(recipe, host, recipe_tasks(recipe, host)).eval()
    x = torch.randn(3, 1, 3, 48, 48)
    with torch.no_grad():
        _, plain = predict_probabilities(model, x)
        _, mirror = predict_probabilities(model, x.flip(-1))
        _, tta = predict_probabilities(model, x, tta="hflip")
    for task in plain:
        torch.testing.assert_close(tta[task], 0.5 * (plain[task] + mirror[task]))
        assert not torch.allclose(tta[task], plain[task])

    fit_folds(recipe, host, tmp_path / "run")
    with (tmp_path / "run" / "predictions.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["part"] == "cv"][:5]
    served, _ = Ensemble([tmp_path / "run"], host).predict([Path(r["path"]) for r in rows])
    stored = np.array([[float(r["p_malignancy_benign"]), float(r["p_malignancy_malignant"])] for r in rows])
    np.testing.assert_allclose(served["malignancy"], stored, atol=1e-5)


def test_a_folds_file_fixes_the_split(tmp_path):
    host = load_plugins()
    fit_folds(_recipe([], host), host, tmp_path / "a")
    with (tmp_path / "a" / "folds.csv").open() as fh:
        drawn = {r["patient"]: int(r["fold"]) for r in csv.DictReader(fh)}
    moved = {p: (k + 1) % 3 for p, k in drawn.items()}  # another valid split of the same patients
    folds_file = tmp_path / "my_folds.csv"
    folds_file.write_text("patient,fold\n" + "".join(f"{p},{k}\n" for p, k in moved.items()))
    fit_folds(_recipe([f"cv.folds_file='{folds_file.as_posix()}'"], host), host, tmp_path / "b")
    with (tmp_path / "b" / "folds.csv").open() as fh:
        assert {r["patient"]: int(r["fold"]) for r in csv.DictReader(fh)} == moved


def _pool():
    def s(p, y):
        return Sample({"full": f"{p}.png"}, p, {"malignancy": y}, "x")
    return [s("A", 0), s("B", 1), s("C+D", 0), s("E", -1)]


def test_folds_file_errors_name_the_file_line_and_patient(tmp_path):
    f = tmp_path / "folds.csv"
    f.write_text("patient,fold\nA,0\nB,seven\nC,1\nD,0\n")
    with pytest.raises(DataError) as err:
        read_folds_file(f, _pool(), 2, "malignancy")
    text = "\n".join(err.value.problems)
    assert f"{f}:3: fold 'seven' is not an integer" in text
    assert "patient 'B' has 'malignancy' labels but no fold" in text
    assert "C, D share identical images" in text and "[0, 1]" in text
    f.write_text("patient,fold\nA,0\nB,2\nC,1\nD,1\n")
    with pytest.raises(DataError, match=r"fold 2 is outside 0\.\.1"):
        read_folds_file(f, _pool(), 2, "malignancy")
    f.write_text("patient,fold\nA,0\nB,1\nC,1\nD,1\n")
    # merged patients take their members' fold; an unlisted patient without a label trains in every fold
    assert read_folds_file(f, _pool(), 2, "malignancy") == {"A": 0, "B": 1, "C+D": 1, "E": -1}
    f.write_text("case,split\nA,0\n")
    with pytest.raises(DataError, match="needs the columns 'patient' and 'fold'"):
        read_folds_file(f, _pool(), 2, "malignancy")


def test_keep_last_keeps_the_final_weights_instead_of_picking_an_epoch(tmp_path):
    import json

    from safetensors.torch import load_file

    host = load_plugins()
    fit_folds(_recipe(["train.keep='last'", "train.epochs=3", "train.ema=0.5"], host), host, tmp_path / "r")
    meta = json.loads((tmp_path / "r" / "fold0" / "best.json").read_text())
    assert meta["best_epoch"] == 3
    best, last = (load_file(str(tmp_path / "r" / "fold0" / f"{n}.safetensors")) for n in ("best", "last"))
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)


def test_a_roi_model_is_served_from_a_manifest_that_names_each_box(tmp_path):

    from tests.conftest import invoke_cli

    host = load_plugins()
    run = tmp_path / "run"
    fit_folds(_recipe(["data.views=['roi']", "data.phantom.source='manifest'", "cv.folds=2",
                        "train.epochs=1"], host), host, run)
    with (run / "predictions.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["part"] == "cv"][:4]
    phantom = Path(rows[0]["path_roi"]).parents[2] / "manifest.csv"
    with phantom.open() as fh:
        boxes = {str((phantom.parent / r["path"]).resolve()): r["bbox"] for r in csv.DictReader(fh)}
    serve = tmp_path / "serve.csv"
    serve.write_text("path,bbox\n" + "".join(f"{r['path_roi']},{boxes[r['path_roi']]}\n" for r in rows))
    out = invoke_cli("predict", "--model", str(run), "--manifest", str(serve), "--out", str(tmp_path / "p.csv"))
    assert out.returncode == 0, out.stderr
    with (tmp_path / "p.csv").open() as fh:
        served = list(csv.DictReader(fh))
    assert [s["row"] for s in served] == [f"{serve}:{i}" for i in range(2, 6)]
    for s, r in zip(served, rows):
        assert s["image"] == r["path_roi"]
        assert float(s["p_malignancy_malignant"]) == pytest.approx(float(r["p_malignancy_malignant"]), abs=1e-5)
    # bare paths carry no box: refused, pointing at --manifest
    bare = invoke_cli("predict", "--model", str(run), rows[0]["path_roi"])
    assert bare.returncode == 2 and "--manifest" in bare.stderr
    serve.write_text(f"path,bbox\n{rows[0]['path_roi']},1 2\n{tmp_path / 'gone.png'},1 2 3 4\n")
    bad = invoke_cli("predict", "--model", str(run), "--manifest", str(serve))
    assert bad.returncode == 2
    assert f"{serve}:2: bbox '1 2' is not" in bad.stderr and f"{serve}:3: image not found" in bad.stderr



def test_each_served_member_applies_its_own_empty_roi_policy(tmp_path):
    import json

    from PIL import Image

    from lnzoo.predict import manifest_samples

    host = load_plugins()
    run = tmp_path / "run"
    fit_folds(_recipe(["data.views=['roi']", "data.phantom.source='manifest'", "cv.folds=2",
                        "train.epochs=1"], host), host, run)
    # the same weights as two members: one trained with data.empty_roi = "error", one with "whole_image"
    from safetensors.torch import load_file

    from lnzoo.checkpoint import save_checkpoint

    members = {}
    for policy in ("error", "whole_image"):  # saved as checkpoints of their own (an edited sidecar is refused)
        meta = json.loads((run / "fold0" / "best.json").read_text())
        meta["recipe"]["data"]["empty_roi"] = policy
        members[policy] = save_checkpoint(load_file(run / "fold0" / "best.safetensors"), tmp_path / policy, meta)
    with (run / "predictions.csv").open() as fh:
        image = next(r for r in csv.DictReader(fh) if r["part"] == "cv")["path_roi"]
    size = Image.open(image).size
    Image.new("L", size).save(tmp_path / "empty.png")
    serve = tmp_path / "serve.csv"
    serve.write_text(f"path,mask\n{image},empty.png\n")
    whole = Ensemble([members["whole_image"]], host)
    p_whole = whole.predict(manifest_samples([members["whole_image"]], serve, host))[0]["malignancy"]
    p_image = whole.predict([Sample({"roi": Path(image)}, "", {}, "bare")])[0]["malignancy"]
    np.testing.assert_allclose(p_whole, p_image, atol=1e-6)  # the empty mask served the uncropped image
    # whichever member comes first, the one trained with "error" refuses the empty mask
    for order in (["whole_image", "error"], ["error", "whole_image"]):
        models = [members[o] for o in order]
        with pytest.raises(DataError, match="empty.png is empty"):
            Ensemble(models, host).predict(manifest_samples(models, serve, host))


EXAMPLES = sorted((REPO / "recipes" / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_recipes_for_real_data_validate(path):
    recipe = load_recipe(path, host=load_plugins())
    assert recipe["data.image_size"] > 0


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "ddti_thyroid" / "labels.csv").is_file(),
                    reason="the public DDTI and POCUS sets are not beside this checkout (../shared/data)")
@pytest.mark.parametrize("name,images,patients", [("ddti_tirads", 457, 291), ("pocus_lung", 677, 162)])
def test_example_recipes_read_the_real_sets(name, images, patients):
    from lnzoo.data.run_data import load_run_data, recipe_tasks

    host = load_plugins()
    recipe = load_recipe(REPO / "recipes" / "examples" / f"{name}.toml", host=host)
    data = load_run_data(recipe, recipe_tasks(recipe, host), host)
    assert len(data.pool) == images and len({s.patient for s in data.pool}) == patients
