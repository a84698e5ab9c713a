"""What a wheel of lnzoo holds: every package of the source tree (a package left out installs without it)."""
from __future__ import annotations

import tomllib

from tests.conftest import REPO


def test_every_package_of_the_tree_is_in_the_distribution():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "lnzoo").rglob("__init__.py")}
    assert found - listed == set(), f"packages missing from pyproject.toml [tool.setuptools] packages: {found - listed}"
    assert "lnzoo_tasks" in listed and config["package-dir"]["lnzoo_tasks"] == "tasks"
