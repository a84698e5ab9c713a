"""Self-supervised pretraining of a backbone on unlabelled ultrasound: a recipe whose ``pretrain.method`` is set.

``lnzoo run recipes/pretrain_ssl.toml`` trains the recipe's backbone with a registered pretrainer (SimCLR, BYOL,
DINO: :mod:`lnzoo.pretrain.methods`) on two augmented views of every image (:data:`SSL_VIEWS`: ultrasound-aware
crops, rotation, speckle, gain, depth attenuation, shadows; no horizontal flip unless asked, as laterality can
matter), with the recipe's optimiser, learning-rate schedule, epochs, batch size, seed and device (``[train]``,
``[data]``). It writes, into its run directory:

- ``backbone.safetensors`` + ``backbone.json``: the backbone's weights under lnzoo's model keys, for
  ``model.init_from = "RUN/backbone.safetensors"`` (or the run directory);
- ``pretrain_images.csv``: every image read, with its sha256, for the leakage rule (:mod:`.images`);
- ``history.csv``: per epoch the loss, the learning rate and the k-NN probe's balanced accuracy: the health
  signal, measured on the recipe's labelled data (its main task, patient-grouped folds; :mod:`.probe`);
- ``report.html``: the loss and probe curves.

It resumes like every run (``lnzoo run --resume RUN``: after the last finished epoch, from ``pretrain_state``), and
runs under torchrun (each process a shard of every batch; SimCLR gathers its negatives from all of them).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lnzoo import events
from lnzoo.errors import UsageError
from lnzoo.pretrain.images import (
    IMAGES_CSV,
    RESULT,
    check_usable,
    digest,
    image_listing,
    result_metadata,
    source_images,
    write_image_list,
)
from lnzoo.rundir import RunDir

# the two views' augmentation: keys of data.augment, changed by pretrain.augment
SSL_VIEWS: dict[str, Any] = {"scale": [0.3, 1.0], "rotation": 10.0, "hflip": 0.0, "vflip": 0.0, "color_jitter": 0.4,
                             "blur": 0.3, "speckle": 0.5, "gain": 0.5, "depth_attenuation": 0.4, "shadow": 0.2}
STATE = "pretrain_state"
HISTORY = "history.csv"


def is_pretraining(recipe) -> bool:
    return bool(recipe.config.pretrain.method)


def view_augment(recipe):
    """The augmentation each of the two views is drawn with."""
    from lnzoo.data.dataset import build_augment
    from lnzoo.recipe_schema import SCHEMA

    changes = dict(recipe.config.pretrain.augment or {})
    known = set(SCHEMA["data"]["augment"])
    unknown = sorted(set(changes) - known)
    if unknown:
        raise UsageError(f"pretrain.augment: unknown key(s) {unknown}; the keys of data.augment: {sorted(known)}")
    return build_augment({**SSL_VIEWS, **changes}, recipe.config.data.image_size)


class _TwoViews:
    """Pairs of augmented views of each image, normalised as the model will see images."""

    def __init__(self, paths, cache, augment):
        self.paths, self.cache, self.augment = list(paths), cache, augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch
        from torchvision import tv_tensors

        from lnzoo.data.images import normalise

        img = tv_tensors.Image(torch.from_numpy(self.cache.get(self.paths[i], str(self.paths[i]))).permute(2, 0, 1)
                               .contiguous())
        views = [self.augment([img])[0] if self.augment else img for _ in range(2)]
        return tuple(normalise(v.as_subclass(torch.Tensor), self.cache.pre) for v in views)


def pretrain(recipe, host, out_dir: Path, emit: Callable[[Any], None] | None = None,
             resume: bool = False) -> dict[str, Any]:
    """Pretrain the recipe's backbone into ``out_dir``; return the summary written to metrics.json."""
    from lnzoo.train.distributed import world

    emit = emit or (lambda event: None)
    w = world()
    if w.active and not w.writer:  # a torchrun process beside rank 0: the same steps, its files in a scratch folder
        import shutil
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix=f"lnzoo-rank{w.rank}-"))
        try:
            with RunDir(scratch, writer=True).writing(done=None) as rd:
                return _pretrain(recipe, host, rd, lambda event: None, False)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    with RunDir(out_dir, writer=True).writing(resume=resume) as rd:
        return _pretrain(recipe, host, rd, emit, resume)


def _labelled(recipe, host, emit):
    """The recipe's own data, read and checked once: the probe's labelled images, and the pretraining's images
    when pretrain.data is empty."""
    from lnzoo.data.run_data import load_run_data, recipe_tasks

    return load_run_data(recipe, recipe_tasks(recipe, host),
                         on_phantom=lambda done, total: emit(events.Progress("phantom", done, total)), host=host)


def _images(recipe, data) -> list[Path]:
    """The pretraining images: pretrain.data, else every image of the recipe's data (its phantom by default)."""
    if recipe.config.pretrain.data:
        return source_images(recipe.config.pretrain.data)
    return list(dict.fromkeys(p for s in [*data.pool, *data.test, *data.external]
                              for p in s.views.values() if p is not None))


def _pretrain(recipe, host, rd: RunDir, emit, resume: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    from lnzoo.data.dataset import ImageCache
    from lnzoo.data.images import Preprocessing
    from lnzoo.inference import cpu_threads, pick_device
    from lnzoo.model import build_backbone
    from lnzoo.pretrain.probe import KnnProbe
    from lnzoo.train.distributed import RankShard, per_rank_batch, rank_device, start, world
    from lnzoo.train.resume import load_state, part, restore, save_state
    from lnzoo.train.schedule import make_optimizer, make_scheduler, seed_everything

    cfg, p = recipe.config, recipe.config.pretrain
    t0 = time.perf_counter()
    if not resume:
        rd.write_recipe(recipe.to_toml())
        rd.update_run(recipe_source=str(recipe.source) if recipe.source else None, quick=recipe.quick,
                      overrides=recipe.overrides, kind="pretrain")
    threads, why = cpu_threads(cfg.train.threads)
    torch.set_num_threads(threads)
    emit(events.Note(f"torch CPU threads: {threads} ({why})"))
    seed_everything(cfg.seed)
    augment = view_augment(recipe)
    data = _labelled(recipe, host, emit) if p.probe_every or not p.data else None
    paths = _images(recipe, data)
    w = world()
    batch = per_rank_batch(cfg.data.batch_size, w) if w.active else cfg.data.batch_size
    check_usable(paths, cfg.data.batch_size)
    digests = [digest(q) for q in paths]
    if not resume:
        write_image_list(rd, paths, digests)
    elif (rd / IMAGES_CSV).read_text(encoding="utf-8") != image_listing(paths, digests):
        raise UsageError(f"--resume {rd}: the pretraining images differ from those it started on; start a new run")
    cache = ImageCache(Preprocessing.of(cfg.data))
    for i, q in enumerate(paths):  # decoded once, every bad file named before training
        cache.get(q, str(q))
        if (i + 1) % 50 == 0 or i + 1 == len(paths):
            emit(events.Progress("decode", i + 1, len(paths)))
    device = pick_device(cfg.train.device)
    if w.active:
        device = rank_device(device, start(device))
    backbone = build_backbone(host, cfg.model.backbone)
    try:
        options = dict(p.options or {})
        if w.active and p.method == "simclr":
            options.setdefault("gather_distributed", True)  # the negatives of every process
        method = host.get("pretrainer", p.method).build(backbone, **options)
    except TypeError as exc:
        raise UsageError(f"pretrain.options for {p.method!r}: {exc}") from None
    except ModuleNotFoundError as exc:
        raise UsageError(f"pretrain.method = {p.method!r} needs {exc.name!r}: pip install \"lnzoo[ssl]\"") from None
    method.to(device)
    model = method
    if w.active:
        model = torch.nn.parallel.DistributedDataParallel(method)
    generator = torch.Generator().manual_seed(cfg.seed)
    views = _TwoViews(paths, cache, augment)
    order = torch.utils.data.RandomSampler(views, generator=generator)  # every process draws the same order
    sampler = RankShard(order, w) if w.active else order
    loader = torch.utils.data.DataLoader(views, batch_size=batch, sampler=sampler, drop_last=True,
                                         num_workers=cfg.data.num_workers)
    steps = len(loader)
    optimizer = make_optimizer(method, cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train, steps)
    probe = KnnProbe(recipe, data, cache, p.probe_k) if p.probe_every else None
    history: list[dict[str, Any]] = []
    first = 0
    saved = load_state(rd / STATE) if resume else None
    if saved is not None:
        meta, tensors = saved
        method.load_state_dict(part(tensors, "method"))
        restore(meta, tensors, optimizer, generator)
        scheduler.load_state_dict(meta["scheduler"])
        history, first = meta["history"], meta["epoch"]
        emit(events.Note(f"resuming the pretraining after epoch {first} of {cfg.train.epochs}"))
    emit(events.FoldStarted(0, 1, len(paths), 0, 0, "last"))
    total = cfg.train.epochs * steps
    for epoch in range(first, cfg.train.epochs):
        method.train()
        running, t_epoch = 0.0, time.perf_counter()
        for step, (v0, v1) in enumerate(loader, 1):
            loss = model(v0.to(device), v1.to(device)) if w.active else method.loss(v0.to(device), v1.to(device))
            if not torch.isfinite(loss):
                raise UsageError(f"the pretraining loss became {float(loss)} at epoch {epoch + 1}, step {step}; lower "
                                 "train.lr or set train.grad_clip")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.train.grad_clip)
            optimizer.step()
            scheduler.step()
            method.after_step((epoch * steps + step) / total)
            running += float(loss.detach())
            emit(events.StepEnded(0, epoch, cfg.train.epochs, step, steps, running / step))
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": running / max(steps, 1),
                               "lr": optimizer.param_groups[0]["lr"],
                               "seconds": round(time.perf_counter() - t_epoch, 2)}
        if probe is not None and ((epoch + 1) % p.probe_every == 0 or epoch + 1 == cfg.train.epochs):
            row["knn_balanced_accuracy"] = probe(method.backbone, device)
        history.append(row)
        best = max((r.get("knn_balanced_accuracy", math.nan) for r in history), default=math.nan)
        emit(events.EpochEnded(0, cfg.train.epochs, row, best))
        save_state(rd / STATE, {"method": method.state_dict()}, optimizer, generator,
                   {"epoch": epoch + 1, "history": history, "scheduler": scheduler.state_dict()})
    summary = _write_result(rd, recipe, method.backbone, history, digests, time.perf_counter() - t0,
                            float(np.mean([r["seconds"] for r in history])) if history else math.nan)
    from lnzoo.train.resume import remove_state
    remove_state(rd / STATE)
    emit(events.RunEnded(str(rd.path), summary, str(rd / rd.REPORT)))
    return summary


def _write_result(rd: RunDir, recipe, backbone, history, digests: Sequence[str], seconds: float,
                  epoch_seconds: float) -> dict[str, Any]:
    """The backbone under lnzoo's model keys (what model.init_from loads), with the images it read in its header
    (the leakage rule: :func:`lnzoo.pretrain.images.pretraining_leaks`), its sidecar, history, metrics, report."""
    from safetensors.torch import save

    from lnzoo import __version__
    from lnzoo.files import csv_text, write_atomic

    cfg = recipe.config
    state = {f"backbones.0.{k}": v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    blob = save(state, metadata={**result_metadata(digests, bool(cfg.pretrain.transductive)),
                                 "lnzoo_version": __version__})
    write_atomic(rd / RESULT, blob)
    probes = [r["knn_balanced_accuracy"] for r in history if "knn_balanced_accuracy" in r]
    summary = {"kind": "pretrain", "method": cfg.pretrain.method, "options": dict(cfg.pretrain.options or {}),
               "backbone": dict(cfg.model.backbone), "image_size": cfg.data.image_size, "images": len(digests),
               "epochs": len(history), "transductive": bool(cfg.pretrain.transductive),
               "final_loss": history[-1]["train_loss"] if history else None,
               "knn_balanced_accuracy": {"first": probes[0] if probes else None, "last": probes[-1] if probes else None,
                                         "task": cfg.tasks.main, "k": cfg.pretrain.probe_k},
               "seconds": round(seconds, 1), "seconds_per_epoch": round(epoch_seconds, 2),
               "lnzoo": __version__}
    write_atomic(rd / "backbone.json", json.dumps(summary, indent=2) + "\n")
    keys = list(dict.fromkeys(k for r in history for k in r))
    write_atomic(rd / HISTORY, csv_text(keys, [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}
                                               for r in history], line_end="\n"))
    rd.write_json(rd.METRICS, {"recipe": recipe.name, "pretrain": summary})
    from lnzoo.pretrain.report import write_pretrain_report
    write_pretrain_report(rd, summary, history)
    return summary


def pretrain_summary(rd: RunDir) -> Mapping[str, Any] | None:
    """A pretraining run's summary (its metrics.json), or None for any other run."""
    metrics = rd.read_json(rd.METRICS) if (rd / rd.METRICS).is_file() else {}
    return metrics.get("pretrain")
