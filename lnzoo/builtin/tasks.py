"""Default plugin: the tasks defined as TOML data in the top-level ``tasks/`` folder."""
from __future__ import annotations

from importlib import resources

import lnzoo
from lnzoo.tasks import Task


def shipped_task_files() -> list:
    return sorted((f for f in resources.files("lnzoo_tasks").iterdir() if f.name.endswith(".toml")),
                  key=lambda f: f.name)


@lnzoo.hookimpl
def lnzoo_register_tasks(register):
    for file in shipped_task_files():
        task = Task.from_toml(file)
        register(task.name, task, task.description)
