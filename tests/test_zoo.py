"""The model zoo (lnzoo.zoo, ``lnzoo zoo``): the index and its schema check, pulling (sha256 before unpacking,
safe unpacking, atomic, re-runnable), ``zoo:NAME`` as --model and model.init_from, and offline backbone weights
(``model.backbone.pretrained_file``). Nothing here touches the network: URLs are file:// or paths."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import REPO, TINY, invoke_cli

SHIPPED = REPO / "zoo" / "phantom-stage1-tiny.toml"
ARCHIVE = REPO / "zoo" / "bundles" / "phantom-stage1-tiny.zip"


def _meta(**bundle) -> dict:
    meta = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    meta["bundle"].update(bundle)
    return meta


def _index(folder: Path, name: str, meta: dict) -> Path:
    """Write ``meta`` as the metafile NAME.toml of the index ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.toml").write_text(tomli_w.dumps({**meta, "name": name}), encoding="utf-8")
    return folder


def _entries(cache: Path) -> list[str]:
    """What a pull left in the zoo cache, besides its lock file."""
    zoo = cache / "zoo"
    return sorted(p.name for p in zoo.iterdir() if p.name != ".lock") if zoo.is_dir() else []


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A lab's own index (LNZOO_ZOO) and an empty cache (LNZOO_CACHE) for this test."""
    monkeypatch.setenv("LNZOO_ZOO", str(tmp_path / "index"))
    monkeypatch.setenv("LNZOO_CACHE", str(tmp_path / "cache"))
    (tmp_path / "index").mkdir()
    return tmp_path


def test_the_shipped_metafile_is_valid_and_matches_its_archive():
    from lnzoo.zoo import check_index, check_metafile, sha256_file

    meta, problems = check_metafile(SHIPPED)
    assert problems == [] and meta["demo"] is True and "DEMO" in meta["summary"]
    assert meta["bundle"]["url"] == "bundles/phantom-stage1-tiny.zip"  # relative: resolved against the index
    assert meta["bundle"]["sha256"] == sha256_file(ARCHIVE) and meta["bundle"]["size"] == ARCHIVE.stat().st_size
    assert ARCHIVE.stat().st_size <= 1_500_000
    assert meta["metrics"]["folds"] == [0] and len(meta["metrics"]["malignancy"]["ci95"]["auc"]) == 2
    assert check_index(REPO / "zoo") == []


def test_pull_by_file_url_and_by_relative_path_verifies_caches_and_is_rerunnable(lab):
    from lnzoo.zoo import MARKER

    (lab / "index" / "bundles").mkdir()
    shutil.copy(ARCHIVE, lab / "index" / "bundles" / "copy.zip")
    _index(lab / "index", "by-url", _meta(url=ARCHIVE.as_uri()))
    _index(lab / "index", "by-path", _meta(url="bundles/copy.zip"))
    sha8 = _meta()["bundle"]["sha256"][:8]
    for name in ("by-url", "by-path"):
        done = invoke_cli("zoo", "pull", name)
        assert done.returncode == 0, done.stderr
        cached = lab / "cache" / "zoo" / f"{name}-{sha8}"
        assert "pulled and verified" in done.stdout and (cached / "config.json").is_file()
        assert json.loads((cached / MARKER).read_text())["sha256"] == _meta()["bundle"]["sha256"]
    again = invoke_cli("zoo", "pull", "by-url")
    assert again.returncode == 0 and "already pulled and verified" in again.stdout
    forced = invoke_cli("zoo", "pull", "by-url", "--force")
    assert forced.returncode == 0 and "already" not in forced.stdout and "pulled and verified" in forced.stdout
    assert _entries(lab / "cache") == [f"by-path-{sha8}", f"by-url-{sha8}"]
    listed = json.loads(invoke_cli("zoo", "list", "--json").stdout)
    assert {r["name"]: bool(r["pulled"]) for r in listed} == {"by-path": True, "by-url": True}


def test_a_tampered_archive_is_refused_before_unpacking_and_nothing_is_cached(lab):
    blob = bytearray(ARCHIVE.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one byte changed
    (lab / "tampered.zip").write_bytes(bytes(blob))
    _index(lab / "index", "tampered", _meta(url=(lab / "tampered.zip").as_uri()))
    done = invoke_cli("zoo", "pull", "tampered")
    said = " ".join(done.stderr.split())
    assert done.returncode == 2, said
    assert f"expected sha256 {_meta()['bundle']['sha256']}" in said and "got sha256" in said and "refused" in said
    assert _entries(lab / "cache") == []


def _archive_with(members: dict[str, bytes], path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("evil", ["../escaped.txt", "models/../../escaped.txt", "/tmp/lnzoo-zoo-escaped.txt"])
def test_an_archive_with_a_member_outside_its_folder_is_refused(lab, evil):
    from lnzoo.zoo import sha256_file

    archive = _archive_with({"config.json": b"{}", evil: b"owned"}, lab / "evil.zip")
    _index(lab / "index", "evil", _meta(url=str(archive), sha256=sha256_file(archive), size=archive.stat().st_size))
    done = invoke_cli("zoo", "pull", "evil")
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "refused" in said and repr(evil) in said, said
    assert _entries(lab / "cache") == [] and not (lab / "cache" / "escaped.txt").exists()
    assert not Path("/tmp/lnzoo-zoo-escaped.txt").exists()


def test_a_tar_member_that_is_a_link_is_refused(tmp_path):
    from lnzoo.errors import UsageError
    from lnzoo.zoo import safe_unpack

    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        link = tarfile.TarInfo("models/fold0.safetensors")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
        data = tarfile.TarInfo("config.json")
        data.size = 2
        tf.addfile(data, io.BytesIO(b"{}"))
    with pytest.raises(UsageError, match="a link or device"):
        safe_unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_list_shows_the_shipped_entry_filters_by_task_and_warns_about_a_bad_metafile(lab, monkeypatch):
    monkeypatch.delenv("LNZOO_ZOO")  # the shipped index
    rows = json.loads(invoke_cli("zoo", "list", "--json").stdout)
    assert "phantom-stage1-tiny" in [r["name"] for r in rows]
    assert [r["name"] for r in json.loads(invoke_cli("zoo", "list", "--json", "--task", "enlargement").stdout)] \
        == ["phantom-stage1-tiny"]
    assert json.loads(invoke_cli("zoo", "list", "--json", "--task", "origin").stdout) == []
    table = invoke_cli("zoo", "list")
    assert table.returncode == 0 and "phantom-stage1-tiny" in table.stdout and "(demo)" in table.stdout

    monkeypatch.setenv("LNZOO_ZOO", str(lab / "index"))
    _index(lab / "index", "good", _meta(url=str(ARCHIVE)))
    bad = _meta(sha256="abc123", url="s3://bucket/model.zip")
    bad["licence_url"] = "x"
    del bad["data"]["licence"]
    _index(lab / "index", "bad", bad)
    listed = invoke_cli("zoo", "list", "--json")
    assert listed.returncode == 0 and [r["name"] for r in json.loads(listed.stdout)] == ["good"]
    said = " ".join(listed.stderr.split())
    assert "bad.toml: bundle.sha256: 'abc123' is not a sha256" in said
    assert "bad.toml: licence_url: unknown key" in said and "bad.toml: data.licence: required" in said
    assert "bad.toml: bundle.url: unsupported scheme 's3'" in said
    checked = invoke_cli("zoo", "check")
    assert checked.returncode == 2 and "bad.toml: bundle.sha256" in " ".join(checked.stderr.split())
    refused = invoke_cli("zoo", "pull", "bad")
    assert refused.returncode == 2 and "its metafile is not valid" in refused.stderr


def test_an_unknown_name_says_did_you_mean_and_exits_2(tmp_path):
    done = invoke_cli("zoo", "pull", "phantom-stage1-tiyn")
    assert done.returncode == 2 and "did you mean 'phantom-stage1-tiny'" in done.stderr
    image = tmp_path / "node.png"
    _png(image)
    done = invoke_cli("predict", "--model", "zoo:no-such-model", str(image), "--out", str(tmp_path / "p.csv"))
    assert done.returncode == 2 and "unknown zoo model 'no-such-model'" in done.stderr


def _png(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_with_model_zoo_name_pulls_on_first_use(tmp_path, lnzoo_cache):
    from lnzoo.zoo import find

    image = _png(tmp_path / "node.png")
    out = tmp_path / "calls.csv"
    done = invoke_cli("predict", "--model", "zoo:phantom-stage1-tiny", str(image), "--out", str(out))
    # "its code changed since the model was trained": a component's code changed; rebuild with zoo/build_demo.py
    assert done.returncode == 0, done.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == 2 and "malignancy_pred" in rows[0] and "(youden)" in rows[1]  # the bundle's threshold
    assert (find("phantom-stage1-tiny").cache / "config.json").is_file()


def test_init_from_zoo_name_in_a_recipe_starts_a_tiny_run_from_the_pulled_bundle(tmp_path, lnzoo_cache):
    from lnzoo.zoo import find, resolve_source

    recipe = tmp_path / "from_zoo.toml"
    recipe.write_text(f'extends = "{(REPO / "recipes" / "stage1_aux.toml").as_posix()}"\nname = "from_zoo"\n'
                      '[model]\ninit_from = "zoo:phantom-stage1-tiny"\n', encoding="utf-8")
    # the recipe loader makes init_from a path under the recipe's folder: still the zoo's model
    assert resolve_source(tmp_path / "zoo:phantom-stage1-tiny") == find("phantom-stage1-tiny").cache
    sets = [x for s in [*TINY, "cv.run_folds=[0]", "train.epochs=1"] for x in ("--set", s)]
    out = tmp_path / "run"
    done = invoke_cli("run", recipe, "--quick", *sets, "--n-boot", "20", "--out", out)
    assert done.returncode == 0, done.stderr
    loaded = json.loads((out / "fold0" / "best.json").read_text())["init_from"]
    assert loaded["source"].startswith(str(find("phantom-stage1-tiny").cache))
    assert loaded["backbone_loaded"] == loaded["backbone_total"] > 0


def test_pretrained_file_loads_matching_weights_and_refuses_another_architecture(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from lnzoo.errors import UsageError
    from lnzoo.model import build_backbone
    from lnzoo.plugins import get_host

    host = get_host()

    def table(path, **extra):
        return {"name": "timm", "model_name": "test_resnet", "pretrained_file": str(path), **extra}

    hub = timm.create_model("test_resnet", num_classes=7)  # a hub file: the backbone and its classifier head
    save_file({k: v.contiguous() for k, v in hub.state_dict().items()}, tmp_path / "model.safetensors")
    with pytest.warns(UserWarning, match=r"ignored its classifier head \(fc.bias, fc.weight\)"):
        backbone = build_backbone(host, table(tmp_path / "model.safetensors"))
    assert torch.equal(backbone.body.conv1[0].weight, hub.conv1[0].weight)

    other = timm.create_model("test_efficientnet", num_classes=7)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "other.safetensors")
    with pytest.raises(UsageError) as exc:
        build_backbone(host, table(tmp_path / "other.safetensors"))
    said = str(exc.value)
    assert str(tmp_path / "other.safetensors") in said and "'test_resnet'" in said
    assert "missing from the file" in said and "unexpected key(s)" in said and "shape mismatch" in said
    with pytest.raises(UsageError, match="not both"):
        build_backbone(host, table(tmp_path / "model.safetensors", pretrained=True))


def test_pretrained_file_is_a_recipe_key_of_the_timm_backbone(tmp_path):
    from lnzoo.errors import RecipeError
    from lnzoo.plugins import load_plugins
    from lnzoo.recipe import load_recipe

    host = load_plugins()
    table = "{name='timm', model_name='test_resnet', pretrained_file='w.safetensors'}"
    recipe = load_recipe(REPO / "recipes" / "stage1_aux.toml", sets=[f"model.backbone={table}"], host=host)
    assert recipe.config.model.backbone["pretrained_file"] == "w.safetensors"
    with pytest.raises(RecipeError, match="did you mean 'pretrained_file'"):
        load_recipe(REPO / "recipes" / "stage1_aux.toml", host=host,
                    sets=["model.backbone={name='timm', model_name='test_resnet', pretrained_files='w'}"])


class _Response(io.BytesIO):
    """What urllib.request.urlopen returns, for an archive served over http without a network."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_an_http_url_is_downloaded_and_verified_and_offline_is_a_clear_error(lab, monkeypatch):
    import urllib.error

    import lnzoo.zoo as zoo

    _index(lab / "index", "remote", _meta(url="https://models.example.org/phantom-stage1-tiny.zip"))
    seen = []

    def serve(url, timeout):
        seen.append((url, timeout))
        return _Response(ARCHIVE.read_bytes())
    monkeypatch.setattr(zoo.urllib.request, "urlopen", serve)
    done = invoke_cli("zoo", "pull", "remote")
    assert done.returncode == 0 and "pulled and verified" in done.stdout, done.stderr
    assert seen == [("https://models.example.org/phantom-stage1-tiny.zip", zoo.TIMEOUT_S)]

    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(zoo.urllib.request, "urlopen", offline)
    done = invoke_cli("zoo", "pull", "remote", "--force")
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "cannot download https://models.example.org/" in said and "Offline?" in said
    assert _entries(lab / "cache") == [f"remote-{_meta()['bundle']['sha256'][:8]}"]  # the pulled one, untouched
