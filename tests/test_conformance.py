"""lnzoo's own components through the conformance kit it offers plugin authors (one item per component and
check), and the kit itself: every failure reported by its check's name, expected failures as xfail."""
from __future__ import annotations

import json
import re
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import lnzoo
import lnzoo.testing as kit
from lnzoo.plugins import load_plugins
from lnzoo.testing import parametrize_with_checks

HOST = load_plugins()


def _test_sized(name: str) -> bool:
    """A backbone whose factory names small arguments for the kit (timm's test_resnet); the others are full size."""
    return hasattr(HOST.get("backbone", name).factory, "lnzoo_check_kwargs")


FULL_SIZE = [n for n in HOST.registry("backbone").names() if not _test_sized(n)]

# rows for lnzoo's own input kinds: some with the input, one without it, one bad where the kind can have one
REPORTS = ["右侧颈部II区可见一淋巴结，大小约12×6mm，淋巴门结构可见", "A hypoechoic round node, hilum absent.",
           "左侧颈部Ⅳ区淋巴结，形态不规则，边界不清", "", "An oval node with preserved fatty hilum. Impression: reactive.",
           "淋巴门结构消失，考虑转移"]
COVARIATES = [{"age": str(40 + 3 * i), "sex": "MF"[i % 2]} for i in range(6)] + [
    {"age": "", "sex": ""},  # nothing known: the input is missing for this row
    {"age": "forty", "sex": "F"}]  # not a number in a numeric column: a bad row


def _mask_rows(folder):
    """Eight image + mask pairs written into the kit's folder: row 3's mask is empty, row 7's file is missing."""
    from PIL import Image

    rng = np.random.default_rng(0)
    cells = []
    for i in range(8):
        mask = np.zeros((48, 48), np.uint8)
        if i != 3:
            mask[10:30 + i, 12:34] = 255
        Image.fromarray((rng.random((48, 48)) * 255).astype(np.uint8)).save(folder / f"i{i}.png")
        if i != 7:
            Image.fromarray(mask).save(folder / f"m{i}.png")
        cells.append({"path": f"i{i}.png", "mask": f"m{i}.png"})
    return kit.make_rows(cells, base=folder)


INPUTS = {"text": kit.input_kind("text", kit.make_rows({"report": t} for t in REPORTS * 2), host=HOST, column="report",
                                  max_length=16, dim=16, heads=2, layers=1),
          "covariates": kit.input_kind("covariates", kit.make_rows(COVARIATES), host=HOST, columns=["age", "sex"],
                                       types={"age": "numeric"}),
          "morphology": kit.input_kind("morphology", _mask_rows, host=HOST)}

COMPONENTS = [
    *(kit.backbone(n, host=HOST) for n in HOST.registry("backbone").names() if n not in FULL_SIZE),
    *(kit.head(n, host=HOST) for n in HOST.registry("head").names()),
    kit.head("linear", host=HOST, num_classes=2),
    *(kit.fusion(n, host=HOST) for n in HOST.registry("fusion").names()),
    kit.fusion("attention", host=HOST, num_views=3, view_embedding=False),
    *(INPUTS[n] for n in HOST.registry("input").names() if n in INPUTS),
    *(kit.task(n, host=HOST) for n in HOST.registry("task").names()),
    *(kit.pretrainer(n, host=HOST) for n in HOST.registry("pretrainer").names()),
    *(kit.tracker(n, host=HOST) for n in HOST.registry("tracker").names()),
]


@pytest.fixture(autouse=True)
def _no_mlflow_server(monkeypatch):
    """The mlflow tracker's checks record into the kit's own store; MLflow sends no usage data from the tests."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@parametrize_with_checks(COMPONENTS)
def test_registered_component_conforms(component, check):
    check(component)


def test_every_builtin_component_is_checked():
    builtin = {(kind, e.name) for kind in kit.KINDS for e in HOST.registry(kind)
               if e.provenance.distribution == "lnzoo"}
    assert {kind for kind, _ in builtin} == set(kit.KINDS)
    checked = {(c.kind, c.name) for c in COMPONENTS} | {("backbone", n) for n in FULL_SIZE}
    assert builtin <= checked, f"not checked (an input kind needs rows in INPUTS): {sorted(builtin - checked)}"
    assert "timm" not in FULL_SIZE


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_backbone_builds_to_the_contract(name):
    results = kit.check_component(kit.backbone(name, host=HOST, image_size=32),
                                  checks=["satisfies_protocol", "feature_attributes", "forward_shape"])
    assert [r.status for r in results] == ["passed"] * 3


def test_the_checks_of_each_kind_are_named():
    names = {kind: kit.check_names(kind) for kind in kit.KINDS}
    for kind in ("backbone", "head", "fusion", "input"):
        assert {"forward_shape", "backward_reaches_parameters", "safetensors_round_trip"} <= set(names[kind])
    assert "probabilities_sum_to_one" in names["head"] and "masked_member_cannot_leak" in names["fusion"]
    assert "bad_rows_named" in names["input"] and "as_dict_round_trip" in names["task"]
    assert [name for name, _ in kit.yield_checks(kit.head("linear"))] == names["head"]


def test_builtin_components_satisfy_their_protocols():
    from lnzoo import contracts
    assert isinstance(HOST.get("backbone", "timm").build(model_name="test_resnet"), contracts.Backbone)
    assert isinstance(HOST.get("fusion", "attention").build(2, 8), contracts.Fusion)
    head = HOST.get("head", "cosine").build(8, 3)
    assert isinstance(head, contracts.Head) and not contracts.has_own_probabilities(head)
    assert contracts.missing_members(object(), contracts.Fusion) == ["forward", "out_features"]


def test_the_plugin_guide_lists_every_check():
    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugins" / "index.md").read_text(encoding="utf-8")
    for kind, label in [("backbone", "backbone"), ("head", "head"), ("fusion", "fusion"), ("input", "input kind"),
                        ("task", "task"), ("pretrainer", "pretrainer"), ("tracker", "tracker")]:
        row = next(line for line in guide.splitlines() if line.startswith(f"| {label} |"))
        assert re.findall(r"`(\w+)`", row) == kit.check_names(kind), f"docs/plugins/index.md: the {label} row"
    tracking = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "tracking.md").read_text(encoding="utf-8")
    table = tracking[tracking.index("| check | what it asks of the tracker |"):].split("\n\n")[0]
    named = [name for line in table.splitlines()[2:] for name in re.findall(r"`(\w+)`", line.split("|")[1])]
    assert named == kit.check_names("tracker"), "docs/guide/tracking.md: the tracker checks' table"


# --- the kit itself: components broken on purpose ---------------------------------------------------

def _host_with(kind, factory, name="acme"):
    mod = types.ModuleType("acme")
    setattr(mod, f"lnzoo_register_{kind}s", lnzoo.hookimpl(lambda register: register(name, factory)))
    return load_plugins(extra=[("acme-parts", mod)], entry_points=[])


def _probabilities_only(in_features, num_classes):
    """A head with its own probabilities() but, deliberately, no task_loss(): an optional member missing."""
    import torch

    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(in_features, num_classes)

        def forward(self, x):
            return self.fc(x)

        def probabilities(self, outputs):
            return outputs.softmax(1)
    return Half()


HALF = kit.head("acme", host=lambda: _host_with("head", _probabilities_only))
MISSING_LOSS = "deliberately no task_loss: lnzoo would train its outputs as logits"


@parametrize_with_checks([HALF], expected_failed={"own_probabilities_with_own_loss": MISSING_LOSS})
def test_kit_marks_a_missing_optional_member_as_an_expected_failure(component, check):
    check(component)  # strict xfail: were the kit to miss the missing task_loss, this item would fail


def test_a_missing_optional_member_is_reported_by_its_check_name():
    with pytest.raises(kit.ConformanceError) as err:
        kit.check_component(HALF)
    assert str(err.value).splitlines() == [
        "head:acme: 1 of 10 conformance checks failed:",
        ("  own_probabilities_with_own_loss: the head defines probabilities() but no task_loss(): lnzoo would train "
         "its outputs with cross-entropy as if they were logits")]
    results = kit.check_component(HALF, expected_failed={"own_probabilities_with_own_loss": MISSING_LOSS})
    assert {r.check: r.status for r in results if r.status != "passed"} == {"own_probabilities_with_own_loss": "xfail"}
    assert next(r for r in results if r.status == "xfail").reason == MISSING_LOSS


def test_parametrize_gives_one_named_item_per_check_and_xfail_with_its_reason():
    mark = parametrize_with_checks([kit.head("linear", host=HOST), HALF],
                                   expected_failed={"head:acme": {"own_probabilities_with_own_loss": MISSING_LOSS}})
    argnames, params = mark.args
    assert argnames == ("component", "check")
    ids = [p.id for p in params]
    assert ids[:2] == ["head:linear-builds_module", "head:linear-satisfies_protocol"]
    assert len(ids) == len(set(ids)) == 2 * len(kit.check_names("head"))
    marked = {p.id: m.kwargs for p in params for m in p.marks}
    assert marked == {"head:acme-own_probabilities_with_own_loss": {"reason": MISSING_LOSS, "strict": True}}
    assert all(p.values[1].name == p.id.rsplit("-", 1)[1] for p in params)


@pytest.mark.parametrize("expected, message", [
    ({"forward_shap": "x"}, "'forward_shap', not a check of the components given; did you mean 'forward_shape'"),
    ({"head:acme": {"bad_rows_named": "x"}}, "'bad_rows_named', not a check of a head"),
    ({"head:acm": {"forward_shape": "x"}}, "'head:acm', not one of the components checked; did you mean 'head:acme'"),
])
def test_a_misspelt_expected_failure_is_an_error(expected, message):
    with pytest.raises(ValueError, match=message):
        parametrize_with_checks([HALF], expected_failed=expected)


def test_an_expected_failure_that_passes_is_reported():
    with pytest.raises(kit.ConformanceError, match="forward_shape: expected to fail, but passed"):
        kit.check_head("linear", host=HOST, expected_failed={"forward_shape": "it used to fail"})


def test_every_failure_is_reported_not_only_the_first():
    def wide(in_features, num_classes):
        import torch
        return torch.nn.Linear(in_features, num_classes + 1)

    with pytest.raises(AssertionError) as err:
        kit.check_head("acme", host=_host_with("head", wide))
    lines = str(err.value).splitlines()
    assert lines[0] == "head:acme: 4 of 10 conformance checks failed:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "forward_shape", "probabilities_sum_to_one", "loss_weight_normalised", "backward_reaches_parameters"]
    assert lines[1] == ("  forward_shape: head output is (B, 4) for 3 classes: outputs that are not one logit per "
                        "class need the head's own probabilities() and task_loss()")
    assert lines[2] == "  probabilities_sum_to_one: probabilities must be (6, 3), got (6, 4)"
    assert lines[3].startswith("  loss_weight_normalised: RuntimeError: weight tensor should be defined")
    results = kit.check_component(kit.head("acme", host=_host_with("head", wide)), on_fail=None)
    assert [r.check for r in results if r.status == "passed"] == [
        "builds_module", "satisfies_protocol", "forward_is_finite", "own_probabilities_with_own_loss",
        "loss_is_finite_scalar", "safetensors_round_trip"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kit.check_component(kit.head("acme", host=_host_with("head", wide)), on_fail="warn")
    assert any("forward_shape" in str(w.message) for w in caught)


def test_kit_catches_a_fusion_that_leaks_a_missing_view():
    def leaky(num_views, in_features):
        import torch

        class Leaky(torch.nn.Module):
            out_features = in_features

            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(1))

            def forward(self, feats, present=None):
                return self.w * torch.stack(feats).mean(0)
        return Leaky()

    results = kit.check_fusion("acme", host=_host_with("fusion", leaky), expected_failed={
        "masked_member_cannot_leak": "averages the views it is told are missing"})
    assert [r.check for r in results if r.status != "passed"] == ["masked_member_cannot_leak"]
    with pytest.raises(AssertionError, match="masked_member_cannot_leak: output depends on a view marked missing"):
        kit.check_fusion("acme", host=_host_with("fusion", leaky))


def test_kit_names_what_a_backbone_lacks_of_the_contract():
    def no_cam(pretrained=False):
        import torch

        class Flat(torch.nn.Module):
            num_features, cam_layer = 8, "fc"  # no tokens_layout, num_prefix_tokens, cam_module

            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(3, 8)

            def forward(self, x):
                return self.fc(x.mean((2, 3)))
        return Flat()

    with pytest.raises(AssertionError) as err:
        kit.check_backbone("acme", host=_host_with("backbone", no_cam))
    text = str(err.value)
    assert "satisfies_protocol: backbone 'acme' (Flat) does not satisfy lnzoo.contracts.Backbone: missing " \
           "['cam_module', 'num_prefix_tokens', 'tokens_layout']" in text
    assert "feature_attributes: tokens_layout must be one of" in text
    assert "cam_module_is_cam_layer: AttributeError" in text
    assert "forward_shape" not in text and text.startswith("backbone:acme: 3 of 8 conformance checks failed")


def test_kit_names_a_fusion_without_out_features():
    def bare(num_views, in_features):
        import torch

        class Bare(torch.nn.Module):
            def forward(self, feats, present=None):
                return feats[0]
        return Bare()

    with pytest.raises(AssertionError, match=r"satisfies_protocol: fusion 'acme' \(Bare\) does not satisfy "
                                             r"lnzoo.contracts.Fusion: missing \['out_features'\]"):
        kit.check_fusion("acme", host=_host_with("fusion", bare))


def test_kit_refuses_a_head_that_is_not_a_module():
    def plain(in_features, num_classes):
        return lambda x: x[:, :num_classes]

    with pytest.raises(AssertionError, match="builds_module: head 'acme' must be a torch.nn.Module, got function"):
        kit.check_component("head", "acme", host=_host_with("head", plain))


# input kinds: the kit asks for no optional member, and names a bad row no problem names

class _Minimal:
    """An input kind with the contract's members only: a number per row from the column 'x'."""

    dtype = "float32"

    def __init__(self, column: str = "x", name_bad_rows: bool = True):
        self.column, self.name_bad_rows = column, name_bad_rows

    def check(self, samples, problems):
        bad = {i for i, s in enumerate(samples) if s.cells.get(self.column) == "?"}
        problems += [f"{samples[i].origin}: x is '?'" if self.name_bad_rows else "a bad x" for i in sorted(bad)]
        return bad

    def fit(self, samples):
        values = [float(s.cells[self.column]) for s in samples if s.cells.get(self.column)]
        return {"mean": float(np.mean(values))}

    def shape(self, state):
        return (1,)

    def encode(self, sample, state):
        cell = sample.cells.get(self.column)
        return None if not cell else np.array([float(cell) - state["mean"]], np.float32)

    def encoder(self, state, out_features):
        import torch
        return torch.nn.Linear(1, out_features)


XS = kit.make_rows([{"x": "1"}, {"x": "2.5"}, {"x": ""}, {"x": "?"}, {"x": "4"}])


def test_an_input_kind_with_no_optional_member_conforms():
    results = kit.check_input("acme", XS, host=_host_with("input", _Minimal))
    assert {r.status for r in results} == {"passed"} and len(results) == len(kit.check_names("input"))


def test_kit_names_an_input_kind_that_does_not_name_its_bad_rows():
    host = _host_with("input", _Minimal)
    with pytest.raises(AssertionError) as err:
        kit.check_input("acme", XS, host=host, name_bad_rows=False)
    assert str(err.value).splitlines()[1:] == [
        "  bad_rows_named: bad rows without a problem naming them (\"file:line: reason\"): ['m.csv:5']"]
    kit.check_input("acme", XS, host=host, name_bad_rows=False,
                    expected_failed={"bad_rows_named": "its problems do not say which row"})


def test_kit_names_feature_names_that_do_not_fit_the_shape():
    class Named(_Minimal):
        def feature_names(self, state):
            return ["x", "y"]

    with pytest.raises(AssertionError, match=r"optional_members_valid: feature_names\(state\) must name each of the "
                                             r"\(1,\) encoded features, got \['x', 'y'\]"):
        kit.check_input("acme", XS, host=_host_with("input", Named))


def test_make_rows_are_what_an_input_kind_reads(tmp_path):
    rows = kit.make_rows([{"report": "hilum absent", "mask": "m.png"}, {"report": None}], manifest="cases.csv",
                         base=tmp_path)
    assert [r.origin for r in rows] == ["cases.csv:2", "cases.csv:3"] and rows[1].cells == {"report": ""}
    assert rows[0].cell_path("mask") == (tmp_path / "m.png").resolve() and rows[1].cell_path("mask") is None
    assert kit.make_row({"a": 1}, line=9).origin == "m.csv:9"


# tasks

def test_check_task_reports_every_broken_field():
    from lnzoo.tasks import Task

    t = Task(name="acme", classes=("low", "high"), aliases={"high": ("hi",)})
    kit.check_task(t)
    object.__setattr__(t, "positive", "medium")  # past the constructor's own validation, as a plugin's subclass might
    object.__setattr__(t, "aliases", {"high": ("hi",), "mid": ("m",)})
    object.__setattr__(t, "class_weighting", "inverse")
    results = kit.check_component(kit.task(t), on_fail=None)
    assert {r.check: r.status for r in results if r.status != "passed"} == {
        "registered_under_its_name": "skipped", "positive_is_a_class": "failed", "aliases_map_to_classes": "failed",
        "loss_and_weighting_valid": "failed", "as_dict_round_trip": "failed"}
    with pytest.raises(AssertionError, match="positive_is_a_class: positive 'medium' is not one of"):
        kit.check_task(t)


def test_check_task_names_a_task_registered_under_another_name():
    from lnzoo.tasks import Task

    host = _host_with("task", Task(name="acme", classes=("a", "b")), name="acme_v2")
    with pytest.raises(AssertionError, match="registered_under_its_name: registered as 'acme_v2' but its name is "
                                             "'acme'"):
        kit.check_task("acme_v2", host=host)


@pytest.mark.parametrize("fault, failed", [
    ("copies the backbone", {"keeps_the_backbone", "backward_reaches_the_backbone", "trainable_after_step"}),
    ("detaches the features", {"backward_reaches_the_backbone", "trainable_after_step"}),
    ("returns a loss per image", {"loss_is_a_finite_scalar", "backward_reaches_the_backbone", "trainable_after_step"}),
    ("freezes the backbone after a step", {"trainable_after_step"}),
])
def test_kit_names_a_pretrainer_that_would_not_train_what_it_saves(fault, failed):
    import copy

    import torch

    def method(backbone):
        class Broken(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = copy.deepcopy(backbone) if fault == "copies the backbone" else backbone
                self.proj = torch.nn.Linear(backbone.num_features, 8)

            def forward(self, view0, view1):
                f0, f1 = self.backbone(view0), self.backbone(view1)
                if fault == "detaches the features":
                    f0, f1 = f0.detach(), f1.detach()
                loss = (self.proj(f0) - self.proj(f1)).pow(2).mean(1) + self.proj(f0).pow(2).mean(1)
                return loss if fault == "returns a loss per image" else loss.mean()

            def after_step(self, progress):
                if fault == "freezes the backbone after a step":
                    self.backbone.requires_grad_(False)
        return Broken()

    results = kit.check_pretrainer("acme", host=_host_with("pretrainer", method), on_fail=None)
    assert {r.check for r in results if not r.ok} == failed, [(r.check, r.message) for r in results if not r.ok]


# --- trackers ---------------------------------------------------------------------------------------------------

class _Recorder:
    """A tracker that keeps what it is told in a JSON file of its own in the run directory, broken by ``fault``."""

    def __init__(self, run_dir, recipe, fault=""):
        self.run_dir, self.fault, self.lines = Path(run_dir), fault, None

    def start(self, resume):
        from lnzoo.track import recall, remember

        if resume and self.fault == "keeps its state in memory only":
            self.lines.append("resumed")  # None in a new process: the state was never kept in run.json
        if resume and not recall(self.run_dir, "recorder"):
            raise RuntimeError("resumed a run it never started")
        remember(self.run_dir, "recorder", started=True)
        self.lines = []

    def event(self, event):
        from lnzoo import events

        if self.fault == "fails on events it does not know":
            {events.EpochEnded: 1, events.FoldEnded: 2, events.RunEnded: 3, events.StepEnded: 4,
             events.FoldStarted: 5, events.Note: 6, events.Progress: 7, events.InitLoaded: 8}[type(event)]
        if isinstance(event, events.EpochEnded):
            values = [v for v in event.row.values() if isinstance(v, float)]
            if self.fault == "refuses undefined values" and any(v != v for v in values):
                raise ValueError("metric is NaN")
            self.lines.append(event.row)
        elif isinstance(event, events.RunEnded) and self.fault == "writes into metrics.json":
            metrics = json.loads((self.run_dir / "metrics.json").read_text())
            (self.run_dir / "metrics.json").write_text(json.dumps({**metrics, "tracked": True}))
        elif isinstance(event, events.RunEnded) and self.fault == "rewrites run.json":
            run = json.loads((self.run_dir / "run.json").read_text())
            (self.run_dir / "run.json").write_text(json.dumps({**run, "status": "tracked"}))

    def finish(self, status):
        if self.fault == "knows only finished runs":
            {"finished": "FINISHED"}[status]
        (self.run_dir / "recorder.json").write_text(json.dumps({"status": status, "rows": self.lines}, default=str))


@pytest.mark.parametrize("fault, failed", [
    ("", set()),
    ("refuses undefined values", {"takes_undefined_values"}),
    ("fails on events it does not know", {"passes_over_unknown_events"}),
    ("knows only finished runs", {"finishes_with_every_status", "resumes_in_a_new_tracker"}),
    ("keeps its state in memory only", {"resumes_in_a_new_tracker"}),
    ("writes into metrics.json", {"leaves_the_run_alone"}),
    # lnzoo itself refuses a run.json changed behind its back: every check that ends a run fails
    ("rewrites run.json", {"follows_a_run", "takes_undefined_values", "passes_over_unknown_events",
                           "resumes_in_a_new_tracker", "leaves_the_run_alone"}),
])
def test_kit_names_a_tracker_that_would_stop_or_spoil_a_run(fault, failed):
    def factory(run_dir, recipe):
        return _Recorder(run_dir, recipe, fault)

    results = kit.check_tracker("acme", host=_host_with("tracker", factory), on_fail=None)
    assert [r.check for r in results] == kit.check_names("tracker")
    assert {r.check for r in results if not r.ok} == failed, [(r.check, r.message) for r in results if not r.ok]


def test_kit_names_a_tracker_factory_that_returns_nothing_or_half_a_tracker():
    results = kit.check_tracker("acme", host=_host_with("tracker", lambda run_dir, recipe: None), on_fail=None)
    assert {r.check: r.status for r in results}["builds"] == "failed"

    class Half:
        def __init__(self, run_dir, recipe):
            pass

        def start(self, resume):
            pass

    with pytest.raises(kit.ConformanceError, match=r"(?s)satisfies_protocol: .*missing \['event', 'finish'\]"):
        kit.check_tracker("acme", host=_host_with("tracker", Half))


def test_a_tracker_whose_package_is_missing_is_skipped_saying_what_to_install():
    from lnzoo.track import missing_extra

    def factory(run_dir, recipe):
        raise missing_extra("acmetrack", "acme")

    results = kit.check_tracker("acme", host=_host_with("tracker", factory), on_fail=None)
    assert {r.status for r in results} == {"skipped"}
    assert all("pip install" in r.message and "acmetrack" in r.message for r in results)


def test_the_kits_run_sends_every_kind_of_event(tmp_path):
    """A tracker checked by the kit has seen every event lnzoo sends trackers: a new kind of event joins the kit's
    run (FoldKept never reaches a tracker: lnzoo.track replays the events inside it)."""
    import dataclasses

    from lnzoo import events
    from lnzoo.testing._tracker import run_events

    emitted = {cls for cls in vars(events).values()
               if dataclasses.is_dataclass(cls) and cls.__module__ == events.__name__}
    (tmp_path / "run").mkdir()
    emitted.discard(events.FoldKept)
    sent = {type(e) for e in run_events(tmp_path / "run")}
    assert emitted and emitted == sent, f"not in the kit's run: {sorted(c.__name__ for c in emitted - sent)}"
