"""The fit loop: one model on one training part, the epoch chosen on a patient-grouped validation part.

The held-out fold is never used to choose anything: the best epoch (and early stopping) comes
from a validation part of the training folds. :meth:`Trainer.fit` returns a :class:`FoldResult`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from lnzoo import events
from lnzoo.data.dataset import ImageCache, NodeDataset, build_augment
from lnzoo.data.samples import MISSING, Sample
from lnzoo.errors import LnzooError
from lnzoo.inference import Predictions, Predictor, device_settings
from lnzoo.loss import MultiTaskLoss, balanced_class_weights
from lnzoo.tasks import Task
from lnzoo.train import distributed
from lnzoo.train.averaging import MeanTeacher, ema_of
from lnzoo.train.schedule import deterministic_compile, make_optimizer, make_scheduler, seed_everything, seed_worker


@dataclass
class FoldResult:
    """What one fit produced: the kept weights (ready to predict), the last weights, the curves."""

    fold: int
    predictor: Predictor                # the kept epoch's model with its fitted inputs
    last_state: dict[str, torch.Tensor]  # weights after the final epoch (EMA weights when train.ema > 0)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf       # what was maximised: the metric, or minus the loss
    best_value: float = math.nan        # the monitored metric itself at that epoch; NaN where it was undefined
    init_report: dict[str, Any] | None = None  # what model.init_from loaded

    @property
    def model(self) -> nn.Module:
        return self.predictor.model

    @property
    def best_val_loss(self) -> float | None:
        return next((h.get("val_loss") for h in self.history if h.get("epoch") == self.best_epoch), None)


@dataclass
class Fit:
    """One fit's moving parts: what each epoch changes, and what the resumable state saves and restores."""

    model: nn.Module              # what is saved, averaged and evaluated
    ema: Any                      # AveragedModel of the model (train.ema > 0), else None
    teacher: MeanTeacher | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loader: DataLoader
    result: FoldResult
    best_state: dict[str, torch.Tensor] | None = None
    epoch: int = 0                # epochs finished
    stale: int = 0                # epochs since the best one (early stopping)
    stopped: bool = False
    last_monitor: tuple[float, float] = (math.nan, math.nan)
    forward: nn.Module | None = None  # what a training step calls: the model, or its torch.compile wrapper

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.model


class TrainingDiverged(LnzooError):
    """The loss became NaN or infinite: the fold stops at once, naming where and on which images."""

    def __init__(self, fold: int, epoch: int, step: int | None, value: float, paths: Sequence[str], lr: float,
                 seen_at: int | None = None):
        where = (f"fold {fold}, epoch {epoch}, step {step}: the training loss is {value}" if step is not None else
                 f"fold {fold}, after epoch {epoch}: the validation loss is {value}, the weights diverged")
        if seen_at is not None and seen_at != step:  # train.sync_every > 1: the loss is read back in batches
            where += f" (read back after step {seen_at}: steps {step}-{seen_at} ran before it was seen)"
        shown = ", ".join(paths[:8]) + (f" (+{len(paths) - 8} more)" if len(paths) > 8 else "")
        super().__init__(f"{where} (not finite), so the fold was stopped. "
                         + (f"The batch held: {shown}. " if paths else "")
                         + f"Usually train.lr ({lr}) is too high for this model; lower it, or set train.grad_clip.")
        self.fold, self.epoch, self.step, self.seen_at, self.paths = fold, epoch, step, seen_at, list(paths)


def sampling_weights(y: np.ndarray, num_classes: int, oversample: bool, values: Sequence[str] | None = None
                     ) -> np.ndarray:
    """Per-image sampling weights for the main task's labels ``y`` (MISSING: unlabelled).

    ``oversample``: every class drawn equally often. ``values`` (``data.balance_by``: a confounder such as the
    scanner, per image): within each class, every value drawn equally often, so the confounder no longer tells
    the classes apart; each class keeps its total weight. An unlabelled image gets the mean weight."""
    y = np.asarray(y)
    labelled = y != MISSING
    counts = np.bincount(y[labelled], minlength=num_classes).astype(float)
    w = np.ones(len(y))
    if values is not None:
        v = np.asarray(values, dtype=object)
        for c in range(num_classes):
            in_class = labelled & (y == c)
            kinds = sorted(set(v[in_class].tolist()))
            for kind in kinds:
                cell = in_class & (v == kind)
                w[cell] = in_class.sum() / (cell.sum() * len(kinds))
    if oversample:
        inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        w[labelled] *= inv[y[labelled]]
    if labelled.any() and not labelled.all():
        w[~labelled] = w[labelled].mean()
    return w


def epoch_score(monitor: str, value: float, loss: float) -> float:
    """The score an epoch is picked by, higher being better: minus its validation loss when the loss is monitored
    or the monitored metric is undefined there (NaN: one class only), else the metric's ``value``."""
    return -loss if monitor == "loss" or not math.isfinite(value) else value


def improves(score: float, best: float) -> bool:
    """Whether an epoch's score beats the best so far (by more than rounding)."""
    return score > best + 1e-9


def best_so_far(history: Sequence[Mapping[str, Any]], monitor: str) -> list[float]:
    """For each row of a fold's history, the monitored value at the best epoch up to it (``EpochEnded.best``), as
    the fit picked it."""
    out: list[float] = []
    best_score, best_value = -math.inf, math.nan
    for i, row in enumerate(history):
        value = float(row.get("val_loss" if monitor == "loss" else f"val_{monitor}", math.nan))
        score = epoch_score(monitor, value, float(row.get("val_loss", math.nan)))
        if i == 0 or improves(score, best_score):
            best_score, best_value = score, value
        out.append(best_value)
    return out


class Trainer:
    """Fits models for one recipe, fold after fold; ``on_event`` receives :mod:`lnzoo.events` as it goes."""

    def __init__(self, recipe, host, tasks: Mapping[str, Task], cache: ImageCache | None,
                 on_event: Callable[[Any], None] | None = None, inputs: Mapping[str, Any] | None = None):
        self.recipe, self.host, self.tasks, self.cache = recipe, host, dict(tasks), cache
        self._unchecked = inputs is None  # no RunData: the recipe's inputs, checked on the first fit's rows
        if inputs is None:
            from lnzoo.inputs import build_kinds
            inputs = build_kinds(recipe.config.data, recipe.config.model, host)
        self.inputs = dict(inputs)  # input name -> (kind, table), checked on the whole data
        self.cfg = recipe.config.train
        self.data_cfg = recipe.config.data
        self.main = recipe.config.tasks.main
        settings = device_settings(self.cfg)
        self.world = distributed.world()  # one process, or one of torchrun's
        self.device, self.amp_dtype, self.channels_last = distributed.rank_device(settings["device"], self.world), \
            settings["amp_dtype"], settings["channels_last"]
        distributed.start(self.device)
        self.pin_memory, self.sync_every = settings["pin_memory"], settings["sync_every"]
        self.emit = on_event or (lambda event: None)
        self._probe = None  # the linear probe's frozen backbone and feature cache, shared by the folds

    def predictor(self, model: nn.Module, inputs=None) -> Predictor:
        """The model as the one inference path sees it, reading images through this run's cache."""
        from lnzoo.data.images import Preprocessing

        pre = self.cache.pre if self.cache is not None else Preprocessing.of(self.data_cfg)
        return Predictor(model, self.tasks, pre, list(self.data_cfg.views), inputs, tta=self.cfg.tta,
                         device=self.device, amp_dtype=self.amp_dtype, channels_last=self.channels_last,
                         cache=self.cache)

    def loader(self, ds: NodeDataset, seed: int) -> DataLoader:
        """The training loader: shuffled (or oversampled) with its own seeded generator."""
        gen = torch.Generator().manual_seed(seed)
        sampler = None
        by = getattr(self.data_cfg, "balance_by", None)
        if self.data_cfg.sampling == "oversample" or by:
            values = [str(s.cells.get(by, "") or "") for s in ds.samples] if by else None
            w = sampling_weights(ds.labels(self.main), self.tasks[self.main].num_classes,
                                 self.data_cfg.sampling == "oversample", values)
            sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(ds), replacement=True,
                                            generator=gen)
        workers = self.data_cfg.num_workers
        if self.world.active:  # each process its share of every global batch, in the same global order
            from torch.utils.data import RandomSampler
            base = sampler if sampler is not None else RandomSampler(ds, generator=gen)
            shard = distributed.RankShard(base, self.world)
            batch = distributed.per_rank_batch(self.data_cfg.batch_size, self.world)
            workers_gen = torch.Generator().manual_seed(seed + 7919 * self.world.rank)  # own augmentation draws
            return DataLoader(ds, batch_size=batch, sampler=shard, generator=workers_gen, num_workers=workers,
                              drop_last=len(shard) > batch, pin_memory=self.pin_memory, persistent_workers=workers > 0,
                              worker_init_fn=seed_worker if workers else None)
        # a trailing batch of one sample breaks BatchNorm in training; dropping a partial batch is harmless
        # when the data is shuffled anew every epoch
        return DataLoader(ds, batch_size=self.data_cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                          generator=gen, num_workers=workers, drop_last=len(ds) > self.data_cfg.batch_size,
                          pin_memory=self.pin_memory, persistent_workers=workers > 0,
                          worker_init_fn=seed_worker if workers else None)

    def class_weights(self, ds: NodeDataset) -> dict[str, np.ndarray | None]:
        weights: dict[str, np.ndarray | None] = {}
        sampling = self.data_cfg.sampling
        for name, task in self.tasks.items():
            balanced = task.class_weighting == "balanced" and sampling != "none"
            if name == self.main and sampling == "oversample":
                balanced = False  # oversampling already balances the main task; never both
            weights[name] = balanced_class_weights(ds.labels(name), task.num_classes) if balanced else None
        return weights

    def fit(self, train: Sequence[Sample], val: Sequence[Sample], seed: int, fold: int = 0,
            state: Path | None = None) -> FoldResult:
        """Fit one model. With ``state`` (a file stem), the resumable state is written there every
        ``train.checkpoint_every`` epochs, and a state found there on entry is continued from."""
        from lnzoo.model import build_model, init_from_checkpoint
        from lnzoo.train import resume

        if self.cfg.method == "linear_probe":
            if self._probe is None:
                from lnzoo.train.probe import LinearProbe
                self._probe = LinearProbe(self)
            model, history = self._probe.fit([*train, *val])
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return FoldResult(fold, self.predictor(model), state, history, 0, math.nan,
                              init_report=self._probe.init_report)

        seed_everything(seed)
        from lnzoo.inputs import Inputs, check_rows, fit_inputs
        if self._unchecked and self.inputs:  # decided on every row given (a covariate's type), never per fold
            problems: list[str] = []
            check_rows(self.inputs, [*train, *val], problems)
            if problems:
                from lnzoo.errors import DataError
                raise DataError(problems)
            self._unchecked = False
        saved = resume.saved_inputs(state) if state is not None else None
        if saved is not None:  # continuing a fold: its inputs as fitted when it started
            inputs = Inputs.from_meta(saved, self.host, source=str(state))
        else:
            inputs = fit_inputs(self.inputs, train)  # the training part only: no leakage
            if self.world.active and inputs:  # one vocabulary numbering, one scaler, for every process
                fitted = distributed.rank0_json(inputs.as_meta())
                if not self.world.writer:
                    inputs = Inputs.from_meta(fitted, self.host)
        model = build_model(self.recipe, self.host, self.tasks, inputs)
        init_report = None
        if self.recipe.config.model.init_from:
            init_report = init_from_checkpoint(model, self.recipe.config.model.init_from)
            self.emit(events.InitLoaded(init_report))
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        student = self.predictor(model, inputs)
        augment = build_augment(self.data_cfg.augment, self.data_cfg.image_size)
        train_ds = student.dataset(train, augment, view_dropout=self.cfg.view_dropout)
        val_ds = student.dataset(val)
        loader = self.loader(train_ds, seed)
        loss_fn = MultiTaskLoss(self.tasks, self.recipe.config.tasks.task_weights,
                                self.class_weights(train_ds)).to(self.device)
        optimizer = make_optimizer(model, self.cfg)
        scheduler = make_scheduler(optimizer, self.cfg, len(loader))
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)  # bfloat16 cannot overflow
        ema = ema_of(model, self.cfg.ema) if self.cfg.ema > 0 else None
        kept = self.predictor(ema.module if ema is not None else model, inputs)  # what is evaluated and saved
        teacher = MeanTeacher(model, self.cfg.mean_teacher, self.main) if self.cfg.mean_teacher.weight > 0 \
            else None
        run = Fit(model, ema, teacher, optimizer, scheduler, scaler, loader,
                  FoldResult(fold, kept, {}, init_report=init_report),
                  # the wrapper shares the model's parameters; everything else keeps the plain module, so its
                  # state_dict keys (checkpoints, resume, EMA) carry no _orig_mod. prefix
                  forward=self._forward(model, seed))
        epochs = self.cfg.epochs
        if state is not None and resume.load_fit(state, run):  # continue after an interrupted fit's last epoch
            self.emit(events.Note(f"fold {fold}: resumed after epoch {run.epoch} of {epochs}"))
        every = self.cfg.checkpoint_every
        while run.epoch < epochs and not run.stopped:
            loss = self._train_epoch(run, student, train_ds, loss_fn, fold)
            val_pred = kept.predict(val_ds, loss_fn, batch_size=max(64, self.data_cfg.batch_size))
            if val_ds.samples and not (math.isfinite(val_pred.loss)
                                       and all(np.isfinite(p).all() for p in val_pred.proba.values())):
                raise TrainingDiverged(fold, run.epoch + 1, None, val_pred.loss, [], self.cfg.lr)
            row = self._end_epoch(run, val_pred, loss)
            if self.world.active:  # rank 0's early-stopping decision holds for every process
                run.stopped = distributed.decided_by_rank0(run.stopped, self.device)
            if state is not None and every and (run.epoch % every == 0 or run.stopped or run.epoch == epochs):
                resume.save_fit(state, run)
            self.emit(events.EpochEnded(fold, epochs, row, run.result.best_value))
        result = run.result
        result.last_state = {k: v.detach().clone() for k, v in kept.model.state_dict().items()}
        best_state = run.best_state
        if self.cfg.keep == "last":
            best_state = result.last_state
            result.best_epoch = len(result.history)
            result.best_score, result.best_value = run.last_monitor
        model.load_state_dict(best_state)
        result.predictor = self.predictor(model, inputs)
        return result

    def _forward(self, model: nn.Module, seed: int) -> nn.Module:
        """What a training step calls: the model; across processes its DistributedDataParallel wrapper (which
        makes every process start from rank 0's weights); with train.compile its torch.compile wrapper."""
        forward = model
        if self.world.active:
            from torch.nn.parallel import DistributedDataParallel
            if self.cfg.sync_bn:
                if self.device.type != "cuda":
                    raise LnzooError("train.sync_bn = true needs CUDA (torch's SyncBatchNorm runs on GPUs only); "
                                     "set it false on the CPU")
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters, so the same state keys
            forward = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
            seed_everything(seed + 7919 * self.world.rank)  # each process its own augmentation draws
        return deterministic_compile(forward) if self.cfg.compile else forward

    def _train_epoch(self, run: Fit, student: Predictor, train_ds: NodeDataset, loss_fn: MultiTaskLoss,
                     fold: int) -> float:
        """One pass over the training part, an optimizer and scheduler step per batch; the mean loss."""
        model, optimizer, loader, teacher, epoch = run.model, run.optimizer, run.loader, run.teacher, run.epoch
        heads, main_col, epochs = dict(model.heads.items()), list(self.tasks).index(self.main), self.cfg.epochs
        steps, every = len(loader), self.sync_every
        model.train()
        total, seen = 0.0, 0
        # (step, loss on the device, batch size, sample indices) of the steps not yet read back: reading a loss
        # waits for the GPU to finish every kernel queued, so it is done every train.sync_every steps
        pending: list[tuple[int, torch.Tensor, int, torch.Tensor]] = []
        for step, (x, present, y, idx, inputs) in enumerate(loader):
            x, present, y, inputs = student.to_device(x, present, y, inputs)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                outputs = run.forward(x, present, inputs)
            loss, _ = loss_fn({k: v.float() for k, v in outputs.items()},
                              {t: y[:, i] for i, t in enumerate(self.tasks)}, heads, world=self.world.size,
                              reduce=distributed.global_sum)
            if teacher is not None:
                loss = loss + self.cfg.mean_teacher.weight * teacher.ramp(epoch, step, len(loader)) * \
                    teacher.loss(model, x, present, inputs, outputs[self.main], y[:, main_col])
            pending.append((step + 1, loss.detach(), len(y), idx))
            synced = (step + 1) % every == 0 or step + 1 == steps
            if synced:  # before this step's update, so with sync_every = 1 a NaN loss never reaches the weights
                total, seen = self._read_back(pending, total, seen, train_ds, fold, epoch)
                pending = []
            run.scaler.scale(loss).backward()
            if self.cfg.grad_clip > 0:
                run.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            run.scaler.step(optimizer)
            run.scaler.update()
            run.scheduler.step()  # once per optimizer step
            optimizer.zero_grad(set_to_none=True)
            if run.ema is not None:
                run.ema.update_parameters(model)
            if teacher is not None:
                teacher.update(model)
            if synced:
                self.emit(events.StepEnded(fold, epoch, epochs, step + 1, steps, total / seen))
        return total / max(seen, 1)

    def _read_back(self, pending, total: float, seen: int, train_ds: NodeDataset, fold: int,
                   epoch: int) -> tuple[float, int]:
        """Add the pending steps' losses to the running (sum, count) in step order, with one device-to-host
        copy; a non-finite one stops the fold, naming its step and its batch's images."""
        values = torch.stack([loss for _, loss, _, _ in pending]).tolist()
        if self.world.active and distributed.on_any_rank(not all(map(math.isfinite, values)), self.device) \
                and all(map(math.isfinite, values)):  # every process stops at this read-back, not only the one
            raise LnzooError(f"fold {fold}, epoch {epoch + 1}: the training loss became non-finite on another "
                             f"process by step {pending[-1][0]}, so every process stopped (that process names the "
                             f"step and images). Usually train.lr ({self.cfg.lr}) is too high for this model")
        for (step, _, n, idx), value in zip(pending, values):
            if not math.isfinite(value):
                raise TrainingDiverged(fold, epoch + 1, step, value,
                                       [str(p) for i in idx.tolist() for p in train_ds.samples[i].views.values()
                                        if p is not None], self.cfg.lr, seen_at=pending[-1][0])
            total += value * n  # the same float arithmetic, in the same order, whatever sync_every is
            seen += n
        return total, seen

    def _end_epoch(self, run: Fit, val_pred: Predictions, train_loss: float) -> dict[str, Any]:
        """Score the epoch on the validation part, keep the best weights, count towards early stopping."""
        result = run.result
        score, shown = run.last_monitor = self.monitor_score(val_pred)
        run.epoch += 1
        row = {"epoch": run.epoch, "train_loss": train_loss, "val_loss": val_pred.loss,
               f"val_{self.cfg.monitor}": shown, "lr": run.optimizer.param_groups[0]["lr"]}
        result.history.append(row)
        if improves(score, result.best_score) or run.best_state is None:
            result.best_score, result.best_value, result.best_epoch, run.stale = score, shown, run.epoch, 0
            run.best_state = {k: v.detach().clone() for k, v in result.predictor.model.state_dict().items()}
        else:
            run.stale += 1
        patience = self.cfg.early_stopping_patience
        run.stopped = bool(patience and run.stale >= patience)
        return row

    def monitor_score(self, pred: Predictions) -> tuple[float, float]:
        """(score to maximise, value to report); an undefined metric falls back to minus the loss."""
        metric = self.cfg.monitor
        if metric == "loss":
            return epoch_score(metric, pred.loss, pred.loss), pred.loss
        from lnzoo.evaluation.metrics import classification_metrics

        task = self.tasks[self.main]
        y = pred.labels(self.main)
        keep = y != MISSING
        value = float("nan")
        if keep.sum() and len(np.unique(y[keep])) >= 2:
            m = classification_metrics(y[keep], pred.proba[self.main][keep], list(task.classes), task.positive_index)
            if m.get(metric) is not None and np.isfinite(m[metric]):
                value = float(m[metric])
        return epoch_score(metric, value, pred.loss), value
