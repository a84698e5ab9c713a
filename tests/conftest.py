"""Shared fixtures: fake plugin distributions on a temporary sys.path entry, and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def make_distribution(root: Path, name: str, version: str, entry_points: dict[str, str],
                      modules: dict[str, str]) -> Path:
    """Write a minimal installed distribution (dist-info + modules) under ``root``; return root."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[lnzoo]\n{eps}\n")
    for mod, source in modules.items():
        path = root / (mod.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def fake_dist(tmp_path):
    """Factory: ``fake_dist(name, version, entry_points, modules)`` -> folder to put on PYTHONPATH."""
    counter = iter(range(1000))

    def factory(name, version="1.0", entry_points=None, modules=None):
        return make_distribution(tmp_path / f"site{next(counter)}", name, version, entry_points or {}, modules or {})
    return factory


def run_cli(*args: str, pythonpath: list[Path] | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m lnzoo ARGS`` in a subprocess with extra sys.path entries (fresh plugin discovery)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("LNZOO_STRICT_PLUGINS", None) if "LNZOO_STRICT_PLUGINS" not in (env or {}) else None
    if pythonpath:
        full_env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), full_env.get("PYTHONPATH", "")])
    full_env.setdefault("COLUMNS", "200")
    return subprocess.run([sys.executable, "-m", "lnzoo", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=timeout)


def invoke_cli(*args: str) -> subprocess.CompletedProcess:
    """Run ``lnzoo ARGS`` in this process: the installed plugins as already loaded, no subprocess start-up
    (torch is imported once per session instead of once per call). For fresh plugin discovery, run_cli."""
    from typer.testing import CliRunner

    from lnzoo.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


@pytest.fixture(autouse=True)
def _fresh_plugin_host():
    """Each test sees the plugin host as installed, never one a previous test replaced."""
    from lnzoo.plugins import set_host
    set_host(None)
    yield
    set_host(None)


@pytest.fixture(scope="session", autouse=True)
def lnzoo_cache(tmp_path_factory):
    """Phantoms and image caches of the whole test session live in one temporary folder, never in ~/.cache."""
    old = os.environ.get("LNZOO_CACHE")
    os.environ["LNZOO_CACHE"] = str(tmp_path_factory.mktemp("lnzoo-cache"))
    yield Path(os.environ["LNZOO_CACHE"])
    if old is None:
        os.environ.pop("LNZOO_CACHE", None)
    else:
        os.environ["LNZOO_CACHE"] = old


# the tiny settings of the runs the tests train: a test-sized timm model on a 24-patient phantom
TINY = ["model.backbone={name='timm', model_name='test_resnet'}", "data.image_size=48", "train.epochs=2",
        "data.phantom.patients=24", "cv.folds=3", "data.batch_size=16", "train.threads=2"]


LLNM = REPO / "recipes" / "llnm_multimodal.toml"
LLNM_TINY = ["model.backbone={name='timm', model_name='test_resnet'}", "data.image_size=32", "train.epochs=2",
             "cv.folds=3", "cv.run_folds=[0]", "data.batch_size=16", "data.phantom.patients=40", "train.threads=2",
             "model.fusion={name='transformer', dim=32, layers=1, heads=2}", "data.inputs.report.dim=32",
             "data.inputs.report.heads=2", "data.inputs.report.layers=1", "data.inputs.report.max_length=48"]


@pytest.fixture(scope="session")
def llnm_run(lnzoo_cache, tmp_path_factory) -> Path:
    """The LLNM-style recipe (image + report + morphology + age/sex) made tiny: fold 0 of 3."""
    from lnzoo.pipeline import fit_folds
    from lnzoo.plugins import load_plugins
    from lnzoo.recipe import load_recipe

    host = load_plugins()
    out = tmp_path_factory.mktemp("llnm") / "run"
    fit_folds(load_recipe(LLNM, host=host, sets=LLNM_TINY), host, out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, lnzoo_cache) -> Path:
    """The one shared finished run: ``lnzoo run recipes/stage1_aux.toml --quick`` made tiny, folds 1 and 2 of
    3 only (no fold 0: every reader must find the folds a run holds), with its report and Grad-CAM examples.

    Tests read it and copy it before changing anything. What the command printed, off a terminal, is in
    ``stdout.txt`` and ``stderr.txt`` beside it.
    """
    out = tmp_path_factory.mktemp("tiny") / "run"
    sets = [x for s in [*TINY, "cv.run_folds=[1, 2]"] for x in ("--set", s)]
    done = run_cli("run", str(REPO / "recipes" / "stage1_aux.toml"), "--quick", *sets, "--n-boot", "100",
                   "--out", str(out), env={"LNZOO_CACHE": str(lnzoo_cache), "COLUMNS": "80"})
    (out.parent / "stdout.txt").write_text(done.stdout, encoding="utf-8")
    (out.parent / "stderr.txt").write_text(done.stderr, encoding="utf-8")
    assert done.returncode == 0, done.stderr
    return out


# `pytest -m "not slow"`: the inner loop without training. A test is slow when it uses a trained run (its
# fixtures, transitively) or lives in a module whose tests train their own models.
SLOW_FIXTURES = {"tiny_run", "llnm_run"}
# (the example plugins' tests, plugins/*/tests, mark their training tests @pytest.mark.slow themselves: a copy of
# a plugin is tested without this file)
SLOW_MODULES = {"test_accuracy_defaults", "test_distributed", "test_export", "test_run", "test_safety", "test_select",
                "test_stages", "test_sweep", "test_train"}


def pytest_collection_modifyitems(items):
    for item in items:
        module = getattr(item, "module", None)
        name = module.__name__.rsplit(".", 1)[-1] if module is not None else ""
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def phantom_rows(patients: int = 24) -> list[dict[str, str]]:
    """The phantom's manifest rows (seed 0) with absolute image paths, for a test to edit and write."""
    import csv

    from lnzoo.data.phantom import ensure_phantom

    src = ensure_phantom(patients=patients, seed=0)
    with src.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key, value in row.items():
            if value.startswith("images/"):
                row[key] = str(src.parent / value)
    return rows
