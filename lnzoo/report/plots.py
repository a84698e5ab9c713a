"""The report's plots (matplotlib, Agg backend), each returned as a base64 PNG for embedding."""
from __future__ import annotations

import base64
import io
import math

import numpy as np

from lnzoo.evaluation import fmt, num

NAN = float("nan")
PART_LABELS = {"cv": "Pooled CV", "test": "Test", "external": "External"}
PART_COLORS = {"cv": "#1f77b4", "test": "#d62728", "external": "#2ca02c"}


def plt_module():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def png(fig) -> str:
    plt = plt_module()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def part_color(name: str, i: int) -> str:
    return PART_COLORS.get(name, f"C{(i + 3) % 10}")


def part_label(name: str) -> str:
    return PART_LABELS.get(name, name)


def plot_roc(level: dict, classes: list[str], binary: bool, title: str) -> str:
    plt = plt_module()
    names = list(level["roc"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.4 * len(names), 4.6), squeeze=False, layout="constrained")
    ops = level.get("operating_points", {}).get("rules", {}).get("youden", {})
    for i, (ax, name) in enumerate(zip(axes[0], names)):
        curves = level["roc"][name]
        block = level["parts"][name]
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
        drawn = 0
        for j, (cls, cur) in enumerate(curves.items()):
            if cur is None:
                continue
            color = part_color(name, i) if binary else f"C{j % 10}"
            if binary:
                d = block["auc_delong"]
                label = f"AUC {fmt(d['auc'])} (95% CI {fmt(d['lo'])}–{fmt(d['hi'])})"
            else:
                d = block["auc_per_class_delong"][cls]
                label = f"{cls}: AUC {fmt(d['auc'])}"
            ax.plot(cur["fpr"], cur["tpr"], color=color, lw=1.8, label=label, drawstyle="default")
            band = cur.get("band")
            if band:
                ax.fill_between(band["fpr"], band["tpr_lo"], band["tpr_hi"], color=color, alpha=0.15 if binary else 0.08,
                                lw=0, label="95% patient-bootstrap band" if binary else None)
            drawn += 1
        if binary and ops.get("parts", {}).get(name):
            op = ops["parts"][name]
            fpr, tpr = 1 - num(op["specificity"]), num(op["sensitivity"])
            if math.isfinite(fpr) and math.isfinite(tpr):
                tag = "Youden threshold (chosen here: optimistic)" if name == "cv" else "Youden threshold from CV"
                ax.plot([fpr], [tpr], "o", ms=7, mfc="white", mec="k", label=f"{tag}, t={op['threshold']:.3f}"
                        + (" (calibrated p: the served point)" if ops.get("space") == "calibrated" else ""))
        if not drawn:
            ax.text(0.5, 0.5, "ROC undefined:\nonly one class present", ha="center", va="center", fontsize=10)
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
               xlabel="False positive rate (1 − specificity)",
               ylabel="True positive rate (sensitivity)")
        ax.set_title(f"{title}: {part_label(name)} (n={block['n']})", fontsize=10)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(loc="lower right", fontsize=7 if not binary and len(classes) > 3 else 8)
    return png(fig)


def plot_confusion(level: dict, classes: list[str], title: str) -> str:
    plt = plt_module()
    names = list(level["parts"])
    size = 3.2 + 0.45 * len(classes)
    fig, axes = plt.subplots(1, len(names), figsize=(size * len(names), size + 0.3), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes[0], names):
        cm = np.asarray(level["parts"][name]["metrics"]["confusion_matrix"], dtype=float)
        rows = cm.sum(axis=1, keepdims=True)
        frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for r in range(cm.shape[0]):
            for col in range(cm.shape[1]):
                ax.text(col, r, f"{int(cm[r, col])}\n{frac[r, col]:.0%}", ha="center", va="center", fontsize=9,
                        color="white" if frac[r, col] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 2 else 0, ha="right"
                      if len(classes) > 2 else "center")
        ax.set_yticks(range(len(classes)), classes)
        ax.set(xlabel="Predicted class (argmax)", ylabel="True class")
        ax.set_title(f"{title}: {part_label(name)} (n={int(cm.sum())})", fontsize=10)
    return png(fig)


def plot_reliability(level: dict, title: str) -> str:
    plt = plt_module()
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.2, 6.0), gridspec_kw={"height_ratios": [3, 1]}, sharex=True,
                               layout="constrained")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.5", label="perfect calibration")
    for i, (name, rel) in enumerate(level["reliability"].items()):
        conf = np.array([num(v) for v in rel["confidence"]])
        acc = np.array([num(v) for v in rel["accuracy"]])
        ok = np.isfinite(conf) & np.isfinite(acc)
        color = part_color(name, i)
        ax.plot(conf[ok], acc[ok], "o-", color=color, ms=4, label=f"{part_label(name)} (ECE {fmt(rel['ece'])})")
        edges = np.asarray(rel["bin_edges"])
        hx.stairs(rel["count"], edges, color=color, label=part_label(name))
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="Observed accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    hx.set(xlabel="Confidence (top-class probability)", ylabel="Cases")
    return png(fig)


def plot_folds(level: dict, title: str) -> str:
    plt = plt_module()
    folds = level["folds"]
    keys = list(folds)
    x = np.arange(len(keys))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(keys) + 2.5), 4.0), layout="constrained")
    for off, metric, color in ((-width / 2, "auc", "C0"), (width / 2, "accuracy", "C1")):
        vals = np.array([num(folds[k]["metrics"].get(metric)) for k in keys])
        lo = np.array([num(folds[k]["ci"][metric]["lo"]) for k in keys])
        hi = np.array([num(folds[k]["ci"][metric]["hi"]) for k in keys])
        err = np.vstack([np.where(np.isfinite(lo), vals - lo, 0), np.where(np.isfinite(hi), hi - vals, 0)])
        err = np.where(np.isfinite(err), np.clip(err, 0, None), 0)
        heights = np.nan_to_num(vals)
        bars = ax.bar(x + off, heights, width, color=color, yerr=err, capsize=3,
                      label=f"{'AUC' if metric == 'auc' else 'Accuracy'} (95% CI)")
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, 0.02, fmt(v), ha="center", va="bottom", fontsize=7,
                    color="white", rotation=90)
        pooled = num(level["parts"]["cv"]["metrics"].get(metric))
        if math.isfinite(pooled):
            ax.axhline(pooled, color=color, ls=":", lw=1.2)
    ax.set_xticks(x, [f"fold {k}" for k in keys])
    ax.set(xlim=(-0.8, len(keys) - 0.2), ylim=(0, 1.22), yticks=np.linspace(0, 1, 6),
           ylabel="Held-out value", title=title + " (dotted lines: pooled CV)")
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def plot_training(histories: dict[int, dict[str, list[float]]], best_epochs: dict[int, int]) -> str:
    plt = plt_module()
    fig, (lx, mx) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    metric_name = None
    for i, (k, h) in enumerate(histories.items()):
        color = f"C{i % 10}"
        ep = h.get("epoch") or list(range(1, len(next(iter(h.values()))) + 1))
        if "train_loss" in h:
            lx.plot(ep, h["train_loss"], "-o", ms=3, color=color, label=f"fold {k} train")
        if "val_loss" in h:
            lx.plot(ep, h["val_loss"], "--s", ms=3, color=color, label=f"fold {k} validation")
        metric = next((c for c in h if c.startswith("val_") and c != "val_loss"), None)
        if metric:
            metric_name = metric[4:]
            mx.plot(ep, h[metric], "-o", ms=3, color=color, label=f"fold {k}")
            best = best_epochs.get(k)
            if best is not None and best in ep:
                j = ep.index(best)
                mx.plot([best], [h[metric][j]], "*", ms=12, color=color, mec="k",
                        label=f"fold {k} best epoch ({best})")
    lx.set(title="Loss per epoch", xlabel="Epoch", ylabel="Loss")
    lx.grid(alpha=0.3)
    lx.legend(fontsize=7)
    mx.set(title=f"Validation {metric_name or 'metric'} per epoch (picks the best epoch)",
           xlabel="Epoch", ylabel=metric_name or "metric")
    mx.grid(alpha=0.3)
    if metric_name:
        mx.legend(fontsize=7)
    n_epochs = max((len(h.get("epoch", [])) for h in histories.values()), default=0)
    for ax in (lx, mx):
        if 0 < n_epochs <= 15:
            ax.set_xticks(range(1, n_epochs + 1))
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    return png(fig)




def plot_effects(features: list[str], effects: dict[str, list], title: str, top: int = 15) -> str:
    """Horizontal bars of the features' Cohen's d (largest |d| first), one bar colour per class compared."""
    plt = plt_module()
    values = np.abs(np.array([[np.nan if v is None else v for v in d] for d in effects.values()], dtype=float))
    strongest = np.where(np.isfinite(values).any(0), np.nanmax(np.where(np.isfinite(values), values, -1.0), 0), np.nan)
    order = [i for i in np.argsort(-np.nan_to_num(strongest, nan=-1.0)) if np.isfinite(strongest[i])][:top][::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * max(len(order), 3) + 1.0))
    height = 0.8 / max(len(effects), 1)
    for j, (cls, d) in enumerate(effects.items()):
        vals = [np.nan if d[i] is None else d[i] for i in order]
        ax.barh(np.arange(len(order)) + j * height, vals, height=height, label=f"{cls} vs rest", color=f"C{j}")
    ax.set_yticks(np.arange(len(order)) + height * (len(effects) - 1) / 2, [features[i] for i in order], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    for x in (-0.8, -0.5, -0.2, 0.2, 0.5, 0.8):  # Cohen's small / medium / large
        ax.axvline(x, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("standardised mean difference (Cohen's d)")
    ax.set_title(title, fontsize=10)
    if len(effects) > 1:
        ax.legend(fontsize=7, loc="lower right")
    return png(fig)


def plot_decision_curve(level: dict, title: str) -> str:
    """Net benefit of the model against treat-all and treat-none per part, with the served operating point."""
    plt = plt_module()
    curves = {k: v for k, v in level["decision_curve"].items() if v and v.get("n")}
    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 4.2), squeeze=False, layout="constrained")
    for ax, (i, (name, dc)) in zip(axes[0], enumerate(curves.items())):
        t = np.asarray(dc["thresholds"], float)
        model, everyone = (np.array([num(v) for v in dc[k]]) for k in ("model", "treat_all"))
        prevalence = num(dc["prevalence"])
        ax.plot(t, model, color=part_color(name, i), lw=1.8, label="model")
        ax.plot(t, everyone, color="0.45", lw=1.0, ls="--", label="treat all")
        ax.axhline(0.0, color="0.2", lw=1.0, ls=":", label="treat none")
        at = dc.get("at_operating_point")
        if at:
            ax.plot([at["threshold"]], [num(at["model"])], "o", color="black", ms=5,
                    label=f"served point ({at['threshold']:.2f})")
        useful = dc.get("useful_range")
        if useful:
            ax.axvspan(useful[0], useful[1], color=part_color(name, i), alpha=0.08, lw=0)
        top = max(prevalence, float(np.nanmax(model)) if np.isfinite(model).any() else 0.0)
        ax.set(xlim=(0, 1), ylim=(-0.05 - 0.1 * top, top * 1.15 + 0.02), xlabel="Threshold probability",
               ylabel="Net benefit")
        ax.set_title(f"{title}: {part_label(name)} (n={dc['n']}, prevalence {prevalence:.2f})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    return png(fig)


def plot_reader_rocs(result: dict) -> str:
    """Each reader's empirical ROC curve, one panel per modality of a reader study."""
    plt = plt_module()
    modalities = list(result["modalities"])
    fig, axes = plt.subplots(1, len(modalities), figsize=(4.0 * len(modalities), 4.0), squeeze=False,
                             layout="constrained")
    colour = {r: f"C{i % 10}" for i, r in enumerate(result["readers"])}
    auc = {(a["modality"], a["reader"]): a["auc"] for a in result["reader_auc"]}
    for ax, modality in zip(axes[0], modalities):
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
        for curve in result["roc"]:
            if curve["modality"] != modality:
                continue
            key = (modality, curve["reader"])
            ax.plot(curve["fpr"], curve["tpr"], "-o", ms=2.5, lw=1.2, color=colour[curve["reader"]],
                    label=f"{curve['reader']} ({num(auc[key]):.3f})")
        ai = result.get("ai")
        if ai:
            ax.plot(ai["fpr"], ai["tpr"], "-", lw=2.0, color="black", label=f"model ({num(ai['auc']):.3f})")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 − specificity", ylabel="Sensitivity", title=modality)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", title="reader (AUC)", title_fontsize=7)
    return png(fig)


def plot_reader_aucs(result: dict) -> str:
    """The readers' AUCs side by side per modality (one line per reader), with each modality's mean and CI."""
    plt = plt_module()
    modalities = list(result["modalities"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(modalities), 4.0), layout="constrained")
    x = np.arange(len(modalities))
    for i, reader in enumerate(result["readers"]):
        values = [next(num(a["auc"]) for a in result["reader_auc"] if a["reader"] == reader and a["modality"] == m)
                  for m in modalities]
        ax.plot(x, values, "-o", ms=4, lw=1.0, alpha=0.8, color=f"C{i % 10}", label=reader)
    for j, m in enumerate(result["modality_auc"]):
        lo, hi = num(m["lo"]), num(m["hi"])
        ax.errorbar([j + 0.12], [num(m["auc"])], yerr=[[num(m["auc"]) - lo], [hi - num(m["auc"])]], fmt="s",
                    color="black", ms=6, capsize=4, label="mean (CI)" if j == 0 else None)
    if result.get("ai"):
        ax.axhline(num(result["ai"]["auc"]), color="black", lw=1.5, ls="--", label="model")
    ax.set_xticks(x, modalities, rotation=15 if len(modalities) > 2 else 0)
    ax.set(ylabel="AUC", xlim=(-0.4, len(modalities) - 0.4), title="Each reader's AUC per modality")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    return png(fig)
