"""Tasks as data: the shipped definitions, aliases of the seed's Chinese labels, strict parsing."""
from __future__ import annotations

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
