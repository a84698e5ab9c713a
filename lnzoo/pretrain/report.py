"""A pretraining run's report.html: what was pretrained, and its loss and k-NN probe curves per epoch."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _plot(history: Sequence[Mapping[str, Any]]) -> str:
    from lnzoo.report.plots import plt_module, png

    plt = plt_module()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.5, 3.6), layout="constrained")
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_loss"] for r in history], "-o", ms=3)
    ax.set(xlabel="Epoch", ylabel="Loss", title="Self-supervised loss")
    ax.grid(alpha=0.3)
    probed = [(r["epoch"], r["knn_balanced_accuracy"]) for r in history if r.get("knn_balanced_accuracy") is not None]
    if probed:
        bx.plot(*zip(*probed), "-o", ms=3, color="C2")
    bx.set(xlabel="Epoch", ylabel="Balanced accuracy", title="k-NN probe on the labelled data", ylim=(0, 1))
    bx.grid(alpha=0.3)
    return png(fig)


def write_pretrain_report(rd, summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]]):
    from lnzoo.evaluation import fmt
    from lnzoo.files import write_atomic
    from lnzoo.report.html import CSS, e, img, table

    knn = summary["knn_balanced_accuracy"]
    rows = [["method", summary["method"]], ["options", summary["options"] or "defaults"],
            ["backbone", " ".join(str(v) for v in summary["backbone"].values())],
            ["images", summary["images"]], ["image size", f"{summary['image_size']} px"],
            ["epochs", summary["epochs"]], ["seconds per epoch", fmt(summary["seconds_per_epoch"], 2)],
            ["final loss", fmt(summary["final_loss"], 4)],
            [f"k-NN probe ({knn['task']}, k = {knn['k']}): first / last epoch",
             f"{fmt(knn['first'])} / {fmt(knn['last'])}"],
            ["transductive", "yes: it may have seen evaluation images" if summary["transductive"] else "no"]]
    body = (f"<h1>Pretraining report: {e(rd.path.name)}</h1><p class='note'>Self-supervised pretraining of a "
            f"backbone; use it with model.init_from = \"{e(str(rd / 'backbone.safetensors'))}\".</p>"
            + table(["", ""], rows) + "<h2 id='curves'>Curves</h2>" + (img(_plot(history), "pretraining curves")
                                                                      if history else ""))
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>lnzoo pretraining</title>"
            f"<style>{CSS}</style></head><body><main>{body}</main></body></html>")
    return write_atomic(rd / rd.REPORT, page)


def rewrite_pretrain_report(rd, summary: Mapping[str, Any]):
    """``lnzoo report`` on a pretraining run: its report again, from its history.csv."""
    import csv

    with open(rd / "history.csv", newline="", encoding="utf-8") as f:
        history = [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items() if v not in ("", None)}
                   for row in csv.DictReader(f)]
    return write_pretrain_report(rd, summary, history)
