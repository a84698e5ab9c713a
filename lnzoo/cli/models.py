"""The commands that use a trained model: ``lnzoo predict``, ``explain``, ``export`` and ``serve``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lnzoo.cli._common import Command, ModifiedOpt, PartialOpt, app, console, err, guarded, plugin_host
from lnzoo.errors import UsageError


@app.command(cls=Command)
@guarded
def explain(checkpoint_or_run: Annotated[Path, typer.Argument(metavar="RUN_DIR|BUNDLE|CHECKPOINT", help="A run directory or bundle "
                                                                  "(called as lnzoo predict calls it: every fold model averaged; "
                                                                  "mapped with its first fold model) or a .safetensors checkpoint.")],
            images: Annotated[Optional[list[Path]], typer.Argument(metavar="IMAGE", help="Images; for a full+crop model the crop "
                                                               "is found through the -crop mirror folder.")] = None,
            out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for the overlay PNGs and explain.csv.")] = Path("explain"),
            manifest: Annotated[Optional[Path], typer.Option("--manifest", metavar="CSV", help="Rows to explain instead of "
                                                             "IMAGEs: the model's view columns and its other inputs' columns (covariates, "
                                                             "report text, mask).")] = None,
            task: Annotated[Optional[list[str]], typer.Option("--task", metavar="TASK", help="Explain only this head (repeatable).")] = None,
            method: Annotated[str, typer.Option("--method", metavar="gradcam|gradcam++", help="gradcam or gradcam++")] = "gradcam",
            class_: Annotated[Optional[str], typer.Option("--class", metavar="CLASS", help="Class to map (default: the class "
                                                          "called, at the model's stored operating point).")] = None,
            allow_partial: PartialOpt = False, allow_modified: ModifiedOpt = False) -> None:
    """Grad-CAM / Grad-CAM++ overlays of the class each image is called (as lnzoo predict and lnzoo serve call it),
    per head and per view, captioned with the call and its threshold; for a model of several inputs also which
    input mattered (occlusion.csv: the probability without each view, report, mask or covariates).

    Example: lnzoo explain runs/RUN node1.png node2.png --out cams --method gradcam++
    """
    from lnzoo.explain import METHODS, explain as run_explain
    from lnzoo.predict import Ensemble

    if method not in METHODS:
        raise UsageError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if bool(images) == bool(manifest):
        raise UsageError("give IMAGEs or --manifest CSV (one of them)")
    source: Any = Ensemble([checkpoint_or_run], plugin_host())
    if manifest:
        from lnzoo.predict import manifest_samples
        images = manifest_samples(source, manifest)
    pngs = run_explain(source, images, out, tasks=task or None, method=method, class_index=class_, host=plugin_host())
    console.print(f"{len(pngs)} overlay(s) written to {out} (index: {out / 'explain.csv'})")
    if (out / "occlusion.csv").is_file():
        console.print(f"which input mattered: {out / 'occlusion.csv'} (the probability without each input)")


@app.command(cls=Command)
@guarded
def predict(images: Annotated[Optional[list[Path]], typer.Argument(metavar="IMAGE", help="Images to classify (for a full+crop model, "
                                                              "the crop is found in the -crop mirror folder).")] = None,
            manifest: Annotated[Optional[Path], typer.Option("--manifest", metavar="ROWS.csv", help="CSV of rows to classify instead of "
                                "image paths: the model's view columns ('path' for full/roi), and for a 'roi' model "
                                "the box or mask column it was trained with; covariate columns are used too.")] = None,
            model: Annotated[Optional[list[Path]], typer.Option("--model", "-m", metavar="RUN_DIR|CKPT", help="Run directory (its fold "
                             "models are averaged) or .safetensors checkpoint; repeat to ensemble several.")] = None,
            cascade: Annotated[Optional[list[Path]], typer.Option("--cascade", metavar="RUN_DIR", help="Stage models in order (give "
                               "--cascade per stage, e.g. stage I, II, III); each stage's images called its "
                               "task's passes_on class go on to the next.")] = None,
            passes_on: Annotated[Optional[list[str]], typer.Option("--passes-on", metavar="CLASS", help="With --cascade: the class "
                                 "of each stage but the last that goes on, in stage order; '-' or nothing: the "
                                 "stage task definition's passes_on.")] = None,
            out: Annotated[Path, typer.Option("--out", metavar="FILE.csv", help="CSV to write (never inside a run "
                                              "directory).")] = Path("predictions.csv"),
            engine: Annotated[str, typer.Option("--engine", metavar="torch|onnx", help="Run the models with torch, "
                                                "or with ONNX Runtime (a bundle exported with --onnx).")] = "torch",
            frame: Annotated[int, typer.Option("--frame", metavar="N", help="DICOM cine loops: the frame to read "
                                               "(0, the first, by default); cut to the ultrasound region as lnzoo "
                                               "ingest does.")] = 0,
            allow_partial: PartialOpt = False, allow_modified: ModifiedOpt = False) -> None:
    """Predict with one model, an ensemble (averaged probabilities) or the three-stage cascade.

    Example: lnzoo predict --model runs/RUN node1.png node2.png --out calls.csv
    """
    from lnzoo.predict import check_out, predict_rows, run_cascade, write_rows

    check_out(out)
    if bool(model) == bool(cascade):
        raise UsageError("give either --model (one or more) or --cascade S1 --cascade S2 --cascade S3")
    if bool(images) == bool(manifest):
        raise UsageError("give either image paths or --manifest rows.csv")
    if manifest:
        if cascade:
            raise UsageError("--manifest works with --model; the cascade takes image paths")
        from lnzoo.predict import manifest_samples
        items = manifest_samples(model, manifest, plugin_host())
    else:
        missing = [str(p) for p in images if not p.is_file()]
        if missing:
            raise UsageError(f"image(s) not found: {', '.join(missing[:10])}")
        items = images
    if engine != "torch" and cascade:
        raise UsageError("--engine onnx works with --model; the cascade runs with torch")
    from lnzoo.ingest.dicom import reading_frame

    with reading_frame(frame):
        rows = run_cascade(cascade, items, plugin_host(), passes_on) if cascade else \
            predict_rows(model, items, plugin_host(), engine)
    write_rows(rows, out)
    table = Table(title=f"{len(rows)} image(s) -> {out}", title_justify="left")
    table.add_column("image")
    table.add_column("path" if cascade else "prediction")
    for r in rows[:30]:
        table.add_row(Path(r["image"]).name, r["path"] if cascade else
                      ", ".join(f"{k[:-5]}: {v}" for k, v in r.items() if k.endswith("_pred")))
    console.print(table)


@app.command(cls=Command, name="export")
@guarded
def export_cmd(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run directory.")],
               out: Annotated[Path, typer.Option("--out", metavar="MODEL_DIR", help="New or empty folder for the "
                                                 "bundle.")],
               fold: Annotated[Optional[list[int]], typer.Option("--fold", metavar="K", help="Export only this fold's "
                                                                 "model (repeatable; default: every fold).")] = None,
               onnx: Annotated[bool, typer.Option("--onnx", metavar="", help="Also write each model as ONNX, "
                                                  "checked against torch.")] = False,
               licence: Annotated[Optional[str], typer.Option("--licence", metavar="TEXT", help="Licence for the "
                                                              "model card, e.g. 'CC-BY-NC-4.0'.")] = None,
               allow_modified: ModifiedOpt = False) -> None:
    """Write a portable model bundle: weights, config.json (tasks, views, preprocessing, calibration,
    thresholds, versions, plugins), MODEL_CARD.md, and with --onnx one model.onnx per fold.

    Example: lnzoo export runs/RUN --out models/stage1 --onnx
    """
    from lnzoo.export import export_bundle

    path = export_bundle(run_dir, out, fold, onnx=onnx, licence=licence, host=plugin_host(),
                         say=lambda text: console.print(escape(text), highlight=False))
    console.print(f"bundle written: {escape(str(path))} (lnzoo predict --model, explain and serve take it; "
                  f"see {escape(str(path / 'MODEL_CARD.md'))})", highlight=False)


@app.command(cls=Command)
@guarded
def serve(models: Annotated[Optional[list[Path]], typer.Argument(metavar="MODEL", help="Bundle (lnzoo export), run "
                                                                  "directory or checkpoint; several are averaged.")] = None,
          cascade: Annotated[Optional[list[Path]], typer.Option("--cascade", metavar="MODEL", help="Stage models in "
                             "order (stage I, II, III), instead of MODEL: the page shows the path taken.")] = None,
          host: Annotated[str, typer.Option("--host", metavar="ADDR", help="Address to listen on (this machine only "
                                            "by default).")] = "127.0.0.1",
          port: Annotated[int, typer.Option("--port", metavar="N", help="Port to listen on.")] = 8000,
          max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", metavar="MB", help="Largest accepted "
                                                       "upload per file.")] = 20.0,
          max_side: Annotated[int, typer.Option("--max-side", metavar="PX", help="Largest accepted image side in "
                                                "pixels.")] = 8000,
          engine: Annotated[str, typer.Option("--engine", metavar="torch|onnx", help="Run the models with torch, or "
                                              "with ONNX Runtime (bundles exported with --onnx).")] = "torch",
          allow_modified: ModifiedOpt = False) -> None:
    """Serve a model as a web page and a JSON API (FastAPI + uvicorn): upload a node's images, get every
    task's calibrated probabilities, the call at the stored threshold and Grad-CAM overlays.

    Example: lnzoo serve models/stage1 --port 8000
    """
    try:
        from lnzoo.serve import run_server
    except ImportError as exc:
        raise UsageError(f"lnzoo serve needs the serving extra: pip install \"lnzoo[serve]\" ({exc})") from None
    if bool(models) == bool(cascade):
        raise UsageError("give either MODEL (one or more) or --cascade S1 --cascade S2 [--cascade S3]")
    run_server(list(models or []), list(cascade or []), host=host, port=port, max_upload_mb=max_upload_mb,
               max_side=max_side, plugin_host=plugin_host(), console=err, engine=engine)
