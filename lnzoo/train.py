"""The fit loop: seeded, patient-level cross-validation with an inner validation part per fold.

The held-out fold is never used to choose anything: the best epoch (and early stopping) comes
from a patient-grouped validation part of the training folds.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from lnzoo.data.dataset import ImageCache, NodeDataset, build_augment
from lnzoo.data.samples import MISSING, Sample
from lnzoo.loss import MultiTaskLoss, balanced_class_weights
from lnzoo.model import predict_probabilities
from lnzoo.tasks import Task


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup to base_lr, cosine down to min_lr."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], steps_per_epoch: int):
    """A LambdaLR to be stepped once per optimizer step (not per epoch, not twice)."""
    total = cfg["epochs"] * steps_per_epoch
    warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch))
    base, floor = cfg["lr"], cfg["min_lr"]
    if cfg["scheduler"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    if base == 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total, base, floor) / base)


def make_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on biases and norms
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["momentum"] > 0)
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=cfg["lr"])
    return torch.optim.AdamW(groups, lr=cfg["lr"])


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from lnzoo.errors import UsageError
        raise UsageError(f"train.device = {name!r} but CUDA is not available here; use \"auto\" or \"cpu\"")
    return torch.device(name)


@dataclass
class Predictions:
    """Per-sample class probabilities per task for one set of samples."""

    samples: list[Sample]
    proba: dict[str, np.ndarray]
    loss: float = float("nan")

    def labels(self, task: str) -> np.ndarray:
        return np.array([s.labels.get(task, MISSING) for s in self.samples], dtype=np.int64)


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    best_score: float                   # what was maximised: the metric, or minus the loss
    history: list[dict[str, float]] = field(default_factory=list)
    model: nn.Module | None = None
    best_value: float = math.nan        # the monitored metric itself at that epoch; NaN where it was undefined


class Trainer:
    """Fits one model on one training part, choosing the epoch on a validation part."""

    def __init__(self, recipe, host, tasks: Mapping[str, Task], cache: ImageCache,
                 progress: Callable[..., None] | None = None):
        self.recipe, self.host, self.tasks, self.cache = recipe, host, dict(tasks), cache
        self.cfg = recipe.data["train"]
        self.data_cfg = recipe.data["data"]
        self.main = recipe.data["tasks"]["main"]
        self.device = pick_device(self.cfg["device"])
        cuda = self.device.type == "cuda"
        self.amp = cuda if self.cfg["amp"] == "auto" else bool(self.cfg["amp"]) and cuda
        # NHWC: oneDNN's CPU convolutions and cuDNN's tensor cores are both faster on it (measured on CPU:
        # ResNet-18 forward+backward at 96 px 5.1 s instead of 6.1 s per POCUS epoch); MPS stays NCHW
        auto = self.device.type in ("cuda", "cpu")
        self.channels_last = auto if self.cfg["channels_last"] == "auto" else bool(self.cfg["channels_last"])
        self.progress = progress
        self.covariates = None  # fitted on each fold's training part when the recipe names covariates

    # -- data -------------------------------------------------------------------------------------
    def _dataset(self, samples: Sequence[Sample], train: bool) -> NodeDataset:
        augment = build_augment(self.data_cfg["augment"], self.data_cfg["image_size"]) if train else None
        return NodeDataset(samples, self.data_cfg["views"], list(self.tasks), self.cache, augment,
                           view_dropout=self.cfg["view_dropout"] if train else 0.0, covariates=self.covariates)

    def _loader(self, ds: NodeDataset, train: bool, seed: int) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        sampler = None
        if train and self.data_cfg["sampling"] == "oversample":
            y = ds.labels(self.main)
            counts = np.bincount(y[y != MISSING], minlength=self.tasks[self.main].num_classes).astype(float)
            inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
            w = np.where(y == MISSING, inv[inv > 0].mean(), inv[np.clip(y, 0, None)])
            sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(ds), replacement=True,
                                            generator=gen)
        workers = self.data_cfg["num_workers"]
        # a trailing batch of one sample breaks BatchNorm in training; dropping a partial batch is harmless
        # when the data is shuffled anew every epoch
        drop_last = train and len(ds) > self.data_cfg["batch_size"]
        return DataLoader(ds, batch_size=self.data_cfg["batch_size"], shuffle=train and sampler is None,
                          sampler=sampler, generator=gen, num_workers=workers, drop_last=drop_last,
                          pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                          worker_init_fn=_seed_worker if workers else None)

    def class_weights(self, ds: NodeDataset) -> dict[str, np.ndarray | None]:
        weights: dict[str, np.ndarray | None] = {}
        sampling = self.data_cfg["sampling"]
        for name, task in self.tasks.items():
            balanced = task.class_weighting == "balanced" and sampling != "none"
            if name == self.main and sampling == "oversample":
                balanced = False  # oversampling already balances the main task; never both
            weights[name] = balanced_class_weights(ds.labels(name), task.num_classes) if balanced else None
        return weights

    # -- fit ----------------------------------------------------------------------------------------
    def fit(self, train: Sequence[Sample], val: Sequence[Sample], seed: int, fold: int = 0,
            on_epoch: Callable[[nn.Module, dict], None] | None = None) -> FoldResult:
        from lnzoo.model import build_model

        if self.cfg["method"] == "linear_probe":
            return self.fit_linear_probe([*train, *val], fold)

        seed_everything(seed)
        names = self.data_cfg["covariates"]
        if names:
            from lnzoo.data.covariates import CovariateEncoder
            self.covariates = CovariateEncoder.fit(train, names)  # training part only: no leakage
        model = build_model(self.recipe, self.host, self.tasks, self.covariates)
        self.init_report = None
        if self.recipe.data["model"]["init_from"]:
            from lnzoo.model import init_from_checkpoint
            self.init_report = init_from_checkpoint(model, self.recipe.data["model"]["init_from"])
            if self.progress:
                self.progress("init", report=self.init_report)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        train_ds, val_ds = self._dataset(train, True), self._dataset(val, False)
        loader = self._loader(train_ds, True, seed)
        loss_fn = MultiTaskLoss(self.tasks, self.recipe.data["tasks"]["task_weights"],
                                self.class_weights(train_ds)).to(self.device)
        optimizer = make_optimizer(model, self.cfg)
        scheduler = make_scheduler(optimizer, self.cfg, len(loader))
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        heads = dict(model.heads.items())
        result = FoldResult(fold, -1, -math.inf)
        ema = None
        if self.cfg["ema"] > 0:  # averages BatchNorm buffers too (use_buffers), which the seed's EMA forgot
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg["ema"]), use_buffers=True)
        eval_model = ema.module if ema is not None else model
        mt = self.cfg["mean_teacher"]
        teacher = None
        if mt["weight"] > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
            teacher = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(mt["ema"]), use_buffers=True)
        main_col = list(self.tasks).index(self.main)
        best_state = None
        stale = 0
        epochs = self.cfg["epochs"]
        for epoch in range(epochs):
            model.train()
            total, seen = 0.0, 0
            for step, (x, present, y, _, tab) in enumerate(loader):
                x, present, y = self._to_device(x, present, y)
                with torch.autocast(self.device.type, enabled=self.amp):
                    outputs = model(x, present, tab.to(self.device))
                targets = {t: y[:, i] for i, t in enumerate(self.tasks)}
                loss, parts = loss_fn({k: v.float() for k, v in outputs.items()}, targets, heads)
                if teacher is not None:
                    progress = (epoch + step / max(len(loader), 1)) / max(mt["rampup_epochs"], 1e-9)
                    ramp = math.exp(-5.0 * (1.0 - min(1.0, progress)) ** 2) if mt["rampup_epochs"] > 0 else 1.0
                    loss = loss + mt["weight"] * ramp * self._consistency(
                        teacher, model, x, present, tab, outputs[self.main], y[:, main_col], mt["threshold"])
                scaler.scale(loss).backward()
                if self.cfg["grad_clip"] > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), self.cfg["grad_clip"])
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()  # once per optimizer step
                if ema is not None:
                    ema.update_parameters(model)
                if teacher is not None:
                    teacher.update_parameters(model)
                total += float(loss.detach()) * len(y)
                seen += len(y)
                if self.progress:
                    self.progress("step", fold=fold, epoch=epoch, epochs=epochs, step=step + 1, steps=len(loader),
                                  loss=total / seen)
            val_pred = self.predict(eval_model, val_ds, loss_fn)
            score, shown = self.monitor_score(val_pred)
            row = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_loss": val_pred.loss,
                   f"val_{self.cfg['monitor']}": shown, "lr": optimizer.param_groups[0]["lr"]}
            result.history.append(row)
            improved = score > result.best_score + 1e-9 or best_state is None
            if improved:
                result.best_score, result.best_value, result.best_epoch, stale = score, shown, epoch + 1, 0
                best_state = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
            else:
                stale += 1
            if on_epoch:
                on_epoch(model, row)
            if self.progress:
                self.progress("epoch", fold=fold, epoch=epoch, epochs=epochs, row=row, best=result.best_score)
            patience = self.cfg["early_stopping_patience"]
            if patience and stale >= patience:
                break
        self.last_state = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
        if self.cfg["keep"] == "last":
            best_state = self.last_state
            result.best_epoch = len(result.history)
            result.best_score, result.best_value = self.monitor_score(val_pred)
        model.load_state_dict(best_state)
        result.model = model
        return result

    def _consistency(self, teacher, model, x, present, tab, student_out, main_y, threshold: float) -> torch.Tensor:
        """Mean-teacher loss on images without a main-task label: the EMA teacher, shown a flipped
        view of the image, gives a pseudo-label when confident enough; the student learns it."""
        unlabelled = main_y == MISSING
        if not bool(unlabelled.any()):
            return student_out.sum() * 0.0
        teacher.eval()
        with torch.no_grad():
            t_out = teacher.module(x[unlabelled].flip(-1), present[unlabelled], tab.to(x.device)[unlabelled]
                                   if tab.numel() else None)[self.main]
            t_prob = teacher.module.probabilities({self.main: t_out.float()})[self.main]
        conf, pseudo = t_prob.max(1)
        confident = conf >= threshold
        if not bool(confident.any()):
            return student_out.sum() * 0.0
        head = model.heads[self.main]
        out = student_out[unlabelled][confident].float()
        custom = getattr(head, "task_loss", None)
        return custom(out, pseudo[confident]) if custom else F.cross_entropy(out, pseudo[confident])

    # -- frozen-feature baseline -------------------------------------------------------------------
    def fit_linear_probe(self, samples: Sequence[Sample], fold: int) -> FoldResult:
        """Frozen backbone + standardise + logistic regression, C chosen by grouped CV on ``samples`` only.

        Features are extracted once per run (the backbone is frozen and built from the recipe seed)
        and the fitted scaler is folded into the linear head, so the result is an ordinary model.
        """
        import copy

        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import StratifiedGroupKFold
        from sklearn.preprocessing import StandardScaler

        from lnzoo.model import build_model

        if getattr(self, "_probe", None) is None:
            seed_everything(self.recipe.data["seed"])
            probe = build_model(self.recipe, self.host, self.tasks)
            if self.recipe.data["model"]["init_from"]:
                from lnzoo.model import init_from_checkpoint
                self._probe_init = init_from_checkpoint(probe, self.recipe.data["model"]["init_from"])
            self._probe = probe.to(self.device).eval()
            self._probe_features: dict[str, np.ndarray] = {}
        todo = [s for s in samples if s.key not in self._probe_features]
        if todo:
            ds = self._dataset(todo, False)
            loader = DataLoader(ds, batch_size=max(64, self.data_cfg["batch_size"]), shuffle=False)
            with torch.no_grad():
                for x, present, y, idx, tab in loader:
                    x, present, y = self._to_device(x, present, y)
                    f = self._probe.features(x, present, tab.to(self.device)).float().cpu().numpy()
                    for i, row in zip(idx.tolist(), f):
                        self._probe_features[todo[i].key] = row
        X = np.stack([self._probe_features[s.key] for s in samples]).astype(np.float64)
        groups = np.array([s.patient for s in samples])
        model = copy.deepcopy(self._probe)
        history = []
        for name, task in self.tasks.items():
            y = np.array([s.labels.get(name, MISSING) for s in samples])
            keep = y != MISSING
            classes_present = np.unique(y[keep])
            if len(classes_present) < 2:
                continue
            counts = np.bincount(y[keep])
            n_splits = int(max(2, min(5, counts[counts > 0].min(), len(set(groups[keep])))))
            scaler = StandardScaler().fit(X[keep])
            Xs = scaler.transform(X[keep])
            splits = list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=self.recipe.data["seed"])
                          .split(Xs, y[keep], groups[keep]))
            weighting = "balanced" if task.class_weighting == "balanced" and self.data_cfg["sampling"] != "none" else None
            lr = LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=splits, scoring="neg_log_loss", max_iter=3000,
                                      class_weight=weighting)
            lr.fit(Xs, y[keep])
            coef = lr.coef_ / scaler.scale_
            bias = lr.intercept_ - (lr.coef_ * scaler.mean_ / scaler.scale_).sum(1)
            weight = np.zeros((task.num_classes, X.shape[1]))
            b = np.zeros(task.num_classes)
            if coef.shape[0] == 1:  # binary: logit of the second class present against the first
                weight[classes_present[1]], b[classes_present[1]] = coef[0], bias[0]
            else:
                weight[classes_present], b[classes_present] = coef, bias
                b[np.setdiff1d(np.arange(task.num_classes), classes_present)] = -1e4  # never seen: never predicted
            fc = model.heads[name].fc
            with torch.no_grad():
                fc.weight.copy_(torch.as_tensor(weight, dtype=fc.weight.dtype))
                fc.bias.copy_(torch.as_tensor(b, dtype=fc.bias.dtype))
            history.append({"task": name, "C": float(lr.C_[0]), "n": int(keep.sum()), "inner_folds": n_splits})
        self.last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.init_report = getattr(self, "_probe_init", None)
        return FoldResult(fold, 0, float("nan"), history, model)

    def _to_device(self, x, present, y):
        nb = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=nb)
        if self.channels_last:
            b, v = x.shape[:2]
            x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(b, v, *x.shape[2:])
        return x, present.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)

    @torch.no_grad()
    def predict(self, model: nn.Module, ds: NodeDataset | Sequence[Sample], loss_fn: MultiTaskLoss | None = None) -> Predictions:
        if not isinstance(ds, NodeDataset):
            ds = self._dataset(ds, False)
        model.eval()
        loader = DataLoader(ds, batch_size=max(64, self.data_cfg["batch_size"]), shuffle=False,
                            num_workers=0)
        probs: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        total, seen = 0.0, 0
        heads = dict(model.heads.items())
        for x, present, y, _, tab in loader:
            x, present, y = self._to_device(x, present, y)
            with torch.autocast(self.device.type, enabled=self.amp):
                outputs, batch_probs = predict_probabilities(model, x, present, tab.to(self.device), self.cfg["tta"])
            if loss_fn is not None:
                loss, _ = loss_fn(outputs, {t: y[:, i] for i, t in enumerate(self.tasks)}, heads)
                total += float(loss) * len(y)
                seen += len(y)
            for t, p in batch_probs.items():
                p = p.double().cpu().numpy()
                probs[t].append(p / p.sum(1, keepdims=True))  # exact row sums for metric libraries
        return Predictions(list(ds.samples), {t: np.concatenate(v) if v else np.zeros((0, self.tasks[t].num_classes))
                                              for t, v in probs.items()}, total / seen if seen else float("nan"))

    def monitor_score(self, pred: Predictions) -> tuple[float, float]:
        """(score to maximise, value to report); an undefined metric falls back to minus the loss."""
        metric = self.cfg["monitor"]
        if metric == "loss":
            return -pred.loss, pred.loss
        from lnzoo.metrics import classification_metrics

        task = self.tasks[self.main]
        y = pred.labels(self.main)
        keep = y != MISSING
        if keep.sum() == 0 or len(np.unique(y[keep])) < 2:
            return -pred.loss, float("nan")
        m = classification_metrics(y[keep], pred.proba[self.main][keep], list(task.classes), task.positive_index)
        value = m.get(metric)
        if value is None or not np.isfinite(value):
            return -pred.loss, float("nan")
        return float(value), float(value)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
