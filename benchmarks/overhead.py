"""What lnzoo costs on top of plain torch: its fit loop, an auxiliary head, its predict call, the time its
training waits for data, and the start of its CLI.

    python benchmarks/overhead.py [--sizes 128 224] [--model resnet18] [--rounds 5] [--batch-size 32]
                                  [--images N] [--device auto|cpu|cuda] [--workers 0 2] [--profile]
    python benchmarks/overhead.py --quick          # smoke run: timm's test_resnet at 64 px, 2 rounds
    python benchmarks/overhead.py --ddp            # also 1 against 2 torchrun processes (gloo on the CPU)
    python benchmarks/overhead.py --predict-only   # only the predict rows (and the CLI start)

Everything runs in this one process on the built-in phantom (``data.phantom.patients``, 160 by default),
decoded and resized into memory first (lnzoo's own ImageCache, as ``lnzoo run`` fills it), with the recipe's
augmentation off (every ``data.augment`` probability 0, crop scale [1, 1]) so that both sides of a comparison do the same work. The model is
``model.backbone={name='timm', model_name=MODEL, pretrained=false}`` (ResNet-18 by default) at each
``--sizes`` px. After one warm-up epoch per side (so every timed epoch is
epoch >= 2: workers started, kernels chosen), the sides are timed in ``--rounds`` rounds, A B C ... then
... C B A, so a drift in this machine's speed touches all alike; each figure is the total over the rounds.
On CUDA the device is synchronised before every timer is read.

Rows:

* **fit step**: lnzoo's real fit loop, ``Trainer._train_epoch`` on the ``Fit`` that ``Trainer.fit`` itself
  builds (caught as ``fit`` hands it to its first epoch: its DataLoader over NodeDataset, MultiTaskLoss,
  GradScaler, EMA when the recipe has one, the per-step scheduler step, and the StepEnded events rendered by
  ``lnzoo run``'s own RunView as live progress bars), for the recipe's main task alone, against a bare
  hand-written loop: the timm model of the same architecture + one nn.Linear, CrossEntropyLoss, the recipe's
  optimizer class and lr, the same images as one uint8 tensor in memory, each batch moved to the device and
  normalised there, in the autocast dtype and memory layout lnzoo chose (``train.amp``, ``channels_last``:
  auto), a loss read back once per epoch.
  lnzoo runs with deterministic algorithms as ``lnzoo run`` sets them (``lnzoo.train.schedule.set_deterministic``)
  (``--no-deterministic`` to see what that costs; ``--compile`` compiles both sides: ``train.compile`` and
  ``torch.compile``). images/s each, and lnzoo / bare, and the range of the per-round ratio. Target >= 0.97x.
* **aux head**: the recipe as it is (stage I: malignancy + enlargement, ``tasks.task_weights``) against the
  same recipe with ``tasks.task_weights`` naming the main task only, both through lnzoo's loop on the same
  images (every one with a main label): step time and the difference. Target <= 3%.
* **predict**: ``lnzoo.predict.predict_rows`` (what ``lnzoo predict --model RUN IMAGE...`` calls: it loads
  the run's fold model, decodes, predicts, calibrates and builds the rows) on the image files, against a raw
  pass that decodes the same files with PIL, resizes (bilinear, as lnzoo's squash), normalises and runs a
  timm model of the same architecture with one linear head per task, in batches of 32 (the batch
  ``Ensemble.predict_both`` uses), softmax to numpy. The model is a one-epoch, one-fold run of the recipe made
  with ``lnzoo.pipeline.fit_folds`` first. The raw pass runs on ``--device``; when lnzoo's predictor sat on
  another device (it loads checkpoints on the CPU), a second raw figure on that device shows how much of the
  gap is the device. images/s, and lnzoo / raw. Target >= 0.9x.
* **data wait**: the recipe through lnzoo's loop with Fit.loader wrapped: the time from the end of one step
  to the arrival of the next batch, as a share of the epoch's time, at each ``--workers`` value of
  ``data.num_workers``. On the CPU that is the wall time inside ``next``; on CUDA, where the CPU runs ahead,
  the GPU's idle gap between the last kernel of one step and the first of the next that waited for the
  batch (CUDA events, no extra host sync). Target <= 5%.
* **--help**: wall time of ``sys.executable -m lnzoo --help`` in a subprocess, best and median of 5. Target
  < 0.5 s (judged on the median).

``--profile`` also runs one epoch of the lnzoo fit step and one of the bare loop under ``torch.profiler`` and
prints each one's top 15 ops by self CPU time (and by self CUDA time on CUDA), to explain a missed target.

Prints a table with each target and met/missed; asserts nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lnzoo.train.schedule import set_deterministic

ROOT = Path(__file__).resolve().parents[1]
PREDICT_BATCH = 32  # lnzoo.predict.Ensemble.predict_both predicts in batches of 32
# Every augmentation off: lnzoo then feeds the decoded images as they are (build_augment returns None).
AUGMENT_OFF = ["data.augment.rotation=0.0", "data.augment.hflip=0.0", "data.augment.vflip=0.0",
               "data.augment.color_jitter=0.0", "data.augment.blur=0.0", "data.augment.scale=[1.0, 1.0]",
               "data.augment.speckle=0.0", "data.augment.gain=0.0", "data.augment.depth_attenuation=0.0",
               "data.augment.shadow=0.0"]


@dataclass
class Timing:
    seconds: float
    images: int
    wait: float = 0.0  # seconds spent waiting for the loader (data-wait sides only)


def total(timings: Sequence[Timing]) -> Timing:
    return Timing(sum(t.seconds for t in timings), sum(t.images for t in timings), sum(t.wait for t in timings))


def ips(t: Timing) -> float:
    return t.images / t.seconds if t.seconds > 0 else math.nan


def precision(trainer) -> dict:
    """Device, autocast dtype (None: float32) and layout a Trainer chose, so the bare loop can match them
    (``amp_dtype`` in newer lnzoo, a bool ``amp`` meaning float16 in older)."""
    dtype = getattr(trainer, "amp_dtype", torch.float16 if getattr(trainer, "amp", False) else None)
    return {"device": trainer.device, "amp_dtype": dtype, "channels_last": trainer.channels_last}


def syncer(device: torch.device) -> Callable[[], None]:
    # CUDA kernels run asynchronously: a timer read before the queue drains measures the launches only
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


# -- lnzoo's own fit loop ---------------------------------------------------------------------------------------
class _Caught(Exception):
    pass


def caught_epoch(trainer, train, val, seed: int):
    """Let ``Trainer.fit`` build everything as it does for a run, and catch its first call of ``_train_epoch``:
    the real Fit (model, loader, loss, optimizer, scheduler, scaler, EMA) without copying how fit builds it.
    Returns (the Fit, a function that runs one more epoch of the real ``_train_epoch`` on it)."""
    from lnzoo.train.loop import Fit

    got: dict = {}

    def catch(*args, **kwargs):
        got["args"], got["kwargs"] = args, kwargs
        raise _Caught

    trainer._train_epoch = catch  # an instance attribute shadows the method for this one fit
    try:
        trainer.fit(train, val, seed=seed)
    except _Caught:
        pass
    finally:
        del trainer._train_epoch
    if not got:
        raise RuntimeError("Trainer.fit never called _train_epoch; the harness needs updating")
    fit = next(a for a in [*got["args"], *got["kwargs"].values()] if isinstance(a, Fit))
    return fit, lambda: trainer._train_epoch(*got["args"], **got["kwargs"])


class Events:
    """``on_event`` of the Trainers: ``lnzoo run``'s RunView on a console that takes itself for a terminal, so the
    live progress bars render (and their refresh thread runs) as in an interactive run, into /dev/null. A fresh
    view is opened around each lnzoo round only, so the refresh thread never runs while the other side is timed."""

    def __init__(self, mode: str):
        self.mode, self.view = mode, None
        self.null = open(os.devnull, "w")  # noqa: SIM115 - the console writes to it for the whole process

    def __call__(self, event) -> None:
        if self.view is not None:
            self.view(event)

    @contextlib.contextmanager
    def live(self):
        if self.mode == "none":
            yield
            return
        from rich.console import Console

        from lnzoo.ui import RunView
        with RunView(Console(file=self.null, force_terminal=True, width=120)) as view:
            self.view = view
            try:
                yield
            finally:
                self.view = None


class WaitClock:
    """Stands in for Fit.loader and measures how long the loop waits for each batch, without adding a host sync
    (lnzoo reads losses back only every train.sync_every steps on a GPU, and a sync here would change that).

    On the CPU the step is done when the loop asks for the next batch: the wait is the wall time inside
    ``next``. On CUDA the CPU runs ahead of the GPU, so time inside ``next`` is only a wait when the GPU has
    run dry: a CUDA event recorded as the loop asks for the batch (it fires when the previous step's kernels
    end) and one recorded as the batch arrives (it fires when the GPU gets to it) time the GPU's idle gap."""

    def __init__(self, loader, device: torch.device):
        self.loader, self.cuda, self.wait = loader, device.type == "cuda", 0.0
        self.pairs: list = []

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):  # batch_size, drop_last, dataset, ...
        return getattr(self.loader, name)

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _close(self, mark) -> None:
        if self.cuda:
            self.pairs.append((mark, self._mark()))
        else:
            self.wait += time.perf_counter() - mark

    def settle(self) -> None:
        """Add up the CUDA gaps (after the device has been synchronised)."""
        self.wait += sum(a.elapsed_time(b) for a, b in self.pairs) / 1e3
        self.pairs = []

    def __iter__(self):
        mark = self._mark()
        it = iter(self.loader)  # with persistent workers: resets the sampler and primes the prefetch
        while True:
            try:
                batch = next(it)
            except StopIteration:
                self._close(mark)
                return
            self._close(mark)
            yield batch
            mark = self._mark()  # the loop is done with the batch and asks for the next one


class LnzooFit:
    def __init__(self, recipe, host, cache, train, val, seed: int, events: Events, deterministic: bool,
                 timed_wait: bool = False):
        from lnzoo.data.run_data import recipe_tasks
        from lnzoo.train import Trainer

        self.trainer = Trainer(recipe, host, recipe_tasks(recipe, host), cache, on_event=events)
        self.sync, self.events, self.deterministic = syncer(self.trainer.device), events, deterministic
        set_deterministic(deterministic)
        self.fit, self.epoch = caught_epoch(self.trainer, train, val, seed)
        loader = self.fit.loader
        self.images = len(loader) * loader.batch_size if loader.drop_last else len(loader.dataset)
        self.clock = None
        if timed_wait:
            self.clock = self.fit.loader = WaitClock(loader, self.trainer.device)

    def round(self) -> Timing:
        set_deterministic(self.deterministic)  # as lnzoo run sets it
        wait0 = self.clock.wait if self.clock else 0.0
        with self.events.live():
            self.sync()
            t0 = time.perf_counter()
            self.epoch()
            self.sync()
            seconds = time.perf_counter() - t0
        if self.clock:
            self.clock.settle()
        return Timing(seconds, self.images, (self.clock.wait - wait0) if self.clock else 0.0)

    def close(self) -> None:
        self.fit.loader = None  # persistent workers end with their loader
        del self.fit, self.epoch, self.trainer


# -- the hand-written torch loop ----------------------------------------------------------------------------------
def timm_body(model_name: str) -> nn.Module:
    import timm
    return timm.create_model(model_name, pretrained=False, num_classes=0, drop_rate=0.0)


def plain_optimizer(params, cfg):
    """The recipe's optimizer class and lr (and momentum, weight decay), without lnzoo's parameter groups."""
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["momentum"] > 0,
                               weight_decay=cfg["weight_decay"])
    cls = torch.optim.Adam if cfg["optimizer"] == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


class BareFit:
    def __init__(self, model_name: str, classes: int, x: torch.Tensor, y: torch.Tensor, batch: int, train_cfg,
                 mean_std, settings, seed: int, compile: bool = False):
        torch.manual_seed(seed)
        self.device, self.dtype, self.cl = settings["device"], settings["amp_dtype"], settings["channels_last"]
        self.sync = syncer(self.device)
        body = timm_body(model_name)
        self.model = nn.Sequential(body, nn.Linear(body.num_features, classes)).to(self.device)
        if self.cl:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile else self.model  # as lnzoo's train.compile does
        self.opt = plain_optimizer(self.model.parameters(), train_cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)  # bfloat16 needs no scaling
        self.loss = nn.CrossEntropyLoss()
        self.x, self.y, self.batch = x, y, batch  # uint8 (N, 3, H, W) and long (N,), in host memory
        self.mean, self.std = (torch.tensor(v, device=self.device).view(1, 3, 1, 1) for v in mean_std)
        self.gen = torch.Generator().manual_seed(seed)
        self.images = len(x) // batch * batch

    def round(self) -> Timing:
        set_deterministic(False)  # plain torch's default
        self.model.train()
        order = torch.randperm(len(self.x), generator=self.gen)
        self.sync()
        t0 = time.perf_counter()
        running = torch.zeros((), device=self.device)
        for s in range(len(self.x) // self.batch):
            idx = order[s * self.batch:(s + 1) * self.batch]
            x = self.x[idx].to(self.device, non_blocking=True)
            y = self.y[idx].to(self.device, non_blocking=True)
            x = (x.float() / 255.0 - self.mean) / self.std  # normalised per batch, on the device
            if self.cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                out = self.forward(x)
            loss = self.loss(out.float(), y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)
            running += loss.detach()  # read once per epoch: no host sync per step
        float(running)
        self.sync()
        return Timing(time.perf_counter() - t0, self.images)

    def close(self) -> None:
        del self.model, self.forward, self.opt


# -- predict --------------------------------------------------------------------------------------------------------
class LnzooPredict:
    def __init__(self, run: Path, paths: list[Path], host, sync):
        self.run, self.paths, self.host, self.sync = run, paths, host, sync

    def round(self) -> Timing:
        from lnzoo.predict import predict_rows

        set_deterministic(False)  # lnzoo predict leaves torch's default
        self.sync()
        t0 = time.perf_counter()
        predict_rows([self.run], self.paths, host=self.host)
        self.sync()
        return Timing(time.perf_counter() - t0, len(self.paths))

    def close(self) -> None:
        pass


class RawPredict:
    def __init__(self, model_name: str, classes: list[int], paths: list[Path], size: int, mean_std,
                 device: torch.device):
        body = timm_body(model_name)
        self.body = body.to(device).eval()
        self.heads = [nn.Linear(body.num_features, c).to(device).eval() for c in classes]
        self.paths, self.size, self.device, self.sync = paths, size, device, syncer(device)
        self.mean, self.std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in mean_std)

    def decode(self, path: Path) -> np.ndarray:
        from PIL import Image
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR))

    @torch.no_grad()
    def round(self) -> Timing:
        set_deterministic(False)
        self.sync()
        t0 = time.perf_counter()
        for i in range(0, len(self.paths), PREDICT_BATCH):
            arr = np.stack([self.decode(p) for p in self.paths[i:i + PREDICT_BATCH]])
            x = torch.from_numpy(arr).to(self.device).permute(0, 3, 1, 2).float()
            feats = self.body((x / 255.0 - self.mean) / self.std)
            [torch.softmax(h(feats), 1).double().cpu().numpy() for h in self.heads]
        self.sync()
        return Timing(time.perf_counter() - t0, len(self.paths))

    def close(self) -> None:
        del self.body, self.heads


# -- running and reporting ---------------------------------------------------------------------------------------
def alternate(sides: dict, rounds: int) -> tuple[dict[str, Timing], dict[str, list[Timing]]]:
    """One warm-up epoch per side, then ``rounds`` rounds, the order reversed every other round (A B C, C B A:
    no side always runs right after the same one); the totals per side, and each round's timing."""
    for side in sides.values():
        side.round()
    got: dict[str, list[Timing]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            got[k].append(sides[k].round())
    return {k: total(v) for k, v in got.items()}, got


def spread(a: list[Timing], b: list[Timing]) -> str:
    """The range of the per-round ratio a/b (images/s): how much to trust the total's ratio."""
    r = [ips(x) / ips(y) for x, y in zip(a, b)]
    return f"{min(r):.3f}-{max(r):.3f}x"


def profile(sides: dict, device: torch.device) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, side in sides.items():
        with torch_profile(activities=activities) as prof:
            side.round()
        table = prof.key_averages()
        print(f"\n--profile {name}: one epoch, top 15 ops by self CPU time")
        print(table.table(sort_by="self_cpu_time_total", row_limit=15))
        if device.type == "cuda":
            # torch 2.4 renamed self_cuda_time_total to self_device_time_total
            key = "self_device_time_total" if len(table) and hasattr(table[0], "self_device_time_total") \
                else "self_cuda_time_total"
            print(f"--profile {name}: top 15 ops by self CUDA time")
            print(table.table(sort_by=key, row_limit=15))


def help_times(n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lnzoo", "--help"], cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return times


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def measure_size(args, size: int, host, events: Events, rows: list, notes: list) -> None:
    from lnzoo.data.run_data import recipe_tasks
    from lnzoo.data.samples import MISSING
    from lnzoo.pipeline import _load_data
    from lnzoo.recipe import load_recipe

    base = [f"model.backbone={{name='timm', model_name='{args.model}', pretrained=false}}",
            f"data.image_size={size}", f"data.batch_size={args.batch_size}", f"train.device='{args.device}'",
            f"data.phantom.patients={args.patients}", "data.num_workers=0", "data.cache='memory'",
            # epochs only sizes the cosine schedule here: long enough that it never reaches its end
            "train.epochs=1000", "train.early_stopping_patience=0", *AUGMENT_OFF,
            *(["train.compile=true"] if args.compile else [])]
    recipe = load_recipe(args.recipe, sets=base, host=host)
    main = recipe["tasks.main"]
    solo = load_recipe(args.recipe, sets=[*base, f"tasks.task_weights={{{main} = 1.0}}"], host=host)
    tasks = recipe_tasks(recipe, host)
    aux = [t for t in tasks if t != main]
    data, cache = _load_data(recipe, tasks, lambda e: None, host)  # the phantom, decoded into memory as lnzoo run does
    labelled = [s for s in data.pool if s.labels.get(main, MISSING) != MISSING]
    n = args.images
    train = (labelled * math.ceil(n / len(labelled)))[:n]  # repeated when the phantom is smaller than --images
    val = labelled[:8]  # fit builds a validation set; the caught epochs never use it
    view = recipe["data.views"][0]
    mean_std = cache.pre.mean_std
    pixels = np.stack([cache.get(s.views[view], s.origin, s.rois.get(view)) for s in train])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([s.labels[main] for s in train], dtype=torch.long)

    if args.predict_only:
        dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                           ("cpu" if args.device == "auto" else args.device))
        predict_rows_of(args, size, host, data, base, mean_std, {"device": dev}, syncer(dev), rows, notes)
        return
    # 1, 2 and 4: every training side in the same rounds
    det = not args.no_deterministic
    lnzoo_fit = LnzooFit(solo, host, cache, train, val, recipe["seed"], events, det)
    settings = precision(lnzoo_fit.trainer)
    sync = syncer(settings["device"])
    dtype = str(settings["amp_dtype"]).replace("torch.", "") if settings["amp_dtype"] is not None else "float32"
    notes.append(f"{size} px: {n} training images per round ({len({id(s) for s in train})} distinct of "
                 f"{len(data.pool)} phantom images), {n // args.batch_size} steps of {args.batch_size}; "
                 f"lnzoo on {settings['device']} in {dtype}, channels_last={settings['channels_last']}, "
                 f"sync_every={getattr(lnzoo_fit.trainer, 'sync_every', 1)}; the bare loop in the same precision "
                 "and layout")
    sides = {"bare": BareFit(args.model, tasks[main].num_classes, x, y, args.batch_size, recipe["train"],
                             mean_std, settings, recipe["seed"], args.compile),
             "lnzoo": lnzoo_fit}
    if aux:
        sides["lnzoo+aux"] = LnzooFit(recipe, host, cache, train, val, recipe["seed"], events, det)
    for w in args.workers:
        r = load_recipe(args.recipe, sets=[*base, f"data.num_workers={w}"], host=host)
        sides[f"wait{w}"] = LnzooFit(r, host, cache, train, val, recipe["seed"], events, det, timed_wait=True)
    got, per_round = alternate(sides, args.rounds)
    b, lz = got["bare"], got["lnzoo"]
    notes.append(f"{size} px fit step: lnzoo / bare per round {spread(per_round['lnzoo'], per_round['bare'])}")
    rows.append(("fit step, images/s", size, f"{ips(lz):.1f}", f"{ips(b):.1f} bare",
                 f"{ips(lz) / ips(b):.3f}x", ">= 0.97x", verdict(ips(lz) / ips(b) >= 0.97)))
    if aux:
        steps = lz.images / args.batch_size
        pct = 100 * (got["lnzoo+aux"].seconds - lz.seconds) / lz.seconds
        rows.append((f"+ {'+'.join(aux)} head, ms/step", size, f"{1e3 * got['lnzoo+aux'].seconds / steps:.1f}",
                     f"{1e3 * lz.seconds / steps:.1f} main only", f"{pct:+.1f}%", "<= 3%", verdict(pct <= 3)))
    for w in args.workers:
        t = got[f"wait{w}"]
        share = 100 * t.wait / t.seconds
        rows.append((f"data wait, num_workers={w}", size, f"{ips(t):.1f} img/s", f"{t.wait:.2f} of {t.seconds:.2f} s",
                     f"{share:.1f}%", "<= 5%", verdict(share <= 5)))
    if args.profile:
        profile({"lnzoo fit step": sides["lnzoo"], "bare loop": sides["bare"]}, settings["device"])
    for side in sides.values():
        side.close()
    del sides
    gc.collect()

    predict_rows_of(args, size, host, data, base, mean_std, settings, sync, rows, notes)
    del cache, x, pixels
    gc.collect()
    if settings["device"].type == "cuda":
        torch.cuda.empty_cache()


def predict_rows_of(args, size: int, host, data, base: list[str], mean_std, settings: dict, sync, rows: list,
                    notes: list) -> None:
    """3: predict, on a one-epoch one-fold run of the recipe."""
    from lnzoo.pipeline import fit_folds
    from lnzoo.predict import Ensemble
    from lnzoo.recipe import load_recipe

    with tempfile.TemporaryDirectory(prefix="lnzoo-overhead-") as tmp:
        run = Path(tmp) / "run"
        fit_folds(load_recipe(args.recipe, sets=[*base, "train.epochs=1", "cv.folds=2", "cv.run_folds=[0]"],
                              host=host), host, run)
        distinct = [Path(next(p for p in s.views.values() if p is not None)) for s in data.pool]
        paths = (distinct * math.ceil(args.predict_images / len(distinct)))[:args.predict_images]
        t0 = time.perf_counter()
        ens = Ensemble([run], host)
        load_s = time.perf_counter() - t0
        lnzoo_dev = next(ens.members[0].model.parameters()).device
        classes = [len(c) for c in ens.tasks.values()]
        del ens
        pred = {"lnzoo": LnzooPredict(run, paths, host, sync),
                "raw": RawPredict(args.model, classes, paths, size, mean_std, settings["device"])}
        if lnzoo_dev.type != settings["device"].type:
            pred[f"raw on {lnzoo_dev.type}"] = RawPredict(args.model, classes, paths, size, mean_std, lnzoo_dev)
        got, per_round = alternate(pred, args.rounds)
        ratio = ips(got["lnzoo"]) / ips(got["raw"])
        rows.append(("predict_rows, images/s", size, f"{ips(got['lnzoo']):.1f}",
                     f"{ips(got['raw']):.1f} raw on {settings['device'].type}", f"{ratio:.3f}x", ">= 0.9x",
                     verdict(ratio >= 0.9)))
        notes.append(f"{size} px predict: {len(paths)} files per round, batch {PREDICT_BATCH}; lnzoo's predictor ran "
                     f"on {lnzoo_dev}; loading the run (Ensemble) took {load_s:.2f} s of each predict_rows call; "
                     f"lnzoo / raw per round {spread(per_round['lnzoo'], per_round['raw'])}")
        if f"raw on {lnzoo_dev.type}" in got:
            other = got[f"raw on {lnzoo_dev.type}"]
            notes.append(f"{size} px predict: the raw pass on {lnzoo_dev.type}, where lnzoo ran, "
                         f"{ips(other):.1f} images/s (lnzoo / it {ips(got['lnzoo']) / ips(other):.3f}x)")
        for side in pred.values():
            side.close()


def ddp_rows(args, size: int, rows: list, notes: list) -> None:
    """1 process against torchrun's 2 on the same fit (``lnzoo run``, one fold, ``--ddp-epochs`` epochs): the
    training images per second of the whole fit (decode, validation and held-out predictions included, from
    run.json's wall time), with the cores split evenly: ``train.threads`` = cores / processes."""
    import json
    import subprocess
    import tempfile

    cores = os.cpu_count() or 2
    sets = [f"model.backbone={{name='timm', model_name='{args.model}', pretrained=false}}", f"data.image_size={size}",
            f"data.batch_size={args.batch_size}", f"data.phantom.patients={args.patients}", "cv.run_folds=[0]",
            f"train.epochs={args.ddp_epochs}", "train.early_stopping_patience=0", "data.phantom.external=false",
            f"train.device='{args.device}'"]
    got = {}
    with tempfile.TemporaryDirectory(prefix="lnzoo-ddp-bench-") as tmp:
        for n in (1, 2):
            threads = max(1, cores // n) if args.device != "cuda" else 0
            cmd = [sys.executable, "-m", "lnzoo", "run", args.recipe, "--nproc", str(n), "--n-boot", "10",
                   "--out", f"{tmp}/p{n}", *[x for v in [*sets, f"train.threads={threads}"] for x in ("--set", v)]]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                notes.append(f"{size} px ddp with {n} process(es) failed: {done.stderr.strip().splitlines()[-1:]}")
                return
            info = json.loads(Path(f"{tmp}/p{n}/run.json").read_text())
            fold = json.loads(Path(f"{tmp}/p{n}/metrics.json").read_text())["cross_validation"]["folds"][0]
            got[n] = fold["n_train"] * fold["epochs_run"] / info["wall_seconds"]
    rows.append(("fit, train images/s, 2 processes", size, f"{got[2]:.1f}", f"{got[1]:.1f} 1 process",
                 f"{got[2] / got[1]:.2f}x", "-", ""))
    notes.append(f"{size} px ddp: one fold, {args.ddp_epochs} epochs, the whole fit's wall time (decode, validation "
                 f"and held-out predictions included); CPU runs split the {cores} cores between the processes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "stage1_aux.toml"))
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="image sizes in px (default 128 224)")
    ap.add_argument("--model", default=None, help="timm model name (default resnet18)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per side (default 5)")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default 32)")
    ap.add_argument("--images", type=int, default=None,
                    help="training images per round (default 10 batches; 5 with --quick)")
    ap.add_argument("--predict-images", type=int, default=None, help="files per predict round (default --images)")
    ap.add_argument("--patients", type=int, default=160, help="data.phantom.patients")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="data.num_workers for the data-wait rows")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--events", default="terminal", choices=("terminal", "none"),
                    help="render lnzoo's progress events as live bars (as on a terminal) or drop them")
    ap.add_argument("--no-deterministic", action="store_true",
                    help="train lnzoo without torch.use_deterministic_algorithms (lnzoo run turns it on)")
    ap.add_argument("--compile", action="store_true",
                    help="train.compile = true for lnzoo and torch.compile for the bare loop (compiled in warm-up)")
    ap.add_argument("--help-runs", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="torch.profiler tables of one lnzoo and one bare epoch")
    ap.add_argument("--quick", action="store_true", help="smoke run: test_resnet at 64 px, 2 rounds, batch 16")
    ap.add_argument("--ddp", action="store_true", help="also 1 against 2 torchrun processes on one fold's fit")
    ap.add_argument("--ddp-only", action="store_true", help="only the 1 against 2 processes rows")
    ap.add_argument("--predict-only", action="store_true", help="only the predict_rows rows (and the CLI start)")
    ap.add_argument("--ddp-epochs", type=int, default=2)
    args = ap.parse_args()
    quick = {"sizes": [64], "model": "test_resnet", "rounds": 2, "batch_size": 16}
    full = {"sizes": [128, 224], "model": "resnet18", "rounds": 5, "batch_size": 32}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.images = args.images or (5 if args.quick else 10) * args.batch_size
    args.predict_images = args.predict_images or args.images
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")

    import timm

    from lnzoo.plugins import get_host

    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    where = (f"{dev} ({name}), torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} torch "
             f"threads, {os.cpu_count()} CPU cores")
    print(f"measuring on {where}", file=sys.stderr, flush=True)
    help_s = help_times(args.help_runs)  # first, while nothing else of this process is running
    host = get_host()
    events = Events(args.events)
    rows: list[tuple] = []
    notes: list[str] = []
    for size in args.sizes:
        print(f"{size} px: {args.model} ...", file=sys.stderr, flush=True)
        if not args.ddp_only:
            measure_size(args, size, host, events, rows, notes)
        if args.ddp or args.ddp_only:
            ddp_rows(args, size, rows, notes)
    best, med = min(help_s), statistics.median(help_s)
    rows.append(("lnzoo --help, s", "-", f"{med:.3f} median", f"{best:.3f} best of {len(help_s)}", f"{med:.3f} s",
                 "< 0.5 s", verdict(med < 0.5)))

    print(f"\nlnzoo overhead on {where}")
    print(f"{Path(args.recipe).name}, timm {args.model} (random init), batch {args.batch_size}, augmentation off, "
          f"{args.rounds} rounds after a warm-up epoch per side (totals over the rounds); lnzoo "
          f"{'without' if args.no_deterministic else 'with'} deterministic algorithms, "
          f"{'both sides compiled, ' if args.compile else ''}progress events "
          f"{'rendered as live bars' if args.events == 'terminal' else 'dropped'}")
    for line in notes:
        print(f"  {line}")
    head = ("measure", "px", "lnzoo", "reference", "result", "target", "")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths))))


if __name__ == "__main__":
    main()
