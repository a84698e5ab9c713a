"""Every artefact lnzoo reads back is bound to what wrote it (integrity.json), and a model never runs with a
component other than the one it was trained with: refused with the file or component named, or, under
--allow-modified, used with every output saying so."""
from __future__ import annotations

import csv
import io
import json
import shutil
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lnzoo.errors import UsageError
from lnzoo.integrity import (MANIFEST, ModifiedError, modified, modified_allowed, modified_note, read_bytes,
                             verify_tree)
from tests.conftest import invoke_cli


def _images(run: Path, n: int = 2) -> list[str]:
    with (run / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        return [r["path"] for r in csv.DictReader(fh)][:n]


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


# -- the gate, on its own ----------------------------------------------------------------------------------------
def _root(tmp_path: Path) -> Path:
    from lnzoo.files import write_atomic
    from lnzoo.integrity import start

    root = tmp_path / "bundle"
    root.mkdir()
    start(root)
    write_atomic(root / "config.json", '{"a": 1}')
    write_atomic(root / "models" / "fold0.json", '{"b": 2}')
    return root


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64), which=st.sampled_from(["config.json", "models/fold0.json"]))
def test_any_other_content_of_a_bound_file_is_refused_naming_it(tmp_path_factory, data, which):
    root = _root(tmp_path_factory.mktemp("gate"))
    original = (root / which).read_bytes()
    (root / which).write_bytes(data)
    if data == original:
        assert read_bytes(root / which) == data
        return
    with pytest.raises(ModifiedError, match=f"{which}.*differs from the file lnzoo wrote"):
        read_bytes(root / which)
    with modified_allowed():
        assert read_bytes(root / which) == data
        assert which in modified_note()


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / MANIFEST).unlink(), "holds no integrity.json"),
    (lambda root: (root / MANIFEST).write_text("{not json"), "integrity.json: not readable"),
    (lambda root: (root / MANIFEST).write_text('{"format": "other"}'), "not an lnzoo integrity manifest"),
    (lambda root: shutil.copy(root / "models" / "fold0.json", root / "models" / "fold1.json"), "not among the files"),
])
def test_a_root_whose_manifest_is_gone_or_foreign_binds_nothing_silently(tmp_path, damage, message):
    root = _root(tmp_path)
    damage(root)
    target = root / "models" / ("fold1.json" if (root / "models" / "fold1.json").exists() else "fold0.json")
    with pytest.raises(ModifiedError, match=message):
        read_bytes(target)


def test_a_rewrite_is_bound_again_and_a_crash_mid_write_leaves_a_readable_file(tmp_path, monkeypatch):
    from lnzoo import files
    from lnzoo.files import OutputError, write_atomic

    root = _root(tmp_path)
    write_atomic(root / "config.json", '{"a": 2}')
    assert read_bytes(root / "config.json") == b'{"a": 2}'
    assert verify_tree(root) == []

    def crash(path, blob):
        raise OutputError("disk full")
    monkeypatch.setattr(files, "replace_atomic", crash)  # dies between binding the new digest and replacing
    with pytest.raises(OutputError):
        write_atomic(root / "config.json", '{"a": 3}')
    monkeypatch.undo()
    assert read_bytes(root / "config.json") == b'{"a": 2}'  # the old file still matches


def test_files_outside_any_run_or_bundle_are_not_bound(tmp_path):
    (tmp_path / "notes.json").write_text("{}")
    assert read_bytes(tmp_path / "notes.json") == b"{}"


# -- the examples and their neighbours, end to end ----------------------------------------------------------
def _flip_labels(run: Path) -> None:
    text = (run / "predictions.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    flip = {"benign": "malignant", "malignant": "benign"}
    for r in rows:
        r["malignancy_true"] = flip.get(r["malignancy_true"], r["malignancy_true"])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    (run / "predictions.csv").write_text(buf.getvalue(), encoding="utf-8")


def _resave_plainly(run: Path) -> None:
    """As a float16 conversion script would: plain safetensors, the sidecar's checksums dropped, classes swapped."""
    from safetensors.torch import load_file, save_file

    weights = run / "fold1" / "best.safetensors"
    save_file(load_file(weights), weights)
    side = weights.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta.pop("weights_sha256", None)
    meta.pop("definition_sha256", None)
    meta["tasks"]["malignancy"]["classes"].reverse()
    side.write_text(json.dumps(meta))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _add_foreign_fold(run: Path) -> None:
    shutil.copytree(run / "fold1", run / "fold0")


@pytest.mark.parametrize("edit, commands, names", [
    (_flip_labels, ["report", "evaluate", "export"], "predictions.csv"),
    (_resave_plainly, ["predict", "evaluate", "export"], "fold1/best"),
    (lambda run: _truncate(run / "fold2" / "best.safetensors"), ["export", "predict"], "fold2/best.safetensors"),
    (lambda run: (run / "metrics.json").write_text('{"auc": 0.99}'), ["report", "export"], "metrics.json"),
    (lambda run: (run / "recipe.toml").write_text((run / "recipe.toml").read_text() + "\n# edited\n"),
     ["evaluate"], "recipe.toml"),
    (lambda run: (run / MANIFEST).unlink(), ["report", "predict", "export"], "holds no integrity.json"),
    (_add_foreign_fold, ["predict", "export"], "fold0/best"),
])
def test_an_edited_run_is_refused_by_every_reader_naming_the_file(run_copy, tmp_path, edit, commands, names):
    edit(run_copy)
    image = _images(run_copy)[0]
    args = {"report": ["report", run_copy, "--n-boot", "0"], "evaluate": ["evaluate", run_copy],
            "export": ["export", run_copy, "--out", tmp_path / "bundle"],
            "predict": ["predict", "--model", run_copy, image, "--out", tmp_path / "p.csv"]}
    for command in commands:
        done = invoke_cli(*args[command])
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert names in done.stderr and "--allow-modified" in done.stderr, (command, done.stderr)
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "p.csv").exists()  # nothing half-written


def test_allow_modified_uses_the_edit_and_every_output_says_so(run_copy, tmp_path):
    _flip_labels(run_copy)
    done = invoke_cli("report", run_copy, "--n-boot", "0", "--allow-modified")
    assert done.returncode == 0, done.stderr
    assert "MADE FROM MODIFIED FILES" in (run_copy / "report.html").read_text(encoding="utf-8")
    done = invoke_cli("export", run_copy, "--out", tmp_path / "bundle", "--allow-modified")
    assert done.returncode == 0, done.stderr
    assert "MADE FROM MODIFIED FILES" in (tmp_path / "bundle" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "bundle" / "config.json").read_text())["modified"]
    image = _images(run_copy)[0]
    (run_copy / "fold1" / "best.json").write_text((run_copy / "fold1" / "best.json").read_text() + " ")
    done = invoke_cli("predict", "--model", run_copy, image, "--out", tmp_path / "p.csv", "--allow-modified")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((tmp_path / "p.csv").open(encoding="utf-8")))
    assert all("fold1/best.json" in r["warning"] for r in rows)
    assert "modified" in done.stderr.lower()


def test_a_server_of_modified_files_says_so_in_every_answer(run_copy):
    from fastapi.testclient import TestClient

    from lnzoo.serve import create_app

    side = run_copy / "fold1" / "best.json"
    side.write_text(side.read_text() + "\n")
    with pytest.raises(ModifiedError):
        create_app([run_copy])
    with modified_allowed():
        client = TestClient(create_app([run_copy]))
        assert "fold1/best.json" in client.get("/api/model").json()["warning"]
        image = Path(_images(run_copy)[0])
        got = client.post("/api/predict", files={"full": (image.name, image.read_bytes())}, data={"gradcam": "false"})
        assert got.status_code == 200 and "MODIFIED" in got.json()["warning"]


def test_an_edited_bundle_threshold_is_refused(tiny_run, tmp_path):
    bundle = tmp_path / "bundle"
    assert invoke_cli("export", tiny_run, "--out", bundle).returncode == 0
    assert verify_tree(bundle) == []
    config = json.loads((bundle / "config.json").read_text())
    config["thresholds"]["malignancy"]["value"] = 0.01
    (bundle / "config.json").write_text(json.dumps(config))
    done = invoke_cli("predict", "--model", bundle, _images(tiny_run)[0], "--out", tmp_path / "p.csv")
    assert done.returncode == 2 and "config.json differs from the file lnzoo wrote" in done.stderr


# -- components: a model runs only with the ones it was trained with -----------------------------------------------
def _host_with_linear_from(dist: str):
    import torch

    from lnzoo import hookimpl
    from lnzoo.plugins import load_plugins

    module = types.ModuleType(f"{dist.replace('-', '_')}_mod")

    class Inverted(torch.nn.Linear):
        """A replacement 'linear' head."""

    @hookimpl
    def lnzoo_register_heads(register):
        register("linear", lambda in_features, num_classes: Inverted(in_features, num_classes), override=True)
    module.lnzoo_register_heads = lnzoo_register_heads
    return load_plugins(extra=[(dist, module)])


def _record_with(run: Path, tmp_path: Path, change) -> Path:
    """A loose copy of fold 1's checkpoint whose recorded components ``change`` edits (saved as lnzoo saves)."""
    from lnzoo.checkpoint import read_weights, save_checkpoint

    meta = json.loads((run / "fold1" / "best.json").read_text())
    meta.pop("weights_sha256")
    meta.pop("definition_sha256")
    change(meta)
    return save_checkpoint(read_weights(run / "fold1" / "best.safetensors"), tmp_path / "model", meta)


def _provider(meta, kind, name):
    return next(c for c in meta["components"] if c["kind"] == kind and c["name"] == name)


def test_a_checkpoint_records_the_provider_of_each_component(tiny_run):
    meta = json.loads((tiny_run / "fold1" / "best.json").read_text())
    kinds = {(c["kind"], c["name"]) for c in meta["components"]}
    assert {("backbone", "timm"), ("head", "linear"), ("fusion", "single")} <= kinds
    head = _provider(meta, "head", "linear")
    assert head["distribution"] == "lnzoo" and head["factory"] and len(head["definition_sha256"]) == 64


@pytest.mark.parametrize("change, host_dist, message", [
    # trained with a plugin's 'linear', the plugin not installed: lnzoo's own would run in its place
    (lambda m: _provider(m, "head", "linear").update(distribution="acme-heads", version="1.2",
                                                      factory="acme_heads:Inverted"),
     None, "pip install 'acme-heads==1.2'"),
    # trained with lnzoo's 'linear', now a plugin replaces it
    (lambda m: None, "acme-override", "uninstall acme-override"),
    # a component this lnzoo has never heard of
    (lambda m: m["components"].append({"kind": "head", "name": "coral", "distribution": "acme-ord",
                                       "version": "2.0", "factory": "acme_ord:Coral"}),
     None, "pip install 'acme-ord==2.0'"),
    # written by a newer, incompatible lnzoo
    (lambda m: m["versions"].update(lnzoo="3.0.0"), None, "pip install 'lnzoo>=3.0.0'"),
    # a component record in an unexpected shape
    (lambda m: m["components"].append("linear"), None, "not one lnzoo wrote"),
])
def test_a_model_never_runs_with_another_component(tiny_run, tmp_path, change, host_dist, message):
    from lnzoo.inference import load
    from lnzoo.plugins import load_plugins

    weights = _record_with(tiny_run, tmp_path, change)
    host = _host_with_linear_from(host_dist) if host_dist else load_plugins()
    with pytest.raises(UsageError, match="cannot run here") as caught:
        load(weights, host)
    assert message in str(caught.value)


def test_a_component_whose_code_changed_runs_only_when_allowed(tiny_run, tmp_path):
    from lnzoo.inference import load
    from lnzoo.plugins import load_plugins

    weights = _record_with(tiny_run, tmp_path, lambda m: _provider(m, "head", "linear").update(
        definition_sha256="0" * 64))
    with pytest.raises(UsageError, match="its code changed since the model was trained"):
        load(weights, load_plugins())
    with modified_allowed():
        load(weights, load_plugins())
        assert "code changed" in " ".join(modified().values()) and "model.safetensors" in modified_note()
