"""Grad-CAM / Grad-CAM++: localisation on hand-built models, per-view splits, layouts, and explain() files."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from lnzoo.errors import DataError, UsageError
from lnzoo.data.samples import views_of_item
from lnzoo.explain import compute_cams, explain, resolve_checkpoint, to_nchw
from lnzoo.model import LnzooModel
from lnzoo.nn.backbones import Backbone, timm_backbone
from lnzoo.nn.fusions import ConcatFusion, MeanFusion, SingleView
from lnzoo.nn.heads import LinearHead
from tests.conftest import REPO

S = 32  # input side of the hand-built models
QUADRANTS = {"TL": (slice(0, S // 2), slice(0, S // 2)), "TR": (slice(0, S // 2), slice(S // 2, S)),
             "BL": (slice(S // 2, S), slice(0, S // 2)), "BR": (slice(S // 2, S), slice(S // 2, S))}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class ColourBody(nn.Module):
    """CAM layer ``detect``: channel 0 fires on red pixels, channel 1 on green; features are their means."""

    def __init__(self):
        super().__init__()
        self.detect = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.detect.weight.zero_()
            self.detect.weight[0, 0] = 1.0
            self.detect.weight[1, 1] = 1.0
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.detect(x)).flatten(1)


def colour_backbone() -> Backbone:
    return Backbone(ColourBody(), 2, "detect")


def identity_head(in_features: int, views: int = 1) -> LinearHead:
    """Class 0 = amount of red, class 1 = amount of green (summed over the concatenated views)."""
    head = LinearHead(in_features, 2)
    with torch.no_grad():
        head.fc.weight.copy_(torch.eye(2).repeat(1, views))
        head.fc.bias.zero_()
    return head


def toy_model(views=("full",), shared=True, fusion=None) -> LnzooModel:
    n = len(views)
    backbones = nn.ModuleList(colour_backbone() for _ in range(1 if shared else n))
    fusion = fusion or (SingleView(1, 2) if n == 1 else ConcatFusion(n, 2))
    head = identity_head(fusion.out_features, fusion.out_features // 2)
    return LnzooModel(backbones, fusion, nn.ModuleDict({"toy": head}), views)


def image(red: str | None = None, green: str | None = None) -> torch.Tensor:
    x = torch.zeros(3, S, S)
    if red:
        x[(0, *QUADRANTS[red])] = 1.0
    if green:
        x[(1, *QUADRANTS[green])] = 1.0
    return x


def mass(cam: torch.Tensor, quadrant: str) -> float:
    """Share of a (H, W) map's total that falls in a quadrant."""
    return float(cam[QUADRANTS[quadrant]].sum() / cam.sum().clamp_min(1e-12))


def hooks_left(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if m._forward_hooks or m._backward_hooks or m._forward_pre_hooks]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_the_map_follows_the_gradient_to_the_evidence_of_the_explained_class(method):
    model = toy_model()
    # red top-right, green bottom-left: off-diagonal, so a transposed map would land in the wrong quadrant;
    # the second sample swaps them, so mixing up samples in the batch would fail too
    x = torch.stack([image(red="TR", green="BL"), image(red="BL", green="TR")])[:, None]
    red = compute_cams(model, x, None, "toy", class_index=0, method=method)
    green = compute_cams(model, x, None, "toy", class_index=1, method=method)
    assert red["full"].shape == (2, S, S)
    assert mass(red["full"][0], "TR") > 0.9 and mass(red["full"][1], "BL") > 0.9
    assert mass(green["full"][0], "BL") > 0.9 and mass(green["full"][1], "TR") > 0.9
    for cams in (red, green):
        assert cams["full"].min() >= 0 and cams["full"].amax((1, 2)).allclose(torch.ones(2))
    assert red["class_index"].tolist() == [0, 0] and green["class_index"].tolist() == [1, 1]


def test_gradcam_plus_plus_ignores_negative_gradients_where_gradcam_subtracts_them():
    model = toy_model()
    model.heads["toy"].fc.weight.data[0] = torch.tensor([1.0, -1.0])  # class 0: red counts for, green against
    red_left = image(red="TL", green="TL")
    red_left[0, QUADRANTS["BL"][0], QUADRANTS["BL"][1]] = 1.0  # red on the left half, green on the top half
    red_left[1, QUADRANTS["TR"][0], QUADRANTS["TR"][1]] = 1.0
    x = red_left[None, None]
    plain = compute_cams(model, x, None, "toy", class_index=0, method="gradcam")["full"][0]
    plus = compute_cams(model, x, None, "toy", class_index=0, method="gradcam++")["full"][0]
    assert mass(plain, "BL") > 0.9  # red minus green: the top-left cancels out
    assert abs(mass(plus, "TL") - 0.5) < 0.05 and abs(mass(plus, "BL") - 0.5) < 0.05  # only the red channel counts


def test_gradcam_plus_plus_weights_match_a_worked_example():
    from lnzoo.explain import _cam_from

    # two channels, constant gradient 0.5; channel 0 sums to 1, channel 1 to 3:
    # alpha_k = g^2 / (2 g^2 + sum(A_k) g^3) = 0.4 and 2/7; w_k = sum(alpha_k * relu(g)) = 0.4 and 2/7
    acts = torch.tensor([[[[1.0, 0.0]], [[0.0, 3.0]]]])
    grads = torch.full_like(acts, 0.5)
    assert torch.allclose(_cam_from(acts, grads, "gradcam++"), torch.tensor([[[0.4, 6 / 7]]]))
    assert torch.allclose(_cam_from(acts, grads, "gradcam"), torch.tensor([[[0.5, 1.5]]]))


def test_normalisation_keeps_no_evidence_blank_and_shows_a_flat_positive_map_as_uniform():
    from lnzoo.explain import _normalise

    maps = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 0.3), torch.tensor([[1.0, 2.0], [3.0, 5.0]])])
    out = _normalise(maps)
    assert not out[0].any() and (out[1] == 1).all()
    assert torch.allclose(out[2], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))


def test_default_class_is_the_prediction_and_parameters_get_no_grad():
    model = toy_model()
    model.train()
    x = torch.stack([image(red="TL"), image(green="BR")])[:, None]
    cams = compute_cams(model, x, None, "toy")
    assert cams["class_index"].tolist() == [0, 1]
    assert torch.allclose(cams["proba"].sum(1), torch.ones(2))
    assert mass(cams["full"][0], "TL") > 0.9 and mass(cams["full"][1], "BR") > 0.9
    assert all(p.grad is None for p in model.parameters())
    assert model.training, "the caller's train/eval mode is restored"
    assert not hooks_left(model)


def test_hooks_are_removed_when_the_forward_pass_fails():
    model = toy_model()
    with pytest.raises(RuntimeError):
        compute_cams(model, torch.zeros(1, 1, 4, S, S), None, "toy")  # 4 channels: the conv refuses
    assert not hooks_left(model)
    with pytest.raises(UsageError, match="out of range"):
        compute_cams(model, image(red="TL")[None, None], None, "toy", class_index=5)
    assert not hooks_left(model)


@pytest.mark.parametrize("shared", [True, False])
def test_each_view_gets_its_own_map_and_an_absent_view_gets_zeros(shared):
    model = toy_model(views=("full", "crop"), shared=shared)
    # (sample, view) each with a different quadrant: any mix-up of the B*V rows shows
    where = [("TR", "BL"), ("TL", "BR")]
    x = torch.stack([torch.stack([image(red=a), image(red=b)]) for a, b in where])
    cams = compute_cams(model, x, None, "toy", class_index=0)
    for i, (a, b) in enumerate(where):
        assert mass(cams["full"][i], a) > 0.9 and mass(cams["crop"][i], b) > 0.9
    present = torch.tensor([[True, False], [True, True]])
    cams = compute_cams(model, x, present, "toy", class_index=0)
    assert not cams["crop"][0].any()
    assert mass(cams["full"][0], "TR") > 0.9 and mass(cams["crop"][1], "BR") > 0.9


def test_an_absent_view_is_blank_even_when_the_fusion_ignores_presence():
    class SumFusion(nn.Module):
        out_features = 2

        def forward(self, feats, present=None):
            return feats[0] + feats[1]

    model = toy_model(views=("full", "crop"), fusion=SumFusion())
    x = torch.stack([image(red="TR"), image(red="BL")])[None]
    cams = compute_cams(model, x, torch.tensor([[True, False]]), "toy", class_index=0)
    assert mass(cams["full"][0], "TR") > 0.9 and not cams["crop"].any()


def test_shared_timm_backbone_swapping_the_views_swaps_the_maps():
    torch.manual_seed(0)
    backbone = timm_backbone("test_resnet")
    model = LnzooModel(nn.ModuleList([backbone]), MeanFusion(2, backbone.num_features),
                       nn.ModuleDict({"t": LinearHead(backbone.num_features, 3)}), ["full", "crop"])
    a, b = torch.randn(3, 64, 64), torch.randn(3, 64, 64)
    a[:, :32, :32] += 3.0  # different content, so the two maps differ
    x = torch.stack([torch.stack([a, b]), torch.stack([b, a])])
    cams = compute_cams(model, x, None, "t", class_index=1)
    assert not torch.allclose(cams["full"][0], cams["crop"][0], atol=1e-3)
    # the mean fusion is symmetric in its views: swapping the inputs must swap the maps
    assert torch.allclose(cams["full"][0], cams["crop"][1], atol=1e-5)
    assert torch.allclose(cams["crop"][0], cams["full"][1], atol=1e-5)
    assert torch.allclose(cams["proba"][0], cams["proba"][1], atol=1e-5)


def test_to_nchw_puts_tokens_and_channels_last_on_the_right_grid():
    grid = torch.arange(2 * 4 * 3 * 5, dtype=torch.float32).view(2, 5, 4, 3)  # (B, C, h, w)
    assert torch.equal(to_nchw(grid.permute(0, 2, 3, 1), "nhwc"), grid)
    tokens = grid.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major patches
    with pytest.raises(Exception, match="square"):
        to_nchw(tokens, "tokens")
    square = torch.randn(2, 5, 3, 3)
    prefixed = torch.cat([torch.full((2, 1, 5), 99.0), square.flatten(2).transpose(1, 2)], dim=1)
    assert torch.equal(to_nchw(prefixed, "tokens", num_prefix_tokens=1), square)


def test_vit_tokens_give_maps_of_the_input_size():
    torch.manual_seed(0)
    backbone = timm_backbone("test_vit")
    side = backbone.body.patch_embed.img_size[0]
    model = LnzooModel(nn.ModuleList([backbone]), SingleView(1, backbone.num_features),
                       nn.ModuleDict({"t": LinearHead(backbone.num_features, 2)}), ["full"])
    for method in ("gradcam", "gradcam++"):
        cams = compute_cams(model, torch.randn(1, 1, 3, side, side), None, "t", method=method)
        assert cams["full"].shape == (1, side, side)
        assert 0 <= float(cams["full"].min()) and float(cams["full"].max()) <= 1
    assert not hooks_left(model)


def test_channels_last_swin_gives_maps_of_the_input_size():
    import timm

    torch.manual_seed(0)
    body = timm.create_model("swin_tiny_patch4_window7_224", num_classes=0, embed_dim=8, depths=(1, 1),
                             num_heads=(1, 1), img_size=32, window_size=4)
    backbone = Backbone(body, body.num_features, body.feature_info[-1]["module"], "nhwc")
    model = LnzooModel(nn.ModuleList([backbone]), SingleView(1, backbone.num_features),
                       nn.ModuleDict({"t": LinearHead(backbone.num_features, 2)}), ["full"])
    cams = compute_cams(model, torch.randn(2, 1, 3, 32, 32), None, "t", method="gradcam++")
    assert cams["full"].shape == (2, 32, 32)
    assert 0 <= float(cams["full"].min()) and float(cams["full"].max()) <= 1


def test_a_head_with_its_own_probabilities_is_explained_through_the_log_probability():
    class SquaredSoftmaxHead(LinearHead):
        def probabilities(self, logits):
            p = logits.softmax(1) ** 2
            return p / p.sum(1, keepdim=True)

    model = toy_model()
    model.heads["toy"] = SquaredSoftmaxHead(2, 2)
    with torch.no_grad():
        model.heads["toy"].fc.weight.copy_(torch.eye(2))
        model.heads["toy"].fc.bias.zero_()
    cams = compute_cams(model, image(red="BR", green="TL")[None, None], None, "toy", class_index=1,
                        method="gradcam++")
    assert torch.allclose(cams["proba"].sum(1), torch.ones(1))
    assert mass(cams["full"][0], "TL") > 0.9


TINY = ["model.backbone={name='timm', model_name='test_resnet'}", "data.image_size=32", "train.epochs=1",
        "data.phantom.patients=24", "cv.folds=3", "cv.run_folds=[0]", "data.batch_size=16", "train.threads=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
    """The shared single-view run (folds 1 and 2) and a two-view (full + crop) run directory."""
    from lnzoo.plugins import load_plugins
    from lnzoo.recipe import load_recipe
    from lnzoo.pipeline import fit_folds

    # the phantom cache is the session's (tests/conftest.py)
    host = load_plugins()
    out = {"single": tiny_run}
    for name, sets in (("two", ["data.views=['full','crop']", "model.fusion={name='concat'}"]),):
        recipe = load_recipe(REPO / "recipes" / "stage1_aux.toml", sets=[*TINY, *sets], host=host)
        out[name] = tmp_path_factory.mktemp(name)
        fit_folds(recipe, host, out[name])
    yield out


def _images(run: Path, n: int = 2) -> list[Path]:
    with (run / "predictions.csv").open(newline="") as fh:
        return [Path(row["path"]) for row in list(csv.DictReader(fh))[:n]]


def _capture_models(monkeypatch) -> list:
    import lnzoo.inference

    loaded, real = [], lnzoo.inference.load

    def spy(*args, **kwargs):
        predictor = real(*args, **kwargs)
        loaded.append(predictor.model)
        return predictor
    monkeypatch.setattr(lnzoo.inference, "load", spy)
    return loaded


CLASSES = {"malignancy": ("benign", "malignant"), "enlargement": ("not_enlarged", "enlarged")}


def _check_outputs(pngs: list[Path], out: Path, images: list[Path], views: list[str]) -> None:
    from PIL import Image

    assert len(pngs) == len(images) * len(CLASSES) * len(views)
    for img in images:
        for task, classes in CLASSES.items():
            for view in views:
                hits = [p for p in pngs if p.name in {f"{img.stem}__{task}__{c}__{view}.png" for c in classes}]
                assert len(hits) == 1, (img.stem, task, view, [p.name for p in pngs])
                assert hits[0].parent == out and hits[0].is_file()
    with Image.open(pngs[0]) as im:
        assert im.mode == "RGB" and im.width >= 256 and im.height >= 256 + 3 * 14  # a caption strip below
    with (out / "explain.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["png"] for r in rows] == [p.name for p in pngs]
    assert {r["view"] for r in rows} == set(views)
    for r in rows:
        assert r["class"] in CLASSES[r["task"]] and 0.0 <= float(r["probability"]) <= 1.0


def test_explain_a_single_view_run_writes_a_png_per_head(runs, tmp_path, monkeypatch):
    loaded = _capture_models(monkeypatch)
    images = _images(runs["single"])
    out = tmp_path / "cams"
    pngs = explain(runs["single"], images, out)
    _check_outputs(pngs, out, images, ["full"])
    assert loaded and not hooks_left(loaded[0])
    assert all(p.grad is None for p in loaded[0].parameters())
    assert resolve_checkpoint(runs["single"]) == runs["single"] / "fold1" / "best.safetensors"  # its first fold

    one = explain(runs["single"] / "fold1" / "best.safetensors", images[:1], tmp_path / "pp",
                  tasks=["malignancy"], method="gradcam++", class_index="benign")
    assert [p.name for p in one] == [f"{images[0].stem}__malignancy__benign__full.png"]
    with pytest.raises(UsageError, match="not one of"):
        explain(runs["single"], images[:1], tmp_path / "x", tasks=["malignancy"], class_index="huge")
    with pytest.raises(UsageError, match="not in this checkpoint"):
        explain(runs["single"], images[:1], tmp_path / "x", tasks=["origin"])
    with pytest.raises(DataError, match="nope.png"):
        explain(runs["single"], [tmp_path / "nope.png"], tmp_path / "x")


def test_explain_a_two_view_run_derives_the_crop_and_writes_each_view(runs, tmp_path, monkeypatch):
    loaded = _capture_models(monkeypatch)
    images = _images(runs["two"])
    out = tmp_path / "cams"
    pngs = explain(runs["two"], images, out)
    _check_outputs(pngs, out, images, ["full", "crop"])
    assert loaded and not hooks_left(loaded[0])
    with (out / "explain.csv").open(newline="") as fh:
        crops = {r["image"] for r in csv.DictReader(fh) if r["view"] == "crop"}
    assert crops == {str(p.parent.parent / f"{p.parent.name}-crop" / p.name) for p in images}

    # explicit per-view paths (None: the crop was not acquired) give the same full-view file, no crop PNG
    explicit = explain(runs["two"], [[images[0], None]], tmp_path / "explicit", tasks=["enlargement"])
    assert len(explicit) == 1 and explicit[0].name.endswith("__full.png")
    with pytest.raises(UsageError, match="one path per view"):
        explain(runs["two"], [[images[0]]], tmp_path / "x")


def test_views_of_item_rules():
    assert views_of_item("a/2d/x.png", ["full", "crop"], "-crop") == {"full": Path("a/2d/x.png"),
                                                                       "crop": Path("a/2d-crop/x.png")}
    assert views_of_item("x.png", ["full"], "-crop") == {"full": Path("x.png")}
    assert views_of_item(["a.png", "b.png", None], ["2d", "cdfi", "elasto"], "-crop") == \
        {"2d": Path("a.png"), "cdfi": Path("b.png"), "elasto": None}
    with pytest.raises(UsageError, match=r"x\.png.*\['2d', 'cdfi'\]"):
        views_of_item("x.png", ["2d", "cdfi"], "-crop")
    with pytest.raises(UsageError, match="at least one image"):
        views_of_item([None, None], ["2d", "cdfi"], "-crop")


def test_a_roi_view_model_refuses_bare_images_instead_of_feeding_them_uncropped():
    from lnzoo.errors import UsageError

    with pytest.raises(UsageError, match="'roi' view"):
        views_of_item(Path("a.png"), ["full", "roi"], "-crop")
