"""Self-supervised pretraining (``pretrain.method``): the methods, the unlabelled sources, the views, the run with
its probe and report, resuming, ``model.init_from`` of the result, and the leakage rule."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lnzoo.errors import DataError, UsageError
from tests.conftest import REPO, invoke_cli

RECIPE = REPO / "recipes" / "pretrain_ssl.toml"
SMALL = ["model.backbone={name='timm', model_name='test_resnet'}", "data.image_size=32", "data.batch_size=16",
         "data.phantom.patients=24", "train.epochs=2", "train.threads=2"]


def _sets(*extra: str) -> list[str]:
    return [x for s in [*SMALL, *extra] for x in ("--set", s)]


@pytest.mark.parametrize("method", ["simclr", "byol", "dino"])
def test_each_method_gives_a_finite_loss_that_trains_the_backbone(method):
    from lnzoo.plugins import get_host

    host = get_host()
    backbone = host.get("backbone", "timm").build(model_name="test_resnet")
    options = {"dino": {"output_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}}.get(method, {})
    m = host.get("pretrainer", method).build(backbone, **options)
    x0, x1 = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    before = [p.detach().clone() for p in m.backbone.parameters()]
    loss = m(x0, x1)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.backbone.parameters()))
    if hasattr(m, "teacher"):  # the momentum teacher follows the student, never by gradient
        teacher = [p.detach().clone() for p in m.teacher.backbone.parameters()]
        assert all(not p.requires_grad for p in m.teacher.parameters())
        m.after_step(0.5)
        assert any(not torch.equal(a, b) for a, b in zip(teacher, m.teacher.backbone.parameters()))


def test_unlabelled_sources_are_folders_manifests_and_list_files(tmp_path):
    from PIL import Image

    from lnzoo.pretrain.images import source_images

    for rel in ("a/1.png", "a/deep/2.jpg", "b/3.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    assert source_images(str(tmp_path / "a")) == [tmp_path / "a" / "1.png", tmp_path / "a" / "deep" / "2.jpg"]
    (tmp_path / "m.csv").write_text("path,patient,malignancy\nb/3.png,P1,benign\na/1.png,P2,\n")
    assert source_images(str(tmp_path / "m.csv")) == [tmp_path / "b" / "3.png", tmp_path / "a" / "1.png"]
    (tmp_path / "list.txt").write_text("b/3.png,良性\na/1.png,恶性\n", encoding="utf-8")
    assert source_images([str(tmp_path / "list.txt"), str(tmp_path / "m.csv")]) == \
        [tmp_path / "b" / "3.png", tmp_path / "a" / "1.png"]  # each image once
    ingest = tmp_path / "ds"
    ingest.mkdir()
    (ingest / "manifest.csv").write_text("path\n../b/3.png\n")
    assert source_images(str(ingest)) == [tmp_path / "b" / "3.png"]  # an ingest/synth folder: its manifest
    with pytest.raises(DataError, match="gone.png: file not found"):
        (tmp_path / "bad.csv").write_text("path\ngone.png\n")
        source_images(str(tmp_path / "bad.csv"))


def test_the_views_never_flip_unless_asked_and_a_wrong_key_is_named():
    from torchvision.transforms import v2

    from lnzoo.pretrain import view_augment
    from lnzoo.recipe import load_recipe

    ops = view_augment(load_recipe(RECIPE, quick=True)).transforms
    assert not any(isinstance(op, v2.RandomHorizontalFlip) for op in ops)
    assert {type(op).__name__ for op in ops} >= {"RandomResizedCrop", "Speckle", "GainTGC", "DepthAttenuation"}
    flipped = view_augment(load_recipe(RECIPE, quick=True, sets=["pretrain.augment={hflip=0.5}"])).transforms
    assert any(isinstance(op, v2.RandomHorizontalFlip) for op in flipped)
    with pytest.raises(UsageError, match="pretrain.augment: unknown key"):
        view_augment(load_recipe(RECIPE, quick=True, sets=["pretrain.augment={flip=0.5}"]))


@pytest.mark.slow
def test_a_pretraining_run_then_a_stage_run_that_starts_from_it_and_the_leakage_rule(tmp_path):
    done = invoke_cli("run", RECIPE, "--quick", *_sets(), "--out", tmp_path / "ssl")
    assert done.returncode == 0, done.stderr
    assert "pretrained simclr on" in done.stdout and "k-NN probe" in done.stdout
    ssl = tmp_path / "ssl"
    summary = json.loads((ssl / "backbone.json").read_text())
    assert summary["epochs"] == 2 and summary["knn_balanced_accuracy"]["last"] is not None
    history = (ssl / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,lr,seconds,knn_balanced_accuracy") and len(history) == 3
    assert "Pretraining report" in (ssl / "report.html").read_text()
    (ssl / "report.html").unlink()
    again = invoke_cli("report", ssl)  # lnzoo report on a pretraining run: its curves again, no evaluation
    assert again.returncode == 0 and "Pretraining report" in (ssl / "report.html").read_text()
    from safetensors.torch import load_file

    keys = list(load_file(ssl / "backbone.safetensors"))
    assert keys and all(k.startswith("backbones.0.") for k in keys)
    # a stage-I run on the phantom the pretraining did not read (seed 0; the pretraining's is seed 7)
    stage = ["model.backbone={name='timm', model_name='test_resnet'}", "data.image_size=32", "train.epochs=1",
             "data.phantom.patients=24", "cv.folds=3", "data.batch_size=16", "train.threads=2",
             f"model.init_from='{ssl / 'backbone.safetensors'}'"]
    tuned = invoke_cli("run", REPO / "recipes" / "stage1_aux.toml", "--quick",
                       *[x for s in stage for x in ("--set", s)], "--n-boot", "20", "--out", tmp_path / "tuned")
    assert tuned.returncode == 0, tuned.stderr
    record = json.loads(next((tmp_path / "tuned").glob("fold*/best.json")).read_text())
    init = record["init_from"]
    assert init["backbone_loaded"] == init["backbone_total"] > 0
    # the same phantom the pretraining read: refused, naming the images
    leak = [*stage[:-1], "data.phantom.seed=7", f"model.init_from='{ssl}'"]
    refused = invoke_cli("validate", REPO / "recipes" / "stage1_aux.toml", "--quick",
                         *[x for s in leak for x in ("--set", s)])
    assert refused.returncode == 2 and "its self-supervised pretraining" in refused.stderr.replace("\n", " ")


@pytest.mark.slow
def test_a_pretraining_runs_under_torchrun_on_two_processes(tmp_path):
    """`lnzoo run --nproc 2` on a pretraining recipe: each process a share of every batch, one result written by
    rank 0, its k-NN probe and history as a single process writes them."""
    from tests.conftest import run_cli

    sets = [x for s in SMALL if not s.startswith("train.threads") for x in ("--set", s)]  # the CPUs split
    done = run_cli("run", str(RECIPE), "--quick", "--nproc", "2", *sets, "--out", str(tmp_path / "ssl"))
    assert done.returncode == 0, done.stderr
    said = done.stderr + done.stdout
    assert "shared by 2 local processes" in said
    assert "pretraining epoch 2/2 loss" in said and "fold 0" not in said  # no folds in a pretraining
    summary = json.loads((tmp_path / "ssl" / "backbone.json").read_text())
    assert summary["epochs"] == 2 and summary["images"] == 48 and summary["knn_balanced_accuracy"]["last"] is not None
    assert len((tmp_path / "ssl" / "history.csv").read_text().splitlines()) == 3
    assert (tmp_path / "ssl" / "backbone.safetensors").stat().st_size > 0


def _backbone_file(path: Path, read: list[str], transductive: bool = False) -> Path:
    """A backbone file as lnzoo's pretraining writes it, having read the images of digests ``read``."""
    from safetensors.torch import save_file

    from lnzoo.pretrain.images import result_metadata

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"backbones.0.body.w": torch.zeros(2)}, str(path), metadata=result_metadata(read, transductive))
    return path


@pytest.mark.parametrize("where", ["its run directory", "the file in it", "a copy elsewhere", "a renamed copy"])
@pytest.mark.parametrize("key", ["model.init_from", "model.backbone.pretrained_file"])
def test_a_pretrained_backbone_says_what_it_read_wherever_it_is_copied(tmp_path, where, key):
    """The leakage rule reads the images a pretraining saw from the backbone file's own header: a copy of the file
    (without its run directory) started from by either key is refused when it read an image the run evaluates on."""
    import shutil

    from lnzoo.data.samples import Sample
    from lnzoo.pretrain.images import pretraining_leaks

    run = tmp_path / "ssl"
    weights = _backbone_file(run / "backbone.safetensors", ["aa" * 20, "bb" * 20])
    (run / "pretrain_images.csv").write_text("path,digest\n")  # the run's own list (its header is what counts)
    source = {"its run directory": run, "the file in it": weights,
              "a copy elsewhere": tmp_path / "elsewhere" / "backbone.safetensors",
              "a renamed copy": tmp_path / "weights" / "us_simclr.safetensors"}[where]
    if where.startswith("a "):
        source.parent.mkdir()
        shutil.copy(weights, source)
    seen = Sample({"full": Path("/data/seen.png")}, "P1", {}, "row 2")
    unseen = Sample({"full": Path("/data/unseen.png")}, "P2", {}, "row 3")
    digests = {Path("/data/seen.png"): "bb" * 20, Path("/data/unseen.png"): "cc" * 20}
    problems = pretraining_leaks([(key, source)], {"cross-validation": [seen, unseen], "test": []}, digests)
    assert len(problems) == 1 and problems[0].startswith(f"{key} = {source}: its self-supervised pretraining")
    assert "1 of the cross-validation images (e.g. /data/seen.png)" in problems[0]
    assert pretraining_leaks([(key, source)], {"cross-validation": [unseen]}, digests) == []


def test_a_declared_transductive_pretraining_and_other_weights_are_not_refused(tmp_path):
    from safetensors.torch import save_file

    from lnzoo.data.samples import Sample
    from lnzoo.pretrain.images import pretraining_leaks

    seen = Sample({"full": Path("/data/seen.png")}, "P1", {}, "row 2")
    digests = {Path("/data/seen.png"): "bb" * 20}
    transductive = _backbone_file(tmp_path / "t" / "backbone.safetensors", ["bb" * 20], transductive=True)
    hub = tmp_path / "model.safetensors"  # a hub's weights: no pretraining header
    save_file({"w": torch.zeros(2)}, str(hub))
    for source in (transductive, hub, "zoo:phantom-stage1-tiny", tmp_path / "missing.safetensors", None):
        assert pretraining_leaks([("model.init_from", source)], {"test": [seen]}, digests) == []


@pytest.mark.slow
def test_a_resumed_pretraining_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    from lnzoo import events
    from lnzoo.plugins import get_host
    from lnzoo.pretrain import pretrain
    from lnzoo.recipe import load_recipe

    host = get_host()
    sets = [s for s in SMALL if not s.startswith("train.epochs")] + ["train.epochs=3", "pretrain.probe_every=0"]
    recipe = load_recipe(RECIPE, quick=True, sets=sets, host=host)
    pretrain(recipe, host, tmp_path / "whole")

    class Stop(KeyboardInterrupt):
        pass

    def stop_in_epoch_2(event):
        if isinstance(event, events.StepEnded) and event.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        pretrain(load_recipe(RECIPE, quick=True, sets=sets, host=host), host, tmp_path / "cut", stop_in_epoch_2)
    assert not (tmp_path / "cut" / "backbone.safetensors").exists()
    done = invoke_cli("run", "--resume", tmp_path / "cut")
    assert done.returncode == 0, done.stderr
    assert "resuming the pretraining after epoch 1 of 3" in done.stderr + done.stdout
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "whole" / "backbone.safetensors"), load_file(tmp_path / "cut" / "backbone.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_too_few_images_or_a_wrong_option_is_a_clear_error(tmp_path):
    from lnzoo.pretrain.images import check_usable

    with pytest.raises(UsageError, match="at least 2 images"):
        check_usable([Path("a.png")], 1)
    with pytest.raises(UsageError, match="lower data.batch_size"):
        check_usable([Path("a.png"), Path("b.png")], 16)
    done = invoke_cli("run", RECIPE, "--quick", *_sets("pretrain.options={temprature=0.1}"), "--out", tmp_path / "x")
    assert done.returncode == 2 and "pretrain.options for 'simclr'" in done.stderr and "temprature" in done.stderr
