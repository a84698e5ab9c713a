"""Accuracy benchmark on real ultrasound: the hand-written timm baseline's protocol against lnzoo's
recipes, on the same images, labels and patient folds, one data set after another.

    python benchmarks/accuracy.py [--sets ddti,pocus] [--out benchmarks/results]
                                  [--set KEY=VALUE ...]        # lnzoo side only, e.g. data.image_size=128
                                  [--baseline-size 96 --baseline-epochs 24] [--reuse-baseline]

For each set it
1. reads the data through lnzoo (the recipe's manifest, label columns, unlabelled rows left out,
   patients with byte-identical images merged into one split group),
2. draws grouped stratified 5-fold splits once (scikit-learn StratifiedGroupKFold, shuffle, seed 0,
   the baseline script's rule) and writes them to ``<out>/<set>/folds.csv``,
3. runs the baseline protocol of ``../shared/tools/baseline-timm`` on those folds (ResNet-18 from
   scratch, 1 grey channel, Adam 1e-3, x0.1 at 50%/75% of the epochs, batch 64, horizontal flip,
   epoch picked by AUC on a grouped 1/8 of each training part), keeping its out-of-fold
   probabilities,
4. runs the lnzoo recipe with ``cv.folds_file`` set to the same folds,
5. prints, per fold and as mean ± sd, the AUC (binary, or macro one-vs-rest over the classes present
   in the fold, the baseline's rule), the balanced accuracy of the arg-max class and the wall time;
   then the pooled out-of-fold AUC of each with a paired DeLong test (plain, and clustered by
   patient), and writes the Markdown table to ``<out>/accuracy.md`` (and each set's rows to ``<out>/<set>/``).

Nothing here picks settings: the lnzoo recipes choose their epoch on the training part of each
fold only, and the held-out folds are only scored. It prints figures; it asserts nothing.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETS = {
    "ddti": ROOT / "recipes" / "examples" / "ddti_tirads.toml",
    "pocus": ROOT / "recipes" / "examples" / "pocus_lung.toml",
}


def fold_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Binary AUC, or the macro one-vs-rest AUC over the classes present (a grouped fold can miss one)."""
    from sklearn.metrics import roc_auc_score

    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1])) if len(np.unique(y)) == 2 else float("nan")
    per = [roc_auc_score(y == c, p[:, c]) for c in range(p.shape[1]) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(per)) if per else float("nan")


def fold_bacc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score
    return float(balanced_accuracy_score(y, p.argmax(1)))


def draw_folds(patients: list[str], y: np.ndarray, k: int = 5, seed: int = 0) -> dict[str, int]:
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.array(patients)
    out: dict[str, int] = {}
    for fold, (_, te) in enumerate(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(y, y, groups)):
        for p in set(groups[te]):
            out[p] = fold
    return out


# -- the baseline's protocol, re-implemented to keep its out-of-fold probabilities -----------------
def run_baseline(paths: list[str], y: np.ndarray, patients: list[str], folds: dict[str, int], size: int,
                 epochs: int, n_classes: int, log) -> tuple[np.ndarray, list[dict]]:
    import timm
    import torch
    import torch.nn.functional as F
    from PIL import Image

    t_load = time.perf_counter()
    x = torch.tensor(np.stack([np.asarray(Image.open(p).convert("L").resize((size, size), Image.BILINEAR))
                               for p in paths]), dtype=torch.float32).unsqueeze(1) / 255.0
    load_s = time.perf_counter() - t_load
    yt = torch.as_tensor(y)
    g = np.array(patients)
    fold_of = np.array([folds[p] for p in patients])
    oof = np.zeros((len(paths), n_classes))
    rows = []

    @torch.no_grad()
    def probs(m, xs):
        m.eval()
        return torch.cat([m((xs[i:i + 256] - 0.5) / 0.25).softmax(1) for i in range(0, len(xs), 256)]).numpy()

    for k in sorted(set(fold_of.tolist())):
        t0 = time.perf_counter()
        torch.manual_seed(k)
        np.random.seed(k)
        tr, te = np.nonzero(fold_of != k)[0], np.nonzero(fold_of == k)[0]
        pts = np.random.RandomState(k).permutation(np.unique(g[tr]))
        vap = set(pts[: len(pts) // 8])
        isva = np.array([p in vap for p in g[tr]])
        va, tr2 = tr[isva], tr[~isva]
        m = timm.create_model("resnet18", pretrained=False, num_classes=n_classes, in_chans=1)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        sch = torch.optim.lr_scheduler.MultiStepLR(opt, [int(epochs * .5), int(epochs * .75)], 0.1)
        best, state = -1.0, None
        for _ in range(epochs):
            m.train()
            perm = torch.tensor(np.random.permutation(tr2))
            for i in range(0, len(perm), 64):
                idx = perm[i:i + 64]
                xb = x[idx]
                if torch.rand(1) < 0.5:
                    xb = xb.flip(3)
                loss = F.cross_entropy(m((xb - 0.5) / 0.25), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sch.step()
            a = fold_auc(y[va], probs(m, x[va]))
            if a > best:
                best, state = a, {kk: v.clone() for kk, v in m.state_dict().items()}
        m.load_state_dict(state)
        oof[te] = probs(m, x[te])
        rows.append({"fold": k, "auc": fold_auc(y[te], oof[te]), "bacc": fold_bacc(y[te], oof[te]),
                     "val_auc": best, "seconds": time.perf_counter() - t0 + (load_s if k == 0 else 0.0)})
        log(f"  baseline fold {k}: AUC {rows[-1]['auc']:.3f} BACC {rows[-1]['bacc']:.3f} "
            f"(inner validation AUC {best:.3f}) {rows[-1]['seconds']:.0f} s")
    return oof, rows


# -- lnzoo ---------------------------------------------------------------------------------------
def run_lnzoo(recipe, host, out_dir: Path, paths: list[str], y: np.ndarray, n_classes: int, classes: list[str],
              log) -> tuple[np.ndarray, list[dict], float, dict[str, int]]:
    from rich.console import Console

    from lnzoo.runner import run_recipe

    t0 = time.perf_counter()
    metrics = run_recipe(recipe, host, out_dir, console=Console(stderr=True))
    wall = time.perf_counter() - t0
    main = recipe.data["tasks"]["main"]
    view = recipe.data["data"]["views"][0]
    column = "path" if view == "full" else f"path_{view}"
    index = {p: i for i, p in enumerate(paths)}
    oof = np.full((len(paths), n_classes), np.nan)
    with (out_dir / "predictions.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["part"] == "cv" and row[column] in index:
                oof[index[row[column]]] = [float(row[f"p_{main}_{c}"]) for c in classes]
    if np.isnan(oof).any():
        raise SystemExit(f"{out_dir}/predictions.csv lacks out-of-fold rows for {int(np.isnan(oof).any(1).sum())} images")
    rows = []
    with (out_dir / "folds.csv").open(newline="") as fh:
        fold_of = {r["patient"]: int(r["fold"]) for r in csv.DictReader(fh)}
    for info in metrics["cross_validation"]["folds"]:
        k = info["fold"]
        meta = json.loads((out_dir / f"fold{k}" / "best.json").read_text())
        rows.append({"fold": k, "val_auc": next(iter(meta["monitor"].values()))})
    return oof, rows, wall, fold_of


def mean_sd(values) -> str:
    v = np.array([x for x in values if np.isfinite(x)], dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}" if len(v) else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="ddti,pocus", help="comma-separated: " + ",".join(SETS))
    ap.add_argument("--recipe", action="append", default=[], metavar="SET=PATH",
                    help="use another recipe for a set, e.g. ddti=recipes/examples/ddti_tirads.toml")
    ap.add_argument("--set", dest="sets_", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe key on the lnzoo side (as lnzoo run --set)")
    ap.add_argument("--baseline-size", type=int, default=None, help="default: the recipe's data.image_size")
    ap.add_argument("--baseline-epochs", type=int, default=None, help="default: the recipe's train.epochs")
    ap.add_argument("--reuse-baseline", action="store_true",
                    help="reuse <out>/<set>/baseline.csv from an earlier run with the same folds and settings")
    ap.add_argument("--skip-baseline", action="store_true", help="lnzoo side only (no comparison)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--tag", default="", help="suffix for the lnzoo run folder and table, e.g. best")
    args = ap.parse_args()

    from lnzoo.data.samples import MISSING
    from lnzoo.plugins import get_host
    from lnzoo.recipe import load_recipe
    from lnzoo.runner import load_run_data, recipe_tasks
    from lnzoo.stats import auc_difference_test

    def log(msg: str) -> None:
        print(msg, flush=True)

    recipes = dict(SETS)
    for item in args.recipe:
        name, _, path = item.partition("=")
        recipes[name] = Path(path).resolve()
    host = get_host()
    out_root = Path(args.out)
    table = ["| set | method | size / epochs | AUC (mean ± sd over folds) | balanced accuracy | pooled OOF AUC | "
             "DeLong p (plain / by patient) | wall time |", "|---|---|---|---|---|---|---|---|"]
    for set_name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        if set_name not in recipes:
            sys.exit(f"unknown set {set_name!r}; known: {sorted(recipes)}")
        path = recipes[set_name]
        out = out_root / set_name
        out.mkdir(parents=True, exist_ok=True)
        probe = load_recipe(path, host=host, sets=args.sets_)
        try:
            tasks = recipe_tasks(probe, host)
            data = load_run_data(probe, tasks)
        except Exception as exc:  # noqa: BLE001 - most often: ../shared is not there
            log(f"{set_name}: cannot read its data ({exc}); skipped")
            continue
        main = probe.data["tasks"]["main"]
        classes = list(tasks[main].classes)
        pool = [s for s in data.pool if s.labels.get(main, MISSING) != MISSING]
        view = probe.data["data"]["views"][0]  # the image file of the first view ('roi' crops the same file)
        paths = [str(s.views[view]) for s in pool]
        y = np.array([s.labels[main] for s in pool])
        patients = [s.patient for s in pool]
        folds = draw_folds(patients, y)
        folds_csv = out / "folds.csv"
        with folds_csv.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["patient", "fold"])
            for p, k in sorted(folds.items()):
                w.writerow([p, k])
        size = args.baseline_size or probe.data["data"]["image_size"]
        epochs = args.baseline_epochs or probe.data["train"]["epochs"]
        log(f"== {set_name}: {len(pool)} images of {len(set(patients))} patients, classes {classes}; "
            f"folds in {folds_csv}")

        base_oof, base_rows, base_wall = None, [], float("nan")
        base_csv = out / f"baseline_{size}px_{epochs}ep.csv"
        if not args.skip_baseline:
            if args.reuse_baseline and base_csv.is_file():
                with base_csv.open(newline="") as fh:
                    rows = list(csv.DictReader(fh))
                by_path = {r["path"]: r for r in rows}
                base_oof = np.array([[float(by_path[p][f"p_{c}"]) for c in classes] for p in paths])
                summary = json.loads(base_csv.with_suffix(".json").read_text())
                base_rows, base_wall = summary["folds"], summary["wall_seconds"]
                log(f"  baseline reused from {base_csv}")
            else:
                log(f"  baseline protocol: ResNet-18 from scratch, {size} px, {epochs} epochs")
                t0 = time.perf_counter()
                base_oof, base_rows = run_baseline(paths, y, patients, folds, size, epochs, len(classes), log)
                base_wall = time.perf_counter() - t0
                with base_csv.open("w", newline="") as fh:
                    w = csv.writer(fh)
                    w.writerow(["path", "patient", "fold", "y", *[f"p_{c}" for c in classes]])
                    for i, p in enumerate(paths):
                        w.writerow([p, patients[i], folds[patients[i]], classes[y[i]], *[f"{v:.6f}" for v in base_oof[i]]])
                base_csv.with_suffix(".json").write_text(json.dumps({"folds": base_rows, "wall_seconds": base_wall,
                                                                     "size": size, "epochs": epochs}, indent=2))

        recipe = load_recipe(path, host=host, sets=[*args.sets_, f'cv.folds_file="{folds_csv}"', 'cv.run_folds="all"'])
        run_dir = out / f"lnzoo{('_' + args.tag) if args.tag else ''}"
        if run_dir.exists():
            import shutil
            shutil.rmtree(run_dir)
        log(f"  lnzoo: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
            f"{' '.join(args.sets_)} -> {run_dir}")
        ln_oof, ln_rows, ln_wall, ln_folds = run_lnzoo(recipe, host, run_dir, paths, y, len(classes), classes, log)
        assert all(ln_folds.get(p) == folds[p] for p in folds), "lnzoo used other folds than the baseline"
        fold_of = np.array([folds[p] for p in patients])
        for r in ln_rows:
            te = fold_of == r["fold"]
            r.update(auc=fold_auc(y[te], ln_oof[te]), bacc=fold_bacc(y[te], ln_oof[te]))
        # per-fold table
        log(f"\n{set_name}: per fold (held-out AUC / balanced accuracy; inner-validation AUC that picked the epoch)")
        for k in sorted(set(folds.values())):
            b = next((r for r in base_rows if r["fold"] == k), None)
            ln = next(r for r in ln_rows if r["fold"] == k)
            bs = f"baseline {b['auc']:.3f} / {b['bacc']:.3f} (val {b['val_auc']:.3f})" if b else ""
            log(f"  fold {k}: lnzoo {ln['auc']:.3f} / {ln['bacc']:.3f} (val {ln['val_auc']:.3f})   {bs}")
        ln_size, ln_epochs = recipe.data["data"]["image_size"], recipe.data["train"]["epochs"]
        pooled_ln = fold_auc(y, ln_oof)
        stats_txt = ""
        if base_oof is not None:
            pooled_b = fold_auc(y, base_oof)
            plain = auc_difference_test(y, ln_oof, base_oof)
            clustered = auc_difference_test(y, ln_oof, base_oof, groups=patients)
            stats_txt = f"{plain['p_value']:.3g} / {clustered['p_value']:.3g}"
            table.append(f"| {set_name} | baseline-timm protocol | {size} px / {epochs} | "
                         f"{mean_sd(r['auc'] for r in base_rows)} | {mean_sd(r['bacc'] for r in base_rows)} | "
                         f"{pooled_b:.3f} | | {base_wall / 60:.1f} min |")
            log(f"  pooled OOF AUC: lnzoo {pooled_ln:.3f} vs baseline {pooled_b:.3f}; DeLong z {plain['z']:.2f} "
                f"p {plain['p_value']:.3g}; clustered by patient z {clustered['z']:.2f} p {clustered['p_value']:.3g}")
            log(f"  wall time: lnzoo {ln_wall / 60:.1f} min vs baseline {base_wall / 60:.1f} min "
                f"({ln_wall / base_wall - 1:+.0%})")
        name = recipe.name + (f" ({' '.join(args.sets_)})" if args.sets_ else "")
        table.append(f"| {set_name} | lnzoo `{name}` | {ln_size} px / {ln_epochs} | {mean_sd(r['auc'] for r in ln_rows)} | "
                     f"{mean_sd(r['bacc'] for r in ln_rows)} | {pooled_ln:.3f} | {stats_txt} | {ln_wall / 60:.1f} min |")
        (out / f"accuracy{('_' + args.tag) if args.tag else ''}.md").write_text(
            "\n".join([*table[:2], *[r for r in table[2:] if r.startswith(f"| {set_name} |")]]) + "\n")
        (out_root / f"accuracy{('_' + args.tag) if args.tag else ''}.md").write_text("\n".join(table) + "\n")
    log("\n" + "\n".join(table))
    log(f"\n(table written to {out_root / ('accuracy' + (('_' + args.tag) if args.tag else '') + '.md')})")


if __name__ == "__main__":
    main()
