"""Accuracy benchmark on real ultrasound: the hand-written timm baseline's protocol against lnzoo's
recipes, on the same images, labels and patient folds, one data set after another.

    python benchmarks/accuracy.py [--sets ddti,pocus] [--out benchmarks/results]
                                  [--set KEY=VALUE ...]        # lnzoo side only, e.g. data.image_size=128
                                  [--baseline-size 96 --baseline-epochs 24] [--reuse-baseline]
                                  [--recipe ddti=A.toml --recipe ddti=B.toml]   # candidates + nested choice
                                  [--seeds 0,1,2]              # every row per seed, + mean ± sd over seeds

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

Given several recipes for one set, it runs each on the same folds and adds the row of the nested
choice between them (``lnzoo select``): per fold, the candidate with the best inner-validation AUC,
measured on that fold's training patients, is kept; its compute is the sum of the candidates'.

With ``--seeds``, every row is run once per seed (the baseline's per-fold seeds and lnzoo's
``seed``, which also draws its inner-validation part; the outer folds stay the same), and each method
gets a row of its mean ± sd over seeds, with its AUC difference to the baseline seed by seed.

Nothing here picks settings on the held-out folds: the lnzoo recipes keep their last epoch or
choose it (and a nested choice its candidate) on the training part of each fold only, and the
held-out folds are only scored. It prints figures; it asserts nothing.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import tomllib
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
                 epochs: int, n_classes: int, log, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
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
        fold_seed = k + 1000 * seed  # seed 0: the baseline script's own per-fold seeds
        torch.manual_seed(fold_seed)
        np.random.seed(fold_seed)
        tr, te = np.nonzero(fold_of != k)[0], np.nonzero(fold_of == k)[0]
        pts = np.random.RandomState(fold_seed).permutation(np.unique(g[tr]))
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
def run_lnzoo(recipe, host, out_dir: Path, reuse: bool, folds: dict[str, int], log) -> float:
    """Run a recipe on the benchmark's folds (or reuse a finished run on the same folds); its wall time."""

    from lnzoo.pipeline import fit_folds
    from lnzoo.ui import RunView

    if reuse and (out_dir / "metrics.json").is_file() and (out_dir / "run.json").is_file():
        same_recipe = same_settings(tomllib.loads((out_dir / "recipe.toml").read_text(encoding="utf-8")),
                                    tomllib.loads(recipe.to_toml()))
        if same_folds(read_folds(out_dir), folds) and same_recipe:
            log(f"  reused the finished run {out_dir}")
            return float(json.loads((out_dir / "run.json").read_text())["wall_seconds"])
        log(f"  {out_dir} ran {'on other folds' if same_recipe else 'another recipe'}; running again")
    if out_dir.exists():
        import shutil
        shutil.rmtree(out_dir)
    t0 = time.perf_counter()
    with RunView() as view:
        fit_folds(recipe, host, out_dir, view)
    return time.perf_counter() - t0


def pretraining_seconds(recipe) -> float:
    """Wall time of the run a recipe starts from (model.init_from), counted in its compute."""
    src = recipe.data["model"].get("init_from")
    if not src:
        return 0.0
    run = Path(src)
    run = run if run.is_dir() else run.parent.parent
    info = run / "run.json"
    return float(json.loads(info.read_text())["wall_seconds"]) if info.is_file() else float("nan")


def same_settings(stored: dict, now: dict) -> bool:
    """The stored run's resolved recipe equals this one; keys the stored run predates (added to the
    schema since, so at their defaults there) are not held against it."""
    for key, value in stored.items():
        if key not in now:
            return False
        if isinstance(value, dict) and isinstance(now[key], dict):
            if not same_settings(value, now[key]):
                return False
        elif value != now[key]:
            return False
    return True


def same_folds(run: dict[str, int], folds: dict[str, int]) -> bool:
    """The run put every benchmark patient it has in the benchmark's fold (it may list more, e.g. unlabelled ones,
    or fewer: a model of other inputs than the image leaves out rows that give none of them)."""
    return all(run.get(p, k) == k for p, k in folds.items())


def read_folds(run_dir: Path) -> dict[str, int]:
    with (run_dir / "folds.csv").open(newline="") as fh:
        return {r["patient"]: int(r["fold"]) for r in csv.DictReader(fh)}


def read_oof(run_dir: Path, main: str, paths: list[str], classes: list[str], sources: dict[str, str]) -> np.ndarray:
    """The out-of-fold probabilities of a run (or of a nested choice), in the benchmark's image order; NaN rows
    where the run has none (a model without image views leaves out a row that gives none of its inputs).

    A row is matched on its image file under whichever view column holds it (``path`` for a full
    view, ``path_roi`` for a roi view: both name the same file of the set's labels.csv), or, for a model
    without views, on its manifest line (``source``, mapped to the image by ``sources``)."""
    index = {p: i for i, p in enumerate(paths)}
    oof = np.full((len(paths), len(classes)), np.nan)
    with (run_dir / "predictions.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = [c for c in reader.fieldnames or [] if c == "path" or c.startswith("path_")]
        for row in reader:
            hit = next((row[c] for c in columns if row[c] in index), None) or sources.get(row.get("source", ""))
            if row["part"] == "cv" and hit in index:
                oof[index[hit]] = [float(row[f"p_{main}_{c}"]) for c in classes]
    if np.isnan(oof).all():
        raise SystemExit(f"{run_dir}/predictions.csv has no out-of-fold row of the benchmark's images")
    return oof


def inner_rows(run_dir: Path) -> list[dict]:
    """Per fold: the inner-validation score of its kept epoch (a nested choice: its winner's)."""
    rows = []
    for k in sorted(int(d.name[4:]) for d in run_dir.glob("fold*") if (d / "best.json").is_file()):
        meta = json.loads((run_dir / f"fold{k}" / "best.json").read_text())
        rows.append({"fold": k, "val_auc": next(iter(meta["monitor"].values()))})
    return rows


def mean_of(values) -> float:
    v = np.array([x for x in values if np.isfinite(x)], dtype=float)
    return float(v.mean()) if len(v) else float("nan")


def seed_summary(set_name: str, results: dict[str, list[dict]], n_seeds: int, log) -> list[str]:
    """Rows of the mean ± sd over seeds of each method's fold-mean AUC, balanced accuracy, pooled AUC
    and wall time, with each lnzoo method's AUC difference to the baseline seed by seed."""
    rows = []
    base = results.get("baseline-timm protocol")
    log(f"\n{set_name}: over {n_seeds} seeds (mean ± sd of the per-seed figures)")
    for label, per_seed in results.items():
        if len(per_seed) != n_seeds:
            continue
        diff = ""
        if base is not None and label != "baseline-timm protocol":
            d = [r["auc"] - b["auc"] for r, b in zip(per_seed, base)]
            diff = f"; AUC − baseline per seed {', '.join(f'{x:+.3f}' for x in d)} (mean {np.mean(d):+.3f})"
        ps = [r["p"] for r in per_seed if r["p"] is not None]
        p_txt = ("DeLong p per seed " + ", ".join(f"{x:.2g}" for x in ps)) if ps else ""
        log(f"  {label}: AUC {mean_sd(r['auc'] for r in per_seed)}, balanced accuracy "
            f"{mean_sd(r['bacc'] for r in per_seed)}{diff}")
        rows.append(f"| {set_name} | {label}, mean of {n_seeds} seeds | | {mean_sd(r['auc'] for r in per_seed)} | "
                    f"{mean_sd(r['bacc'] for r in per_seed)} | {mean_sd(r['pooled'] for r in per_seed)} | {p_txt} | "
                    f"{np.mean([r['wall'] for r in per_seed]) / 60:.1f} min each |")
    return rows


def mean_sd(values) -> str:
    v = np.array([x for x in values if np.isfinite(x)], dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}" if len(v) else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="ddti,pocus", help="comma-separated: " + ",".join(SETS))
    ap.add_argument("--recipe", action="append", default=[], metavar="SET=PATH",
                    help="use another recipe for a set, e.g. ddti=recipes/examples/ddti_tirads.toml; give a set "
                         "several to run each and also report the nested choice between them (lnzoo select: "
                         "per fold, the best inner-validation AUC wins)")
    ap.add_argument("--set", dest="sets_", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe key on the lnzoo side (as lnzoo run --set)")
    ap.add_argument("--baseline-size", type=int, default=None, help="default: the recipe's data.image_size")
    ap.add_argument("--baseline-epochs", type=int, default=None, help="default: the recipe's train.epochs")
    ap.add_argument("--reuse-baseline", action="store_true",
                    help="reuse <out>/<set>/baseline.csv from an earlier run with the same folds and settings")
    ap.add_argument("--reuse-lnzoo", action="store_true",
                    help="reuse a finished lnzoo run folder of the same name when it ran on the same folds")
    ap.add_argument("--skip-baseline", action="store_true", help="lnzoo side only (no comparison)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--seeds", default=None, metavar="0,1,2",
                    help="repeat every row with these seeds (the baseline's and lnzoo's `seed`; same folds) and add "
                         "their mean ± sd over seeds: single runs on a few hundred images differ by several "
                         "hundredths of AUC from seed to seed")
    ap.add_argument("--tag", default="", help="suffix for the lnzoo run folder and table, e.g. best")
    args = ap.parse_args()
    try:
        seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [0]
    except ValueError:
        sys.exit(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2")

    from lnzoo.data.samples import MISSING
    from lnzoo.plugins import get_host
    from lnzoo.recipe import load_recipe
    from lnzoo.data.run_data import load_run_data, recipe_tasks
    from lnzoo.evaluation.stats import auc_difference_test

    def log(msg: str) -> None:
        print(msg, flush=True)

    recipes = {k: [v] for k, v in SETS.items()}
    given: dict[str, list[Path]] = {}
    for item in args.recipe:
        name, _, path = item.partition("=")
        given.setdefault(name, []).append(Path(path).resolve())
    recipes.update(given)
    host = get_host()
    out_root = Path(args.out)
    table = ["| set | method | size / epochs | AUC (mean ± sd over folds) | balanced accuracy | pooled OOF AUC | "
             "DeLong p (plain / by patient) | wall time |", "|---|---|---|---|---|---|---|---|"]
    for set_name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        if set_name not in recipes:
            sys.exit(f"unknown set {set_name!r}; known: {sorted(recipes)}")
        paths_of_set = recipes[set_name]
        out = out_root / set_name
        out.mkdir(parents=True, exist_ok=True)
        probe = load_recipe(paths_of_set[0], host=host, sets=args.sets_)
        try:
            tasks = recipe_tasks(probe, host)
            data = load_run_data(probe, tasks, host=host)
        except Exception as exc:  # noqa: BLE001 - most often: ../shared is not there
            log(f"{set_name}: cannot read its data ({exc}); skipped")
            continue
        main = probe.data["tasks"]["main"]
        classes = list(tasks[main].classes)
        pool = [s for s in data.pool if s.labels.get(main, MISSING) != MISSING]
        view = probe.data["data"]["views"][0]  # the image file of the first view ('roi' crops the same file)
        paths = [str(s.views[view]) for s in pool]
        sources = {s.origin: str(s.views[view]) for s in pool}  # manifest line -> image, for view-less models
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

        seed_results: dict[str, list[dict]] = {}  # method -> one result per seed
        for seed in seeds:
            sfx = f"_s{seed}" if seed else ""
            seed_sets = [*args.sets_, f"seed={seed}"] if args.seeds else list(args.sets_)
            seed_label = f", seed {seed}" if len(seeds) > 1 else ""
            base_oof, base_rows, base_wall = None, [], float("nan")
            base_csv = out / f"baseline_{size}px_{epochs}ep{sfx}.csv"
            if not args.skip_baseline:
                if args.reuse_baseline and base_csv.is_file() and \
                        json.loads(base_csv.with_suffix(".json").read_text()).get("seed", 0) == seed:
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
                    base_oof, base_rows = run_baseline(paths, y, patients, folds, size, epochs, len(classes), log,
                                                       seed)
                    base_wall = time.perf_counter() - t0
                    with base_csv.open("w", newline="") as fh:
                        w = csv.writer(fh)
                        w.writerow(["path", "patient", "fold", "y", *[f"p_{c}" for c in classes]])
                        for i, p in enumerate(paths):
                            w.writerow([p, patients[i], folds[patients[i]], classes[y[i]], *[f"{v:.6f}" for v in base_oof[i]]])
                    base_csv.with_suffix(".json").write_text(json.dumps({"folds": base_rows, "wall_seconds": base_wall,
                                                                         "size": size, "epochs": epochs,
                                                                         "seed": seed}, indent=2))

            fold_of = np.array([folds[p] for p in patients])
            pooled_b = fold_auc(y, base_oof) if base_oof is not None else float("nan")
            if base_oof is not None:
                seed_results.setdefault("baseline-timm protocol", []).append(
                    {"auc": mean_of(r["auc"] for r in base_rows), "bacc": mean_of(r["bacc"] for r in base_rows),
                     "pooled": pooled_b, "wall": base_wall, "p": None})
                table.append(f"| {set_name} | baseline-timm protocol{seed_label} | {size} px / {epochs} | "
                             f"{mean_sd(r['auc'] for r in base_rows)} | {mean_sd(r['bacc'] for r in base_rows)} | "
                             f"{pooled_b:.3f} | | {base_wall / 60:.1f} min |")

            def report(label: str, run_dir: Path, wall: float, size_epochs: str, chosen: list[str] | None = None) -> None:
                oof = read_oof(run_dir, main, paths, classes, sources)
                have = ~np.isnan(oof).any(1)  # every row but those a model without image views could not take
                if not have.all():
                    label += f" ({int(have.sum())} of {len(have)} images: the rest give it no input)"
                    log(f"  {label}: scored on the {int(have.sum())} images it predicts; the baseline on the same")
                rows = inner_rows(run_dir)
                for r in rows:
                    te = (fold_of == r["fold"]) & have
                    r.update(auc=fold_auc(y[te], oof[te]), bacc=fold_bacc(y[te], oof[te]))
                log(f"\n{set_name}, {label}: per fold (held-out AUC / balanced accuracy; the inner-validation AUC "
                    "of the kept epoch" + (" and the candidate" if chosen else "") + ")")
                for i, k in enumerate(sorted(set(folds.values()))):
                    b = next((r for r in base_rows if r["fold"] == k), None)
                    ln = next(r for r in rows if r["fold"] == k)
                    bs = f"baseline {b['auc']:.3f} / {b['bacc']:.3f} (val {b['val_auc']:.3f})" if b else ""
                    who = f" [{chosen[i]}]" if chosen else ""
                    log(f"  fold {k}: lnzoo {ln['auc']:.3f} / {ln['bacc']:.3f} (val {ln['val_auc']:.3f}){who}   {bs}")
                pooled_ln = fold_auc(y[have], oof[have])
                stats_txt, plain = "", None
                if base_oof is not None:
                    plain = auc_difference_test(y[have], oof[have], base_oof[have])
                    clustered = auc_difference_test(y[have], oof[have], base_oof[have],
                                                    groups=[p for p, h in zip(patients, have) if h])
                    stats_txt = f"{plain['p_value']:.3g} / {clustered['p_value']:.3g}"
                    log(f"  pooled OOF AUC: lnzoo {pooled_ln:.3f} vs baseline {pooled_b:.3f}; DeLong z {plain['z']:.2f} "
                        f"p {plain['p_value']:.3g}; clustered by patient z {clustered['z']:.2f} p {clustered['p_value']:.3g}")
                    log(f"  wall time: lnzoo {wall / 60:.1f} min vs baseline {base_wall / 60:.1f} min "
                        f"({wall / base_wall - 1:+.0%})")
                seed_results.setdefault(label, []).append(
                    {"auc": mean_of(r["auc"] for r in rows), "bacc": mean_of(r["bacc"] for r in rows),
                     "pooled": pooled_ln, "wall": wall, "p": plain["p_value"] if plain else None})
                table.append(f"| {set_name} | {label}{seed_label} | {size_epochs} | {mean_sd(r['auc'] for r in rows)} | "
                             f"{mean_sd(r['bacc'] for r in rows)} | {pooled_ln:.3f} | {stats_txt} | {wall / 60:.1f} min |")

            tag = ("_" + args.tag) if args.tag else ""
            candidates = []
            for path in paths_of_set:
                recipe = load_recipe(path, host=host,
                                     sets=[*seed_sets, f'cv.folds_file="{folds_csv}"', 'cv.run_folds="all"'])
                stems = [q.stem for q in paths_of_set]
                suffix = path.stem if stems.count(path.stem) == 1 else f"{path.stem}_{paths_of_set.index(path)}"
                run_dir = out / (f"lnzoo{tag}{sfx}" if len(paths_of_set) == 1 else f"lnzoo{tag}_{suffix}{sfx}")
                log(f"  lnzoo: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
                    f"{' '.join(seed_sets)} -> {run_dir}")
                wall = run_lnzoo(recipe, host, run_dir, args.reuse_lnzoo, folds, log)
                assert same_folds(read_folds(run_dir), folds), "lnzoo used other folds than the baseline"
                pre = pretraining_seconds(recipe)
                name = recipe.name + (f" ({' '.join(args.sets_)})" if args.sets_ else "")
                label = f"lnzoo `{name}`" + (f" (+ {pre / 60:.1f} min pretraining, counted)" if pre and np.isfinite(pre)
                                             else " (pretraining time unknown: no run.json)" if pre else "")
                size_epochs = f"{recipe.data['data']['image_size']} px / {recipe.data['train']['epochs']}"
                report(label, run_dir, wall + (pre if np.isfinite(pre) else 0.0), size_epochs)
                candidates.append((run_dir, wall + (pre if np.isfinite(pre) else 0.0), recipe.name))
            if len(candidates) > 1:
                import shutil

                from lnzoo.select import select_runs
                nested_dir = out / f"lnzoo{tag}_nested{sfx}"
                if nested_dir.exists():
                    shutil.rmtree(nested_dir)
                from lnzoo.errors import UsageError
                try:
                    result = select_runs([c[0] for c in candidates], nested_dir)
                except UsageError as exc:  # e.g. a model without views left out rows the others scored
                    log(f"  no nested choice between these candidates: {exc}")
                    result = None
            if len(candidates) > 1 and result is not None:
                chosen = [f["chosen"] for f in result["folds"]]
                names = {c[0].name: c[2] for c in candidates}
                report(f"lnzoo nested choice of {', '.join(f'`{c[2]}`' for c in candidates)}", nested_dir,
                       sum(c[1] for c in candidates), "as each candidate", [names[c] for c in chosen])
        if len(seeds) > 1:
            table.extend(seed_summary(set_name, seed_results, len(seeds), log))
        (out / f"accuracy{('_' + args.tag) if args.tag else ''}.md").write_text(
            "\n".join([*table[:2], *[r for r in table[2:] if r.startswith(f"| {set_name} |")]]) + "\n")
        (out_root / f"accuracy{('_' + args.tag) if args.tag else ''}.md").write_text("\n".join(table) + "\n")
    log("\n" + "\n".join(table))
    log(f"\n(table written to {out_root / ('accuracy' + (('_' + args.tag) if args.tag else '') + '.md')})")


if __name__ == "__main__":
    main()
