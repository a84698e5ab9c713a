"""The lnzoo plugin module named by the ``lnzoo`` entry point ``ordinal``.

It must import without torch (lnzoo loads every plugin at start-up, ``lnzoo --help`` included),
so the head is registered as a ``"module:attr"`` string that lnzoo imports on first build.
"""
from __future__ import annotations

import lnzoo
from lnzoo.tasks import Task

ELASTOGRAPHY_SCORE = Task(
    name="elastography_score",
    classes=("1", "2", "3", "4"),
    description="Strain elastography score of the node, 1 (mostly soft) to 4 (mostly stiff); ordinal",
    aliases={
        "1": ("score 1", "score1", "es1", "1分"),
        "2": ("score 2", "score2", "es2", "2分"),
        "3": ("score 3", "score3", "es3", "3分"),
        "4": ("score 4", "score4", "es4", "4分"),
    },
    loss="cross_entropy",  # the only Task loss; an ordinal head (coral) replaces it via task_loss
    class_weighting="balanced",
    label_smoothing=0.0,
    ordinal=True,
)


@lnzoo.hookimpl
def lnzoo_register_heads(register):
    register("coral", "lnzoo_ordinal.heads:CoralHead",
             "CORAL ordinal head: one shared score, K-1 ordered thresholds, rank-consistent probabilities.")


@lnzoo.hookimpl
def lnzoo_register_tasks(register):
    register(ELASTOGRAPHY_SCORE.name, ELASTOGRAPHY_SCORE)
