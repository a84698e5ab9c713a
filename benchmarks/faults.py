"""Fault injection: every failure case of the crash-safety issue against a tiny recipe, one row each
(prints a table; asserts nothing).

For each case: the exit code, the first line lnzoo printed about it, whether the message names what is
wrong ("named": an lnzoo error, no traceback) and whether anything was lost or left looking complete
("nothing lost": the files that were there are unchanged, and no unfinished run reads as finished).

The last section holds the cases that gave a wrong answer with exit 0 before (issue 26); its "no wrong
answer" column says whether what lnzoo answered (if anything) was right.

Usage: python benchmarks/faults.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = str(REPO / "recipes" / "stage1_aux.toml")
TINY = ["model.backbone={name='timm', model_name='test_resnet'}", "data.image_size=48", "train.epochs=2",
        "data.phantom.patients=24", "cv.folds=3", "data.batch_size=8", "train.threads=2"]


def lnzoo(*args: str, cwd: Path | None = None, env: dict | None = None, pythonpath: Path | None = None,
          timeout: float = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    if pythonpath:
        full["PYTHONPATH"] = os.pathsep.join([str(pythonpath), full.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "lnzoo", *args], cwd=cwd or REPO, env=full, capture_output=True,
                          text=True, timeout=timeout)


def sets(*extra: str) -> list[str]:
    return [x for s in [*TINY, *extra] for x in ("--set", s)]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def status(run: Path) -> str | None:
    from lnzoo.rundir import RunDir
    return RunDir(run).status()


class Table:
    def __init__(self):
        self.rows: list[tuple[str, int, str, bool, bool, bool]] = []

    def add(self, case: str, done: subprocess.CompletedProcess, lost: bool, expect_ok: bool = False,
            right: bool | None = None) -> None:
        """``right``: whether the answer given is right (a refusal gives none, so it is never wrong): the case's
        own check where it has one, else True for a refusal and ``expect_ok`` for a success."""
        text = (done.stderr or done.stdout).strip()
        all_lines = text.splitlines()
        keys = ("error", "interrupted") if done.returncode != 0 or not expect_ok else ("warning",)
        at = next((i for i, ln in enumerate(all_lines) if ln.startswith(keys)), None)
        first = all_lines[at] if at is not None else (all_lines or [""])[-1]
        if at is not None and first.endswith(":") and at + 1 < len(all_lines):  # "N problem(s):" + the first
            first += " " + all_lines[at + 1].strip()
        first = first[:170]
        named = "Traceback" not in text and ((done.returncode != 0 and first.startswith(("error", "interrupted")))
                                             or (expect_ok and done.returncode == 0))
        right = (done.returncode != 0 or expect_ok) if right is None else right
        self.rows.append((case, done.returncode, first, named, not lost, right))
        print(f"{case}: exit {done.returncode}, {'named' if named else 'NOT NAMED'}, "
              f"{'nothing lost' if not lost else 'LOST OR PARTIAL'}, {'right' if right else 'WRONG ANSWER'}",
              file=sys.stderr, flush=True)

    def print(self) -> None:
        print("| case | exit | message | named | nothing lost | no wrong answer |")
        print("|---|---|---|---|---|---|")
        for case, rc, msg, named, safe, right in self.rows:
            msg = msg.replace("|", "\\|")
            print(f"| {case} | {rc} | {msg} | {'named' if named else '**no**'} | "
                  f"{'nothing lost' if safe else '**lost**'} | {'yes' if right else '**wrong**'} |")


def first_image(run: Path) -> str:
    with (run / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        return next(csv.DictReader(fh))["path"]


def manifest(work: Path, edit=None, name: str = "nodes.csv") -> Path:
    from lnzoo.data.phantom import ensure_phantom

    src = ensure_phantom(patients=24, seed=0)
    with src.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key, value in row.items():
            if value.startswith("images/"):
                row[key] = str(src.parent / value)
    if edit:
        rows = edit(rows)
    out = work / name
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="lnzoo-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LNZOO_CACHE", str(work / "cache"))
    t = Table()

    base = work / "base"
    print("training the tiny base run ...", file=sys.stderr, flush=True)
    done = lnzoo("run", RECIPE, "--quick", *sets("cv.run_folds=[0, 1]"), "--n-boot", "20", "--out", str(base))
    assert done.returncode == 0, done.stderr
    image = first_image(base)

    def copy(name: str) -> Path:
        dst = work / name
        shutil.copytree(base, dst)
        return dst

    # -- silently wrong before -----------------------------------------------------------------------------------
    run = copy("swapped")
    side = run / "fold0" / "best.json"
    meta = json.loads(side.read_text())
    meta["tasks"]["malignancy"]["classes"].reverse()
    side.write_text(json.dumps(meta))
    out = work / "swapped.csv"
    t.add("class order swapped in best.json, then predict", lnzoo("predict", "--model", str(side.with_suffix(
        ".safetensors")), image, "--out", str(out)), lost=out.exists())

    run = copy("cwd")
    before = digest(run)
    t.add("cd RUN_DIR && lnzoo predict --model . image", lnzoo("predict", "--model", ".", image, cwd=run),
          lost=digest(run) != before)

    typo = manifest(work, lambda rows: [*rows[:2], {**rows[2], "age": "4O"}, {**rows[3], "age": "NaN"}, *rows[4:]])
    t.add("'4O' and NaN in the numeric covariate 'age'", lnzoo("validate", RECIPE, "--quick", "--set",
          "data.covariates=['age']", "--set", f"data.train='{typo.as_posix()}'"), lost=False)

    t.add("train.lr = 0", lnzoo("run", RECIPE, "--quick", *sets("train.lr=0"), "--out", str(work / "lr0")),
          lost=(work / "lr0").exists())

    run = copy("halfrun")
    (run / "fold1" / "last.safetensors").unlink()
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "failed", "error": "OSError: No space left"}))
    t.add("a run that failed mid-way (disk full), then predict --model", lnzoo(
        "predict", "--model", str(run), image, "--out", str(work / "half.csv")), lost=(work / "half.csv").exists())

    busy = work / "busy"
    holder = subprocess.Popen([sys.executable, "-m", "lnzoo", "run", RECIPE, "--quick", *sets("train.epochs=30"),
                               "--out", str(busy)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (busy / "run.json").exists():
        time.sleep(0.1)
    recipe_before = (busy / "recipe.toml").read_bytes() if (busy / "recipe.toml").exists() else None
    second = lnzoo("run", RECIPE, "--quick", *sets(), "--out", str(busy))
    changed = (busy / "recipe.toml").read_bytes() != recipe_before if recipe_before else False
    holder.send_signal(signal.SIGINT)
    holder.wait()
    t.add("a second run into a folder being written", second, lost=changed)

    mine = work / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text('{"auc": 0.91}')
    (mine / "predictions.csv").write_text("path,p\nx.png,0.5\n")
    before = digest(mine)
    t.add("--out into a folder holding a user's metrics.json", lnzoo("run", RECIPE, "--quick", *sets(), "--out",
          str(mine)), lost=digest(mine) != before)

    before = digest(busy)
    t.add("a plain rerun into a killed run's folder", lnzoo("run", RECIPE, "--quick", *sets(), "--out", str(busy)),
          lost=digest(busy) != before)

    site = work / "site"
    _fake_distribution(site, "acme-override", "acme_mod", textwrap.dedent("""
        import lnzoo, torch

        @lnzoo.hookimpl
        def lnzoo_register_heads(register):
            register("linear", lambda in_features, num_classes: torch.nn.Linear(in_features, num_classes),
                     "a replacement", override=True)
        """))
    done = lnzoo("plugins", pythonpath=site)
    t.add("a plugin overrides the built-in 'linear' head", subprocess.CompletedProcess(done.args, done.returncode,
          done.stdout, "\n".join(ln for ln in done.stderr.splitlines() if ln.startswith("warning"))), lost=False,
          expect_ok="replaces" in done.stderr)

    # -- crashes and raw tracebacks before ---------------------------------------------------------------------
    done = lnzoo("run", RECIPE, "--quick", *sets("train.monitor='loss'", "cv.run_folds=[0]"), "--n-boot", "0",
                 "--out", str(work / "loss"))
    epochs = [ln for ln in done.stderr.splitlines() if " epoch " in ln]
    t.add("train.monitor = \"loss\"", subprocess.CompletedProcess(done.args, done.returncode, "", epochs[-1] if
          epochs else done.stderr), lost=status(work / "loss") != "finished", expect_ok=done.returncode == 0)
    nan = work / "nan"
    t.add("NaN loss (train.lr = 1e6)", lnzoo("run", RECIPE, "--quick", *sets("train.lr=1e6", "cv.run_folds=[0]"),
          "--out", str(nan)), lost=status(nan) == "finished")

    from PIL import Image
    bomb = work / "bomb.png"
    Image.new("1", (14_000, 14_000)).save(bomb)
    bombs = manifest(work, lambda rows: [{**rows[0], "path": str(bomb)}, *rows[1:]], "bomb.csv")
    t.add("a 196 Mpx PNG (decompression bomb)", lnzoo("validate", RECIPE, "--quick", "--set",
          f"data.train='{bombs.as_posix()}'"), lost=False)

    run = copy("truncated")
    weights = run / "fold0" / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    t.add("a truncated best.safetensors, then predict", lnzoo("predict", "--model", str(weights), image, "--out",
          str(work / "t.csv")), lost=(work / "t.csv").exists())

    run = copy("classes")
    side = run / "fold0" / "best.json"
    meta = json.loads(side.read_text())
    meta["tasks"]["malignancy"]["classes"].append("uncertain")
    side.write_text(json.dumps(meta))
    t.add("a sidecar with the wrong class count", lnzoo("predict", "--model", str(side.with_suffix(".safetensors")),
          image, "--out", str(work / "k.csv")), lost=(work / "k.csv").exists())

    blocker = work / "a-file"
    blocker.write_text("x")
    t.add("an output folder that cannot be written", lnzoo("run", RECIPE, "--quick", *sets(), "--out",
          str(blocker / "run")), lost=False)

    t.add("an invalid data.patient_regex", lnzoo("validate", RECIPE, "--quick", "--set", "data.patient_regex='(['"),
          lost=False)

    site2 = work / "site2"
    _fake_distribution(site2, "exiting-plugin", "bye_mod", "import sys\nsys.exit(3)\n")
    done = lnzoo("--help", pythonpath=site2)
    t.add("a plugin that calls sys.exit(3) at import, then --help", subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout, done.stderr), lost=False, expect_ok="sys.exit(3)" in done.stderr)

    ctrl = work / "ctrl-c"
    proc = subprocess.Popen([sys.executable, "-m", "lnzoo", "run", RECIPE, "--quick", *sets("train.epochs=4"),
                             "--out", str(ctrl)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (ctrl / "fold0" / "resume.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate()
    t.add("Ctrl-C mid-fold", subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
          lost=status(ctrl) != "interrupted" or not (ctrl / "fold0" / "resume.safetensors").exists())

    killed = work / "killed"
    whole = lnzoo("run", RECIPE, "--quick", *sets("train.epochs=3", "cv.run_folds=[0, 1]"), "--n-boot", "20",
                  "--out", str(work / "whole"))
    proc = subprocess.Popen([sys.executable, "-m", "lnzoo", "run", RECIPE, "--quick",
                             *sets("train.epochs=3", "cv.run_folds=[0, 1]"), "--n-boot", "20", "--out", str(killed)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (killed / "fold1" / "resume.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = lnzoo("run", "--resume", str(killed), "--n-boot", "20")
    same = whole.returncode == 0 and all((killed / n).read_bytes() == (work / "whole" / n).read_bytes()
                                         for n in ("metrics.json", "predictions.csv"))
    t.add("kill -9 mid-fold, then run --resume (equal to the uninterrupted run?)", subprocess.CompletedProcess(
        resumed.args, resumed.returncode, resumed.stdout, "resumed; metrics.json and predictions.csv "
        f"{'identical to' if same else 'DIFFER from'} the uninterrupted run's"), lost=not same, expect_ok=same)

    # -- validate misses what run refuses, before ----------------------------------------------------------------
    def leak(rows):
        return rows[:-2]
    train = manifest(work, leak, "leak-train.csv")
    test = manifest(work, lambda rows: [{**r, "patient": rows[0]["patient"]} for r in rows[-2:]], "leak-test.csv")
    t.add("validate: a patient in the CV data and data.test", lnzoo("validate", RECIPE, "--quick", "--set",
          f"data.train='{train.as_posix()}'", "--set", f"data.test='{test.as_posix()}'"), lost=False)
    jpeg = work / "truncated.jpg"
    with Image.open(image) as img:
        img.convert("RGB").save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    broken = manifest(work, lambda rows: [{**rows[0], "path": str(jpeg)}, *rows[1:]], "jpeg.csv")
    t.add("validate: a truncated JPEG", lnzoo("validate", RECIPE, "--quick", "--set",
          f"data.train='{broken.as_posix()}'"), lost=False)
    t.add("validate: an unknown timm model_name", lnzoo("validate", RECIPE, "--quick", "--set",
          "model.backbone={name='timm', model_name='resnet5O'}"), lost=False)
    t.add("validate: a missing covariate column", lnzoo("validate", RECIPE, "--quick", "--set",
          "data.covariates=['agee']"), lost=False)
    nopatient = manifest(work, lambda rows: [{k: v for k, v in r.items() if k != "patient"} for r in rows],
                         "nopatient.csv")
    t.add("validate: a manifest without a patient column", lnzoo("validate", RECIPE, "--quick", "--set",
          f"data.train='{nopatient.as_posix()}'"), lost=False)
    gbk = work / "main.txt"
    gbk.write_bytes(f"{image},良性\n".encode("gbk"))
    t.add("validate: a GBK-encoded list file", lnzoo("validate", RECIPE, "--quick", "--set",
          f"data.train=['{gbk.as_posix()}']", "--set", "data.patient_regex='^(P\\d+)_'"), lost=False)

    silent_wrong_answers(t, work, copy, image)
    t.print()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def silent_wrong_answers(t: Table, work: Path, copy, image: str) -> None:
    """The cases that gave a wrong answer with exit 0 before (issue 26), and their neighbours."""
    from safetensors.torch import load_file, save_file

    # -- 1. every artefact bound to what wrote it
    run = copy("resaved")
    weights = run / "fold0" / "best.safetensors"
    save_file(load_file(weights), weights)  # as a float16 conversion script would: lnzoo's header gone
    side = weights.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta.pop("weights_sha256"), meta.pop("definition_sha256")
    meta["tasks"]["malignancy"]["classes"].reverse()
    side.write_text(json.dumps(meta))
    for extra in ([], ["--allow-modified"]):  # with it, the checkpoint's own binding is gone: its classes are used
        out = work / f"resaved{len(extra)}.csv"
        done = lnzoo("predict", "--model", str(weights), image, "--out", str(out), *extra)
        said = extra and out.exists() and all(r.get("warning") for r in csv.DictReader(out.open(encoding="utf-8")))
        t.add(f"weights re-saved plainly, checksums dropped, classes swapped; predict {' '.join(extra)}".strip(),
              done, lost=False, expect_ok=bool(extra), right=done.returncode != 0 or bool(said))

    bundle = work / "bundle"
    lnzoo("export", str(work / "base"), "--out", str(bundle))
    config = json.loads((bundle / "config.json").read_text())
    config["thresholds"]["malignancy"]["value"] = 0.01
    (bundle / "config.json").write_text(json.dumps(config))
    t.add("a bundle's stored threshold edited; predict", lnzoo("predict", "--model", str(bundle), image, "--out",
          str(work / "thr.csv")), lost=(work / "thr.csv").exists())
    config["plugins"] = ["acme"]
    (bundle / "config.json").write_text(json.dumps(config))
    t.add("a bundle's plugin list in another shape; predict --allow-modified", lnzoo(
        "predict", "--model", str(bundle), image, "--out", str(work / "pl.csv"), "--allow-modified"),
        lost=(work / "pl.csv").exists())

    run = copy("flipped")
    rows = list(csv.DictReader((run / "predictions.csv").open(encoding="utf-8")))
    swap = {"benign": "malignant", "malignant": "benign"}
    for r in rows:
        r["malignancy_true"] = swap.get(r["malignancy_true"], r["malignancy_true"])
    with (run / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    before = digest(run)
    for args in (["report", str(run), "--n-boot", "0"], ["evaluate", str(run)],
                 ["export", str(run), "--out", str(work / "flipped-bundle")]):
        t.add(f"labels flipped in predictions.csv; {args[0]}", lnzoo(*args),
              lost=digest(run) != before or (work / "flipped-bundle").exists())

    run = copy("truncated-export")
    weights = run / "fold1" / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    t.add("a truncated checkpoint; export", lnzoo("export", str(run), "--out", str(work / "tb")),
          lost=(work / "tb").exists())
    run = copy("foreign-fold")
    shutil.copytree(run / "fold1", run / "fold2")
    t.add("a fold folder copied in from elsewhere; predict", lnzoo("predict", "--model", str(run), image, "--out",
          str(work / "ff.csv")), lost=(work / "ff.csv").exists())
    run = copy("no-manifest")
    (run / "integrity.json").unlink()
    t.add("integrity.json deleted; report", lnzoo("report", str(run), "--n-boot", "0"), lost=False)

    # -- 2. a model never runs with another component
    site = work / "site-linear"
    _fake_distribution(site, "acme-linear", "acme_linear", textwrap.dedent("""
        import lnzoo, torch

        class Flipped(torch.nn.Linear):
            def forward(self, x):
                return -super().forward(x)

        @lnzoo.hookimpl
        def lnzoo_register_heads(register):
            register("linear", lambda in_features, num_classes: Flipped(in_features, num_classes), override=True)
        """))
    plugin_run = work / "plugin-run"
    done = lnzoo("run", RECIPE, "--quick", *sets("cv.run_folds=[0]"), "--n-boot", "0", "--out", str(plugin_run),
                 pythonpath=site)
    t.add("trained with a plugin's 'linear' head, predict without the plugin", lnzoo(
        "predict", "--model", str(plugin_run), image, "--out", str(work / "pr.csv")) if done.returncode == 0 else done,
        lost=(work / "pr.csv").exists())
    t.add("trained with lnzoo's 'linear' head, predict with a plugin replacing it", lnzoo(
        "predict", "--model", str(work / "base"), image, "--out", str(work / "pr2.csv"), pythonpath=site),
        lost=(work / "pr2.csv").exists())
    run = copy("future")
    side = run / "fold0" / "best.json"
    meta = json.loads(side.read_text())
    meta["versions"]["lnzoo"] = "3.0.0"
    side.write_text(json.dumps(meta))
    t.add("a checkpoint written by lnzoo 3.0.0; predict --allow-modified", lnzoo(
        "predict", "--model", str(side.with_suffix(".safetensors")), image, "--out", str(work / "fu.csv"),
        "--allow-modified"), lost=(work / "fu.csv").exists())

    # -- 3. a column's type by rule
    comma = manifest(work, lambda rows: [{**r, "age": f"{40 + i},5"} for i, r in enumerate(rows)], "comma.csv")
    t.add("decimal commas in a comma-delimited covariate column; validate", lnzoo(
        "validate", RECIPE, "--quick", "--set", "data.covariates=['age']", "--set",
        f"data.train='{comma.as_posix()}'"), lost=False)
    units = manifest(work, lambda rows: [{**r, "age": f"{40 + i} y"} for i, r in enumerate(rows)], "units.csv")
    t.add("units on a covariate's values ('41 y'); validate", lnzoo(
        "validate", RECIPE, "--quick", "--set", "data.covariates=['age']", "--set",
        f"data.train='{units.as_posix()}'"), lost=False)

    # -- 4. every problem at once
    leak_train = manifest(work, lambda rows: rows[:-2], "four-train.csv")
    leak_test = manifest(work, lambda rows: [{**r, "patient": rows[0]["patient"]} for r in rows[-2:]], "four-test.csv")
    done = lnzoo("validate", RECIPE, "--quick", "--set", f"data.train='{leak_train.as_posix()}'", "--set",
                 f"data.test='{leak_test.as_posix()}'", "--set", "model.backbone={name='timm', model_name='resnet5O'}",
                 "--set", "data.covariates=['agee']")
    found = [w for w in ("agee", "resnet5O", rows_patient(leak_test)) if w in done.stderr]
    t.add("validate with three problems (a patient leak, an unknown timm model, a covariate typo): all named?",
          done, lost=False, right=len(found) == 3)


def rows_patient(path: Path) -> str:
    with path.open(newline="", encoding="utf-8") as fh:
        return next(csv.DictReader(fh))["patient"]


def _fake_distribution(site: Path, dist: str, module: str, code: str) -> None:
    """A folder that, on PYTHONPATH, is an installed distribution with one lnzoo entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(code, encoding="utf-8")
    info = site / f"{dist.replace('-', '_')}-1.2.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[lnzoo]\nplugin = {module}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
