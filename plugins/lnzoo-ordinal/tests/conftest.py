"""pytest set-up of lnzoo-ordinal's tests (the plugin itself comes from lnzoo.testing.plugin_host)."""
from __future__ import annotations


def pytest_configure(config):
    # lnzoo's own test run registers it too; a copy of this plugin tested on its own needs it here
    config.addinivalue_line("markers", "slow: trains a model (pytest -m \"not slow\" leaves it out)")
