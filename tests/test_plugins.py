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


class _Stopped:  # an entry point being imported when the user presses Ctrl-C
    name, value, dist = "slow", "slow_mod", None

    def load(self):
        raise KeyboardInterrupt


def test_ctrl_c_while_a_plugin_loads_stops_the_command_not_the_plugin():
    """Ctrl-C (or SIGTERM, lnzoo.cli._common.Interrupted) during a plugin's import or hook is the user stopping
    lnzoo: it goes on up to the command's one 'interrupted' line; the plugin is not recorded as broken."""
    def heads(register):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        load_plugins(entry_points=[_Stopped()], strict=False)
    with pytest.raises(KeyboardInterrupt):
        load_plugins(extra=[("slow", _module("slow", lnzoo_register_heads=heads))], entry_points=[], strict=False)


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


# --- start-up stays torch-free ------------------------------------------------------------------

NO_TORCH = """
import sys
sys.argv = ["lnzoo", *sys.argv[1:]]
from lnzoo.cli import main
try:
    main()
except SystemExit as exc:
    assert exc.code in (0, None), f"exit code {exc.code}"
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, f"torch was imported: {loaded[:5]}"
"""


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["plugins", "--json"], ["list-heads"], ["list-tasks"]])
def test_help_plugins_and_listings_import_no_torch(args, fake_dist):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    site = fake_dist("lnzoo-ordinal", "0.1.0", {"ordinal": "lnzoo_ordinal.plugin"})  # a lazy third party too
    path = os.pathsep.join(map(str, [site, REPO / "plugins" / "lnzoo-ordinal" / "src", REPO]))
    done = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_contracts_module_imports_no_torch():
    import subprocess
    import sys
    code = "import sys, lnzoo.contracts, lnzoo.registry; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# --- lazy "module:attr" factories -----------------------------------------------------------------

def _lazy_host(target, kind="head", **options):
    def hook(register):
        register("lazy", target, "a lazily imported component", **options)
    return load_plugins(extra=[("acme-lazy", _module("acme", **{f"lnzoo_register_{kind}s": hook}))])


def test_lazy_factory_is_imported_on_first_build_only(tmp_path, monkeypatch):
    import sys
    (tmp_path / "acme_lazy_heads.py").write_text(
        "import torch\n\ndef make(in_features, num_classes, bias: bool = True):\n"
        "    return torch.nn.Linear(in_features, num_classes, bias=bias)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    host = _lazy_host("acme_lazy_heads:make")
    entry = host.get("head", "lazy")
    assert not host.failures and entry.description == "a lazily imported component"
    assert "acme_lazy_heads" not in sys.modules  # registering and listing import nothing
    assert entry.build(4, 3).out_features == 3
    assert "acme_lazy_heads" in sys.modules
    assert list(entry.parameters()) == ["in_features", "num_classes", "bias"]
    sys.modules.pop("acme_lazy_heads")


def test_lazy_class_factory_parameters_leave_out_self():
    entry = _lazy_host("lnzoo.nn.heads:MLPHead").get("head", "lazy")
    params = entry.parameters()
    assert list(params) == ["in_features", "num_classes", "hidden", "dropout"] and params["hidden"].default == 256
    assert params["dropout"].annotation is float  # string annotations are evaluated for the recipe check
    assert load_plugins().get("head", "linear").target == "lnzoo.nn.heads:LinearHead"


@pytest.mark.parametrize(("target", "needle"), [
    ("acme_no_such_module:make", "ModuleNotFoundError"),
    ("lnzoo.nn.heads:NoSuchHead", "AttributeError"),
    ("lnzoo.errors:__doc__", "not a callable factory"),
])
def test_bad_lazy_factory_is_a_clear_plugin_error_on_first_use(target, needle):
    entry = _lazy_host(target).get("head", "lazy")
    for use in (lambda: entry.build(4, 2), entry.parameters):
        with pytest.raises(PluginError) as info:
            use()
        text = str(info.value)
        assert "acme-lazy" in text and target in text and needle in text and "'lazy'" in text


@pytest.mark.parametrize("target", ["lnzoo.nn.heads.LinearHead", "lnzoo.nn.heads:", "lnzoo nn:x", ":LinearHead"])
def test_malformed_factory_string_fails_the_plugin_at_registration(target):
    host = _lazy_host(target)
    (bad,) = host.failures
    assert bad.distribution == "acme-lazy" and target in bad.error and "module:attr" in bad.error
    assert "lazy" not in host.registry("head")


# --- defaults: the core names no built-in -------------------------------------------------------

RECIPE = {"model": {"backbone": {"name": "timm", "model_name": "test_resnet"}},
          "tasks": {"main": "malignancy", "task_weights": {"malignancy": 1.0}}}


def test_builtins_declare_the_defaults_and_the_recipe_uses_them():
    from lnzoo.recipe import resolve
    host = load_plugins()
    assert (host.registry("fusion").default, host.registry("head").default) == ("single", "linear")
    assert host.registry("backbone").default is None  # a recipe must name its backbone
    r = resolve(RECIPE, host=host)
    assert r["model.fusion"] == {"name": "single"} and r["model.head"] == {"name": "linear"}


def test_a_second_default_is_an_error_naming_both_unless_override():
    host = _lazy_host("lnzoo.nn.heads:MLPHead", default=True)
    (bad,) = host.failures
    assert "acme-lazy" in bad.error and "lnzoo" in bad.error and "'linear'" in bad.error and "override" in bad.error
    assert host.registry("head").default == "linear"
    host = _lazy_host("lnzoo.nn.heads:MLPHead", default=True, override=True)
    assert not host.failures and host.registry("head").default == "lazy"
    from lnzoo.recipe import resolve
    assert resolve(RECIPE, host=host)["model.head"] == {"name": "lazy"}


def test_one_plugin_cannot_declare_two_defaults_of_a_kind():
    def heads(register):
        register("a", "lnzoo.nn.heads:LinearHead", override=True, default=True)
        register("b", "lnzoo.nn.heads:MLPHead", override=True, default=True)
    host = load_plugins(extra=[("twice", _module("twice", lnzoo_register_heads=heads))])
    assert "two default heads" in host.failures[0].error and "a" not in host.registry("head")


def test_no_default_fusion_registered_is_a_recipe_problem():
    from lnzoo.errors import RecipeError
    from lnzoo.recipe import resolve
    host = load_plugins()
    host.registry("fusion").default = None
    with pytest.raises(RecipeError, match="model.fusion: required, no fusion is registered as the default"):
        resolve(RECIPE, host=host)


def test_a_fusion_declares_its_view_limit_and_the_recipe_checks_it_generically(tmp_path, monkeypatch):
    from lnzoo.errors import RecipeError
    from lnzoo.recipe import resolve
    (tmp_path / "acme_pair.py").write_text(
        "from lnzoo.nn.fusions import ConcatFusion\n\nclass Pair(ConcatFusion):\n    max_views = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    host = _lazy_host("acme_pair:Pair", kind="fusion")
    recipe = {**RECIPE, "model": {**RECIPE["model"], "fusion": {"name": "lazy"}}}
    assert resolve({**recipe, "data": {"views": ["full", "crop"]}}, host=host)["model.fusion"]["name"] == "lazy"
    with pytest.raises(RecipeError, match=r"'lazy' takes 2 inputs but data.views has 3; use concat, mean, attention or transformer"):
        resolve({**recipe, "data": {"views": ["a", "b", "c"]}}, host=host)
