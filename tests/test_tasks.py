"""Tasks as data: the shipped definitions, aliases of the seed's Chinese labels, strict parsing."""
from __future__ import annotations

import json

import pytest

from lnzoo.errors import UsageError
from lnzoo.plugins import load_plugins
from lnzoo.tasks import Task

HOST = load_plugins()


@pytest.mark.parametrize(("task", "label", "cls"), [
    ("malignancy", "良性", "benign"), ("malignancy", "恶性", "malignant"),
    ("enlargement", "肿大", "enlarged"), ("enlargement", "非肿大", "not_enlarged"),
    ("metastasis", "转移淋巴瘤", "metastatic"), ("metastasis", "非转移淋巴瘤", "lymphoma"),
    ("origin", "肺癌", "lung"), ("origin", "乳腺癌", "breast"), ("origin", "食管癌", "esophagus"),
    ("origin", "鼻咽癌", "nasopharyngeal"), ("origin", "腹腔肿瘤", "abdominal"), ("origin", "其他", "other"),
    ("lymphoma_subtype", "弥漫大B", "DLBCL"), ("pathology3", "2", "metastatic"), ("malignancy", " Benign ", "benign"),
])
def test_seed_labels_map_to_class_indices(task, label, cls):
    t = HOST.get("task", task).build()
    assert t.classes[t.index_of(label)] == cls


def test_unknown_label_error_teaches_the_spelling():
    t = HOST.get("task", "malignancy").build()
    with pytest.raises(UsageError, match="did you mean 'malignant'"):
        t.index_of("malignat")


def test_bad_task_definitions_are_rejected(tmp_path):
    with pytest.raises(UsageError, match="maps to both"):
        Task("x", ("a", "b"), aliases={"a": ("z",), "b": ("z",)})
    with pytest.raises(UsageError, match="positive class"):
        Task("x", ("a", "b"), positive="c")
    bad = tmp_path / "t.toml"
    bad.write_text('name = "x"\nclasses = ["a", "b"]\nclases = 1\n')
    with pytest.raises(UsageError, match="did you mean 'classes'"):
        Task.from_toml(bad)


def test_passes_on_names_the_class_that_goes_to_the_next_cascade_stage():
    assert HOST.get("task", "malignancy").build().passes_on == "malignant"
    assert HOST.get("task", "metastasis").build().passes_on == "metastatic"
    assert HOST.get("task", "origin").build().passes_on is None  # the last stage passes nothing on
    with pytest.raises(UsageError, match=r"passes_on class 'malignent' is not one of \['benign', 'malignant'\]"):
        Task("x", ("benign", "malignant"), passes_on="malignent")
    with pytest.raises(UsageError, match="passes_on class"):
        Task.from_dict({"name": "x", "classes": ["a", "b"], "passes_on": "c"})
    task = Task("x", ("a", "b"), passes_on="b")
    assert Task.from_dict(task.as_dict()) == task and task.as_dict()["passes_on"] == "b"
    assert task.with_options(label_smoothing=0.1).passes_on == "b"


def test_list_tasks_shows_aliases_and_passes_on():
    from tests.conftest import invoke_cli
    out = invoke_cli("list-tasks", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["malignancy"]["aliases"] == {"benign": ["良性"], "malignant": ["恶性"]}
    enlargement = rows["enlargement"]["aliases"]
    assert "肿大" in enlargement["enlarged"] and "非肿大" in enlargement["not_enlarged"]
    assert rows["malignancy"]["passes_on"] == "malignant" and rows["enlargement"]["passes_on"] is None
    table = invoke_cli("list-tasks")
    assert table.returncode == 0 and "aliases" in table.stdout and "良性" in table.stdout and "非肿大" in table.stdout
