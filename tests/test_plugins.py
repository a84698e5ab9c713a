"""Plugin discovery and policy: provenance, duplicates, broken plugins, strict mode, the CLI listings."""
from __future__ import annotations

import json
import types

import pytest

import lnzoo
from lnzoo.errors import PluginError, UnknownNameError
from lnzoo.plugins import load_plugins
from tests.conftest import run_cli

GOOD_HEAD = """
import lnzoo

def tiny(in_features, num_classes, bias=True):
    '''A tiny test head.'''
    import torch
    return torch.nn.Linear(in_features, num_classes, bias=bias)

@lnzoo.hookimpl
def lnzoo_register_heads(register):
    register("tiny", tiny)
"""


def _module(name, **hooks):
    mod = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(mod, hook_name, lnzoo.hookimpl(fn))
    return mod


def test_builtins_come_through_entry_points_with_provenance():
    host = load_plugins()
    assert {"linear", "mlp"} <= set(host.registry("head").names())
    assert {"timm", "tv_resnet50", "tv_swin_t"} <= set(host.registry("backbone").names())
    assert set(host.registry("fusion").names()) >= {"single", "concat", "mean", "attention"}
    assert {"malignancy", "enlargement", "metastasis", "origin", "lymphoma_subtype", "pathology3"} <= \
        set(host.registry("task").names())
    mlp = host.get("head", "mlp")
    assert mlp.provenance.distribution == "lnzoo" and mlp.provenance.version == lnzoo.__version__
    assert mlp.description.startswith("Linear -> ReLU")


def test_duplicate_name_is_an_error_naming_both_distributions():
    def heads(register):
        register("mlp", lambda in_features, num_classes: None)
    host = load_plugins(extra=[("acme-heads", _module("acme", lnzoo_register_heads=heads))])
    failed = {p.distribution: p for p in host.failures}
    assert "acme-heads" in failed
    assert "lnzoo" in failed["acme-heads"].error and "acme-heads" in failed["acme-heads"].error
    assert host.get("head", "mlp").provenance.distribution == "lnzoo"  # the original survives


def test_override_replaces_and_records_what_it_replaced():
    def heads(register):
        register("mlp", lambda in_features, num_classes: None, "acme mlp", override=True)
    host = load_plugins(extra=[("acme-heads", _module("acme", lnzoo_register_heads=heads))])
    entry = host.get("head", "mlp")
    assert entry.provenance.distribution == "acme-heads" and entry.overrides.distribution == "lnzoo"
    assert not host.failures


def test_plugin_whose_hook_raises_is_skipped_atomically_and_others_still_work():
    def heads(register):
        register("half_done", lambda in_features, num_classes: None)
        raise RuntimeError("boom")
    host = load_plugins(extra=[("flaky", _module("flaky", lnzoo_register_heads=heads))])
    (bad,) = host.failures
    assert bad.distribution == "flaky" and "RuntimeError: boom" in bad.error
    assert "half_done" not in host.registry("head")  # nothing half-registered
    assert "mlp" in host.registry("head")


def test_strict_mode_makes_a_broken_plugin_fatal():
    def heads(register):
        raise RuntimeError("boom")
    with pytest.raises(PluginError, match="flaky"):
        load_plugins(extra=[("flaky", _module("flaky", lnzoo_register_heads=heads))], strict=True)


def test_misspelt_hook_name_is_reported_not_ignored():
    host = load_plugins(extra=[("typo", _module("typo", lnzoo_register_head=lambda register: None))])
    assert [p.distribution for p in host.failures] == ["typo"]
    assert "lnzoo_register_head" in host.failures[0].error


def test_unknown_name_gets_did_you_mean():
    host = load_plugins()
    with pytest.raises(UnknownNameError, match="did you mean 'attention'"):
        host.get("fusion", "atention")


def test_third_party_distribution_is_listed_with_its_name(fake_dist):
    site = fake_dist("acme-lnzoo-heads", "2.3", {"acme": "acme_heads"}, {"acme_heads": GOOD_HEAD})
    out = run_cli("list-heads", "--json", pythonpath=[site])
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["tiny"]["distribution"] == "acme-lnzoo-heads" and rows["tiny"]["version"] == "2.3"
    assert rows["linear"]["distribution"] == "lnzoo" and "mlp" in rows


def test_broken_plugin_warns_but_help_and_listing_work_and_strict_fails(fake_dist):
    site = fake_dist("broken-plugin", "0.9", {"broken": "broken_mod"},
                     {"broken_mod": "import this_module_does_not_exist\n"})
    for args in (["--help"], ["list-heads"]):
        out = run_cli(*args, pythonpath=[site])
        assert out.returncode == 0, out.stderr
        assert "broken-plugin" in out.stderr and "No module named" in out.stderr
    listed = run_cli("plugins", "--json", pythonpath=[site])
    assert listed.returncode == 0
    (bad,) = [p for p in json.loads(listed.stdout) if p["distribution"] == "broken-plugin"]
    assert "this_module_does_not_exist" in bad["error"] and bad["version"] == "0.9"
    strict = run_cli("list-heads", pythonpath=[site], env={"LNZOO_STRICT_PLUGINS": "1"})
    assert strict.returncode != 0 and "broken-plugin" in strict.stderr


def test_list_commands_show_the_builtins():
    tasks = {t["name"]: t for t in json.loads(run_cli("list-tasks", "--json").stdout)}
    assert tasks["origin"]["classes"] == ["lung", "breast", "esophagus", "nasopharyngeal", "abdominal", "other"]
    assert tasks["pathology3"]["classes"] == ["benign", "lymphoma", "metastatic"]
    fusions = {f["name"] for f in json.loads(run_cli("list-fusions", "--json").stdout)}
    assert fusions >= {"single", "concat", "mean", "attention"}
    backbones = {b["name"] for b in json.loads(run_cli("list-backbones", "--json").stdout)}
    assert {"timm", "tv_resnet50", "tv_swin_t"} <= backbones
    version = run_cli("--version")
    assert version.returncode == 0 and lnzoo.__version__ in version.stdout


def test_the_shipped_ordinal_plugin_is_listed_under_its_distribution(fake_dist):
    from tests.conftest import REPO
    site = fake_dist("lnzoo-ordinal", "0.1.0", {"ordinal": "lnzoo_ordinal.plugin"})
    out = run_cli("list-heads", "--json", pythonpath=[site, REPO / "plugins" / "lnzoo-ordinal" / "src"])
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["coral"]["distribution"] == "lnzoo-ordinal"
    tasks = {r["name"]: r for r in json.loads(run_cli(
        "list-tasks", "--json", pythonpath=[site, REPO / "plugins" / "lnzoo-ordinal" / "src"]).stdout)}
    assert tasks["elastography_score"]["classes"] == ["1", "2", "3", "4"]
