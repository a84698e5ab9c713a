"""Build the zoo's one shipped entry, ``phantom-stage1-tiny``: a DEMO model trained on lnzoo's synthetic phantom.

    python zoo/build_demo.py     # about a minute of CPU; rewrites zoo/bundles/phantom-stage1-tiny.zip
                                 # and zoo/phantom-stage1-tiny.toml

It trains ``recipes/stage1_aux.toml --quick`` with a test-sized timm model at 64 px (fold 0 of 5), exports the
run as a bundle, packs the bundle into a deterministic zip (sorted members, fixed times) and writes the metafile
from the bundle's own config.json: tasks, classes, the pooled held-out metrics with their 95% CIs and the folds
they came from, the archive's sha256 and size. The model has seen no patient: it is for trying ``lnzoo zoo``,
``predict`` and ``serve`` out, never for a clinical decision.

The two functions below are also how a lab publishes its own model: :func:`pack` a bundle, then
:func:`metafile` (fill in what only you know: the data, its licence, a citation).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ZOO = Path(__file__).resolve().parent
REPO = ZOO.parent
NAME = "phantom-stage1-tiny"
RECIPE = "recipes/stage1_aux.toml"
OVERRIDES = ["model.backbone={name='timm', model_name='test_resnet'}", "data.image_size=64", "train.epochs=8",
             "train.threads=2"]


def pack(bundle: Path, archive: Path) -> Path:
    """Zip a bundle folder, its files at the archive's top, byte-for-byte the same on every build."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for file in sorted(p for p in bundle.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(file.relative_to(bundle).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, file.read_bytes(), compresslevel=9)
    return archive


def metafile(bundle: Path, archive: Path, url: str, **fields) -> dict:
    """A metafile's table for ``archive`` (the packed ``bundle``): what the bundle's config.json says, the
    archive's sha256 and size, and ``fields`` (summary, licence, data, recipe, citation, ...)."""
    sys.path.insert(0, str(REPO))
    from lnzoo.zoo import METRICS, sha256_file

    config = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    cv = config.get("metrics", {}).get("cross_validation", {})
    main = config.get("main_task") or next(iter(config["tasks"]))
    tasks = [main, *[t for t in config["tasks"] if t != main]]
    metrics: dict = {"folds": list(config.get("metrics", {}).get("folds_run") or config.get("folds", [])),
                     "source": "the run's metrics.json (pooled held-out predictions) and evaluation.json (95% "
                               "patient-bootstrap CIs), as the bundle's config.json carries them"}
    for task in tasks:
        m = cv.get(task, {})
        table = {k: m[k] for k in METRICS if isinstance(m.get(k), (int, float))}
        ci = {k: v for k, v in (m.get("ci95") or {}).items() if k in METRICS and None not in v}
        metrics[task] = {**table, **({"ci95": ci} if ci else {})}
    backbone = config.get("backbone") or _backbone(bundle)
    return {"name": fields.pop("name"), "summary": fields.pop("summary"), **fields.pop("head", {}),
            "tasks": tasks, "classes": {t: list(config["tasks"][t]["classes"]) for t in tasks},
            "backbone": backbone, "image_size": int(config.get("preprocessing", {}).get("image_size", 0)) or None,
            "lnzoo_version": config.get("versions", {}).get("lnzoo", "unknown"), **fields,
            "bundle": {"url": url, "sha256": sha256_file(archive), "size": archive.stat().st_size},
            "metrics": metrics}


def _backbone(bundle: Path) -> str:
    sidecar = json.loads(next((bundle / "models").glob("*.json")).read_text(encoding="utf-8"))
    table = sidecar.get("recipe", {}).get("model", {}).get("backbone", {})
    return ":".join(str(table[k]) for k in ("name", "model_name") if k in table) or "unknown"


def main() -> None:
    import tomli_w

    with tempfile.TemporaryDirectory(prefix="lnzoo-zoo-demo-") as tmp:
        run, bundle = Path(tmp) / "run", Path(tmp) / "bundle"
        sets = [x for s in OVERRIDES for x in ("--set", s)]
        lnzoo = [sys.executable, "-m", "lnzoo"]
        subprocess.run([*lnzoo, "run", RECIPE, "--quick", *sets, "--n-boot", "200", "--out", str(run)], cwd=REPO,
                       check=True)
        subprocess.run([*lnzoo, "export", str(run), "--out", str(bundle), "--licence", "Apache-2.0"], cwd=REPO,
                       check=True)
        archive = pack(bundle, ZOO / "bundles" / f"{NAME}.zip")
        meta = metafile(
            bundle, archive, f"bundles/{archive.name}", name=NAME,
            summary="DEMO, synthetic data: stage I malignancy + enlargement, test-sized ResNet at 64 px; for "
                    "trying lnzoo out, never for patients",
            head={"demo": True}, licence="Apache-2.0",
            recipe={"path": RECIPE, "overrides": OVERRIDES, "quick": True},
            data={"name": "synthetic phantom (DEMO)",
                  "description": "lnzoo's synthetic ultrasound phantom (lnzoo synth, seed 0, 160 patients, the "
                                 "seed-style list files): drawn images, no patient data. Metrics are on the "
                                 "phantom's held-out fold and say nothing about real nodes",
                  "licence": "Apache-2.0 (generated by lnzoo)", "patients": 160})
    meta = {k: v for k, v in meta.items() if v is not None}
    head = ("# DEMO ENTRY: trained on lnzoo's synthetic phantom, not on patients. Never use it for a clinical\n"
            "# decision. Written by zoo/build_demo.py; bundle.url is relative to this folder.\n")
    (ZOO / f"{NAME}.toml").write_text(head + tomli_w.dumps(meta), encoding="utf-8")
    print(f"{archive} ({archive.stat().st_size:,} bytes), {ZOO / f'{NAME}.toml'}")


if __name__ == "__main__":
    main()
