"""Does pretraining help on real ultrasound? From scratch against supervised and self-supervised pretraining.

    python benchmarks/ssl_pretraining.py [--sets ddti,pocus] [--seeds 0,1,2] [--out benchmarks/results/ssl]
                                         [--set KEY=VALUE ...]   # every fine-tuning run, e.g. train.epochs=8

For each set (DDTI thyroid TI-RADS, POCUS lung) and seed, on the same patient folds and with the same
fine-tuning compute (the set's example recipe, ``recipes/examples/ddti_tirads.toml`` / ``pocus_lung.toml``):

1. **scratch**: the recipe as it is; its ``folds.csv`` fixes the folds every other arm uses (``cv.folds_file``);
2. **supervised**: started from a backbone trained with labels on the *other* set
   (``recipes/examples/pretrain_pocus.toml`` / ``pretrain_ddti.toml``);
3. **self-supervised**: started from a SimCLR backbone pretrained without labels on the other set's images
   (``recipes/examples/ssl_for_ddti.toml`` / ``ssl_for_pocus.toml``); the leakage rule of ``lnzoo validate`` makes
   sure it never read an image the fine-tuned model is evaluated on.

The pretrainings run once per set (seed 0) and are reused by every seed. Run again with the same ``--out``, it
continues where it stopped: finished runs are kept, an interrupted one is resumed. It prints, per arm, the mean AUC and
balanced accuracy over the held-out folds, the pooled out-of-fold AUC and the paired DeLong test of each
pretrained arm against scratch (clustered by patient), the wall times and the pretraining's seconds per epoch,
and writes the Markdown table to ``<out>/ssl.md``. It prints figures; it asserts nothing; it picks nothing on the
held-out folds.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "recipes" / "examples"
SETS = {"ddti": ("ddti_tirads.toml", "pretrain_pocus.toml", "ssl_for_ddti.toml"),
        "pocus": ("pocus_lung.toml", "pretrain_ddti.toml", "ssl_for_pocus.toml")}


def lnzoo(*args: str) -> float:
    """Run an lnzoo command; its wall time in seconds (it must succeed)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lnzoo", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"lnzoo {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def run_into(out: Path, *args: str) -> float:
    """``lnzoo run ARGS --out OUT``, continuing where an earlier call stopped: a run finished there is kept (its
    wall time from run.json), an interrupted one resumed (``--resume``; the minutes then count this part only)."""
    from lnzoo.rundir import RunDir

    status = RunDir(out).status() if (out / "run.json").is_file() else None
    if status == "finished":
        return float(json.loads((out / "run.json").read_text()).get("wall_seconds") or 0.0)
    if status is not None:
        print(f"resuming {out} ({status})", file=sys.stderr, flush=True)
        return lnzoo("run", "--resume", str(out))
    return lnzoo("run", *args, "--out", str(out))


def figures(run: Path, scratch: Path | None) -> dict:
    import numpy as np

    from lnzoo.evaluation.cases import task_cases
    from lnzoo.evaluation.stats import auc_difference_test
    from lnzoo.rundir import RunDir

    rd = RunDir(run)
    metrics = rd.metrics()
    main = metrics["main_task"]
    folds = metrics["cross_validation"]["mean_sd"][main]
    meta = rd.tasks_meta()[main]
    out = {"auc": folds["auc"]["mean"], "auc_sd": folds["auc"]["sd"],
           "bacc": folds["balanced_accuracy"]["mean"], "pooled": metrics["cross_validation"]["pooled"][main]["auc"]}
    if scratch is not None:  # the same held-out images in both runs, in the same order (by path)
        def cases(r: Path):  # by the file each row read (a data folder reached through a link is the same folder)
            rows = sorted((x for x in RunDir(r).read_predictions()[1] if x["part"] == "cv"),
                          key=lambda x: str(Path(x["path"]).resolve()))
            return [str(Path(x["path"]).resolve()) for x in rows], task_cases(rows, main, meta["classes"])

        (paths_a, a), (paths_b, b) = cases(run), cases(scratch)
        if paths_a != paths_b or not np.array_equal(a.y, b.y):
            sys.exit(f"{run} and {scratch} hold different held-out images; were they run on the same folds?")
        pos = meta["classes"].index(meta["positive"]) if meta.get("positive") else None
        y = (a.y == pos).astype(int) if pos is not None else a.y
        pa, pb = (a.p[:, pos], b.p[:, pos]) if pos is not None else (a.p, b.p)
        out["delong_p"] = auc_difference_test(y, pa, pb, groups=a.patient.tolist())["p_value"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="ddti,pocus")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ssl")
    ap.add_argument("--set", dest="sets_kv", action="append", default=[])
    args = ap.parse_args()
    extra = [x for kv in args.sets_kv for x in ("--set", kv)]
    rows = []
    for name in args.sets.split(","):
        recipe, supervised, ssl = SETS[name]
        base = args.out / name
        pre = {"supervised": base / "pretrain_supervised", "ssl": base / "pretrain_ssl"}
        pre_s = {}
        for arm, toml in (("supervised", supervised), ("ssl", ssl)):
            pre_s[arm] = run_into(pre[arm], str(EXAMPLES / toml))
        ssl_info = json.loads((pre["ssl"] / "backbone.json").read_text())
        for seed in args.seeds.split(","):
            scratch = base / f"scratch-s{seed}"
            t = {"scratch": run_into(scratch, str(EXAMPLES / recipe), "--set", f"seed={seed}", *extra)}
            folds = ["--set", f"cv.folds_file='{scratch / 'folds.csv'}'"]
            for arm in ("supervised", "ssl"):
                t[arm] = run_into(base / f"{arm}-s{seed}", str(EXAMPLES / recipe), "--set", f"seed={seed}", *folds,
                                  *extra, "--set", f"model.init_from='{pre[arm]}'")
            for arm in ("scratch", "supervised", "ssl"):
                run = base / f"{arm}-s{seed}"
                f = figures(run, None if arm == "scratch" else scratch)
                rows.append({"set": name, "seed": seed, "arm": arm, **f, "minutes": t[arm] / 60,
                             "pretrain_minutes": pre_s.get(arm, 0) / 60})
                print(json.dumps(rows[-1]), flush=True)
        print(f"{name}: SimCLR pretraining {ssl_info['images']} images, {ssl_info['epochs']} epochs, "
              f"{ssl_info['seconds_per_epoch']} s per epoch; k-NN probe {ssl_info['knn_balanced_accuracy']}")
    lines = ["| set | seed | arm | AUC (folds) | balanced accuracy | pooled AUC | DeLong p vs scratch | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.get("delong_p")
        lines.append(f"| {r['set']} | {r['seed']} | {r['arm']} | {r['auc']:.3f} ± {r['auc_sd']:.3f} | {r['bacc']:.3f} | "
                     f"{r['pooled']:.3f} | {'' if p is None else f'{p:.3f}'} | {r['minutes']:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ssl.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
